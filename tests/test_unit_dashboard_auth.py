"""The dashboard's doors, in-process on a real socket: the page and its files are served to
anyone (they hold no data), every API call needs the bearer token (never a cookie or a query
token, and no answer sets a cookie), foreign Host headers are refused, every answer carries
the security headers; and the API's traces (the list from summaries) and event stream."""

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


API = ("/api/status", "/api/series", "/api/events", "/api/traces", f"/api/traces/{'ab' * 16}")


def test_the_page_needs_no_token_and_sets_no_cookie() -> None:
    async def scenario(client: TestClient[Any, Any], env: Any) -> None:
        for path in ("/", f"/?token={TOKEN}"):  # the old query URL is not traded for anything
            page = await client.get(path, allow_redirects=False)
            assert page.status == 200 and "<title>devenv dashboard</title>" in await page.text()
            assert "Set-Cookie" not in page.headers
            csp = page.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
            assert "connect-src 'self'" in csp
            assert page.headers["X-Frame-Options"] == "DENY"
            assert page.headers["Referrer-Policy"] == "no-referrer"
            assert "Access-Control-Allow-Origin" not in page.headers
        js = await client.get("/static/app.js")
        assert js.status == 200 and js.content_type == "text/javascript"
        assert js.headers["X-Content-Type-Options"] == "nosniff"
        missing = await client.get("/static/other.js")
        assert missing.status == 404 and missing.headers["X-Frame-Options"] == "DENY"
        assert not client.session.cookie_jar.filter_cookies(client.make_url("/"))

    run(scenario)


def test_every_api_call_needs_the_bearer_token_and_nothing_else() -> None:
    async def scenario(client: TestClient[Any, Any], env: Any) -> None:
        cookie = {"Cookie": f"devenv_dashboard_{client.port}={TOKEN}; token={TOKEN}"}
        for path in API:
            for headers in ({}, cookie, {"Authorization": "Bearer nope"},
                            {"Authorization": f"Bearer {TOKEN}x"},
                            {"Authorization": f"Basic {TOKEN}"},
                            {"Authorization": "Bearer \u00e9"}):
                resp = await client.get(path, headers=headers)
                assert resp.status == 401, (path, headers)
                assert "devenv dashboard" in (await resp.json())["error"]
                assert resp.headers["X-Frame-Options"] == "DENY"
                assert "Set-Cookie" not in resp.headers
            assert (await client.get(f"{path}?token={TOKEN}")).status == 401, path
        good = await client.get("/api/status", headers={"Authorization": f"Bearer {TOKEN}"})
        assert good.status == 200 and (await good.json())["project"] == "demo"
        assert good.headers["Cache-Control"] == "no-store" and "Set-Cookie" not in good.headers

    run(scenario)


def test_a_foreign_host_is_refused_even_with_the_token() -> None:
    async def scenario(client: TestClient[Any, Any], env: Any) -> None:
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        for name in ("evil.example", "127.0.0.1.nip.io", "localhost.evil"):
            for path in ("/api/status", "/", "/static/app.js"):
                resp = await client.get(path, headers={**bearer, **host(client, name)})
                assert resp.status == 403 and "only at http://127.0.0.1" in await resp.text()
                assert resp.headers["X-Frame-Options"] == "DENY"
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
         status: str = "unset", trace_id: str = "ab" * 16) -> Span:
    base = 1_700_000_000_000_000_000
    return Span(trace_id=trace_id, span_id=span_id, parent_id=parent, service=service,
                name=f"{service} op", start_ns=base + start_ms * 1_000_000,
                end_ns=base + end_ms * 1_000_000, status=status)


def test_traces_list_from_summaries_and_waterfall(tmp_path: Path) -> None:
    spans = [span("c" * 16, "b" * 16, "payment", 30, 80, status="error"),
             span("a" * 16, None, "gateway", 0, 100),
             span("d" * 16, "a" * 16, "user", 5, 20),
             span("b" * 16, "a" * 16, "order", 25, 90),
             span("e" * 16, None, "worker", 500, 510, trace_id="cd" * 16)]  # a later trace

    async def scenario(client: TestClient[Any, Any], env: Any) -> None:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        listed = await (await client.get("/api/traces", headers=auth)).json()
        assert listed["available"] is True
        later, row = listed["traces"]  # newest first
        assert later["trace_id"] == "cd" * 16 and later["span_count"] == 1
        assert "spans" not in row  # the list holds summaries, not spans
        assert row["trace_id"] == "ab" * 16
        assert (row["root_service"], row["root_name"]) == ("gateway", "gateway op")
        assert row["span_count"] == 4 and row["errors"] == 1
        assert sorted(row["services"]) == ["gateway", "order", "payment", "user"]
        assert row["duration"] == 0.1 and row["start_ns"] == 1_700_000_000_000_000_000
        one = await (await client.get(f"/api/traces/{'AB' * 16}", headers=auth)).json()
        assert one["span_count"] == 4 and one["duration"] == 0.1
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
