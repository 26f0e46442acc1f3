"""The web dashboard on the telemetry address: one static page (engine/dashboard/) and the
JSON and event-stream API it reads (`/api/...`).

Only the engine's user may read it: the URL `devenv dashboard` prints carries the engine's
token; the first load trades it for an HttpOnly, SameSite=Strict cookie and redirects to `/`
without it. Every other request needs that cookie (or `Authorization: Bearer <token>`).
Requests naming another host than 127.0.0.1:<port> or localhost:<port> are refused (DNS
rebinding), and every answer forbids framing and anything but the page's own files.

`Monitor` keeps the time series the charts draw (telemetry/series.py): it counts the requests
the ingress publishes and samples each service's CPU and memory every 5 s, whether a page is
open or not, so that a page opened later has the last 15 minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import json
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from devenv.engine.events import Logged, StateChanged
from devenv.telemetry import store
from devenv.telemetry.model import Span
from devenv.telemetry.series import BUCKET_S, Series
from devenv.wire import Trace, to_json

if TYPE_CHECKING:
    from devenv.engine.app import Environment

STATIC = {"app.js": "text/javascript", "app.css": "text/css"}
BACKLOG = 2000  # log lines a page starts with
HEARTBEAT_S = 15.0  # an idle event stream writes a comment this often (to notice closed pages)
TRACE_LIMIT = 200
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
UNAUTHORIZED_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>devenv dashboard: token needed</title></head>
<body><h1>401: this dashboard needs its token</h1>
<p>Open the URL that <code>devenv dashboard</code> prints (run it in the project's folder).
The token changes each time the engine starts, so an older URL no longer works.</p>
</body></html>
"""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TraceSource(Protocol):
    """What the dashboard needs of the trace store (`env.traces`); either method may be a
    coroutine. Spans of one trace come in any order."""

    def recent(self, limit: int, services: list[str] | None) -> Any:
        """-> list[list[Span]]: the newest traces first, each with its spans."""

    def get(self, trace_id: str) -> Any:
        """-> list[Span] | None"""


class Monitor:
    """The charts' time series, kept while the engine runs."""

    def __init__(self, env: Environment, interval: float = BUCKET_S):
        self.env = env
        self.interval = interval
        self.series = Series()
        self.latest: dict[str, tuple[float, int]] = {}  # service -> (cpu %, rss bytes)
        self.closed = asyncio.Event()  # set when the engine halts: open pages' streams end
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is not None:
            return
        self.closed.clear()
        self.env.engine.ctx.hub.request_sinks.append(self.series.request)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self.closed.set()
        sinks = self.env.engine.ctx.hub.request_sinks
        if self.series.request in sinks:
            sinks.remove(self.series.request)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def sample(self) -> None:
        """CPU (since the previous sample) and memory of every running service."""
        now = time.time()
        runners = self.env.engine.runners
        for name, runner in runners.items():
            cpu, rss, seen = 0.0, 0, False
            for rep in runner.replicas:
                res = rep.instance.resources() if rep.instance else None
                if res:
                    cpu, rss, seen = cpu + res.cpu_percent, rss + res.rss_bytes, True
            if seen:
                self.latest[name] = (round(cpu, 1), rss)
                self.series.sample(now, name, round(cpu, 1), rss)
            else:
                self.latest.pop(name, None)
        for name in [n for n in self.latest if n not in runners]:
            del self.latest[name]
        self.series.forget(set(runners))


# ---- access


def cookie_name(request: web.Request) -> str:
    """One cookie per port: browsers share cookies across the ports of a host, and each
    project's engine has its own address and token."""
    return f"devenv_dashboard_{local_port(request)}"


def local_port(request: web.Request) -> int | None:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return int(sockname[1]) if sockname else None


def host_allowed(request: web.Request) -> bool:
    port = local_port(request)
    return request.headers.get("Host", "").lower() in {f"127.0.0.1:{port}",
                                                       f"localhost:{port}"}


