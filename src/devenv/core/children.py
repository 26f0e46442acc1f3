"""Child processes started from an event loop, their output read through real pipes.

They are started with `subprocess.Popen` (every other descriptor closed in the child), not
the loop's `subprocess_exec`, because uvloop (the engine's loop, core/eventloop.py) differs
there: its `PIPE` is a socket pair, which a program cannot open as `/dev/stdout` (nginx's
`access_log /dev/stdout`, a shell's `> /dev/stderr`, py-spy: ENXIO); and it leaves its own
inheritable copies of a child's stdio open in the child (it implements no `close_fds`), so
a background job the child leaves keeps the pipes open, and its reader waits for that job.
The loop reads the pipes; the exit is seen through a pidfd (Linux), else by a thread."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Sequence
from typing import Any

from devenv.core import eventloop

LIMIT = 2**16  # (asyncio's default for a StreamReader's line)


class Child:
    """A started child: its pid, its output streams, its exit code once it exited (signals
    as negative numbers, as asyncio's `Process`)."""

    def __init__(self, pid: int, exited: asyncio.Future[int]):
        self.pid = pid
        self.exited = exited  # its exit code, set as it exits (whoever still holds its pipes)
        self.stdout: asyncio.StreamReader | None = None
        self.stderr: asyncio.StreamReader | None = None

    @property
    def returncode(self) -> int | None:
        return self.exited.result() if self.exited.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self.exited)

    def send_signal(self, sig: int) -> None:
        if self.exited.done():  # (reaped: the pid may be another process's by now)
            raise ProcessLookupError(self.pid)
        os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def communicate(self) -> tuple[bytes, bytes]:
        """Its output to the end, then its exit (stdin is /dev/null)."""
        out, err = await asyncio.gather(_read(self.stdout), _read(self.stderr))
        await self.wait()
        return out, err


async def _read(stream: asyncio.StreamReader | None) -> bytes:
    return b"" if stream is None else await stream.read()


async def spawn(argv: Sequence[str], *, merge_stderr: bool = False, limit: int = LIMIT,
                **kwargs: Any) -> Child:
    """Start `argv` (stdin: /dev/null) with its stdout, and its stderr unless merged into
    it, on pipes the returned Child reads (`.stdout`, `.stderr`, `communicate()`). `kwargs`
    go to `subprocess.Popen` (cwd, env, start_new_session, pass_fds). A program that cannot
    be run raises OSError, as `subprocess` says it."""
    loop = asyncio.get_running_loop()
    fds: list[int] = []
    child: Child | None = None
    try:
        out_r, out_w = os.pipe()
        fds += (out_r, out_w)
        err_r, err_w = (None, out_w) if merge_stderr else os.pipe()
        if err_r is not None:
            fds += (err_r, err_w)
        popen = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out_w,
                                 stderr=err_w, close_fds=True, **kwargs)
        child = Child(popen.pid, _exit_of(loop, popen))
        for fd in {out_w, err_w}:  # the child has them: its exit is their end
            fds.remove(fd)
            os.close(fd)
        child.stdout = await _reader(loop, out_r, limit, fds)
        if err_r is not None:
            child.stderr = await _reader(loop, err_r, limit, fds)
    except BaseException:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        if child is not None:  # (started, but its output cannot be read: not left)
            with contextlib.suppress(ProcessLookupError):
                child.kill()
        raise
    return child


def _exit_of(loop: asyncio.AbstractEventLoop, popen: subprocess.Popen[bytes]
             ) -> asyncio.Future[int]:
    """A future of `popen`'s exit code, set on the loop once it exited and was reaped."""
    exited: asyncio.Future[int] = loop.create_future()

    def reaped(status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        popen.returncode = code  # (so that Popen never waits for it again)
        if not exited.done():
            exited.set_result(code)

    try:
        pidfd = os.pidfd_open(popen.pid)
    except (AttributeError, OSError):  # no pidfd here: a thread waits for it
        def wait() -> None:
            _, status = os.waitpid(popen.pid, 0)
            loop.call_soon_threadsafe(reaped, status)

        threading.Thread(target=wait, name=f"wait-{popen.pid}", daemon=True).start()
        return exited

    def readable() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(popen.pid, 0)  # (it has exited: at once)
        reaped(status)

    loop.add_reader(pidfd, readable)
    return exited


class _PipeProtocol(asyncio.StreamReaderProtocol):
    """A read pipe's: its end closes the transport, on either loop. (asyncio's read pipe
    transport closes itself at EOF; uvloop's asks `eof_received`, and a StreamReaderProtocol
    says to keep it open, for a writer a pipe does not have: its descriptor stayed open.)"""

    def eof_received(self) -> bool:
        super().eof_received()
        return False


async def _reader(loop: asyncio.AbstractEventLoop, fd: int, limit: int, fds: list[int]
                  ) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    # the descriptor is closed once: asyncio's transport closes it through the file; uvloop's
    # closes it itself, then closes the file too, which must not close the number again (by
    # then another thread may have opened a file under it)
    pipe = os.fdopen(fd, "rb", buffering=0, closefd=not eventloop.is_uvloop(loop))
    fds.remove(fd)  # (the file, or the transport, owns it now)
    try:
        await loop.connect_read_pipe(lambda: _PipeProtocol(reader, loop=loop), pipe)
    except BaseException:
        pipe.close()  # (on uvloop its transport closed the descriptor, if it took it)
        raise
    return reader


def keep_descriptors_private() -> None:
    """Mark every descriptor past stderr as not inherited by children: uvloop does not close
    the others in a child (`close_fds` is not implemented), so one left inheritable by
    whoever started this process would reach every service. (Python opens its own
    non-inheritable; this is for those it was given.)"""
    folder = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
    for name in os.listdir(folder):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):  # (the listing's own, closed by now)
                os.set_inheritable(fd, False)
