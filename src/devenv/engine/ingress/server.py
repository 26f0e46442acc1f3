"""The ingress's connections from clients: one asyncio protocol each, parsing requests with
llhttp (`httptools`), answering them one at a time in order (pipelined ones wait, their
connection paused), and relaying each to an instance: the request's head built once in bytes,
its body and the response's streamed as they come with flow control both ways (a side whose
writes back up stops the other's reads), a websocket spliced byte for byte after its 101.

`Connections` holds them to account: the header timeout from the accept, the cap and the
eviction of the oldest connections not in a request."""

from __future__ import annotations

import asyncio
import resource
from collections import deque
from collections.abc import Callable
from time import monotonic  # asyncio's loop.time() (its default loop's), without the call
from typing import NamedTuple, cast

import httptools

from devenv.engine.ingress.edge import CLIENT_GONE, Edge
from devenv.engine.ingress.messages import (
    LAST_CHUNK,
    Framing,
    Header,
    IngressError,
    NoRoute,
    chunk,
    codings_besides_chunked,
    framing,
    misdirected,
    request_head,
    response_head,
    span_error,
    switching_head,
)
from devenv.engine.ingress.outbox import Held, Outbox
from devenv.engine.ingress.routes import NoHttp, RouteTable, host_name, split_path
from devenv.engine.ingress.upstream import (
    HEAD_LIMIT,
    READ_AHEAD,
    WRITE_HIGH,
    WRITE_LOW,
    Upstream,
    Upstreams,
)
from devenv.engine.pool import Backend, NoBackend, Pool
from devenv.telemetry.model import Hub, RequestSeen
from devenv.telemetry.sampling import RateSampler

REPLAY_LIMIT = 1024 * 1024  # request bodies up to this size are read before they are sent
STREAM_BUFFER = 256 * 1024  # a streamed body read ahead of its connection, at most
PIPELINE = 64  # requests read ahead of their answer on one connection, at most (then it
# answers those and closes: a client retries the rest, RFC 9112 §9.3.2)
ATTEMPTS = 3  # instances tried for one request when they refuse the connection
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

# Client connections held at most: a quarter of the descriptor limit, within these bounds.
# Each in a request takes another descriptor to an instance, and kept-alive connections to
# instances wait in a pool; the rest is the control socket's, the health probes', the
# balancers' and the services' pipes'.
MIN_CONNECTIONS, MAX_CONNECTIONS = 64, 10_000

acquire, release = Pool.acquire, Pool.release

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# what a wait for the client or an instance came to
HEAD, END, LOST, GARBLED, CUT, TIMEOUT, GONE, BAD = range(8)


