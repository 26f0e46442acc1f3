"""The local ingress: one HTTP entry point on 127.0.0.1 routing to services' pools.

It answers only local host names (`localhost`, `*.localhost`, `127.0.0.1`, `[::1]`) and the
hosts services declare, so that a web page elsewhere cannot reach the services through a
name it points at 127.0.0.1 (DNS rebinding). It routes by host (`<service>.localhost`, or a
declared host) and then by path prefix, longest first, matching whole decoded segments and
forwarding the raw (still encoded) rest. Data services (PostgreSQL, Redis) speak no HTTP and
get no route. Bodies stream both ways, websockets pass through with the subprotocol the
backend chose, and while a service has no ready instance (a restart) a request waits up to
the hold timeout instead of failing.

A request is replayed on another instance only when the one it was sent to never received it
(the connection was refused); one that was sent and met a closed connection gets 502 at once
(only an idempotent one whose kept-alive connection was found closed is sent once more, on a
new connection: see `Ingress._send`).

Every request gets an edge span (service `devenv-ingress`, kind server) when the ingress has a
telemetry hub: it continues the W3C `traceparent` the client sent (its `tracestate` passes
through) or starts a new trace, and the request sent to the instance carries a new
`traceparent` whose parent is the edge span, so an instrumented service's own span is its
child. When the response is complete the ingress publishes one `RequestSeen` (what metrics and
the dashboard count); the trace store makes the edge span from it, off the hot path. A
websocket is one span, from the upgrade to the close.

Every wait is bounded: for an instance (the hold timeout), for a connection (CONNECT_TIMEOUT),
for the response's headers (RESPONSE_TIMEOUT, then 504); a response that is flowing is never
cut. A connection must send its request's headers within HEADER_TIMEOUT of being accepted, an
idle keep-alive connection is closed after IDLE_TIMEOUT, and past `max_connections` (a quarter
of the descriptor limit) the oldest connections that are not in a request make room, so that
slow or idle clients by the thousand cannot take the descriptors the engine's control socket,
its health probes and its services need.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import resource
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from devenv.engine.pool import NoBackend, Pool
from devenv.telemetry import context
from devenv.telemetry.model import Hub, RequestSeen

# Headers that describe one connection, never forwarded (RFC 9110 §7.6.1), besides those a
# message's own `Connection` header names. `host` is set anew by the ingress.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate",
                        "proxy-authorization", "te", "trailer", "trailers",
                        "transfer-encoding", "upgrade", "host"})
REPLAY_LIMIT = 1024 * 1024  # request bodies up to this size are read before they are sent
ATTEMPTS = 3  # instances tried for one request when they refuse the connection
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})  # RFC 9110 §9.2.2

# Timeouts (seconds). Config keys to come: `ingress.upstream_timeout` (RESPONSE_TIMEOUT) and
# `ingress.header_timeout` (HEADER_TIMEOUT); until then `Ingress(...)` takes them as options.
CONNECT_TIMEOUT = 5.0  # to open a connection to an instance
RESPONSE_TIMEOUT = 60.0  # from sending a request to the response's headers (then 504)
BODY_TIMEOUT = 60.0  # to receive a request body of up to REPLAY_LIMIT from the client
HEADER_TIMEOUT = 10.0  # from accepting a connection to its request's complete headers
IDLE_TIMEOUT = 30.0  # after a response, to the next request's complete headers (keep-alive)
# Client connections held at most: a quarter of the descriptor limit, within these bounds.
# Each in a request takes another descriptor to an instance, and kept-alive connections to
# instances wait in a pool; the rest is the control socket's, the health probes', the
# balancers' and the services' pipes'.
MIN_CONNECTIONS, MAX_CONNECTIONS = 64, 10_000

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
CLIENT_GONE = 499  # recorded when the client went away before its response was complete


def default_max_connections() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(MIN_CONNECTIONS, min(MAX_CONNECTIONS, soft // 4))


# ---- hosts


def host_name(value: str) -> str | None:
    """The name in a Host header (`name`, `name:port`, `[v6]:port`), lowercased and without a
    trailing dot; None when it is not one."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[:end + 1], value[end + 1:]
        if rest and not rest.startswith(":"):
            return None
        port = rest[1:]
    else:
        name, _, port = value.partition(":")
    if port and not port.isdigit():
        return None
    name = name.rstrip(".")
    return name or None


