"""The engine's handle on the trace writer process (`telemetry/writer.py`).

It starts the process on first use and again after it died (waiting longer after each
failure in a row, so a writer that cannot start does not start a process a batch), and
bounds every exchange: a batch must be taken and answered within `answer_timeout`, else the
process is killed and the batch counts as lost. The process has a session of its own (a
signal to the engine's group does not cut a batch short) and ends at the end of its input.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import subprocess
import sys
import time
from pathlib import Path

from devenv.telemetry.writer import HEADER, Batch, Done

ANSWER_TIMEOUT = 30.0  # seconds a batch may take, pruning included
CLOSE_TIMEOUT = 10.0  # seconds to write what it has and exit, at the end of its input
EXIT_TIMEOUT = 10.0  # seconds for a writer whose answers ended to exit (then it is killed)
RETRY_FIRST, RETRY_MAX = 1.0, 30.0  # seconds before starting a failing writer again
# the process: its answers on a descriptor of their own (fd 1 goes to stderr before any
# import, so nothing printed can corrupt them), `devenv` imported from where the engine's is
LAUNCH = ("import os, sys; answers = os.dup(1); os.dup2(2, 1); sys.path.insert(0, sys.argv[1]);"
          " from devenv.telemetry.writer import run; run(sys.argv[2], answers)")


class WriterDown(Exception):
    """The writer is not running and may not be started again yet."""


class WriterProcess:
    def __init__(self, path: Path, answer_timeout: float = ANSWER_TIMEOUT):
        self.path = path
        self.answer_timeout = answer_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.closed = False
        self._failures = 0  # in a row
        self._retry_at = 0.0
        self._last_error = ""

    def apply(self, batch: Batch) -> Done:
        proc = self._running()
        assert proc.stdin is not None and proc.stdout is not None
        deadline = time.monotonic() + self.answer_timeout
        try:
            data = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
            _write_all(proc.stdin.fileno(), HEADER.pack(len(data)) + data, deadline)
            size = HEADER.unpack(_read_exactly(proc.stdout.fileno(), HEADER.size, deadline))[0]
            done = pickle.loads(_read_exactly(proc.stdout.fileno(), size, deadline))
        except TimeoutError:
            self.kill()
            raise self._failed(f"the trace writer did not answer within "
                               f"{self.answer_timeout:g}s; it was stopped (a new one starts "
                               "with the next spans)") from None
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            # its answers ended: it is on its way out (it says why last): let it, then read
            reason = self._exit(proc, exc)
            self.kill()
            raise self._failed(f"the trace writer stopped ({reason})") from None
        self._failures = 0
        assert isinstance(done, Done)
        return done

    def _running(self) -> subprocess.Popen[bytes]:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            return proc
        if self.closed:
            raise WriterDown("the trace store is closed")
        if proc is not None:  # it died between batches
            self._failed(f"the trace writer stopped ({self._exit(proc, None)})")
        if time.monotonic() < self._retry_at:
            raise WriterDown(self._last_error)
        root = str(Path(__file__).resolve().parents[2])  # where `devenv` is imported from
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", LAUNCH, root, str(self.path)], bufsize=0,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            assert pipe is not None
            os.set_blocking(pipe.fileno(), False)
        return self.proc

    def _failed(self, message: str) -> WriterDown:
        """Note a failure: after the second in a row, the next start waits RETRY_FIRST,
        doubling up to RETRY_MAX (a success clears the count)."""
        self._failures += 1
        if self._failures > 1:
            wait = min(RETRY_MAX, RETRY_FIRST * 2 ** (self._failures - 2))
            self._retry_at = time.monotonic() + wait
        self._last_error = message
        self._reap()
        return WriterDown(message)

    def _exit(self, proc: subprocess.Popen[bytes], exc: BaseException | None) -> str:
        """How the process ended: its exit, and the last line it wrote to stderr."""
        deadline = time.monotonic() + EXIT_TIMEOUT  # (its answers ended: it is on its way out)
        tail = _drain(proc.stderr.fileno(), deadline) if proc.stderr is not None else b""
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, deadline - time.monotonic()))
        code = proc.returncode
        how = (f"killed by signal {-code}" if code is not None and code < 0
               else f"exit code {code}" if code is not None else repr(exc))
        lines = [ln for ln in tail.decode(errors="replace").splitlines() if ln.strip()]
        return f"{how}: {lines[-1].strip()}" if lines else how

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """End of input: the process writes what it has, checkpoints and exits."""
        self.closed = True
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self._reap()

    def kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5.0)

    def _reap(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def _write_all(fd: int, data: bytes, deadline: float) -> None:
    view = memoryview(data)
    while view:
        _wait(fd, deadline, write=True)
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            continue


def _read_exactly(fd: int, size: int, deadline: float) -> bytes:
    parts: list[bytes] = []
    while size:
        _wait(fd, deadline, write=False)
        try:
            chunk = os.read(fd, size)
        except BlockingIOError:
            continue
        if not chunk:
            raise EOFError
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


def _drain(fd: int, deadline: float, limit: int = 65536) -> bytes:
    """What a pipe holds until its end (or the deadline, or `limit` bytes: the last kept)."""
    data = b""
    with contextlib.suppress(TimeoutError, OSError):
        while True:
            _wait(fd, deadline, write=False)
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                break
            data = (data + chunk)[-limit:]
    return data


def _wait(fd: int, deadline: float, write: bool) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    ready = select.select([], [fd], [], remaining) if write else \
        select.select([fd], [], [], remaining)
    if not any(ready):
        raise TimeoutError
