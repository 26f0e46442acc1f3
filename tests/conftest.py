"""Test helpers: a real project folder, the real CLI in a process of its own (forked from a
worker's CLI zygote: tests/cli_zygote.py), real processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil
import pytest
from cli_runner import run_cli

from ports import TESTS, PortRange, worker_share

FIXTURES = Path(__file__).parent / "fixtures"
# services started by the tests run with this virtualenv's python first on PATH
ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1",
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

_PORTS = PortRange(worker_share(TESTS))


def free_ports(n: int) -> list[int]:
    """n ports, free now, never handed out before in this process."""
    return _PORTS.take(n)


def procs_in(root: Path) -> list[psutil.Process]:
    """Live processes of the project at `root` (our services): by their working folder, or
    by the project mark devenv gives every process it starts (data servers run in a private
    mount namespace, where their working folder is not the project's)."""
    mark = f"DEVENV_PROJECT={root}".encode()
    found = []
    for proc in psutil.process_iter(["cwd", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cwd = proc.info["cwd"]
            if cwd and cwd.startswith(str(root)):
                found.append(proc)
                continue
            with open(f"/proc/{proc.pid}/environ", "rb") as fh:
                if mark in fh.read().split(b"\0"):
                    found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def named(proc: psutil.Process, name: str) -> bool:
    """Whether `proc` is called `name`; False once it is gone (it may exit while we look)."""
    try:
        return bool(proc.name() == name)
    except psutil.Error:
        return False


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


class Lines:
    """What a process writes to a pipe, read line by line by a thread as it comes, so that a
    test can wait for a line without blocking on the pipe."""

    def __init__(self, pipe: IO[str] | None):
        assert pipe is not None, "the process was started without this pipe"
        self._lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: IO[str]) -> None:
        with contextlib.suppress(OSError, ValueError):  # the pipe closed under us
            for line in pipe:
                self._lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self._lines)

    def wait(self, timeout: float = 10) -> str:
        """All of it, once the process has closed its end (it exited)."""
        self._thread.join(timeout)
        return self.text


@dataclass
class Project:
    root: Path
    ingress_port: int
    # CLI processes a test started in the background: the fixture ends those still running
    started: list[subprocess.Popen[str]] = field(default_factory=list)

    def write(self, yaml_text: str) -> None:
        (self.root / "devenv.yaml").write_text(textwrap.dedent(yaml_text))

    def services(self, body: str) -> None:
        """A devenv.yaml with this project's ingress port and these services (YAML as it
        stands under `services:`)."""
        head = f"version: 1\ningress: {{port: {self.ingress_port}}}\nservices:\n"
        self.write(head + textwrap.indent(textwrap.dedent(body), "  "))

    def devenv(self, *args: str, timeout: float = 90, check: bool = False,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
        result = run_cli(list(args), self.root, ENV, timeout, input)
        if check and result.returncode != 0:
            raise AssertionError(f"devenv {' '.join(args)} exited {result.returncode}\n"
                                 f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        return result

    def popen(self, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-m", "devenv", *args], cwd=self.root,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=ENV)
        self.started.append(proc)
        return proc

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


@pytest.fixture(params=["asyncio", "uvloop"])
def both_loops(request: pytest.FixtureRequest) -> Iterator[str]:
    """The test's `asyncio.run` on asyncio's own loop, then on uvloop's (the engine's):
    for the ingress, whose behaviour must not depend on the loop it runs on."""
    if request.param == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        yield request.param
    finally:
        asyncio.set_event_loop_policy(None)


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    root = tmp_path / "proj"
    root.mkdir()
    shutil.copy(FIXTURES / "svc.py", root / "svc.py")
    shutil.copy(FIXTURES / "ws.py", root / "ws.py")
    proj = Project(root, free_ports(1)[0])
    yield proj
    # Whatever a test did, nothing may be left running: first the CLI processes it started in
    # the background, then the engine (by `devenv stop`, else by kill), then anything else.
    try:
        for proc in proj.started:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        if proj.engine_pid():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proj.devenv("stop", timeout=60)
    finally:
        pid = proj.engine_pid()
        with contextlib.suppress(psutil.Error):
            engine = psutil.Process(pid) if pid else None
            if engine and "devenv.engine" in " ".join(engine.cmdline()):  # (not a reused PID)
                engine.kill()
        leftovers = wait_for(lambda: not procs_in(root), timeout=10)
        for proc in procs_in(root):
            with contextlib.suppress(psutil.Error):
                proc.kill()
    assert leftovers, "processes were left running after the test"