def is_local(name: str) -> bool:
    return name in LOCAL_HOSTS or name.endswith(".localhost")


# ---- paths


def split_path(raw_path: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A request's path as (raw segments, decoded segments), dot segments resolved on the
    decoded ones (RFC 3986 §5.2.4): routes match the decoded segments and the raw ones are
    forwarded, so `/%73vc/x` is `/svc/x` for routing and an encoded `/` (`%2F`) stays inside
    its segment."""
    raw_segments = raw_path.split("/")[1:]
    out_raw: list[str] = []
    out_decoded: list[str] = []
    for i, raw in enumerate(raw_segments):
        decoded = unquote(raw)
        last = i == len(raw_segments) - 1
        if decoded in (".", ".."):
            if decoded == ".." and out_raw:
                out_raw.pop()
                out_decoded.pop()
            if last:  # `/a/..` is `/`, `/a/.` is `/a/`
                out_raw.append("")
                out_decoded.append("")
            continue
        out_raw.append(raw)
        out_decoded.append(decoded)
    return tuple(out_raw), tuple(out_decoded)


def prefix_segments(prefix: str) -> tuple[str, ...]:
    stripped = prefix.strip("/")
    return tuple(stripped.split("/")) if stripped else ()


# ---- routes


@dataclass(frozen=True)
class RouteSpec:
    """What the ingress knows of one service: its name, declared host and path prefix, and,
    for a data service, its kind (it gets no route: it speaks no HTTP)."""

    name: str
    host: str | None = None
    path: str | None = None
    strip_prefix: bool = False
    data_kind: str | None = None
    port: int | None = None
    running: bool = True


@dataclass(frozen=True)
class Target:
    service: str
    prefix: str = ""
    strip: bool = False
    segments: tuple[str, ...] = ()

    def forward(self, raw: tuple[str, ...]) -> str:
        """The path sent to the instance: the raw path, less the prefix when stripped."""
        if self.strip:
            raw = raw[len(self.segments):]
        return "/" + "/".join(raw)


@dataclass(frozen=True)
class NoHttp:
    """A data service asked for over HTTP."""

    service: str
    kind: str
    port: int | None

    def message(self) -> str:
        where = f" at 127.0.0.1:{self.port}" if self.port else ""
        return (f"'{self.service}' is a {self.kind} data service: it speaks the {self.kind} "
                f"protocol, not HTTP, so the ingress does not route to it. Connect a "
                f"{self.kind} client to it{where} (services that depend on it get its URL "
                "in their environment).")


@dataclass(frozen=True)
class RouteTable:
    hosts: dict[str, Target]
    prefixes: list[tuple[str, Target]]  # longest first
    data: dict[str, NoHttp] = field(default_factory=dict)  # by host
    declared: frozenset[str] = frozenset()  # hosts services declare, routed or not

    def allows(self, name: str | None) -> bool:
        return name is not None and (is_local(name) or name in self.declared)

    def match(self, host: str, decoded: tuple[str, ...]) -> Target | NoHttp | None:
        if host in self.hosts:
            return self.hosts[host]
        if host in self.data:
            return self.data[host]
        for _, target in self.prefixes:
            if decoded[:len(target.segments)] == target.segments:
                return target
        return None

    def describe(self) -> list[str]:
        out = [f"http://{h}/ -> {t.service}" for h, t in self.hosts.items()]
        out += [f"{p} -> {t.service}" for p, t in self.prefixes]
        return out


def build_routes(services: Iterable[RouteSpec]) -> RouteTable:
    hosts: dict[str, Target] = {}
    prefixes: list[tuple[str, Target]] = []
    data: dict[str, NoHttp] = {}
    declared: set[str] = set()
    for spec in services:
        host = host_name(spec.host) if spec.host else None
        if host:
            declared.add(host)
        if spec.data_kind is not None:
            refusal = NoHttp(spec.name, spec.data_kind, spec.port)
            for name in (f"{spec.name}.localhost", host):
                if name:
                    data[name] = refusal
            continue
        if not spec.running:
            continue
        hosts[f"{spec.name}.localhost"] = Target(spec.name)
        if host:
            hosts[host] = Target(spec.name)
        if spec.path:
            segments = prefix_segments(spec.path)
            prefixes.append((spec.path, Target(spec.name, spec.path, spec.strip_prefix,
                                               segments)))
    prefixes.sort(key=lambda p: len(p[1].segments), reverse=True)
    return RouteTable(hosts, prefixes, data, frozenset(declared))


# ---- headers


def end_to_end(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """The headers to forward: every one but the hop-by-hop ones, and those the message's
    `Connection` header names (RFC 9110 §7.6.1). Repeated headers stay repeated."""
    named: set[str] = set()
    getall = getattr(headers, "getall", None)
    connection = getall("Connection", []) if getall else [headers.get("Connection", "")]
    for value in connection:
        named.update(token.strip().lower() for token in value.split(",") if token.strip())
    drop = HOP_BY_HOP | named
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


def forward_headers(request: web.BaseRequest, host: str,
                    edge: Edge | None = None) -> CIMultiDict[str]:
    headers = end_to_end(request.headers)
    if edge is not None:  # the instance's parent is the edge span
        headers["traceparent"] = edge.outgoing.header()
        headers.popall("tracestate", None)
        if edge.tracestate is not None:
            headers["tracestate"] = edge.tracestate
    headers.popall("Expect", None)  # answered by the ingress, which then reads the body
    headers["Host"] = host
    headers["X-Forwarded-Host"] = host
    headers["X-Forwarded-Proto"] = request.scheme
    peer = request.remote or ""
    prior = ", ".join(request.headers.getall("X-Forwarded-For", []))
    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    return headers


# ---- edge spans


class Edge:
    """One request's edge span while it is answered: its trace context, what it was routed
    to, and when it started."""

    __slots__ = ("instance", "method", "outgoing", "parent", "path", "route", "sent",
                 "service", "start_ns", "started", "tracestate")

    def __init__(self, request: web.BaseRequest):
        headers = request.headers
        self.parent = context.parse_headers(headers.getall("traceparent", []))
        self.tracestate = context.tracestate(self.parent, headers.getall("tracestate", []))
        self.outgoing = context.child(self.parent, context.new_span_id())
        self.method = request.method
        self.path = request.rel_url.raw_path
        self.route = ""
        self.service = ""
        self.instance: str | None = None
        self.sent: int | None = None  # the status the client was sent, once it was
        self.start_ns = time.time_ns()
        self.started = time.perf_counter_ns()

    def finish(self, status: int, error: str | None, host: str | None) -> RequestSeen:
        """The request as answered: what metrics count and, in the trace store, its span."""
        outgoing, parent = self.outgoing, self.parent
        return RequestSeen(self.route, self.service, self.instance, self.method, self.path,
                           status, self.start_ns,
                           (time.perf_counter_ns() - self.started) / 1e9, outgoing.trace_id,
                           outgoing.span_id, parent.span_id if parent else None, host, error)


class IngressError(web.Response):
    """A response the ingress made itself, with what went wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(status=status, text=f"devenv ingress: {message}\n")
        self.message = message


def span_error(response: web.StreamResponse) -> str | None:
    """The error an edge span records for this response: every 5xx, and the ingress's own
    refusals of a misdirected request (421); None for the rest."""
    status = response.status
    if isinstance(response, IngressError) and (status >= 500 or status == 421):
        return response.message.split("\n", 1)[0]
    if status >= 500:
        return f"HTTP {status}"
    return None


# ---- connections


RequestHandlerFn = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def _raw_response(status: str, text: str) -> bytes:
    body = text.encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


class _Connections(web.Server):
    """aiohttp's low-level server, holding its connections to account: a connection closes
    unless it sends a request's headers within `header_timeout` of being accepted; after a
    response, aiohttp's keep-alive timeout (`keepalive_timeout`, which also runs from the
    accept) bounds the wait for the next request's headers, whether none comes or they
    trickle. Past `limit`, a new connection makes room by closing the oldest one that is not
    in a request, and is itself answered 503 when every connection is."""

    def __init__(self, handler: RequestHandlerFn, *, limit: int, header_timeout: float,
                 **kwargs: Any):
        super().__init__(self._tracked, **kwargs)
        self._inner = handler
        self.limit = limit
        self.header_timeout = header_timeout
        self._open: set[web.RequestHandler] = set()
        # connections not in a request, oldest first; the timer is the header timeout of a
        # connection that has not sent its first request yet
        self._waiting: dict[web.RequestHandler, asyncio.TimerHandle | None] = {}
        self.timed_out = 0
        self.evicted = 0
        self.refused = 0

    def connection_made(self, handler: web.RequestHandler,
                        transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self._open.add(handler)
        if len(self._open) > self.limit:
            victim = next(iter(self._waiting), None)
            if victim is None:
                self.refused += 1
                transport.write(_raw_response(
                    "503 Service Unavailable",
                    f"devenv ingress: {self.limit} connections are open, every one in a "
                    "request; try again shortly\n"))
                handler.force_close()
                return
            self.evicted += 1
            self._close(victim)
        loop = asyncio.get_running_loop()
        self._waiting[handler] = loop.call_later(self.header_timeout, self._expire, handler)

    def connection_lost(self, handler: web.RequestHandler,
                        exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self._open.discard(handler)
        timer = self._waiting.pop(handler, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, handler: web.RequestHandler) -> None:
        if self._waiting.get(handler) is not None:  # (still waiting for its first request)
            self.timed_out += 1
            self._close(handler)

    def _close(self, handler: web.RequestHandler) -> None:
        timer = self._waiting.pop(handler, None)
        if timer is not None:
            timer.cancel()
        handler.force_close()  # nothing written: an idle connection may be about to be used

    async def _tracked(self, request: web.BaseRequest) -> web.StreamResponse:
        handler = request.protocol
        timer = self._waiting.pop(handler, None)
        if timer is not None:
            timer.cancel()
        try:
            return await self._inner(request)
        finally:
            if handler in self._open:
                self._waiting[handler] = None  # idle again: keep-alive, evicted first


# ---- the ingress


class Ingress:
    def __init__(self, port: int, pools: Callable[[str], Pool | None], *,
                 response_timeout: float = RESPONSE_TIMEOUT,
                 header_timeout: float = HEADER_TIMEOUT, idle_timeout: float = IDLE_TIMEOUT,
                 connect_timeout: float = CONNECT_TIMEOUT, body_timeout: float = BODY_TIMEOUT,
                 max_connections: int | None = None, hub: Hub | None = None):
        self.port = port
        self.pools = pools
        self.hub = hub  # None: no edge spans, no requests published
        self.routes = RouteTable({}, [])
        self.response_timeout = response_timeout
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections
        self.server: _Connections | None = None
        self._runner: web.ServerRunner | None = None
        self._pooled: aiohttp.ClientSession | None = None  # keep-alive to the instances
        self._fresh: aiohttp.ClientSession | None = None  # a new connection each request

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        limit = self.max_connections or default_max_connections()
        self.server = _Connections(self._handle, limit=limit,
                                   header_timeout=self.header_timeout,
                                   keepalive_timeout=self.idle_timeout,
                                   handler_cancellation=True)
        self._pooled = self._client(limit, force_close=False)
        self._fresh = self._client(limit, force_close=True)
        self._runner = web.ServerRunner(self.server, handle_signals=False,
                                        shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    def _client(self, limit: int, force_close: bool) -> aiohttp.ClientSession:
        trace = aiohttp.TraceConfig()
        trace.on_connection_reuseconn.append(_note_reuse)
        session = aiohttp.ClientSession(
            auto_decompress=False, trace_configs=[trace],
            connector=aiohttp.TCPConnector(limit=limit, force_close=force_close),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout))
        # aiohttp itself resends an idempotent request once when a connection closes without
        # an answer, even a fresh one; the ingress decides (`_send`)
        session._retry_connection = False
        return session

    async def close(self) -> None:
        if self._runner:
            await self._runner.cleanup()
        for session in (self._pooled, self._fresh):
            if session:
                await session.close()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        hub = self.hub
        if hub is None:
            return await self._answer(request, None)
        edge = Edge(request)
        status = CLIENT_GONE
        error: str | None = "the client went away before the response was complete"
        try:
            response = await self._answer(request, edge)
            status, error = response.status, span_error(response)
            return response
        except Exception as exc:  # (answered 500 by aiohttp)
            status, error = 500, f"the ingress failed: {exc!r}"
            raise
        finally:
            if status == CLIENT_GONE and edge.sent is not None:
                # the client left a websocket, or a streamed body: its answer had begun
                status, error = edge.sent, None
            header = request.headers.get("Host")
            hub.request(edge.finish(status, error, host_name(header) if header else None))

    async def _answer(self, request: web.BaseRequest,
                      edge: Edge | None) -> web.StreamResponse:
        header = request.headers.get("Host")
        host = host_name(header) if header is not None else "127.0.0.1"  # HTTP/1.0, no Host
        if not self.routes.allows(host):
            return _misdirected(header or "")
        assert host is not None
        raw_path = request.rel_url.raw_path
        if not raw_path.startswith("/"):
            return _error(400, f"the request target {raw_path!r} is not a path")
        raw, decoded = split_path(raw_path)
        target = self.routes.match(host, decoded)
        if isinstance(target, NoHttp):
            return _error(404, target.message())
        if edge is not None and target is not None:
            edge.route, edge.service = target.prefix or host, target.service
        pool = self.pools(target.service) if target else None
        if target is None or pool is None:
            return self._not_found(request)
        query = request.rel_url.raw_query_string
        suffix = target.forward(raw) + (f"?{query}" if query else "")
        forwarded_host = header or "127.0.0.1"
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request, pool, target.service, suffix, forwarded_host,
                                         edge)
        return await self._proxy(request, pool, target.service, suffix, forwarded_host, edge)

    async def _proxy(self, request: web.BaseRequest, pool: Pool, service: str, suffix: str,
                     host: str, edge: Edge | None = None) -> web.StreamResponse:
        body: bytes | aiohttp.StreamReader | None = None
        if request.body_exists and request.headers.get("Expect", "").lower() == "100-continue" \
                and request.version == aiohttp.HttpVersion11:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # as aiohttp's own
            request.writer.output_size = 0
        if request.body_exists:
            length = request.content_length
            if length is not None and length <= REPLAY_LIMIT:
                try:
                    async with asyncio.timeout(self.body_timeout):
                        body = await request.read()
                except TimeoutError:
                    return _error(408, f"the request body did not arrive within "
                                  f"{self.body_timeout:g}s")
            else:
                body = request.content  # streamed; read only once a connection is open
        headers = forward_headers(request, host, edge)
        loop = asyncio.get_running_loop()
        hold_until = loop.time() + pool.hold_timeout
        tried: set[str] = set()
        refused: list[str] = []
        for _ in range(ATTEMPTS):
            try:
                async with pool.use(tried, timeout=max(0.0, hold_until - loop.time()),
                                    busy=True) as backend:
                    if edge is not None:
                        edge.instance = backend.id
                    # encoded=True: the path goes out byte for byte as the client sent it
                    url = URL(f"http://{backend.host}:{backend.port}{suffix}", encoded=True)
                    try:
                        async with asyncio.timeout(self.response_timeout):
                            upstream = await self._send(request.method, url, headers, body)
                    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError
                            ) as exc:  # never received: another instance may take it
                        tried.add(backend.id)
                        refused.append(f"{backend.id}: {_reason(exc)}")
                        if edge is not None:
                            edge.instance = None  # it never took the request
                        continue
                    except TimeoutError:
                        return _error(504, f"service '{service}' (instance {backend.id}) did "
                                      f"not answer within {self.response_timeout:g}s (the "
                                      "ingress's upstream timeout); the request was sent, "
                                      "so it was not retried")
                    except aiohttp.ClientResponseError as exc:
                        return _error(502, f"service '{service}' (instance {backend.id}) "
                                      f"answered something that is not HTTP: {exc.message}")
                    except (aiohttp.ClientError, OSError) as exc:
                        return _error(502, f"service '{service}' (instance {backend.id}) "
                                      f"closed the connection without answering "
                                      f"({_reason(exc)}); the request was sent, so it was "
                                      "not retried on another instance")
                    try:
                        return await _relay(request, upstream, edge)
                    finally:
                        upstream.release()  # back to the pool if read to the end, else closed
            except NoBackend:
                if refused:
                    return _error(502, f"service '{service}': no instance took the "
                                  f"connection ({'; '.join(refused)}) and no other became "
                                  f"ready within {pool.hold_timeout:g}s; see `devenv status`")
                return _error(503, f"service '{service}' has no ready instance "
                              f"(waited {pool.hold_timeout:g}s); see `devenv status`")
        return _error(502, f"service '{service}': no instance took the connection "
                      f"({'; '.join(refused)})")

    async def _send(self, method: str, url: URL, headers: CIMultiDict[str],
                    body: bytes | aiohttp.StreamReader | None) -> aiohttp.ClientResponse:
        """Send a request to an instance, up to its response's headers.

        An idempotent request with no streamed body goes on a kept-alive connection; when that
        connection turns out closed with no answer (the instance closed it as it sat idle),
        it is sent once more on a new one (RFC 9112 §9.3.1.1). Every other request goes on a
        new connection, so that one closed with no answer means that the instance received
        the request: it is not sent again."""
        assert self._pooled is not None and self._fresh is not None
        options: dict[str, Any] = {
            "headers": headers, "data": body, "allow_redirects": False,
            "skip_auto_headers": ("User-Agent", "Accept-Encoding")}
        if method not in IDEMPOTENT or isinstance(body, aiohttp.StreamReader):
            return await self._fresh.request(method, url, **options)
        reuse = {"reused": False}
        try:
            return await self._pooled.request(method, url, trace_request_ctx=reuse, **options)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            if isinstance(exc, aiohttp.ClientConnectorError) or not reuse["reused"]:
                raise
        return await self._fresh.request(method, url, **options)

    async def _websocket(self, request: web.BaseRequest, pool: Pool, service: str,
                         suffix: str, host: str, edge: Edge | None = None
                         ) -> web.StreamResponse:
        assert self._fresh is not None
        protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "")
                     .split(",") if p.strip()]
        headers = CIMultiDict((k, v) for k, v in forward_headers(request, host, edge).items()
                              if not k.lower().startswith("sec-websocket"))
        try:
            async with pool.use() as backend:
                if edge is not None:
                    edge.instance = backend.id
                url = URL(f"ws://{backend.host}:{backend.port}{suffix}", encoded=True)
                try:
                    async with asyncio.timeout(self.response_timeout):
                        upstream = await self._fresh.ws_connect(url, headers=headers,
                                                                  protocols=protocols)
                except TimeoutError:
                    return _error(504, f"service '{service}' (instance {backend.id}) did not "
                                  f"accept the websocket within {self.response_timeout:g}s")
                except aiohttp.WSServerHandshakeError as exc:
                    return _error(502, f"service '{service}' refused the websocket: "
                                  f"{exc.status} {exc.message}")
                except (aiohttp.ClientError, OSError) as exc:
                    return _error(502, f"service '{service}' (instance {backend.id}): "
                                  f"websocket: {_reason(exc)}")
                try:
                    # confirm to the client only the subprotocol the backend chose
                    chosen = (upstream.protocol,) if upstream.protocol else ()
                    client = web.WebSocketResponse(protocols=chosen)
                    if not chosen and protocols:  # (aiohttp would warn of no overlap)
                        without = request.headers.copy()
                        without.popall("Sec-WebSocket-Protocol")
                        request = request.clone(headers=without)
                    await client.prepare(request)
                    if edge is not None:
                        edge.sent = client.status
                    await asyncio.gather(_ws_pump(client, upstream), _ws_pump(upstream, client))
                    return client
                finally:
                    await upstream.close()
        except NoBackend:
            return _error(503, f"service '{service}' has no ready instance for this websocket "
                          f"(waited {pool.hold_timeout:g}s); see `devenv status`")

    def _not_found(self, request: web.BaseRequest) -> web.Response:
        routes = "".join(f"<li>{html.escape(r)}</li>" for r in self.routes.describe())
        text = (f"<h1>devenv: no route</h1><p>Nothing is routed for host "
                f"<code>{html.escape(request.host)}</code> and path "
                f"<code>{html.escape(request.path)}</code>.</p><p>Routes:</p><ul>{routes}</ul>")
        return web.Response(status=404, text=text, content_type="text/html")


