"""`devenv profile` on real services under load: the hot function tops the profile (Python
through py-spy, Node through its inspector), the files are written, `--memory` gives RSS
over the window and Python's allocation sites, and Ctrl-C stops the sampler."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import ENV, FIXTURES, Project, free_ports, named, wait_for
from devenv.profiling import inspector
from devenv.runtime.base import InstanceSpec
from devenv.runtime.local import LocalRuntime


def hot_project(project: Project) -> tuple[int, int]:
    shutil.copy(FIXTURES / "hot.py", project.root / "hot.py")
    shutil.copy(FIXTURES / "hot.js", project.root / "hot.js")
    py, js = free_ports(2)
    project.services(f"""\
        py:
          command: python hot.py
          port: {py}
          health: {{http: /healthz}}
        js:
          command: node hot.js
          port: {js}
          health: {{http: /healthz}}
        """)
    project.up()
    return py, js


@contextmanager
def load(port: int, path: str = "/work", pause: float = 0.0) -> Iterator[list[int]]:
    """Requests to the service, back to back from two threads, until the block ends."""
    done = threading.Event()
    answered = [0]

    def drive() -> None:
        while not done.is_set():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                r.read()
            answered[0] += 1
            done.wait(pause)

    threads = [threading.Thread(target=drive, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        assert wait_for(lambda: answered[0] > 0), "the service answers no requests"
        yield answered
    finally:
        done.set()
        for t in threads:
            t.join(15)


def profile(project: Project, *args: str) -> dict[str, Any]:
    result = project.devenv("profile", *args, "--json", check=True)
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_the_hot_function_tops_the_profile_of_python_and_of_node(project: Project) -> None:
    py, js = hot_project(project)
    with load(py):
        data = profile(project, "--service", "py", "--duration", "2s")
    assert data["sampler"] == "py-spy" and data["instance"] == "py-1"
    assert data["top_self"][0]["function"] == "crunch_numbers", data["top_self"][:3]
    assert data["top_self"][0]["file"].endswith("hot.py")
    files = [Path(f) for f in data["files"]]
    assert sorted(f.name.split(".", 1)[1] for f in files) == ["speedscope.json", "svg"]
    assert all(f.parent == project.root / ".devenv/profiles" for f in files)
    doc = json.loads(files[0].read_text() if files[0].suffix == ".json" else files[1].read_text())
    assert doc["$schema"].startswith("https://www.speedscope.app/")
    assert "crunch_numbers" in next(f for f in files if f.suffix == ".svg").read_text()

    node = next(p for p in psutil.process_iter(["name", "cwd"])
                if p.info["name"] == "node" and p.info["cwd"] == str(project.root))
    serving = _listening(node)
    if os.geteuid() == 0:  # an open inspector would run anyone's code as root: opt-in
        refused = project.devenv("profile", "--service", "js", "--duration", "1s")
        assert refused.returncode == 2 and "--allow-root" in refused.stderr
        assert "can run code in it as root" in refused.stderr
        assert _listening(node) == serving
    with load(js):
        data = profile(project, "--service", "js", "--duration", "2s", "--format", "flamegraph",
                       "--allow-root")
    assert data["sampler"] == "node-inspector"
    assert data["top_self"][0]["function"] == "crunchNumbers", data["top_self"][:3]
    assert [Path(f).suffix for f in data["files"]] == [".svg"]
    assert wait_for(lambda: _listening(node) == serving), "the inspector was left open"
    text = project.devenv("profile", "--service", "js", "--duration", "1s", "--allow-root",
                          check=True).stdout
    assert "top functions by self time" in text and "wrote .devenv/profiles/" in text


def test_memory_gives_rss_over_the_window_and_python_allocation_sites(
        project: Project) -> None:
    py, _ = hot_project(project)
    with load(py, "/grow", pause=0.05):
        data = profile(project, "--service", "py", "--duration", "2s", "--memory")
    [window] = data["memory"]
    assert window["instance"] == "py-1" and window["samples"] >= 5
    assert window["min_bytes"] < window["avg_bytes"] < window["max_bytes"]  # it grew
    assert data["allocations"][0]["function"] == "hoard_bytes", data["allocations"][:3]
    assert data["allocations"][0]["bytes"] >= 1 << 20
    folder = project.root / ".devenv/profiles"
    assert any(f.endswith(".memray.bin") for f in data["files"])
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    modes = {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in folder.iterdir()}
    assert modes and set(modes.values()) == {"0o600"}, modes  # the capture too
    data = profile(project, "--service", "js", "--duration", "1s", "--memory")
    assert data["memory"][0]["max_bytes"] > 0 and data["allocations"] == []
    assert "not available for node" in data["notes"][0]


def test_ctrl_c_stops_the_sampler_and_bad_requests_say_what_to_do(project: Project) -> None:
    hot_project(project)
    proc = subprocess.Popen(  # (as from a terminal: SIGINT not ignored)
        [sys.executable, "-m", "devenv", "profile", "--service", "py", "--duration", "60s"],
        cwd=project.root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env=ENV, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    project.started.append(proc)
    assert proc.stderr is not None and "sampling py-1 with py-spy" in proc.stderr.readline()
    engine = psutil.Process(project.engine_pid())
    assert wait_for(lambda: _samplers(engine))
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 130
    assert wait_for(lambda: not _samplers(engine), timeout=10), "py-spy runs after Ctrl-C"
    assert time.monotonic() - started < 10

    result = project.devenv("profile", "--service", "nope")
    assert result.returncode == 1 and "not running: nope" in result.stderr
    result = project.devenv("profile", "--service", "py", "--replica", "3")
    assert result.returncode == 2 and "running replicas: 1" in result.stderr
    result = project.devenv("profile", "--service", "py", "--duration", "soon")
    assert result.returncode == 2 and "--duration 'soon': not a duration" in result.stderr


def _listening(proc: psutil.Process) -> set[int]:
    return {c.laddr.port for c in proc.net_connections("tcp") if c.status == psutil.CONN_LISTEN}


def _samplers(engine: psutil.Process) -> list[psutil.Process]:
    """The engine's py-spy processes."""
    return [p for p in engine.children() if named(p, "py-spy")]


