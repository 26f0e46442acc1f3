"""The web dashboard on the telemetry address: one static page (engine/dashboard/) and the
JSON and event-stream API it reads (`/api/...`).

Only the engine's user may read it. The URL `devenv dashboard` prints carries the engine's
token in its fragment (`/#token=...`), which the browser never sends to any server: the page
keeps it in sessionStorage (this tab, this origin), drops it from the address bar, and sends
it as `Authorization: Bearer <token>` with every API call. No cookie is ever set: a browser
would send it to every port of 127.0.0.1, i.e. to every service the user opens. The page and
its files hold no data and are served to anyone; every `/api/*` call needs the token.
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
import json
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from devenv.engine.events import Logged, StateChanged
from devenv.telemetry import store
from devenv.telemetry.series import BUCKET_S, Series
from devenv.wire import SpanInfo, Trace, TraceSummary, to_json

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

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TraceSource(Protocol):
    """What the dashboard needs of the trace store (`env.traces`)."""

    async def recent(self, limit: int, services: list[str] | None) -> list[TraceSummary]:
        """The newest traces first (summaries only: no spans)."""

    async def get(self, trace_id: str) -> Trace | None:
        """One trace with its spans."""


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
        self.env.engine.ctx.hub.request_sinks.append(self.series.requests)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self.closed.set()
        sinks = self.env.engine.ctx.hub.request_sinks
        if self.series.requests in sinks:
            sinks.remove(self.series.requests)
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
    """`Authorization: Bearer <token>`, and nothing else (no cookie, no query)."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and same(given.strip(), token)


def _secured(response: web.StreamResponse) -> web.StreamResponse:
    response.headers.update(SECURITY_HEADERS)
    return response


def _refused(request: web.Request) -> web.Response:
    port = local_port(request)
    return web.Response(status=403, text=f"refused: this dashboard answers only at "
                        f"http://127.0.0.1:{port}/ (not {request.headers.get('Host', '?')})\n")


def _unauthorized() -> web.Response:
    return web.json_response({"error": "this dashboard needs its token: open the URL "
                              "`devenv dashboard` prints"}, status=401,
                             headers={"WWW-Authenticate": 'Bearer realm="devenv dashboard"'})


def guard(handler: Handler, token: str | None) -> Handler:
    """The Host check and the security headers on every answer; with `token`, the bearer
    token too (the API)."""
    async def guarded(request: web.Request) -> web.StreamResponse:
        if not host_allowed(request):
            return _secured(_refused(request))
        if token is not None and not authorized(request, token):
            return _secured(_unauthorized())
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
        return web.Response(body=page, content_type="text/html", charset="utf-8")

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
        found = await source.recent(limit, services)
        return web.json_response({"available": True, "traces": to_json(found)})

    async def trace(request: web.Request) -> web.StreamResponse:
        source = _source(env)
        trace_id = request.match_info["trace_id"].lower()
        if source is None:
            return web.json_response({"error": "traces: not available"}, status=404)
        found = await source.get(trace_id)
        if found is None:
            return web.json_response({"error": f"no trace {trace_id}: unknown, or older than "
                                      "the trace store keeps"}, status=404)
        return web.json_response(trace_json(found))

    app.router.add_get("/", guard(index, None))
    app.router.add_get("/static/{name}", guard(static, None))
    app.router.add_get("/api/status", guard(status, token))
    app.router.add_get("/api/series", guard(series, token))
    app.router.add_get("/api/events", guard(events, token))
    app.router.add_get("/api/traces", guard(traces, token))
    app.router.add_get("/api/traces/{trace_id}", guard(trace, token))


def _source(env: Environment) -> TraceSource | None:
    traces = getattr(env, "traces", None)
    return StoreSource(traces) if traces is not None else None


class StoreSource:
    """The trace store (telemetry/store.py) as the dashboard reads it: the list from its
    summaries (no spans), the spans of one trace only when it is opened."""

    def __init__(self, traces: store.Traces):
        self.traces = traces

    async def recent(self, limit: int, services: list[str] | None) -> list[TraceSummary]:
        await asyncio.to_thread(self.traces.flush, 1.0)  # what arrived before the question
        query = store.Query(services=tuple(services or ()), limit=limit)
        found = await asyncio.to_thread(store.recent, self.traces.path, query)
        return found[::-1]  # newest first

    async def get(self, trace_id: str) -> Trace | None:
        await asyncio.to_thread(self.traces.flush, 1.0)
        return await asyncio.to_thread(store.trace, self.traces.path, trace_id)


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


def trace_json(trace: Trace) -> dict[str, Any]:
    """A trace for the waterfall: its summary, and its spans depth-first from the roots
    (children by start), each with its depth, offset from the trace's start and duration."""
    spans = trace.spans
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[SpanInfo]] = {}
    for span in spans:
        parent = span.parent_id if span.parent_id in ids else None
        children.setdefault(parent, []).append(span)
    ordered: list[tuple[int, SpanInfo]] = []
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
    summary = {k: v for k, v in to_json(trace).items() if k != "spans"}
    return {**summary, "spans": [{
        "span_id": s.span_id, "parent_id": s.parent_id, "depth": depth, "service": s.service,
        "instance": s.instance, "name": s.name, "kind": s.kind, "status": s.status,
        "status_message": s.status_message, "offset_ms": round(s.offset * 1e3, 3),
        "duration_ms": round(s.duration * 1e3, 3), "attributes": s.attributes,
    } for depth, s in ordered]}
