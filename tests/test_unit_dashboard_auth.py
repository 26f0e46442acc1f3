"""The dashboard's doors, in-process on a real socket: the token in the printed URL becomes
an HttpOnly cookie, nothing answers without it (or a bearer token), foreign Host headers are
refused, every answer carries the security headers; and the API's traces and event stream."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from devenv.engine.api import dashboard
from devenv.engine.events import Events, Logged
from devenv.runtime.base import Resources
from devenv.telemetry.model import Hub, RequestSeen, Span
from devenv.telemetry.store import Traces
from devenv.wire import EnvironmentStatus, LogLine

TOKEN = "s3cret-token"


def stored(folder: Path, spans: list[Span]) -> Traces:
    """A real trace store holding `spans` (what the OTLP receiver and the ingress fill)."""
    traces = Traces(folder)
    traces.open(64 * 1024 * 1024, 3600.0)
    traces.add(spans)
    assert traces.flush()
    return traces


def fake_env(traces: Traces | None = None) -> Any:
    ctx = SimpleNamespace(events=Events(), logs=SimpleNamespace(recent=lambda name, n: [
        LogLine(1.0, "api", "1", "out", "api listening")]))

    async def status(resources: bool) -> EnvironmentStatus:
        return EnvironmentStatus(project="demo", running=True, ingress=None, services=[])

    instance = SimpleNamespace(resources=lambda: Resources(cpu_percent=3.5, rss_bytes=4096))
    runner = SimpleNamespace(replicas=[SimpleNamespace(instance=instance)])
    ctx.hub = Hub()
    env = SimpleNamespace(engine=SimpleNamespace(ctx=ctx, runners={"api": runner}),
                          shutdown=asyncio.Event(), status=status)
    if traces is not None:
        env.traces = traces
    return env


def run(scenario: Callable[[TestClient[Any, Any], Any], Awaitable[None]],
        traces: Traces | None = None) -> None:
    async def main() -> None:
        env = fake_env(traces)
        app = web.Application()
        dashboard.add_routes(app, env, TOKEN)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            await scenario(client, env)
            env.shutdown.set()

    asyncio.run(main())


def host(client: TestClient[Any, Any], name: str = "127.0.0.1") -> dict[str, str]:
    return {"Host": f"{name}:{client.port}"}


def test_the_printed_url_sets_a_strict_cookie_and_redirects_without_the_token() -> None:
    async def scenario(client: TestClient[Any, Any], env: Any) -> None:
        resp = await client.get(f"/?token={TOKEN}", allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"] == "/"
        cookie = resp.headers["Set-Cookie"]
        assert f"devenv_dashboard_{client.port}={TOKEN}" in cookie
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        page = await client.get("/")  # with the cookie now
        assert page.status == 200 and "<title>devenv dashboard</title>" in await page.text()
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
        assert page.headers["X-Frame-Options"] == "DENY"
        assert page.headers["Referrer-Policy"] == "no-referrer"
        assert "Access-Control-Allow-Origin" not in page.headers
        js = await client.get("/static/app.js")
        assert js.status == 200 and js.content_type == "text/javascript"
        assert (await client.get("/static/other.js")).status == 404
        status = await client.get("/api/status")
        assert status.status == 200 and (await status.json())["project"] == "demo"

    run(scenario)


def test_without_the_token_nothing_answers() -> None:
    async def scenario(client: TestClient[Any, Any], env: Any) -> None:
        for path in ("/", "/?token=wrong", f"/?token={TOKEN}x", "/static/app.js"):
            resp = await client.get(path, allow_redirects=False)
            assert resp.status == 401, path
            assert "devenv dashboard" in await resp.text()
            assert "Set-Cookie" not in resp.headers
        for path in ("/api/status", "/api/series", "/api/events", "/api/traces"):
            resp = await client.get(path)
            assert resp.status == 401 and "devenv dashboard" in (await resp.json())["error"]
        bad = await client.get("/api/status", headers={"Authorization": "Bearer nope"})
        assert bad.status == 401
        client.session.cookie_jar.update_cookies({f"devenv_dashboard_{client.port}": "nope"})
        assert (await client.get("/api/status")).status == 401
        assert (await client.get("/", headers={"Cookie": "x=\u00e9"})).status == 401
        good = await client.get("/api/status", headers={"Authorization": f"Bearer {TOKEN}"})
        assert good.status == 200

    run(scenario)


def test_a_foreign_host_is_refused_even_with_the_token() -> None:
    async def scenario(client: TestClient[Any, Any], env: Any) -> None:
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        for name in ("evil.example", "127.0.0.1.nip.io", "localhost.evil"):
            resp = await client.get("/api/status", headers={**bearer, **host(client, name)})
            assert resp.status == 403 and "only at http://127.0.0.1" in await resp.text()
            page = await client.get(f"/?token={TOKEN}", headers=host(client, name),
                                    allow_redirects=False)
            assert page.status == 403 and "Set-Cookie" not in page.headers
        other_port = {"Host": f"127.0.0.1:{client.port + 1}"}
        assert (await client.get("/api/status", headers={**bearer, **other_port})).status == 403
        ok = await client.get("/api/status", headers={**bearer, **host(client, "localhost")})
        assert ok.status == 200

    run(scenario)


def test_event_stream_sends_recent_lines_then_new_ones() -> None:
    async def scenario(client: TestClient[Any, Any], env: Any) -> None:
        resp = await client.get("/api/events", headers={"Authorization": f"Bearer {TOKEN}"})
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert await resp.content.readuntil(b"\n\n") == b"event: hello\ndata: {}\n\n"
        first = await resp.content.readuntil(b"\n\n")
        assert b"api listening" in first
        env.engine.ctx.events.publish(Logged(LogLine(2.0, "api", "1", "out", "GET /orders")))
        line = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 2)
        kind, data = line.decode().strip().split("\n")
        assert kind == "event: log"
        assert json.loads(data.removeprefix("data: "))["text"] == "GET /orders"
        resp.close()

    run(scenario)


def span(span_id: str, parent: str | None, service: str, start_ms: int, end_ms: int,
         status: str = "unset") -> Span:
    base = 1_700_000_000_000_000_000
    return Span(trace_id="ab" * 16, span_id=span_id, parent_id=parent, service=service,
                name=f"{service} op", start_ns=base + start_ms * 1_000_000,
                end_ns=base + end_ms * 1_000_000, status=status)


def test_traces_list_and_waterfall(tmp_path: Path) -> None:
    spans = [span("c" * 16, "b" * 16, "payment", 30, 80, status="error"),
             span("a" * 16, None, "gateway", 0, 100),
             span("d" * 16, "a" * 16, "user", 5, 20),
             span("b" * 16, "a" * 16, "order", 25, 90)]

    async def scenario(client: TestClient[Any, Any], env: Any) -> None:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        listed = await (await client.get("/api/traces", headers=auth)).json()
        assert listed["available"] is True
        (row,) = listed["traces"]
        assert row["root"] == "gateway: gateway op" and row["span_count"] == 4
        assert row["services"] == ["gateway", "user", "order", "payment"]
        assert row["duration_ms"] == 100 and row["errors"] == 1
        one = await (await client.get(f"/api/traces/{'AB' * 16}", headers=auth)).json()
        assert [(s["service"], s["depth"], s["offset_ms"], s["duration_ms"])
                for s in one["spans"]] == [("gateway", 0, 0, 100), ("user", 1, 5, 15),
                                           ("order", 1, 25, 65), ("payment", 2, 30, 50)]
        missing = await client.get(f"/api/traces/{'0' * 32}", headers=auth)
        assert missing.status == 404 and "no trace" in (await missing.json())["error"]

    traces = stored(tmp_path, spans)
    try:
        run(scenario, traces)
    finally:
        traces.close()


def test_without_a_trace_store_the_panel_says_so() -> None:
    async def scenario(client: TestClient[Any, Any], env: Any) -> None:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert await (await client.get("/api/traces", headers=auth)).json() == {
            "available": False, "traces": []}
        assert (await (await client.get("/api/status", headers=auth)).json())["traces"] is False

    run(scenario)


def test_monitor_feeds_the_charts_and_its_stop_ends_open_streams() -> None:
    async def scenario(client: TestClient[Any, Any], env: Any) -> None:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        env.monitor = monitor = dashboard.Monitor(env, interval=3600)
        monitor.start()
        env.engine.ctx.hub.request(RequestSeen(
            route="/", service="api", instance="api-1", method="GET", path="/", status=200,
            start_ns=time.time_ns(), duration_s=0.25))
        for _ in range(100):  # the first sample is taken as it starts
            if monitor.latest:
                break
            await asyncio.sleep(0.01)
        assert monitor.latest == {"api": (3.5, 4096)}
        api = (await (await client.get("/api/series", headers=auth)).json())["services"]["api"]
        assert api["rate"][-1] == 0.2 and 250 <= api["p95_ms"][-1] <= 250 * 1.05
        assert api["cpu"][-1] == 3.5 and api["rss"][-1] == 4096
        stream = await client.get("/api/events", headers=auth)
        await stream.content.readuntil(b"\n\n")
        t0 = time.monotonic()
        await monitor.stop()
        assert env.engine.ctx.hub.request_sinks == []
        await asyncio.wait_for(stream.content.read(), 2)  # the stream ended
        assert time.monotonic() - t0 < 0.5

    run(scenario)