@contextmanager
def node_server() -> Iterator[tuple[psutil.Process, int]]:
    """A Node server whose SIGUSR1 inspector goes to a port of the test range."""
    port = free_ports(1)[0]
    proc = subprocess.Popen(["node", f"--inspect-port=127.0.0.1:{port}", "-e",
                             "require('http').createServer((q, r) => r.end('ok'))"
                             ".listen(0, '127.0.0.1')"], stderr=subprocess.DEVNULL)
    try:
        node = psutil.Process(proc.pid)
        assert wait_for(lambda: _listening(node)), "node is not listening"
        yield node, port
    finally:
        proc.kill()
        proc.wait()


def test_the_inspector_is_closed_after_a_failed_profile(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """The profile's answer is over the message bound (bounded for the test): the profile
    fails, and the inspector SIGUSR1 opened is closed all the same, checked before the
    tool returns."""
    with node_server() as (node, port):
        serving = _listening(node)
        monkeypatch.setattr(inspector, "MAX_MESSAGE", 256)
        with pytest.raises(inspector.Failed, match=r"during Profiler\.stop"):
            asyncio.run(inspector.profile(node.pid, 0.3, asyncio.Event(),
                                          os.pidfd_open(node.pid)))
        assert _listening(node) == serving and port not in serving  # closed, checked


def test_an_inspector_that_stays_open_is_reported_loudly(tmp_path: Path) -> None:
    """`--close` on a port that does not stop listening (here an HTTP server that is no
    inspector) says STILL OPEN and exits 3, which the engine turns into an error."""
    port = free_ports(1)[0]
    server = subprocess.Popen([sys.executable, "-m", "http.server", "-b", "127.0.0.1",
                               str(port)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: port in _listening(psutil.Process(server.pid)))
        done = subprocess.run([sys.executable, "-m", "devenv.profiling.inspector", "--close",
                               str(server.pid), str(port)], env=ENV, capture_output=True,
                              text=True, timeout=30)
    finally:
        server.kill()
        server.wait()
    assert done.returncode == inspector.EXIT_LEFT_OPEN, done.stderr
    assert f"inspector: STILL OPEN 127.0.0.1:{port}" in done.stderr


def test_attach_gives_the_pid_alone_and_code_minus_9_at_its_deadline(tmp_path: Path) -> None:
    """`${PID}` is replaced only where it is a whole argument (never inside a path); a tool
    past its deadline is stopped and answers code -9, as base.Attached says (no
    TimeoutError for the engine to turn into an internal error)."""

    async def scenario() -> tuple[str, int, float]:
        runtime = LocalRuntime(tmp_path)
        instance = await runtime.start(InstanceSpec(
            "svc", 1, (sys.executable, "-c", "import time; time.sleep(60)"), {}, ".", False))
        try:
            [target] = [t for t in instance.targets() if t.program.startswith("python")]
            told = await instance.attach(target.id, (
                sys.executable, "-c", "import os, sys; print(sys.argv[1:], "
                "os.environ.get('DEVENV_PIDFD', '').isdigit())", "${PID}",
                "/work/${PID}/x"), 30)
            started = time.monotonic()
            late = await instance.attach(target.id, (
                sys.executable, "-c", "import signal, time; signal.signal(signal.SIGINT, "
                "signal.SIG_IGN); time.sleep(60)"), 0.5)
            return told.stdout.decode() + f" {target.id}", late.code, \
                time.monotonic() - started
        finally:
            await instance.stop()
            await runtime.close()

    out, code, took = asyncio.run(scenario())
    pid = out.split()[-1]
    assert f"['{pid}', '/work/${{PID}}/x'] True" in out
    assert code == -9 and took < 10