def same(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def authorized(request: web.Request, token: str) -> bool:
    bearer = request.headers.get("Authorization", "")
    if bearer.startswith("Bearer ") and same(bearer.removeprefix("Bearer ").strip(), token):
        return True
    return same(request.cookies.get(cookie_name(request)), token)


def _secured(response: web.StreamResponse) -> web.StreamResponse:
    response.headers.update(SECURITY_HEADERS)
    return response


def _refused(request: web.Request) -> web.Response:
    port = local_port(request)
    return web.Response(status=403, text=f"refused: this dashboard answers only at "
                        f"http://127.0.0.1:{port}/ (not {request.headers.get('Host', '?')})\n")


def _unauthorized(api: bool) -> web.Response:
    if api:
        return web.json_response({"error": "this dashboard needs its token: open the URL "
                                  "`devenv dashboard` prints"}, status=401)
    return web.Response(status=401, text=UNAUTHORIZED_PAGE, content_type="text/html")


def guard(handler: Handler, token: str, api: bool) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        if not host_allowed(request):
            return _secured(_refused(request))
        if not authorized(request, token):
            return _secured(_unauthorized(api))
        response = await handler(request)
        if not response.prepared:
            _secured(response)
        return response

    return guarded


# ---- routes


def add_routes(app: web.Application, env: Environment, token: str) -> None:
    folder = resources.files("devenv.engine").joinpath("dashboard")
    page = folder.joinpath("index.html").read_bytes()
    files = {name: folder.joinpath(name).read_bytes() for name in STATIC}

    async def index(request: web.Request) -> web.StreamResponse:
        if not host_allowed(request):
            return _secured(_refused(request))
        given = request.query.get("token")
        if given is not None:  # the printed URL: trade the token for a cookie
            if not same(given, token):
                return _secured(_unauthorized(api=False))
            response = web.Response(status=303, headers={"Location": "/"})
            response.set_cookie(cookie_name(request), token, path="/", httponly=True,
                                samesite="Strict")
            return _secured(response)
        if not authorized(request, token):
            return _secured(_unauthorized(api=False))
        return _secured(web.Response(body=page, content_type="text/html", charset="utf-8"))

    async def static(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in files:
            return web.Response(status=404, text="not found\n")
        return web.Response(body=files[name], content_type=STATIC[name], charset="utf-8")

    async def status(request: web.Request) -> web.StreamResponse:
        data = to_json(await env.status(resources=False))
        monitor: Monitor | None = getattr(env, "monitor", None)
        latest = monitor.latest if monitor else {}
        for svc in data["services"]:
            if svc["name"] in latest:
                svc["cpu_percent"], svc["rss_bytes"] = latest[svc["name"]]
        data["traces"] = getattr(env, "traces", None) is not None
        data["now"] = time.time()
        return web.json_response(data)

    async def series(request: web.Request) -> web.StreamResponse:
        monitor: Monitor | None = getattr(env, "monitor", None)
        if monitor is None:
            return web.json_response({"bucket_s": BUCKET_S, "start": time.time(),
                                      "services": {}})
        return web.json_response(monitor.series.snapshot(time.time()))

    async def events(request: web.Request) -> web.StreamResponse:
        return await event_stream(request, env)

    async def traces(request: web.Request) -> web.StreamResponse:
        source = _source(env)
        if source is None:
            return web.json_response({"available": False, "traces": []})
        try:
            limit = min(max(int(request.query.get("limit", "50")), 1), TRACE_LIMIT)
        except ValueError:
            return web.json_response({"error": "limit: not a number"}, status=400)
        services = request.query.getall("service", []) or None
        found = await _maybe_await(source.recent(limit, services))
        return web.json_response({"available": True,
                                  "traces": [summarize(spans) for spans in found if spans]})

    async def trace(request: web.Request) -> web.StreamResponse:
        source = _source(env)
        trace_id = request.match_info["trace_id"].lower()
        if source is None:
            return web.json_response({"error": "traces: not available"}, status=404)
        spans = await _maybe_await(source.get(trace_id))
        if not spans:
            return web.json_response({"error": f"no trace {trace_id}: unknown, or older than "
                                      "the trace store keeps"}, status=404)
        return web.json_response(trace_json(spans))

    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", guard(static, token, api=False))
    app.router.add_get("/api/status", guard(status, token, api=True))
    app.router.add_get("/api/series", guard(series, token, api=True))
    app.router.add_get("/api/events", guard(events, token, api=True))
    app.router.add_get("/api/traces", guard(traces, token, api=True))
    app.router.add_get("/api/traces/{trace_id}", guard(trace, token, api=True))


def _source(env: Environment) -> TraceSource | None:
    traces = getattr(env, "traces", None)
    return StoreSource(traces) if traces is not None else None


class StoreSource:
    """The trace store (telemetry/store.py) as the dashboard reads it: spans per trace."""

    def __init__(self, traces: store.Traces):
        self.traces = traces

    async def recent(self, limit: int, services: list[str] | None) -> list[list[Span]]:
        await asyncio.to_thread(self.traces.flush, 1.0)  # what arrived before the question
        query = store.Query(services=tuple(services or ()), limit=limit)
        return await asyncio.to_thread(self._read, query)

    async def get(self, trace_id: str) -> list[Span] | None:
        await asyncio.to_thread(self.traces.flush, 1.0)
        found = await asyncio.to_thread(store.trace, self.traces.path, trace_id)
        return _spans(found) if found else None

    def _read(self, query: store.Query) -> list[list[Span]]:
        found = [store.trace(self.traces.path, s.trace_id)
                 for s in reversed(store.recent(self.traces.path, query))]  # newest first
        return [_spans(t) for t in found if t is not None]


def _spans(trace: Trace) -> list[Span]:
    return [Span(trace_id=trace.trace_id, span_id=s.span_id, parent_id=s.parent_id,
                 service=s.service, name=s.name, start_ns=s.start_ns,
                 end_ns=s.start_ns + round(s.duration * 1e9), kind=s.kind, status=s.status,
                 status_message=s.status_message, instance=s.instance,
                 attributes=dict(s.attributes),
                 links=tuple((link.trace_id, link.span_id) for link in s.links))
            for s in trace.spans]


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def event_stream(request: web.Request, env: Environment) -> web.StreamResponse:
    """Server-sent events: `log` (the recent lines first, then each new one as it is stored)
    and `state` (a service changed state: the page fetches the status again)."""
    ctx = env.engine.ctx
    with ctx.events.subscribe(Logged, StateChanged) as sub:  # before the backlog: no gap
        backlog = sorted((line for name in env.engine.runners
                          for line in ctx.logs.recent(name, BACKLOG)), key=lambda ln: ln.ts)
        response = _secured(web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}))
        await response.prepare(request)
        last = 0.0
        chunk = [b"event: hello\ndata: {}\n\n"]
        for line in backlog[-BACKLOG:]:
            chunk.append(_sse("log", to_json(line)))
            last = line.ts
        await response.write(b"".join(chunk))
        monitor: Monitor | None = getattr(env, "monitor", None)
        closing = asyncio.ensure_future(_first(env.shutdown, *([monitor.closed] if monitor
                                                                else [])))
        try:
            while not closing.done():
                getter = asyncio.ensure_future(sub.get())
                done, _ = await asyncio.wait([getter, closing], timeout=HEARTBEAT_S,
                                             return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    if closing.done():
                        break
                    await response.write(b": idle\n\n")  # fails once the page is gone
                    continue
                event = getter.result()
                if isinstance(event, Logged):
                    if event.line.ts >= last:
                        await response.write(_sse("log", to_json(event.line)))
                elif isinstance(event, StateChanged):
                    await response.write(_sse("state", {"service": event.service,
                                                        "state": str(event.state)}))
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            closing.cancel()
    return response


async def _first(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _sse(kind: str, data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


# ---- traces as the page draws them


def summarize(spans: list[Span]) -> dict[str, Any]:
    """One row of the traces list: its root, services, span count, duration and errors."""
    start = min(s.start_ns for s in spans)
    end = max(s.end_ns for s in spans)
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if not s.parent_id or s.parent_id not in ids] or spans
    root = min(roots, key=lambda s: s.start_ns)
    services: list[str] = []
    for span in sorted(spans, key=lambda s: s.start_ns):
        if span.service not in services:
            services.append(span.service)
    return {"trace_id": root.trace_id, "root": f"{root.service}: {root.name}",
            "start": start / 1e9, "duration_ms": round((end - start) / 1e6, 3),
            "span_count": len(spans), "services": services,
            "errors": sum(1 for s in spans if s.status == "error")}


def trace_json(spans: list[Span]) -> dict[str, Any]:
    """A trace for the waterfall: its spans depth-first from the roots (children by start),
    each with its depth, offset from the trace's start and duration."""
    start = min(s.start_ns for s in spans)
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[Span]] = {}
    for span in spans:
        parent = span.parent_id if span.parent_id in ids else None
        children.setdefault(parent, []).append(span)
    ordered: list[tuple[int, Span]] = []
    seen: set[int] = set()  # (spans with repeated or circular ids are shown once)
    stack = [(0, s) for s in sorted(children.get(None, []), key=lambda s: -s.start_ns)]
    while stack:
        depth, span = stack.pop()
        if id(span) in seen:
            continue
        seen.add(id(span))
        ordered.append((depth, span))
        stack += [(depth + 1, c) for c in sorted(children.get(span.span_id, []),
                                                  key=lambda s: -s.start_ns)]
    ordered += [(0, s) for s in sorted(spans, key=lambda s: s.start_ns) if id(s) not in seen]
    return {**summarize(spans), "spans": [{
        "span_id": s.span_id, "parent_id": s.parent_id, "depth": depth, "service": s.service,
        "instance": s.instance, "name": s.name, "kind": s.kind, "status": s.status,
        "status_message": s.status_message, "offset_ms": round((s.start_ns - start) / 1e6, 3),
        "duration_ms": round(s.duration_ns / 1e6, 3), "attributes": s.attributes,
    } for depth, s in ordered]}