def default_max_connections() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(MIN_CONNECTIONS, min(MAX_CONNECTIONS, soft // 4))


class Request:
    """One request as parsed: its head, and its body while it is read."""

    __slots__ = (
        "bad",
        "chunked",
        "complete",
        "early",
        "expect",
        "headers",
        "host",
        "hosts",
        "http11",
        "keep_alive",
        "length",
        "method",
        "parts",
        "picked",
        "resent",
        "sink",
        "size",
        "target",
        "traced",
        "trailers",
        "upgrade",
        "websocket",
    )

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.headers: list[Header] = []
        self.host: bytes | None = None
        self.hosts = 0  # Host headers
        self.http11 = True
        self.keep_alive = True
        self.length: int | None = None
        self.chunked = False
        self.expect = False
        self.upgrade = False  # the parser switched protocols after it
        self.websocket = False
        self.complete = False  # its body was read to the end
        self.parts: list[bytes] = []  # its body, read ahead of sending it
        self.size = 0
        self.trailers = 0  # bytes of trailer fields read (RFC 9112 7.1.2), dropped
        self.sink: Held | None = None  # where its body goes as it comes
        self.early = b""  # a websocket's first bytes, read with its upgrade
        self.bad = ""  # why its body could not be read to its end
        self.resent = False  # sent once on a kept-alive connection found closed
        self.traced = False  # it came with a `traceparent` or `tracestate` header
        self.picked: Backend | None = None  # the instance `_fast` picked, for the task

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.length)

    def header(self, lname: bytes) -> list[str]:
        return [v.decode("latin-1") for n, _, v in self.headers if n == lname]


class Connections:
    """Client connections held to account: one closes unless it sends a request's headers
    within `header_timeout` of being accepted (after a response, `idle_timeout` bounds the
    wait for the next one's, whether none comes or they trickle). Past `limit`, a new
    connection makes room by closing the oldest one that is not in a request, and is itself
    answered 503 when every connection is."""

    def __init__(self, limit: int, header_timeout: float, idle_timeout: float):
        self.limit = limit
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.open: set[ClientConnection] = set()
        self.waiting: dict[ClientConnection, None] = {}  # not in a request, oldest first
        self.timed_out = 0
        self.evicted = 0
        self.refused = 0

    def opened(self, conn: ClientConnection) -> bool:
        self.open.add(conn)
        if len(self.open) > self.limit:
            victim = next(iter(self.waiting), None)
            if victim is None:
                self.refused += 1
                return False
            self.evicted += 1
            victim.drop()
        self.waiting[conn] = None
        return True

    def closed(self, conn: ClientConnection) -> None:
        self.open.discard(conn)
        self.waiting.pop(conn, None)


class ClientConnection(asyncio.Protocol):
    """One connection from a client, and the request of it being answered."""

    def __init__(self, ingress: Ingress):
        self.ingress = ingress
        self.accounts = ingress.server
        self.loop = asyncio.get_running_loop()
        self.transport: Held | None = None  # (every write through the outbox)
        self.parser = httptools.HttpRequestParser(self)
        self.peer = b""
        self.parsing: Request | None = None
        self.queue: deque[Request] = deque()
        self.task: asyncio.Task[None] | None = None
        self.paused: set[str] = set()
        self.timer: asyncio.TimerHandle | None = None  # the header or the idle timeout
        # the response or body timeout: one timer a connection, armed at or before it is due
        # (not one a request: when a wait ends, the timer stays, to be re-armed when it fires)
        self.deadline: asyncio.Handle | None = None
        # when it is due on `monotonic()`: kept, not read back with `when()`, which uvloop's
        # handle has not when it was armed under 0.5 ms ahead (its clock is in whole ms)
        self.deadline_at = 0.0
        self.timed = False  # a wait is timed
        self.allowed = 0.0  # its timeout, counted again from a streamed body's progress
        self.progress = 0.0  # when it began, or the last part of a streamed body was sent on
        self.lost = False
        self.ended = False  # the client half-closed after asking: close once it is answered
        self.broken = False  # unparseable input: answer what was read, then close
        self.refusal: IngressError | None = None  # why, when it is not a parse error
        self.head_read = 0  # bytes read while a request's head is incomplete
        self.upgrading = False
        self.body: httptools.HttpRequestParser | None = None  # a non-websocket upgrade's body
        self.stalled = False  # the client reads slower than it is answered (pause_writing)
        self.writable: asyncio.Future[None] | None = None  # set when it reads again
        # the request being answered
        self.waiter: asyncio.Future[int] | None = None
        self.upstream: Upstream | None = None
        self.tunnel: Held | None = None
        self.websocket = False
        self.framed = Framing.NONE
        self.keep = True
        self.sent: int | None = None
        self.edge: Edge | None = None
        self.in_body = False
        self.garbled = ""
        self.corked: list[bytes] | None = None  # writes held to go out as one
        self.idle_at = -1.0  # when its last response ended (-1: none yet)
        self.next: asyncio.Future[None] | None = None  # set when a request's head arrives
        # a request answered without the task (`_fast`): its backend, connection, service
        self.fast: tuple[Backend, Upstream, str] | None = None
        self.deferred: Request | None = None  # its head read: `_fast` once it is complete

    # ---- asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)
        self.transport = Held(transport, self.ingress.outbox)
        transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]).encode() if peer else b""
        if not self.accounts.opened(self):
            transport.write(IngressError(
                503, f"{self.accounts.limit} connections are open, every one in a request; "
                "try again shortly").render(keep_alive=False))
            transport.close()
            return
        self.timer = self.loop.call_later(self.accounts.header_timeout, self._header_late)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self.body is not None:
            self._body(data)
            return
        if self.upgrading or self.broken:  # past what can be answered: read and dropped (a
            if self.upgrading and self.parsing is not None and self.parsing.websocket:
                self.parsing.early += data  # paused connection would not see its client go)
            return
        try:
            self.parser.feed_data(data)
            req = self.parsing
            if req is not None and not req.method:  # its head is not complete yet
                self.head_read += len(data)
                if self.head_read > HEAD_LIMIT + READ_AHEAD:  # (one line, still unparsed)
                    self._refuse(_head_too_big())
        except httptools.HttpParserUpgrade as upgrade:
            self.upgrading = True
            # h2c and the like, with a body: that body follows (the parser's callback set
            # `self.body`, which mypy, so mypyc, takes for None here: read in a method)
            if self._has_body():
                self._body(data[upgrade.args[0]:])
                return
            req = self.parsing
            if req is not None and req.websocket:  # (its first bytes kept: one read, then
                self._pause("upgrade")  # none until the instance accepts it)
                req.early += data[upgrade.args[0]:]
        except httptools.HttpParserError as exc:
            self._garbled(exc)
        finally:
            if self.deferred is not None:  # (its message did not complete: the task's)
                self.deferred = None
                self._kick()

    def _has_body(self) -> bool:
        return self.body is not None

    def _body(self, data: bytes) -> None:
        assert self.body is not None
        try:
            self.body.feed_data(data)
        except httptools.HttpParserError as exc:
            self._garbled(exc)

    def eof_received(self) -> bool | None:
        """The client half-closed (`shutdown(SHUT_WR)`, `nc -N`) or went; TCP cannot tell
        which. What it asked in full, and is not yet being answered, is still answered
        (bounded by the response timeout; as HAProxy does, where nginx gives up), then the
        connection closes. Once an answer has begun (an event stream, perhaps), an EOF is a
        client gone: it closes now."""
        if self.ended:  # (read again after a pause: it was taken already)
            return True
        req = self.parsing
        websocket = self.upgrading and req is not None and req.websocket
        if self.queue and (req is None or req.complete or self.broken) and self.sent is None \
                and self.tunnel is None and not websocket:
            self.ended = True
            return True  # (the transport stays open to write; `_answered` closes it)
        if self.transport is not None:  # it closes on return: what is held goes first
            self.transport.flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.accounts.closed(self)
        if self.timer is not None:
            self.timer.cancel()
        self._stop_timer()
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        if self.upstream is not None:  # not back to the pool: its response was not read
            self.upstream.close()
            self.upstream = None
        self._wake(GONE)
        if self.task is not None:  # whatever it waits for (an instance, the hold) is moot
            self.task.cancel()
            if self.edge is not None:  # a request the task took over from `_fast`
                self.loop.call_soon(self._unanswered, self.edge)

    def _unanswered(self, edge: Edge) -> None:
        """A request sent to an instance whose client left before the task that took it
        over ran (so it never published it): recorded as the client's leaving."""
        if self.edge is edge and self.queue:
            self.edge = None
            self._publish(edge, self.queue[0], CLIENT_GONE,
                          "the client went away before the response was complete")

    def pause_writing(self) -> None:  # the client reads slower than the instance writes
        self.stalled = True
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self.stalled = False
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()
        writable, self.writable = self.writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    # ---- httptools

    def on_message_begin(self) -> None:
        self.parsing = Request()

    def on_url(self, url: bytes) -> None:
        assert self.parsing is not None
        self.parsing.target += url
        self.parsing.size += len(url)
        if self.parsing.size > HEAD_LIMIT:
            self.refusal = _head_too_big()
            raise _TooMany

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.parsing
        assert req is not None
        if req.method:  # a trailer (after a chunked body): not forwarded, but bounded
            req.trailers += len(name) + len(value) + 4
            if req.trailers > HEAD_LIMIT:
                self.refusal = IngressError(431, f"the request's trailers are over "
                                            f"{HEAD_LIMIT // 1024} KiB")
                raise _TooMany
            return
        lname = name.lower()
        req.headers.append((lname, name, value))
        req.size += len(name) + len(value) + 4
        if req.size > HEAD_LIMIT:
            self.refusal = _head_too_big()
            raise _TooMany
        if lname == b"host":
            req.hosts += 1
            if req.host is None:
                req.host = value
        elif lname == b"content-length":  # (llhttp allows spaces and tabs around it)
            value = value.strip(b" \t")
            req.length = int(value) if value.isdigit() else None
        elif lname == b"transfer-encoding":
            req.chunked = req.chunked or b"chunked" in value.lower()
            other = codings_besides_chunked(value)
            if other:  # (the ingress re-chunks a body: another coding it would drop)
                self.refusal = IngressError(501, f"the transfer coding {other} is not "
                                            "supported (only chunked); send the body "
                                            "as it is, or with Content-Encoding")
                raise _TooMany
        elif lname == b"expect":
            req.expect = value.lower() == b"100-continue"
        elif lname == b"upgrade":
            req.websocket = value.strip().lower() == b"websocket"
        elif lname == b"traceparent" or lname == b"tracestate":
            req.traced = True

    def on_headers_complete(self) -> None:
        req = self.parsing
        assert req is not None
        parser = self.parser
        req.method = parser.get_method()
        if not req.target.startswith(b"/") and req.target[:7].lower() == b"http://":
            # absolute-form, as to a proxy (`curl -x`): RFC 9112 3.2.2
            absolute(req)
        req.size = 0  # (from now on, its body's)
        self.head_read = 0
        req.http11 = parser.get_http_version() == "1.1"
        req.keep_alive = parser.should_keep_alive()
        req.upgrade = parser.should_upgrade()
        req.websocket = req.websocket and req.upgrade
        if req.upgrade and not req.websocket:
            req.keep_alive = False  # another protocol: answered over HTTP/1.1, then closed
        if self.timer is not None and self.idle_at < 0:  # the header timeout of the first
            self.timer.cancel()
            self.timer = None
        self.accounts.waiting.pop(self, None)
        if len(self.queue) >= PIPELINE:
            raise _TooMany
        self.queue.append(req)
        if len(self.queue) > 1:
            self._pause("pipeline")  # one request at a time, in order
        if self.fast is not None:
            return  # (the task is told of it when the request before is answered)
        if len(self.queue) == 1 and not req.has_body and not req.upgrade:
            self.deferred = req  # complete in a moment: perhaps answered without the task
            return
        self._kick()

    def _kick(self) -> None:
        """The task answers what is queued: started, or told a request came."""
        if self.task is None:
            self.task = self.loop.create_task(self._serve())
        elif self.next is not None:
            self.next.set_result(None)
            self.next = None

    def on_body(self, body: bytes) -> None:
        req = self.parsing
        assert req is not None
        if req.sink is not None:
            req.sink.write(chunk(body) if req.chunked else body)
            self.progress = monotonic()  # an upload in progress: not a silent instance
            return
        req.parts.append(body)
        req.size += len(body)
        if req.size > STREAM_BUFFER and (req.length is None or req.length > REPLAY_LIMIT):
            self._pause("body")

    def on_message_complete(self) -> None:
        req = self.parsing
        assert req is not None
        if req.upgrade and not req.websocket and req.has_body and self.body is None:
            # llhttp takes the body of a request asking for another protocol (`Upgrade:
            # h2c`) for that protocol's bytes; a proxy ignores the upgrade, so its body is
            # read by a parser of its own
            self.body = httptools.HttpRequestParser(_Body(self))
            self.body.feed_data(b"POST / HTTP/1.1\r\n%s\r\n" % (
                b"Transfer-Encoding: chunked\r\n" if req.chunked
                else b"Content-Length: %d\r\n" % (req.length or 0)))
            return
        req.complete = True
        if req.sink is not None:
            if req.chunked:
                req.sink.write(LAST_CHUNK)
            req.sink = None
        if self.in_body and self.queue and self.queue[0] is req:
            self._wake(END)
        elif self.deferred is req:
            self.deferred = None
            if not self._fast(req):
                self._kick()

    # ---- what an instance's connection reports (upstream.Exchange)

    def cork(self) -> None:
        self.corked = []

    def uncork(self) -> None:
        corked, self.corked = self.corked, None
        if corked and self.transport is not None:
            self.transport.write(corked[0] if len(corked) == 1 else b"".join(corked))

    def _write(self, data: bytes) -> None:
        if self.corked is not None:
            self.corked.append(data)
        elif self.transport is not None:
            self.transport.write(data)

    def response_head(self, conn: Upstream) -> None:
        self._stop_timer()
        status = conn.status
        if self.websocket and status == 101:
            self._wake(HEAD)
            return
        req = self.queue[0]
        if status == 101:
            conn.close()
            self.upstream_garbled(conn, "101 Switching Protocols to a request that asked for "
                                  "no upgrade")
            return
        framed = self.framed = framing(http11=req.http11, head=req.method == b"HEAD",
                                       status=status, length=conn.length)
        # (a refused websocket: its answer as it is, then close; an answer before the
        # request's body is all in: the rest of that body cannot be told from a request)
        keep = self.keep = req.keep_alive and framed is not Framing.CLOSE and not self._last \
            and not self.websocket and not self._ending and req.complete
        self._write(response_head(status, conn.reason, conn.headers, framed,
                                           keep_alive=keep, http11=req.http11))
        self.sent = status
        if self.edge is not None:
            self.edge.sent = status

    def response_body(self, data: bytes) -> None:
        framed = self.framed
        if framed is not Framing.NONE:
            self._write(chunk(data) if framed is Framing.CHUNKED else data)

    def response_end(self, conn: Upstream) -> None:
        if self.framed is Framing.CHUNKED:
            self._write(LAST_CHUNK)
        self._wake(END)

    def upstream_lost(self, conn: Upstream, exc: BaseException | None) -> None:
        if self.queue:
            self.queue[0].sink = None
        if self.sent is None or self.websocket:
            self._wake(LOST)
            return
        if not conn.length and not _chunked(conn.headers) and self.framed is not Framing.NONE:
            self.response_end(conn)  # a body ended by closing the connection: complete
            return
        if self.transport is not None:  # cut mid-body: the client must see it cut, not end
            self.uncork()
            self.transport.abort()
        self._wake(CUT)

    def upstream_garbled(self, conn: Upstream, reason: str) -> None:
        if self.sent is None:
            self.garbled = reason
            self._wake(GARBLED)
        else:
            self.upstream_lost(conn, None)

    def upstream_paused(self, paused: bool) -> None:
        if paused:
            self._pause("upstream")
        else:
            self._resume("upstream")

    # ---- the requests, one at a time

    async def _serve(self) -> None:
        """Answer the connection's requests as they come, in order; between two, wait for the
        next (cheaper than a task a request)."""
        try:
            while not self.lost:
                if not self.queue:
                    self.next = self.loop.create_future()
                    await self.next
                    continue
                if self.stalled:  # the client does not read: answer no more until it does
                    self.writable = self.loop.create_future()
                    await self.writable
                    continue
                req = self.queue[0]
                self._resume("pipeline")
                self._begin()
                try:
                    keep = await self._one(req)
                except Exception as exc:  # a bug: say so, and close
                    if self.sent is None and self.transport is not None:
                        self.transport.write(IngressError(
                            500, f"the ingress failed: {exc!r}").render(keep_alive=False))
                    keep = False
                if not self._answered(keep):
                    return
        finally:
            self.task = None

    def _answered(self, keep: bool) -> bool:
        """The request answered leaves the queue; whether its connection goes on."""
        self.queue.popleft()
        if self.paused:  # (its instance's backed-up writes: no longer this one's)
            self._resume("upstream")
        if self.lost:
            return False
        if self.ended and not self.queue:  # the client half-closed: all it asked, answered
            keep = False
        if not keep or (self.broken and not self.queue):
            assert self.transport is not None
            self.transport.close()
            return False
        if not self.queue:
            self.accounts.waiting[self] = None  # idle again: keep-alive, evicted first
            self.idle_at = now = monotonic()
            if self.timer is None:  # (else the one armed before is re-armed then)
                self.timer = self.loop.call_at(now + self.accounts.idle_timeout,
                                               self._idle_late)
        return True

    def _fast(self, req: Request) -> bool:
        """Send a request at once, without the task, when nothing needs a wait: the only one
        queued, complete, idempotent, routed to a ready instance with a kept-alive
        connection; its answer is relayed as it comes and ended by `_fast_end`. False (the
        task's then) otherwise."""
        if req.method not in IDEMPOTENT or req.websocket or self.broken or self.stalled \
                or self.lost:
            return False
        try:
            return self._fast_send(req)
        except Exception:  # a bug: undone, and the task answers it (a 500 if it fails again)
            if self.fast is not None:
                (backend, conn, _), self.fast = self.fast, None
                self._stop_timer()
                self.upstream = None
                conn.close()
                release(backend, True)
            return False

    def _fast_send(self, req: Request) -> bool:
        found = self._target(req)
        if isinstance(found, IngressError):
            return False
        pool, routed, host = found
        backend = pool.pick_ready()
        if backend is None:
            return False
        conn = self.ingress.upstreams.take(backend, monotonic())
        if conn is None:
            req.picked = backend  # (the task's first try: one pick a request keeps turns fair)
            return False
        self._resume("pipeline")
        self._begin()
        if self.ingress.hub is not None:
            edge = self.edge = self._edge(req)
            edge.route, edge.service, edge.instance = routed.route, routed.service, backend.id
        acquire(backend, True)
        self.fast = (backend, conn, routed.service)
        self.upstream = conn
        self._arm(self.ingress.response_timeout)
        conn.send(self, self._head(req, routed.suffix, host), head=req.method == b"HEAD")
        return True

    def _fast_end(self, outcome: int) -> None:
        """What came of a request `_fast` sent (called as it comes, from a protocol's
        callback): relayed, counted, its connection kept or closed, the next one queued
        handed to the task."""
        assert self.fast is not None
        (backend, conn, service), self.fast = self.fast, None
        req = self.queue[0]
        if outcome == LOST and not conn.received:  # found closed: the task connects anew
            self._stop_timer()
            self.upstream = None
            conn.close()
            release(backend, True)
            req.resent = True  # (the task's try is on a new connection)
            self._kick()  # (with the edge begun: the same trace, the same head)
            return
        self.uncork()  # (its answer out before it is ended)
        keep = False
        error: IngressError | None = None
        status = CLIENT_GONE
        message: str | None = "the client went away before the response was complete"
        try:
            try:
                error = self._relay(conn, outcome, service, backend.id, keep=True)
            finally:
                release(backend, True)
            if not self.lost or error is not None:
                status = error.status if error is not None else (self.sent or CLIENT_GONE)
                message = span_error(status, error) if status != CLIENT_GONE else message
            keep = self._after(req, error)
        except Exception as exc:  # a bug: say so, and close
            status, message = 500, f"the ingress failed: {exc!r}"
            if self.sent is None and self.transport is not None and not self.lost:
                self.transport.write(IngressError(500, message).render(keep_alive=False))
            keep = False
        finally:
            edge, self.edge = self.edge, None
            try:
                if edge is not None:
                    self._publish(edge, req, status, message)
            finally:  # (the client's next request is never left waiting)
                if self._answered(keep) and self.queue:
                    self._kick()

    def _begin(self) -> None:
        """Forget what the previous request's answer left: every per-request field."""
        self.sent = None
        self.keep = True
        self.websocket = False
        self.framed = Framing.NONE
        self.garbled = ""
        self.waiter = None

    async def _one(self, req: Request) -> bool:
        """Answer one request (its state reset by `_begin`); whether its connection stays
        open."""
        if self.ingress.hub is None:
            found = self._target(req)
            if isinstance(found, IngressError):
                return self._after(req, found)
            pool, routed, host = found
            if req.websocket:
                return self._after(req, await self._websocket(req, pool, routed.service,
                                                              routed.suffix, host))
            return self._after(req, await self._proxy(req, pool, routed.service,
                                                      routed.suffix, host))
        edge = self.edge  # (one `_fast` began: its instance's connection was found closed)
        if edge is None:
            edge = self.edge = self._edge(req)
        status = CLIENT_GONE
        message: str | None = "the client went away before the response was complete"
        try:
            found = self._target(req)
            if isinstance(found, IngressError):
                error: IngressError | None = found
            elif req.websocket:
                error = await self._websocket(req, found[0], found[1].service,
                                              found[1].suffix, found[2])
            else:
                error = await self._proxy(req, found[0], found[1].service, found[1].suffix,
                                          found[2])
            if not self.lost or error is not None:
                status = error.status if error is not None else (self.sent or CLIENT_GONE)
                message = span_error(status, error) if status != CLIENT_GONE else message
            return self._after(req, error)
        except Exception as exc:
            status, message = 500, f"the ingress failed: {exc!r}"
            raise
        finally:
            if self.edge is edge:  # (else `_unanswered` recorded it, its client gone)
                self.edge = None
                self._publish(edge, req, status, message)

    def _edge(self, req: Request) -> Edge:
        if not req.traced:  # (nearly every request of a load test: a new trace)
            return Edge(req.method, req.target, sampler=self.ingress.sampler)
        traceparent: list[str] = []
        tracestate: list[str] = []
        for name, _, value in req.headers:
            if name == b"traceparent":
                traceparent.append(value.decode("latin-1"))
            elif name == b"tracestate":
                tracestate.append(value.decode("latin-1"))
        return Edge(req.method, req.target, traceparent, tracestate, self.ingress.sampler)

    def _publish(self, edge: Edge, req: Request, status: int, message: str | None) -> None:
        hub = self.ingress.hub
        assert hub is not None
        if status == CLIENT_GONE and edge.sent is not None:
            # the client left a websocket, or a streamed body: its answer had begun
            status, message = edge.sent, None
        seen = edge.finish(status, message, req.host)
        if seen.trace_id is None:
            hub.unsampled += 1
        self.ingress.publish(seen)

    def _after(self, req: Request, error: IngressError | None) -> bool:
        if error is not None and not self.lost:
            assert self.transport is not None
            keep = req.keep_alive and req.complete and not self._last and not req.upgrade \
                and not self._ending
            self.transport.write(error.render(keep_alive=keep, http11=req.http11))
            return keep
        return self.keep and req.complete and not self.websocket

    def _wake(self, outcome: int) -> None:
        if self.fast is not None:
            self._fast_end(outcome)
            return
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(outcome)

    def _wait(self, timeout: float) -> asyncio.Future[int]:
        self.waiter = waiter = self.loop.create_future()
        self._arm(timeout)
        return waiter

    def _arm(self, timeout: float) -> None:
        loop = self.loop
        self.timed, self.allowed, self.progress = True, timeout, monotonic()
        due = self.progress + timeout
        deadline = self.deadline
        if deadline is None:
            self.deadline, self.deadline_at = loop.call_at(due, self._late), due
        elif self.deadline_at > due:  # (armed for a longer wait)
            deadline.cancel()
            self.deadline, self.deadline_at = loop.call_at(due, self._late), due

    def _late(self) -> None:
        self.deadline = None
        if not self.timed:
            return
        due = self.progress + self.allowed
        if due > monotonic():  # armed for an earlier wait, or the body was sent on since
            # (or fired a little early: uvloop's clock is in whole milliseconds)
            self.deadline, self.deadline_at = self.loop.call_at(due, self._late), due
        else:
            self.timed = False
            self._wake(TIMEOUT)

    def _stop_timer(self) -> None:
        self.timed = False

    def _target(self, req: Request) -> tuple[Pool, Routed, bytes] | IngressError:
        """Where a request goes (its pool, service, target and Host sent on), or the
        ingress's own answer."""
        ingress = self.ingress
        if req.hosts > 1 or (req.http11 and not req.hosts):  # RFC 9112 §3.2
            return IngressError(400, f"a request must have one Host header (this one has "
                                f"{req.hosts}): the ingress routes by it")
        key = (req.host, req.target)
        routed = ingress.routed.get(key)
        if routed is None:
            routed = route(ingress.routes, req.host, req.target)
            if len(req.target) + len(req.host or b"") <= ROUTED_TARGET:  # (long: not kept)
                if len(ingress.routed) >= ROUTED_KEPT:
                    ingress.routed.clear()
                ingress.routed[key] = routed
        if isinstance(routed, IngressError):
            return routed
        edge = self.edge
        if edge is not None and routed.service:
            edge.route, edge.service = routed.route, routed.service
        pool = ingress.pools(routed.service) if routed.service else None
        if pool is None:
            header = req.host.decode("latin-1") if req.host is not None else ""
            path = req.target.partition(b"?")[0].decode("latin-1")
            return NoRoute(header, path, ingress.routes.describe())
        return pool, routed, req.host if req.host is not None else b"127.0.0.1"

    def _head(self, req: Request, suffix: bytes, host: bytes, *, chunked: bool = False,
              websocket: bool = False) -> bytes:
        edge = self.edge
        if edge is None:
            return request_head(req.method, suffix, req.headers, host, self.peer,
                                chunked=chunked, length=req.length, websocket=websocket)
        state = edge.tracestate
        return request_head(req.method, suffix, req.headers, host, self.peer,
                            traceparent=edge.outgoing,
                            tracestate=state.encode("latin-1") if state is not None else None,
                            chunked=chunked, length=req.length, websocket=websocket)

    async def _proxy(self, req: Request, pool: Pool, service: str, suffix: bytes,
                     host: bytes) -> IngressError | None:
        ingress = self.ingress
        streamed = False
        body = b""
        if req.has_body:
            if req.bad:  # (a pipelined request's body, found unreadable while it waited)
                return _bad_body(req)
            if req.expect and req.http11 and not req.complete:
                assert self.transport is not None
                self.transport.write(CONTINUE)
            if req.length is not None and req.length <= REPLAY_LIMIT:
                if not req.complete:
                    self.in_body = True
                    try:
                        outcome = await self._wait(ingress.body_timeout)
                    finally:
                        self.in_body = False
                        self._stop_timer()
                    if outcome == TIMEOUT:
                        return IngressError(408, f"the request body did not arrive within "
                                            f"{ingress.body_timeout:g}s")
                    if outcome == GONE:
                        return None
                    if outcome == BAD:
                        return _bad_body(req)
                body = b"".join(req.parts)
                req.parts = []
            else:
                streamed = True  # sent as it comes, once a connection is open
        head = self._head(req, suffix, host, chunked=streamed and req.chunked)
        hold_until = monotonic() + pool.hold_timeout
        tried: set[str] = set()
        refused: list[str] = []
        fresh = streamed or req.method not in IDEMPOTENT or req.resent
        edge = self.edge
        for _ in range(ATTEMPTS):
            backend, req.picked = req.picked, None
            if backend is None or not pool.holds(backend):
                backend = pool.pick_ready(tried)  # (no coroutine while one is ready)
            if backend is None:
                try:
                    backend = await pool.pick(tried, max(0.0, hold_until - monotonic()))
                except NoBackend:
                    if refused:
                        return IngressError(502, f"service '{service}': no instance took the "
                                            f"connection ({'; '.join(refused)}) and no other "
                                            f"became ready within {pool.hold_timeout:g}s; see "
                                            "`devenv status`")
                    return IngressError(503, f"service '{service}' has no ready instance "
                                        f"(waited {pool.hold_timeout:g}s); see `devenv status`")
            acquire(backend, True)
            try:
                if edge is not None:
                    edge.instance = backend.id
                conn = None if fresh else ingress.upstreams.take(backend, monotonic())
                reused = conn is not None
                if conn is None:
                    try:
                        conn = await ingress.upstreams.connect(backend)
                    except (OSError, TimeoutError) as exc:  # never received: try another
                        tried.add(backend.id)
                        refused.append(f"{backend.id}: {_reason(exc)}")
                        if edge is not None:
                            edge.instance = None  # it never took the request
                if conn is not None:  # (else refused: the next; no `continue` here, for mypyc)
                    if self.lost:
                        conn.close()
                        return None
                    outcome = await self._send(conn, req, head, body, streamed)
                    keep = not fresh
                    if outcome == LOST and reused and not conn.received:
                        # its kept-alive connection was found closed: once more, anew
                        try:
                            conn = await ingress.upstreams.connect(backend)
                        except (OSError, TimeoutError) as exc:
                            return self._closed(service, backend.id, exc)
                        outcome = await self._send(conn, req, head, body, streamed)
                        keep = False
                    return self._relay(conn, outcome, service, backend.id, keep=keep)
            finally:
                release(backend, True)
        return IngressError(502, f"service '{service}': no instance took the connection "
                            f"({'; '.join(refused)})")

    def _send(self, conn: Upstream, req: Request, head: bytes, body: bytes,
              streamed: bool) -> asyncio.Future[int]:
        """Send the request on `conn`; the wait for the end of its response (relayed as it
        comes) or what stopped it."""
        self.upstream = conn
        if self.stalled and conn.transport is not None:  # its client does not read
            conn.transport.pause_reading()
        waiter = self._wait(self.ingress.response_timeout)
        if req.bad:  # its body turned out unreadable while a connection was opened
            waiter.set_result(BAD)
            return waiter
        if not streamed:
            conn.send(self, head + body, head=req.method == b"HEAD")
            return waiter
        conn.send(self, head, head=req.method == b"HEAD")
        assert conn.transport is not None
        parts, req.parts, req.size = req.parts, [], 0
        for part in parts:
            conn.transport.write(chunk(part) if req.chunked else part)
        if req.complete:
            if req.chunked:
                conn.transport.write(LAST_CHUNK)
        else:
            req.sink = conn.transport
            self._resume("body")
        return waiter

    def _relay(self, conn: Upstream, outcome: int, service: str, instance: str, *,
               keep: bool) -> IngressError | None:
        """What came of a request sent: the ingress's answer when it failed; on success,
        its connection back to the pool when it can carry another."""
        try:
            if outcome == TIMEOUT and not self.queue[0].complete \
                    and "upstream" not in self.paused:  # the client's upload stalled
                return IngressError(408, f"the request body stopped arriving (nothing for "
                                    f"{self.ingress.response_timeout:g}s); what came was "
                                    "sent on, so the request was not retried")
            if outcome == TIMEOUT:
                return IngressError(504, f"service '{service}' (instance {instance}) did not "
                                    f"answer within {self.ingress.response_timeout:g}s (the "
                                    "ingress's upstream timeout); the request was sent, so it "
                                    "was not retried")
            if outcome == GARBLED:
                return IngressError(502, f"service '{service}' (instance {instance}) answered "
                                    f"something that is not HTTP: {self.garbled}")
            if outcome == LOST:
                return self._closed(service, instance, None)
            if outcome == BAD:  # the instance's connection is aborted (finally)
                if self.sent is None:
                    return _bad_body(self.queue[0])
                if self.transport is not None:  # its answer had begun: cut it
                    self.transport.abort()
                return None
            if outcome == END and keep and conn.keep_alive and self.queue[0].complete \
                    and not conn.closed:
                conn.exchange = None
                self.upstream = None
                self.ingress.upstreams.give(conn, monotonic())
            return None
        finally:
            self._stop_timer()
            if self.queue:
                self.queue[0].sink = None
            if self.upstream is conn:
                self.upstream = None
                conn.close(graceful=outcome == END)

    def _closed(self, service: str, instance: str, exc: BaseException | None
                ) -> IngressError:
        why = _reason(exc) if exc is not None else "the connection was closed"
        return IngressError(502, f"service '{service}' (instance {instance}) closed the "
                            f"connection without answering ({why}); the request was sent, so "
                            "it was not retried on another instance")

    async def _websocket(self, req: Request, pool: Pool, service: str, suffix: bytes,
                         host: bytes) -> IngressError | None:
        ingress = self.ingress
        self.websocket = True
        head = self._head(req, suffix, host, websocket=True)
        try:
            async with pool.use() as backend:
                if self.edge is not None:
                    self.edge.instance = backend.id
                try:
                    conn = await ingress.upstreams.connect(backend)
                except (OSError, TimeoutError) as exc:
                    return IngressError(502, f"service '{service}' (instance {backend.id}): "
                                        f"websocket: {_reason(exc)}")
                try:
                    outcome = await self._send(conn, req, head, b"", False)
                    self._stop_timer()
                    if outcome == TIMEOUT:
                        return IngressError(504, f"service '{service}' (instance "
                                            f"{backend.id}) did not accept the websocket "
                                            f"within {ingress.response_timeout:g}s")
                    if self.sent is not None:  # refused (401, 403, 426...): relayed as it is
                        return None
                    if outcome != HEAD:
                        return IngressError(502, f"service '{service}' (instance "
                                            f"{backend.id}): websocket: the connection was "
                                            "closed")
                    transport = self.transport
                    assert transport is not None and conn.transport is not None
                    waiter = self.waiter = self.loop.create_future()
                    transport.write(switching_head(conn.reason, conn.headers))
                    self.sent = 101
                    if self.edge is not None:
                        self.edge.sent = 101
                    conn.splice(transport)
                    self.tunnel = conn.transport
                    if req.early:
                        conn.transport.write(req.early)
                        req.early = b""
                    self._resume("upgrade")
                    await waiter  # until either side closes
                    return None
                finally:
                    self.upstream = None
                    if conn.transport is not None:
                        conn.transport.close()
                    if self.transport is not None and self.sent == 101:
                        self.transport.close()
        except NoBackend:
            return IngressError(503, f"service '{service}' has no ready instance for this "
                                f"websocket (waited {pool.hold_timeout:g}s); see "
                                "`devenv status`")

    # ---- reading, and closing

    def _pause(self, why: str) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused.add(why)

    def _resume(self, why: str) -> None:
        if why in self.paused:
            self.paused.discard(why)
            if not self.paused and self.transport is not None and not self.lost:
                self.transport.resume_reading()

    @property
    def _ending(self) -> bool:
        """The client half-closed and this is the last of what it asked: answered, then the
        connection closes."""
        return self.ended and len(self.queue) <= 1

    @property
    def _last(self) -> bool:
        """The request being answered is the last this connection answers: what follows it
        could not be read."""
        return self.broken and len(self.queue) <= 1

    def _garbled(self, exc: Exception) -> None:
        # httptools chains what a callback of ours raised: other than _TooMany, that is a
        # bug of the ingress's (as compiled code's type checks fail), not the client's: it is
        # logged and answered 500
        cause = exc.__context__
        if cause is not None and not isinstance(cause, _TooMany):
            self.loop.call_exception_handler({
                "message": "the ingress failed reading a request", "exception": cause,
                "protocol": self})
            self.refusal = self.refusal or IngressError(
                500, f"the ingress failed reading the request ({type(cause).__name__}: "
                f"{cause}); this is a bug of devenv's")
        req = self.parsing
        if req is not None and req.method and not req.complete and req in self.queue:
            refusal = self.refusal  # its body is unreadable: never sent on whole
            req.bad = refusal.message if refusal is not None else str(exc) or \
                type(exc).__name__
            req.sink = None
            if self.queue[0] is req:  # (the one being answered: its wait ends now)
                self._wake(BAD)
        self._refuse(self.refusal or IngressError(400, f"bad request: {exc}"))

    def _refuse(self, error: IngressError) -> None:
        """Input that cannot be read on: answer the requests read before it, then close."""
        self.broken = True  # (what comes next is read and dropped: see data_received)
        if not self.queue and self.transport is not None:  # (none in progress)
            self.transport.write(error.render(keep_alive=False))
            self.transport.close()

    def _header_late(self) -> None:
        if self in self.accounts.waiting and not self.queue:
            self.accounts.timed_out += 1
            self.drop()

    def _idle_late(self) -> None:
        self.timer = None
        if self not in self.accounts.waiting or self.queue:
            return  # in a request: armed again when it is idle again
        due = self.idle_at + self.accounts.idle_timeout
        if monotonic() >= due - 0.001:
            self.drop()
        else:  # it was in a request since: wait for the rest of its idle time
            self.timer = self.loop.call_at(due, self._idle_late)

    def drop(self) -> None:
        """Close a connection not in a request (nothing written: it may be about to be
        used)."""
        self.accounts.waiting.pop(self, None)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.close()


