"""`run_cli`: `python -m devenv ARGS` as `subprocess.run(..., capture_output=True, text=True,
timeout=...)` would run it, through this worker's CLI zygote (cli_zygote.py) when it runs,
else as a new interpreter."""

from __future__ import annotations

import atexit
import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cli_zygote

ZYGOTE = Path(__file__).with_name("cli_zygote.py")
_lock = threading.Lock()
_zygote: tuple[subprocess.Popen[bytes], str] | None = None


def _socket(env: dict[str, str]) -> str | None:
    """This worker's zygote's socket, started on first use; None when it is off or failed."""
    global _zygote
    if os.environ.get("DEVENV_TESTS_EXEC") == "1":
        return None
    with _lock:
        if _zygote is not None and _zygote[0].poll() is None:
            return _zygote[1]
        path = os.path.join(tempfile.mkdtemp(prefix="devenv-cli-"), "zygote.sock")
        proc = subprocess.Popen([sys.executable, str(ZYGOTE), path], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        if proc.stdout.readline() != b"ready\n":
            proc.kill()
            proc.wait()
            return None
        _zygote = (proc, path)
        atexit.register(_stop, proc)
        return path


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()


def run_cli(args: list[str], cwd: Path, env: dict[str, str], timeout: float,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "devenv", *args]
    path = _socket(env)
    if path is None:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              input=input, env=env)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    in_r, in_w = os.pipe() if input is not None else (os.open(os.devnull, os.O_RDONLY), -1)
    try:
        conn, pid = cli_zygote.call(path, list(args), str(cwd), env, in_r, out_w, err_w)
    except OSError:  # the zygote went (ConnectionError is one): this call as a new process
        for fd in (out_r, err_r, in_w):  # (the child's ends: closed below)
            if fd >= 0:
                os.close(fd)
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              input=input, env=env)
    finally:
        for fd in (in_r, out_w, err_w):
            os.close(fd)
    if in_w >= 0:
        threading.Thread(target=_feed, args=(in_w, (input or "").encode()), daemon=True).start()
    out, err, code = _collect(conn, pid, out_r, err_r, time.monotonic() + timeout)
    if code is None:
        raise subprocess.TimeoutExpired(argv, timeout, _text(out), _text(err))
    return subprocess.CompletedProcess(argv, code, _text(out), _text(err))


def _feed(fd: int, data: bytes) -> None:
    with contextlib.suppress(OSError), open(fd, "wb") as fh:
        fh.write(data)


def _collect(conn: socket.socket, pid: int, out_r: int, err_r: int, deadline: float
             ) -> tuple[bytes, bytes, int | None]:
    """Both streams to their end and the exit code; None for the code when the deadline
    passed first (the run is then killed, as subprocess.run kills it)."""
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
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10  # (what it wrote before it died)
            for key, _ in sel.select(max(left, 0.05)):
                data = os.read(key.fd, 65536)  # type: ignore[arg-type]
                if data:
                    chunks[key.fd].append(data)  # type: ignore[index]
                else:
                    sel.unregister(key.fd)
            if timed_out and time.monotonic() > deadline:
                break
    finally:
        sel.close()
        os.close(out_r)
        os.close(err_r)
    if timed_out:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        conn.close()
        return b"".join(chunks[out_r]), b"".join(chunks[err_r]), None
    conn.settimeout(max(deadline - time.monotonic(), 1.0))
    try:
        code = cli_zygote.status(conn)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return b"".join(chunks[out_r]), b"".join(chunks[err_r]), None
    return b"".join(chunks[out_r]), b"".join(chunks[err_r]), code


def _text(data: bytes) -> str:
    """As subprocess's text mode decodes it: the locale's encoding, universal newlines."""
    import locale

    text = data.decode(locale.getpreferredencoding(False))
    return text.replace("\r\n", "\n").replace("\r", "\n")
