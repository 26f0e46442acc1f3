"""Test helpers: a real project folder, the real CLI in a subprocess, real processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
# services started by the tests run with this virtualenv's python first on PATH
ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1",
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def procs_in(root: Path) -> list[psutil.Process]:
    """Live processes whose working folder is inside `root` (our services)."""
    found = []
    for proc in psutil.process_iter(["cwd", "status"]):
        try:
            cwd = proc.info["cwd"]
            if cwd and cwd.startswith(str(root)) and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def service_procs(root: Path) -> list[psutil.Process]:
    """The fixture service processes (python svc.py) running in `root`."""
    out = []
    for proc in procs_in(root):
        try:
            if proc.name().startswith("python") and "svc.py" in proc.cmdline():
                out.append(proc)
        except psutil.Error:
            continue
    return out


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


@dataclass
class Project:
    root: Path
    ingress_port: int

    def write(self, yaml_text: str) -> None:
        (self.root / "devenv.yaml").write_text(textwrap.dedent(yaml_text))

    def services(self, body: str) -> None:
        """A devenv.yaml with this project's ingress port and these services (YAML as it
        stands under `services:`)."""
        head = f"version: 1\ningress: {{port: {self.ingress_port}}}\nservices:\n"
        self.write(head + textwrap.indent(textwrap.dedent(body), "  "))

    def devenv(self, *args: str, timeout: float = 90, check: bool = False,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "devenv", *args], cwd=self.root,
                                capture_output=True, text=True, timeout=timeout, input=input,
                                env=ENV)
        if check and result.returncode != 0:
            raise AssertionError(f"devenv {' '.join(args)} exited {result.returncode}\n"
                                 f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        return result

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "devenv", *args], cwd=self.root,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=ENV)

    def up(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.devenv("up", *args, check=True)

    def status(self, *args: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.devenv("status", "--json", *args,
                                                      check=True).stdout)
        return data

    def service(self, name: str) -> dict[str, Any]:
        return next(s for s in self.status()["services"] if s["name"] == name)

    def get(self, url: str, host: str | None = None, timeout: float = 10) -> tuple[int, Any]:
        request = urllib.request.Request(url, headers={"Host": host} if host else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                body = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read(), exc.code
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")

    def ingress(self, path: str, host: str) -> tuple[int, Any]:
        return self.get(f"http://127.0.0.1:{self.ingress_port}{path}", host=host)

    def engine_pid(self) -> int | None:
        try:
            return int((self.root / ".devenv/run/engine.pid").read_text())
        except (OSError, ValueError):
            return None


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    root = tmp_path / "proj"
    root.mkdir()
    shutil.copy(FIXTURES / "svc.py", root / "svc.py")
    shutil.copy(FIXTURES / "ws.py", root / "ws.py")
    proj = Project(root, free_ports(1)[0])
    yield proj
    # Whatever a test did, nothing may be left running.
    if proj.engine_pid():
        proj.devenv("stop", timeout=60)
    pid = proj.engine_pid()
    if pid and psutil.pid_exists(pid):
        os.kill(pid, signal.SIGKILL)
    leftovers = wait_for(lambda: not procs_in(root), timeout=10)
    for proc in procs_in(root):
        proc.kill()
    assert leftovers, "processes were left running after the test"
