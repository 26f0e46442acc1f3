"""The local ingress: one HTTP entry point on 127.0.0.1 routing to services' pools.

Routes by host (`<service>.localhost`, or a declared host) and then by path prefix, longest
first. Bodies stream both ways, websockets pass through, and while a service has no ready
instance (a restart) a request waits up to the hold timeout instead of failing. A request
that meets a backend that just died is retried on another when it can be replayed safely.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from devenv.engine.pool import NoBackend, Pool

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "trailers", "transfer-encoding", "upgrade", "host"}
REPLAY_LIMIT = 1024 * 1024  # request bodies up to this size are buffered so they can be retried
ATTEMPTS = 3


@dataclass(frozen=True)
class Target:
    service: str
    prefix: str = ""
    strip: bool = False


@dataclass(frozen=True)
class RouteTable:
    hosts: dict[str, Target]
    prefixes: list[tuple[str, Target]]  # longest first

    def match(self, host: str, path: str) -> Target | None:
        name = host.rsplit(":", 1)[0].lower() if not host.startswith("[") else host
        if name in self.hosts:
            return self.hosts[name]
        for prefix, target in self.prefixes:
            if path == prefix or path.startswith(prefix.rstrip("/") + "/") or prefix == "/":
                return target
        return None

    def describe(self) -> list[str]:
        out = [f"http://{h}/ -> {t.service}" for h, t in self.hosts.items()]
        out += [f"{p} -> {t.service}" for p, t in self.prefixes]
        return out


def build_routes(services: list[tuple[str, str | None, str | None, bool]]) -> RouteTable:
    """services: (name, extra host, path prefix, strip_prefix) for each service with a port."""
    hosts: dict[str, Target] = {}
    prefixes: list[tuple[str, Target]] = []
    for name, host, prefix, strip in services:
        hosts[f"{name}.localhost"] = Target(name)
        if host:
            hosts[host.lower()] = Target(name)
        if prefix:
            prefixes.append((prefix, Target(name, prefix, strip)))
    prefixes.sort(key=lambda p: len(p[0]), reverse=True)
    return RouteTable(hosts, prefixes)


class Ingress:
    def __init__(self, port: int, pools: Callable[[str], Pool | None]):
        self.port = port
        self.pools = pools
        self.routes = RouteTable({}, [])
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=REPLAY_LIMIT)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._session = aiohttp.ClientSession(
            auto_decompress=False, connector=aiohttp.TCPConnector(limit=0, force_close=False),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def close(self) -> None:
        if self._runner:
            await self._runner.cleanup()
        if self._session:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        target = self.routes.match(request.host, request.path)
        pool = self.pools(target.service) if target else None
        if target is None or pool is None:
            return self._not_found(request)
        path = request.rel_url.raw_path
        if target.strip and target.prefix != "/":
            path = path[len(target.prefix.rstrip("/")):] or "/"
        query = request.rel_url.raw_query_string
        suffix = path + (f"?{query}" if query else "")
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request, pool, suffix)
        return await self._proxy(request, pool, target.service, suffix)

    async def _proxy(self, request: web.Request, pool: Pool, service: str, suffix: str
                     ) -> web.StreamResponse:
        assert self._session is not None
        body: bytes | aiohttp.StreamReader | None = None
        replayable = True
        if request.body_exists:
            length = request.content_length
            if length is not None and length <= REPLAY_LIMIT:
                body = await request.read()
            else:
                body, replayable = request.content, False
        headers = _forward_headers(request)
        tried: set[str] = set()
        for attempt in range(ATTEMPTS):
            try:
                async with pool.use(tried) as backend:
                    url = f"http://{backend.host}:{backend.port}{suffix}"
                    try:
                        async with self._session.request(
                            request.method, url, headers=headers, data=body,
                            allow_redirects=False, skip_auto_headers=("User-Agent",
                                                                      "Accept-Encoding"),
                        ) as upstream:
                            return await _relay(request, upstream)
                    except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError,
                            aiohttp.ClientOSError) as exc:
                        tried.add(backend.id)
                        if not replayable or attempt == ATTEMPTS - 1:
                            return _error(502, f"{service}: {exc}")
            except NoBackend:
                return _error(503, f"service '{service}' has no ready instance "
                              f"(waited {pool.hold_timeout:g}s); see `devenv status`")
        return _error(502, f"{service}: no instance answered")

    async def _websocket(self, request: web.Request, pool: Pool, suffix: str
                         ) -> web.StreamResponse:
        assert self._session is not None
        protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "")
                     .split(",") if p.strip()]
        try:
            async with pool.use() as backend:
                url = f"ws://{backend.host}:{backend.port}{suffix}"
                headers = {k: v for k, v in _forward_headers(request).items()
                           if not k.lower().startswith("sec-websocket")}
                async with self._session.ws_connect(url, headers=headers,
                                                    protocols=protocols) as upstream:
                    client = web.WebSocketResponse(protocols=protocols)
                    await client.prepare(request)
                    await asyncio.gather(_ws_pump(client, upstream), _ws_pump(upstream, client))
                    return client
        except NoBackend:
            return _error(503, "no ready instance for this websocket")
        except aiohttp.ClientError as exc:
            return _error(502, f"websocket upstream: {exc}")

    def _not_found(self, request: web.Request) -> web.Response:
        routes = "".join(f"<li>{html.escape(r)}</li>" for r in self.routes.describe())
        text = (f"<h1>devenv: no route</h1><p>Nothing is routed for host "
                f"<code>{html.escape(request.host)}</code> and path "
                f"<code>{html.escape(request.path)}</code>.</p><p>Routes:</p><ul>{routes}</ul>")
        return web.Response(status=404, text=text, content_type="text/html")


def _forward_headers(request: web.Request) -> dict[str, str]:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    headers["Host"] = request.host
    headers["X-Forwarded-Host"] = request.host
    headers["X-Forwarded-Proto"] = request.scheme
    peer = request.remote or ""
    prior = request.headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    return headers


async def _relay(request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    for name, value in upstream.headers.items():
        if name.lower() not in HOP_BY_HOP:
            response.headers.add(name, value)
    await response.prepare(request)
    async for chunk in upstream.content.iter_any():
        await response.write(chunk)
    await response.write_eof()
    return response


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=f"devenv ingress: {message}\n")


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
