"""The tests' CLI zygote: `devenv` run as its own process, forked from one that has already
imported devenv, instead of a new interpreter that imports it all again.

A test's `Project.devenv(...)` is still a real process of its own: its own pid, working
folder, environment, stdin/stdout/stderr pipes and exit status, running `python -m devenv`'s
own `__main__` (through `runpy`, as `-m` does) and ending as an interpreter ends (atexit,
flushed streams). Only the interpreter's start and devenv's imports (about 0.1 s of CPU a
call, thousands of calls a run) are done once per test worker. `DEVENV_TESTS_EXEC=1` runs
every call as a new interpreter instead. Tests that signal a CLI (`Project.popen`) always
run it that way.

The zygote (`python cli_zygote.py SOCKET`) serves requests on a Unix socket in a folder only
its user can enter: JSON {argv, cwd, env} with the child's three standard descriptors
passed alongside (SCM_RIGHTS). It forks; the child sets itself up and runs the CLI; the
zygote, its parent, answers `{"pid": N}` with a pidfd of the child at once, and
`{"status": S}` (a wait status) when it has been reaped. The runs share the zygote's hash
seed, and what devenv reads from the environment as it is imported (Rich's console width
and colour), so `run_cli` keeps one zygote for each environment it is called with.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import select
import socket
import sys
from typing import Any

PRELOAD = ("devenv.cli.main", "devenv.cli.audit", "devenv.cli.output", "devenv.client",
           "devenv.cli.commands._common", "devenv.config", "devenv.wire", "devenv.core.oplock")


def serve(path: str) -> dict[str, Any]:
    """Serve until the parent (the test worker) goes; returns only in a forked child, with
    what it is to run."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    parent = os.getppid()
    print("ready", flush=True)
    waiting: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, its requester)
    while True:
        ready, _, _ = select.select([listener, *waiting], [], [], 1.0)
        if os.getppid() != parent:  # the worker went: so do we (children run on)
            os._exit(0)
        for fd in ready:
            if fd is listener:
                try:
                    job = _accept(listener, waiting)
                except Exception as exc:  # (that request goes unanswered: it runs anew)
                    print(f"cli zygote: a request failed: {exc!r}", file=sys.stderr)
                    continue
                if job is not None:
                    listener.close()
                    return job
                continue
            pid, conn = waiting.pop(fd)
            os.close(fd)
            _, status = os.waitpid(pid, 0)
            _send(conn, {"status": status})
            conn.close()


def _accept(listener: socket.socket, waiting: dict[int, tuple[int, socket.socket]]
            ) -> dict[str, Any] | None:
    conn, _ = listener.accept()
    fds: list[int] = []
    try:
        data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        while not data.endswith(b"\n"):
            more = conn.recv(1 << 20)
            if not more:
                break
            data += more
        job: dict[str, Any] = json.loads(data)
        if len(fds) != 3:
            raise ValueError(f"{len(fds)} descriptors came with the request, not 3")
        pid = os.fork()
    except BaseException:
        for fd in fds:
            os.close(fd)
        conn.close()
        raise
    if pid == 0:
        for pidfd, (_, other) in waiting.items():
            os.close(pidfd)
            other.close()
        conn.close()
        job["fds"] = fds
        return job
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    waiting[pidfd] = (pid, conn)
    with contextlib.suppress(OSError):  # (with its pidfd: a kill never hits a reused pid)
        socket.send_fds(conn, [json.dumps({"pid": pid}).encode() + b"\n"], [pidfd])
    return None


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # the requester went: the child was reaped anyway
        conn.sendall(json.dumps(message).encode() + b"\n")


def run(job: dict[str, Any]) -> None:
    """In the forked child: become `python -m devenv ARGV` in CWD with ENV."""
    # (signal dispositions: the zygote's own, which are a fresh interpreter's)
    for target, fd in enumerate(job["fds"]):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(job["cwd"])
    os.environ.clear()
    os.environ.update(job["env"])
    sys.argv = ["devenv", *job["argv"]]
    sys.path[0] = job["cwd"]  # (where `-m` puts the working folder; here, the zygote's)
    import runpy

    runpy.run_module("devenv", run_name="__main__", alter_sys=True)


def call(path: str, argv: list[str], cwd: str, env: dict[str, str], stdin: int, stdout: int,
         stderr: int) -> tuple[socket.socket, int, bytes]:
    """Start one CLI run: its connection (the status comes on it), a pidfd of its process,
    and what came after the first reply (for `status`). OSError when it was not started."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        request = json.dumps({"argv": argv, "cwd": cwd, "env": env}).encode() + b"\n"
        conn.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                  array.array("i", [stdin, stdout, stderr]))])
        data, fds, _, _ = socket.recv_fds(conn, 4096, 1)
        if b"\n" not in data or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise ConnectionError("the CLI zygote did not start the run")
        return conn, fds[0], data.partition(b"\n")[2]
    except BaseException:
        conn.close()
        raise


def status(conn: socket.socket, data: bytes) -> int:
    """The run's exit code (negative: the signal that ended it), once it was reaped; `data`:
    what was read of the reply already."""
    with conn:
        while not data.endswith(b"\n"):
            more = conn.recv(4096)
            if not more:
                raise ConnectionError("the CLI zygote went away")
            data += more
    return os.waitstatus_to_exitcode(int(json.loads(data)["status"]))


if __name__ == "__main__":
    run(serve(sys.argv[1]))
