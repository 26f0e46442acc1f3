"""Connections from the ingress to instances: one asyncio protocol each, parsing responses
with llhttp (`httptools`) and handing what it reads to the request it carries, and the
kept-alive ones waiting between requests, per backend."""

from __future__ import annotations

import asyncio
import contextlib
from time import monotonic  # asyncio's loop.time() (its default loop's), without the call
from typing import Protocol, cast

import httptools

from devenv.engine.ingress.messages import Header, codings_besides_chunked
from devenv.engine.ingress.outbox import Held, Outbox
from devenv.engine.pool import Backend

IDLE_PER_BACKEND = 256  # kept-alive connections to one instance, at most
KEEPALIVE = 15.0  # seconds a kept-alive connection waits for a request, then it is closed
HEAD_LIMIT = 64 * 1024  # a message's head (line and headers), at most
READ_AHEAD = 256 * 1024  # what asyncio reads at once, at most
WRITE_HIGH, WRITE_LOW = 256 * 1024, 64 * 1024  # bytes buffered before the other side pauses


class Exchange(Protocol):
    """What a connection to an instance reports to the request it carries."""

    def cork(self) -> None: ...
    def uncork(self) -> None: ...
    def response_head(self, conn: Upstream) -> None: ...
    def response_body(self, data: bytes) -> None: ...
    def response_end(self, conn: Upstream) -> None: ...
    def upstream_lost(self, conn: Upstream, exc: BaseException | None) -> None: ...
    def upstream_garbled(self, conn: Upstream, reason: str) -> None: ...
    def upstream_paused(self, paused: bool) -> None: ...


class Upstream(asyncio.Protocol):
    """One connection to an instance."""

    __slots__ = (
        "backend",
        "closed",
        "done",
        "early",
        "exchange",
        "extra",
        "head",
        "head_read",
        "head_size",
        "headers",
        "idle_since",
        "keep_alive",
        "length",
        "loop",
        "outbox",
        "parser",
        "reason",
        "received",
        "status",
        "trailers",
        "transport",
        "tunnel",
        "upgraded",
    )

    def __init__(self, backend: Backend, outbox: Outbox):
        self.backend = backend
        self.outbox = outbox
        self.transport: Held | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.head = False  # the request was HEAD: its response has no body
        self.received = False  # a byte of the current response arrived
        self.status = 0
        self.reason = b""
        self.headers: list[Header] = []
        self.head_size = -1  # bytes of the head parsed (-1: not in a head)
        self.head_read = 0  # bytes read while it is incomplete
        self.trailers = 0  # bytes of the response's trailer fields (dropped), so far
        self.length = False  # the response has a Content-Length
        self.keep_alive = False
        self.closed = False
        self.done = False  # the current response was read to its end
        self.extra = False  # and bytes came after it: never a response to anything
        self.idle_since = 0.0
        self.upgraded = False
        self.early = b""  # a websocket's first bytes, read with its 101
        self.tunnel: Held | None = None  # a websocket's client, once spliced

    # ---- asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)
        self.transport = Held(transport, self.outbox)
        transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self.upgraded:
            self.early += data
            return
        self.received = True
        exchange = self.exchange
        if exchange is None or self.done:  # bytes past its response (a 408? a lie?): they
            self.close()  # are not the response to the next request, so the connection goes
            return
        exchange.cork()  # the response's head and body in one write, when they came so
        try:
            self.parser.feed_data(data)
            if self.extra:
                self.close()
            elif self.head_size >= 0:  # a head still incomplete: bound what it buffers
                self.head_read += len(data)
                if self.head_read > HEAD_LIMIT + READ_AHEAD:
                    raise _HeadTooBig
        except httptools.HttpParserUpgrade as upgrade:
            self.upgraded = True
            self.early += data[upgrade.args[0]:]
        except (httptools.HttpParserError, _HeadTooBig, _Unrelayable) as exc:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            if self.exchange is not None:
                self.exchange.upstream_garbled(self, _why(exc))
        finally:
            exchange.uncork()

    def eof_received(self) -> bool | None:
        if self.transport is not None:  # it closes on return: what is held goes first
            self.transport.flush()
        return None  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.upstream_lost(self, exc)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_paused(True)

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_paused(False)

    # ---- httptools

    def on_message_begin(self) -> None:
        if self.done:
            self.extra = True
            return
        self.headers = []
        self.reason = b""
        self.length = False
        self.head_size = self.head_read = self.trailers = 0

    def on_status(self, reason: bytes) -> None:
        if not self.done:
            self.reason += reason
            self._grown(len(reason))

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.done:
            return
        size = self.head_size
        if size < 0:  # a trailer (after a chunked body): not relayed, but bounded
            self.trailers += len(name) + len(value) + 4
            if self.trailers > HEAD_LIMIT:
                raise _HeadTooBig("trailers")
            return
        size += len(name) + len(value) + 4  # (`_grown`, inline: it runs for every header)
        if size > HEAD_LIMIT:
            raise _HeadTooBig
        self.head_size = size
        lname = name.lower()
        if lname == b"content-length":
            self.length = True
        elif lname == b"transfer-encoding" and (other := codings_besides_chunked(value)):
            raise _Unrelayable(f"its response uses the transfer coding {other}, which the "
                               "ingress cannot relay (only chunked)")
        self.headers.append((lname, name, value))

    def on_headers_complete(self) -> None:
        if self.done:
            return
        self.head_size = -1
        self.status = status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return  # an interim response (103 Early Hints, a stray 100): not relayed
        self.keep_alive = self.parser.should_keep_alive()
        if self.exchange is not None:
            self.exchange.response_head(self)
        if self.head:  # no body follows, whatever the headers say: llhttp cannot be told
            self.parser = httptools.HttpResponseParser(self)
            self._end()

    def _grown(self, size: int) -> None:
        if self.head_size >= 0:
            self.head_size += size
            if self.head_size > HEAD_LIMIT:
                raise _HeadTooBig

    def on_body(self, body: bytes) -> None:
        if self.done:  # (a HEAD's response, with a body after all)
            self.extra = True
        elif self.exchange is not None:
            self.exchange.response_body(body)

    def on_message_complete(self) -> None:
        if self.done or self.head or self.upgraded or 100 <= self.status < 200:
            return
        self._end()

    def _end(self) -> None:
        self.done = True
        exchange = self.exchange
        if exchange is not None:
            exchange.response_end(self)

    # ---- the ingress

    def send(self, exchange: Exchange, data: bytes, *, head: bool) -> None:
        self.exchange = exchange
        self.head = head
        self.received = False
        self.done = self.extra = False
        assert self.transport is not None
        self.transport.write(data)

    def close(self, *, graceful: bool = False) -> None:
        """Close the connection: gracefully after a complete exchange, else at once."""
        self.closed = True
        self.exchange = None
        if self.transport is not None:
            if graceful:
                self.transport.close()
            else:
                self.transport.abort()

    def splice(self, client: Held) -> None:
        """A websocket: from now on, what the instance sends goes to the client as it is."""
        self.tunnel = client
        if self.early:
            client.write(self.early)
            self.early = b""