class Routed(NamedTuple):
    """Where a request goes: its service ("": none), what matched, the target sent on."""

    service: str
    route: str
    suffix: bytes


ROUTED_KEPT = 4096  # requests' routes remembered (by Host and target), at most
ROUTED_TARGET = 256  # the longest Host and target whose route is remembered (~2 MB in all)


def route(routes: RouteTable, host_header: bytes | None, target: bytes
          ) -> Routed | IngressError:
    """Where a request for `target` with this Host goes, or the ingress's answer: 421 for a
    host not served, 400 for a target that is not a path, 404 for a data service."""
    header = host_header.decode("latin-1") if host_header is not None else None
    host = host_name(header) if header is not None else "127.0.0.1"  # HTTP/1.0, no Host
    if not routes.allows(host):
        return misdirected(header or "")
    assert host is not None
    raw_path, _, query = target.partition(b"?")
    path = raw_path.decode("latin-1")
    if not path.startswith("/"):
        return IngressError(400, f"the request target {path!r} is not a path")
    raw, decoded = split_path(path)
    matched = routes.match(host, decoded)
    if isinstance(matched, NoHttp):
        return IngressError(404, matched.message())
    if matched is None:
        return Routed("", "", b"")
    suffix = matched.forward(raw).encode("latin-1") + (b"?" + query if query else b"")
    return Routed(matched.service, matched.prefix or host, suffix)


