"""The local runtime's stable address: a TCP balancer on the service's declared port.

Each connection goes to one ready backend for its lifetime; with none ready it waits for one
(up to the pool's hold timeout) instead of refusing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from devenv.core.ports import port_owner
from devenv.runtime.base import AddressInUse, Backends, Endpoint

HOST = "127.0.0.1"
CHUNK = 64 * 1024
ANSWER_QUIET = 0.5  # an answer whose bytes stopped this long is done (for draining)


class Balancer:
    def __init__(self, service: str, port: int, pool: Backends):
        self.service = service
        self.pool = pool
        self.port = port
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, HOST, self.port,
                                                      reuse_address=True)
        except OSError as exc:
            raise AddressInUse(self.service, self.port, exc.strerror or str(exc),
                               port_owner(self.port)) from exc

    async def close(self) -> None:
        if self._server:
            self._server.close()
            for task in list(self._conns):
                task.cancel()
            await asyncio.gather(*self._conns, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        tried: set[str] = set()
        try:
            while True:
                try:
                    async with self.pool.use(tried) as backend:
                        try:
                            up_r, up_w = await asyncio.open_connection(backend.host, backend.port)
                        except OSError:
                            tried.add(backend.id)  # died between health checks: try another
                            continue
                        await _splice(reader, writer, up_r, up_w, backend)
                        return
                except LookupError:  # nothing became ready in time
                    return
        except asyncio.CancelledError:  # `close`: the connection ends here. (Not re-raised:
            return  # Python 3.11's asyncio.streams asks the task for its exception, and a
            # cancelled one raises in that callback, logged as an error)
        finally:
            self._conns.discard(task)
            with contextlib.suppress(Exception):
                writer.close()


class _Turn:
    """Whether a connection is at work: from the caller's bytes until the instance's answer
    has stopped flowing for ANSWER_QUIET (a streamed answer or download counts as at work
    while its bytes flow). Otherwise it is merely open (keep-alive, a quiet websocket),
    which a draining instance does not wait long for."""

    def __init__(self, backend: Endpoint):
        self.backend = backend
        self.busy = False
        self._quiet: asyncio.TimerHandle | None = None

    def asked(self) -> None:
        self._cancel()
        self._set(True)

    def answered(self) -> None:
        self._cancel()
        self._set(True)
        self._quiet = asyncio.get_running_loop().call_later(ANSWER_QUIET, self._set, False)

    def close(self) -> None:
        self._cancel()
        self._set(False)

    def _cancel(self) -> None:
        if self._quiet:
            self._quiet.cancel()
            self._quiet = None

    def _set(self, busy: bool) -> None:
        if busy != self.busy:
            self.busy = busy
            self.backend.working(1 if busy else -1)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                mark: Callable[[], None]) -> None:
    try:
        while data := await src.read(CHUNK):
            if dst.is_closing():  # the other side is gone (on uvloop a write would raise)
                return
            mark()
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof() and not dst.is_closing():
            dst.write_eof()
    except (ConnectionError, OSError):  # a side reset: the other is ended too, once what
        dst.close()  # came before is sent (else the caller waited on for an answer its
        # instance will never send)


async def _splice(r1: asyncio.StreamReader, w1: asyncio.StreamWriter,
                  r2: asyncio.StreamReader, w2: asyncio.StreamWriter, backend: Endpoint
                  ) -> None:
    turn = _Turn(backend)
    try:
        await asyncio.gather(_pipe(r1, w2, turn.asked), _pipe(r2, w1, turn.answered))
    finally:
        turn.close()
        for w in (w1, w2):
            with contextlib.suppress(Exception):
                w.close()