def _misdirected(host: str) -> web.Response:
    name = host_name(host) or "NAME"
    return _error(421, f"the host {host!r} is not served here.\n"
                  "The ingress answers only localhost, *.localhost, 127.0.0.1 and [::1] (on "
                  "any port) and the hosts services declare, so that a web page on another "
                  "site cannot reach your services through a name it points at 127.0.0.1 "
                  "(DNS rebinding).\nTo serve this name, declare it on a service in "
                  f"devenv.yaml:  ingress: {{host: {name}}}")


async def _note_reuse(session: aiohttp.ClientSession, context: Any,
                      params: aiohttp.TraceConnectionReuseconnParams) -> None:
    if isinstance(context.trace_request_ctx, dict):
        context.trace_request_ctx["reused"] = True


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.os_error.strerror or str(exc.os_error) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connection timed out"
    return str(exc) or type(exc).__name__


async def _relay(request: web.BaseRequest, upstream: aiohttp.ClientResponse,
                 edge: Edge | None = None) -> web.StreamResponse:
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    response.headers.extend(end_to_end(upstream.headers))
    await response.prepare(request)
    if edge is not None:
        edge.sent = response.status
    while True:
        try:
            chunk = await upstream.content.readany()
        except (aiohttp.ClientError, OSError):
            # the instance broke off mid-body: the client must see a cut response, not an end
            if request.transport is not None:
                request.transport.abort()
            return response
        if not chunk:
            break
        await response.write(chunk)
    await response.write_eof()
    return response


def _error(status: int, message: str) -> web.Response:
    return IngressError(status, message)


async def _ws_pump(src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                   dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
    async for msg in src:
        if msg.type == aiohttp.WSMsgType.TEXT:
            await dst.send_str(msg.data)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        else:
            break
    with contextlib.suppress(Exception):
        await dst.close()