class _Body:
    """The parser callbacks of a body read after an ignored upgrade: the body, then
    nothing (the connection closes after the answer)."""

    def __init__(self, conn: ClientConnection):
        self.conn = conn
        self.done = False

    def on_body(self, body: bytes) -> None:
        if not self.done:
            self.conn.on_body(body)

    def on_message_complete(self) -> None:
        if not self.done:
            self.done = True
            self.conn.on_message_complete()


class _TooMany(Exception):
    """More than PIPELINE requests read ahead on one connection, or a head too big."""


def _bad_body(req: Request) -> IngressError:
    return IngressError(400, f"bad request body: {req.bad}; it was not sent on whole")


def absolute(req: Request) -> None:
    """An absolute-form target (`GET http://shop.localhost/cart`, as to a proxy) as the
    origin-form one it names: its authority is the Host, whatever Host header came."""
    rest = req.target[7:]
    end = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
    authority = rest[:end].rpartition(b"@")[2]
    if authority:
        req.host, req.hosts = authority, 1
        path = rest[end:]
        req.target = path if path.startswith(b"/") else b"/" + path


def _head_too_big() -> IngressError:
    return IngressError(431, f"the request's head (its line and headers) is over "
                        f"{HEAD_LIMIT // 1024} KiB")


def _chunked(headers: list[Header]) -> bool:
    return any(n == b"transfer-encoding" and b"chunked" in v.lower() for n, _, v in headers)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "connection timed out"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


