"""A command in flight when the engine dies, or an engine that answers badly: a clear message
and exit 1, never a traceback or a silent exit 0."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import ENV, Lines, Project, free_ports, service_procs, wait_for
from devenv.client import Client, EngineGone, EngineTimeout
from devenv.core.paths import StateDir

GONE = "the engine stopped answering (it exited or was killed)"


# ---- a fake engine on the control socket, answering each request as a test says


Answer = Callable[[socket.socket], None]


@contextlib.contextmanager
def fake_engine(root: Path, answer: Answer, ping: bool = False) -> Iterator[None]:
    """`answer` each request; with `ping`, answer pings as a live engine does (so that the
    commands that first ask whether an engine runs go on to their request)."""
    state = StateDir(root)
    state.ensure()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(state.socket))
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                request = conn.recv(65536)  # (small: headers and a JSON body)
                if ping and request.startswith(b"GET /v1/ping "):
                    body = b'{"pid": 1}'
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(body), body))
                else:
                    answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        server.close()
        state.socket.unlink(missing_ok=True)
        thread.join(5)


def reset(conn: socket.socket) -> None:
    """Close with RST, as a killed process's socket can."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def nothing(conn: socket.socket) -> None:
    pass  # closed without a word


def cut_body(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"project\": ")


def cut_stream(conn: socket.socket) -> None:
    line = b'{"ts": 1.0, "time": "t", "service": "api", "replica": "1", "stream": "out", ' \
           b'"text": "hello"}\n'
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(line), line))


def headers_then_reset(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    reset(conn)


def garbage(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnot json!")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "p"
    root.mkdir()
    (root / "devenv.yaml").write_text("version: 1\nservices:\n  api: {command: x}\n")
    return root


@pytest.mark.parametrize("answer", [reset, nothing, cut_body, headers_then_reset])
def test_every_client_call_says_the_engine_is_gone(root: Path, answer: Answer) -> None:
    client = Client(root)
    calls: list[Callable[[], object]] = [
        client.status, lambda: client.restart([]), lambda: client.scale({"api": 2}),
        lambda: client.stop(persist_data=True), lambda: client.exec_target("api"),
        lambda: client.snapshot_save("x"), lambda: client.snapshot_restore("x"),
        lambda: client.data_load("d"), client.data_reset,
        lambda: list(client.up([], None)),
        lambda: list(client.logs([], follow=True, since=None, tail=None, startup=False,
                                 verbose=False))]
    with fake_engine(root, answer):
        assert not client.running()
        for call in calls:
            with pytest.raises(EngineGone):
                call()


def test_a_stream_cut_after_some_lines_says_the_engine_is_gone(root: Path) -> None:
    client = Client(root)
    seen = []
    with fake_engine(root, cut_stream), pytest.raises(EngineGone):
        for line in client.logs([], follow=True, since=None, tail=None, startup=False,
                                verbose=False):
            seen.append(line.text)
    assert seen == ["hello"]


def test_an_engine_that_does_not_answer_in_time_or_answers_garbage(root: Path) -> None:
    client = Client(root)
    hold = threading.Event()
    with fake_engine(root, lambda conn: hold.wait(5)):
        with pytest.raises(EngineTimeout):
            client._json("GET", "/v1/status", timeout=0.2)
        hold.set()
    with fake_engine(root, garbage):
        result = subprocess.run([sys.executable, "-m", "devenv", "status"], cwd=root, env=ENV,
                                capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cannot read the engine's answer: not json!" in result.stderr


@pytest.mark.parametrize("args", [
    ["status"], ["scale", "api=2"], ["restart", "api"], ["logs", "-f"], ["logs", "api"],
    ["stop"], ["snapshot", "save", "x"], ["snapshot", "restore", "x"], ["data", "reset"],
    ["data", "load", "--dataset", "d"], ["exec", "api", "--", "true"]])
def test_the_cli_says_the_engine_is_gone_and_exits_1(root: Path, args: list[str]) -> None:
    with fake_engine(root, cut_stream if args[0] == "logs" else cut_body, ping=True):
        result = subprocess.run([sys.executable, "-m", "devenv", *args], cwd=root, env=ENV,
                                capture_output=True, text=True, timeout=30)
    assert "Traceback" not in result.stderr
    assert result.returncode == 1 and GONE in result.stderr, result.stderr


# ---- a real engine, killed with -9 while a command is in flight


def kill_engine(project: Project) -> None:
    pid = project.engine_pid()
    assert pid
    os.kill(pid, signal.SIGKILL)


def test_kill_9_of_the_engine_mid_up(project: Project) -> None:
    (port,) = free_ports(1)
    (project.root / "unhealthy").touch()  # never healthy: `up` waits (start_period 60s)
    project.services(f"""\
        api:
          command: python svc.py
          port: {port}
          health: {{http: /healthz}}
          env: {{UNHEALTHY_FILE: {project.root / 'unhealthy'}}}
        """)
    up = project.popen("up")
    progress = Lines(up.stderr)
    assert wait_for(lambda: "api" in progress.text, timeout=30), progress.text
    kill_engine(project)
    assert up.wait(30) == 1
    err = progress.wait()
    assert GONE in err and "Traceback" not in err, err


def test_kill_9_of_the_engine_mid_scale_and_mid_logs_follow(project: Project) -> None:
    (port,) = free_ports(1)
    unhealthy = project.root.parent / "unhealthy"  # (outside: no reload when it appears)
    project.services(f"""\
        api:
          command: python svc.py
          port: {port}
          health: {{http: /healthz}}
          env: {{UNHEALTHY_FILE: {unhealthy}}}
        cache:
          kind: redis
          port: {free_ports(1)[0]}
        """)
    project.up("--services", "api")
    # with the engine running too: positional services, an unknown one, a data service
    assert project.devenv("restart", "api", check=True).stdout.strip() == "restarted api"
    unknown = project.devenv("logs", "apo")
    assert unknown.returncode == 2 and "no service 'apo' (did you mean 'api'?)" in unknown.stderr
    refused = project.devenv("scale", "cache=2")
    assert refused.returncode == 2 and "a redis service runs exactly one replica" in refused.stderr

    follower = project.popen("logs", "-f", "api")
    followed, follow_err = Lines(follower.stdout), Lines(follower.stderr)
    assert wait_for(lambda: "listening on" in followed.text, timeout=15), followed.text
    unhealthy.touch()  # the new replica never becomes healthy: `scale` waits for it
    assert wait_for(lambda: len(service_procs(project.root)) == 1, timeout=15)  # (restarted)
    (before,) = service_procs(project.root)
    scale = project.popen("scale", "api=2")
    scale_err = Lines(scale.stderr)
    assert wait_for(lambda: [p for p in service_procs(project.root) if p.pid != before.pid],
                    timeout=15)  # the engine is at work on the `scale`
    kill_engine(project)
    assert scale.wait(30) == 1
    assert GONE in scale_err.wait() and "Traceback" not in scale_err.text, scale_err.text
    assert follower.wait(30) == 1
    assert GONE in follow_err.wait() and "Traceback" not in follow_err.text, follow_err.text


def test_logs_follow_says_when_the_environment_stops(project: Project) -> None:
    (port,) = free_ports(1)
    project.services(f"api: {{command: python svc.py, port: {port}}}\n")
    project.up()
    follower = project.popen("logs", "-f")
    followed, follow_err = Lines(follower.stdout), Lines(follower.stderr)
    assert wait_for(lambda: "listening on" in followed.text, timeout=15), followed.text
    project.devenv("stop", check=True)
    assert follower.wait(30) == 0
    assert "the environment stopped; nothing more will come" in follow_err.wait()
