"""Child processes started from an event loop, their output read through real pipes.

uvloop (the engine's loop, core/eventloop.py) gives a child socket pairs for `PIPE`, where a
program that opens `/dev/stdout` (nginx's `access_log /dev/stdout`, a shell's `> /dev/stderr`,
py-spy) fails with ENXIO: a socket cannot be opened by path. Every child the engine reads
from is started here instead, its stdout and stderr the write ends of `os.pipe()`s, on either
loop alike."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from typing import Any

from devenv.core import eventloop

LIMIT = 2**16  # (asyncio's default for a StreamReader's line)


class ExitProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's, plus a future set the moment the process exits. (`Process.wait()` also
    waits for its pipes to close, which a detached child holding them delays forever.)"""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop):
        super().__init__(limit=limit, loop=loop)
        self.exited: asyncio.Future[int] = loop.create_future()

    def process_exited(self) -> None:
        transport = self._transport  # type: ignore[attr-defined]  # (super() may drop it)
        code = transport.get_returncode() if transport else None
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(code if code is not None else -1)


class Process(asyncio.subprocess.Process):
    """asyncio's, whose output pipes are not its transport's (`communicate` reads them)."""

    async def communicate(self, input: bytes | bytearray | memoryview | None = None
                          ) -> tuple[bytes, bytes]:
        assert input is None, "stdin is /dev/null"
        out, err = await asyncio.gather(_read(self.stdout), _read(self.stderr))
        await self.wait()
        return out, err


async def _read(stream: asyncio.StreamReader | None) -> bytes:
    return b"" if stream is None else await stream.read()


async def spawn(argv: Sequence[str], *, merge_stderr: bool = False, limit: int = LIMIT,
                **kwargs: Any) -> tuple[Process, asyncio.Future[int]]:
    """Start `argv` (stdin: /dev/null) with its stdout, and its stderr unless merged into
    it, on pipes the returned Process reads (`.stdout`, `.stderr`, `communicate()`); and a
    future of its exit code, set as it exits. `kwargs` go to `subprocess_exec`."""
    loop = asyncio.get_running_loop()
    fds: list[int] = []
    transport: asyncio.SubprocessTransport | None = None
    try:
        out_r, out_w = os.pipe()
        fds += (out_r, out_w)
        err_r, err_w = (None, out_w) if merge_stderr else os.pipe()
        if err_r is not None:
            fds += (err_r, err_w)
        transport, protocol = await loop.subprocess_exec(
            lambda: ExitProtocol(limit, loop), *argv, stdin=asyncio.subprocess.DEVNULL,
            stdout=out_w, stderr=err_w, **kwargs)
        for fd in {out_w, err_w}:  # the child has them: its exit is their end
            fds.remove(fd)
            os.close(fd)
        protocol.stdout = await _reader(loop, out_r, limit, fds)
        if err_r is not None:
            protocol.stderr = await _reader(loop, err_r, limit, fds)
    except BaseException:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        if transport is not None:  # (started, but its output cannot be read: not left)
            with contextlib.suppress(ProcessLookupError):
                transport.kill()
            transport.close()
        raise
    return Process(transport, protocol, loop), protocol.exited


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