# ---- the ingress

# Timeouts (seconds). Config keys to come: `ingress.upstream_timeout` (RESPONSE_TIMEOUT) and
# `ingress.header_timeout` (HEADER_TIMEOUT); until then `Ingress(...)` takes them as options.
CONNECT_TIMEOUT = 5.0  # to open a connection to an instance
RESPONSE_TIMEOUT = 60.0  # from sending a request to the response's headers (then 504)
BODY_TIMEOUT = 60.0  # to receive a request body of up to REPLAY_LIMIT from the client
HEADER_TIMEOUT = 10.0  # from accepting a connection to its request's complete headers
IDLE_TIMEOUT = 30.0  # after a response, to the next request's complete headers (keep-alive)


class Ingress:
    def __init__(self, port: int, pools: Callable[[str], Pool | None], *,
                 response_timeout: float = RESPONSE_TIMEOUT,
                 header_timeout: float = HEADER_TIMEOUT, idle_timeout: float = IDLE_TIMEOUT,
                 connect_timeout: float = CONNECT_TIMEOUT, body_timeout: float = BODY_TIMEOUT,
                 max_connections: int | None = None, hub: Hub | None = None):
        self.port = port
        self.pools = pools
        self.hub = hub  # None: no edge spans, no requests published
        self.sampler = RateSampler()  # which new traces are recorded (`up` sets its rate)
        self._routes = RouteTable({}, [])
        self.routed: dict[tuple[bytes | None, bytes], Routed | IngressError] = {}
        self.response_timeout = response_timeout
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections
        self.server = Connections(max_connections or default_max_connections(),
                                  header_timeout, idle_timeout)
        self.outbox = Outbox()  # (writes held to the end of a busy turn of the loop)
        self.upstreams = Upstreams(connect_timeout, self.outbox)
        self._listener: asyncio.Server | None = None
        self._published: list[RequestSeen] = []  # answered in this turn of the loop

    def publish(self, seen: RequestSeen) -> None:
        """A request answered, to the hub's sinks: all those answered in one turn of the
        event loop go together, at its end (one call a sink, not one a request)."""
        published = self._published
        if not published:
            asyncio.get_running_loop().call_soon(self._deliver)
        published.append(seen)

    def _deliver(self) -> None:
        batch, self._published = self._published, []
        if batch and self.hub is not None:
            self.hub.requests(batch)

    @property
    def routes(self) -> RouteTable:
        return self._routes

    @routes.setter
    def routes(self, table: RouteTable) -> None:
        self._routes = table
        self.routed = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.outbox.attach(loop)
        self._listener = await loop.create_server(
            lambda: ClientConnection(self), "127.0.0.1", self.port, reuse_address=True,
            backlog=1024)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for conn in list(self.server.open):
            if conn.task is not None:
                conn.task.cancel()
            if conn.transport is not None:
                conn.transport.close()
        self.upstreams.close()
        self._deliver()  # (what was answered is published before the store closes)
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None
