"""`run_cli`: `python -m devenv ARGS` as `subprocess.run(..., capture_output=True, text=True,
timeout=...)` would run it, through this worker's CLI zygote (cli_zygote.py) when it runs,
else as a new interpreter."""

from __future__ import annotations

import atexit
import contextlib
import locale
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cli_zygote

ZYGOTE = Path(__file__).with_name("cli_zygote.py")
_lock = threading.Lock()
# one zygote for each environment calls came with (the docker tests add DOCKER_HOST)
_zygotes: dict[frozenset[tuple[str, str]], tuple[subprocess.Popen[bytes], str]] = {}
_broken = False  # one did not start: not tried again


def _socket(env: dict[str, str]) -> str | None:
    """The socket of this worker's zygote for `env` (what devenv reads as it is imported
    comes from it), started on first use; None when they are off or one failed."""
    global _broken
    if _broken or os.environ.get("DEVENV_TESTS_EXEC") == "1":
        return None
    key = frozenset(env.items())
    with _lock:
        running = _zygotes.get(key)
        if running is not None and running[0].poll() is None:
            return running[1]
        folder = tempfile.mkdtemp(prefix="devenv-cli-")
        path = os.path.join(folder, "zygote.sock")
        proc = subprocess.Popen([sys.executable, str(ZYGOTE), path], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        with proc.stdout:
            ready = proc.stdout.readline() == b"ready\n"
        atexit.register(_stop, proc, folder)
        if not ready:
            _broken = True
            return None
        _zygotes[key] = (proc, path)
        return path


def _stop(proc: subprocess.Popen[bytes], folder: str) -> None:
    proc.kill()
    proc.wait()
    shutil.rmtree(folder, ignore_errors=True)


def run_cli(args: list[str], cwd: Path, env: dict[str, str], timeout: float,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "devenv", *args]
    path = _socket(env)
    if path is None:
        return _fresh(argv, cwd, env, timeout, input)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    in_r, in_w = os.pipe() if input is not None else (os.open(os.devnull, os.O_RDONLY), -1)
    try:
        conn, pidfd, rest = cli_zygote.call(path, list(args), str(cwd), env, in_r, out_w,
                                            err_w)
    except OSError:  # the zygote did not start it: this call as a new process
        for fd in (out_r, err_r, in_w):  # (the child's ends: closed below)
            if fd >= 0:
                os.close(fd)
        return _fresh(argv, cwd, env, timeout, input)
    finally:
        for fd in (in_r, out_w, err_w):
            os.close(fd)
    try:
        if in_w >= 0:
            _feed(in_w, (input or "").encode())
        out, err, timed_out = _collect(pidfd, out_r, err_r, time.monotonic() + timeout)
        if timed_out:  # killed: as subprocess.run, it is waited for, then the error
            with contextlib.suppress(OSError, ValueError):
                conn.settimeout(10)
                cli_zygote.status(conn, rest)
            raise subprocess.TimeoutExpired(argv, timeout, out, err)
        conn.settimeout(max(timeout, 10))
        code = cli_zygote.status(conn, rest)
    finally:
        conn.close()
        os.close(pidfd)
    return subprocess.CompletedProcess(argv, code, _text(out), _text(err))


def _fresh(argv: list[str], cwd: Path, env: dict[str, str], timeout: float,
           input: str | None) -> subprocess.CompletedProcess[str]:
    """The call as a new interpreter."""
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          input=input, env=env)


def _feed(fd: int, data: bytes) -> None:
    """The run's stdin: written whole at once when it fits the pipe, else by a thread."""
    def feed() -> None:
        with contextlib.suppress(OSError), open(fd, "wb") as fh:
            fh.write(data)

    if len(data) < 65536:
        feed()
    else:
        threading.Thread(target=feed, daemon=True).start()


def _collect(pidfd: int, out_r: int, err_r: int, deadline: float
             ) -> tuple[bytes, bytes, bool]:
    """Both streams to their end; whether the deadline passed first (the run is then
    killed through its pidfd, never a pid that may be another process's by then)."""
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    sel = selectors.DefaultSelector()
    for fd in chunks:
        sel.register(fd, selectors.EVENT_READ)
    timed_out = False
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                break
            for key, _ in sel.select(left):
                data = os.read(key.fd, 65536)  # type: ignore[arg-type]
                if data:
                    chunks[key.fd].append(data)  # type: ignore[index]
                else:
                    sel.unregister(key.fd)
    finally:
        sel.close()
        os.close(out_r)
        os.close(err_r)
    return b"".join(chunks[out_r]), b"".join(chunks[err_r]), timed_out


def _text(data: bytes) -> str:
    """As subprocess's text mode decodes it: the locale's encoding, universal newlines."""
    text = data.decode(locale.getpreferredencoding(False))
    return text.replace("\r\n", "\n").replace("\r", "\n")