class _HeadTooBig(Exception):
    pass


class _Unrelayable(Exception):
    pass


def _why(exc: BaseException) -> str:
    for cause in (exc, exc.__context__):  # (raised in a parser callback: the context)
        if isinstance(cause, _Unrelayable):
            return str(cause)
        if isinstance(cause, _HeadTooBig):
            return f"its response's {cause.args[0] if cause.args else 'head'} is over " \
                f"{HEAD_LIMIT // 1024} KiB"
    return str(exc) or type(exc).__name__


class Upstreams:
    """Kept-alive connections to instances, per backend, most recently used first."""

    def __init__(self, connect_timeout: float, outbox: Outbox):
        self.connect_timeout = connect_timeout
        self.outbox = outbox  # what holds the connections' writes to the turn's end
        self.idle: dict[Backend, list[Upstream]] = {}
        self.sweeper: asyncio.TimerHandle | None = None  # closes those idle past KEEPALIVE

    def take(self, backend: Backend, now: float) -> Upstream | None:
        idle = self.idle.get(backend)
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < KEEPALIVE:
                return conn
            conn.close()
        return None

    def give(self, conn: Upstream, now: float) -> None:
        """A connection whose response was read to its end, kept for the next request."""
        conn.exchange = None
        idle = self.idle.get(conn.backend)
        if idle is None:
            idle = self.idle[conn.backend] = []
            conn.backend.on_leave.append(self.left)  # its pool lets it go: so do we
        if len(idle) >= IDLE_PER_BACKEND or conn.closed or conn.transport is None:
            conn.close()
            return
        conn.transport.resume_reading()  # (paused for a slow client, perhaps)
        conn.idle_since = now
        idle.append(conn)
        if self.sweeper is None:
            self.sweeper = asyncio.get_running_loop().call_at(now + KEEPALIVE, self._sweep)

    def left(self, backend: Backend) -> None:
        """`backend` left its pool: close the connections to it that wait."""
        with contextlib.suppress(ValueError):
            backend.on_leave.remove(self.left)
        for conn in self.idle.pop(backend, []):
            conn.close()

    def _sweep(self) -> None:
        """Close the connections idle for KEEPALIVE or closed by their instance; forget the
        backends with none left; come again when the oldest left is due."""
        self.sweeper = None
        loop = asyncio.get_running_loop()
        now = monotonic()
        for backend, idle in list(self.idle.items()):
            kept = []
            for conn in idle:
                if conn.closed or now - conn.idle_since >= KEEPALIVE:
                    conn.close()
                else:
                    kept.append(conn)
            if kept:
                self.idle[backend] = kept
            else:
                self.left(backend)
        oldest = min((c.idle_since for idle in self.idle.values() for c in idle), default=None)
        if oldest is not None:
            self.sweeper = loop.call_at(oldest + KEEPALIVE, self._sweep)

    async def connect(self, backend: Backend) -> Upstream:
        """A new connection to `backend`; OSError when it is refused, TimeoutError when it
        takes longer than the connect timeout."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):
            _, conn = await loop.create_connection(lambda: Upstream(backend, self.outbox),
                                                   backend.host, backend.port)
        return conn

    def forget(self, live: set[Backend]) -> None:
        """Close the kept-alive connections to backends no longer in any pool."""
        for backend in [b for b in self.idle if b not in live]:
            self.left(backend)

    def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        for backend, idle in list(self.idle.items()):
            with contextlib.suppress(ValueError):
                backend.on_leave.remove(self.left)
            for conn in idle:
                with contextlib.suppress(Exception):
                    conn.close()
        self.idle.clear()
