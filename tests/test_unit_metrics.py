"""Unit tests of the engine's metrics: the collector on a real Engine over a FakeRuntime
(virtual time), requests counted from the hub, reload durations from the event stream, and
the scraping of services' own metrics (parsing, relabelling, errors) against real sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_ports
from devenv.engine.api.metrics import _follow
from devenv.engine.reconciler import Engine
from devenv.telemetry.counts import RequestStats, status_class
from devenv.telemetry.metrics import EngineMetrics
from devenv.telemetry.model import RequestSeen
from devenv.telemetry.scrape import ScrapeError, Scraper, Target, merge, parse, relabel
from devenv.wire import Progress, ReloadRecord, State
from fakes import FakeRuntime, advance, crash, make_context, make_plan, plan_of, ready, run_virtual


def samples(metrics: EngineMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The exposition, parsed back as Prometheus reads it: (name, labels) -> value."""
    text = metrics.exposition().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def at(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
       **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def ignore(event: Progress) -> None:
    pass


def seen(status: int, duration: float, route: str = "/api", service: str = "api"
         ) -> RequestSeen:
    return RequestSeen(route=route, service=service, instance=f"{service}-1", method="GET",
                       path="/x", status=status, start_ns=0, duration_s=duration)


def test_requests_are_counted_by_status_class_with_a_latency_histogram(tmp_path: Path
                                                                        ) -> None:
    async def body() -> None:
        engine = Engine(make_context(tmp_path, FakeRuntime()))
        metrics = EngineMetrics(engine, engine.ctx.hub)
        metrics.start()
        for status, took in ((200, 0.004), (201, 0.2), (404, 0.02), (503, 3.0)):
            engine.ctx.hub.request(seen(status, took))
        found = samples(metrics)
        total = "devenv_http_requests_total"
        assert at(found, total, route="/api", service="api", code="2xx") == 2
        assert at(found, total, route="/api", service="api", code="4xx") == 1
        assert at(found, total, route="/api", service="api", code="5xx") == 1
        bucket = "devenv_http_request_duration_seconds_bucket"
        assert at(found, bucket, route="/api", service="api", le="0.005") == 1
        assert at(found, bucket, route="/api", service="api", le="0.25") == 3
        assert at(found, bucket, route="/api", service="api", le="+Inf") == 4
        assert at(found, "devenv_http_request_duration_seconds_sum", route="/api",
                  service="api") == pytest.approx(3.224)
        # the last minute's figures for `devenv metrics`
        window = metrics.requests.window("api")
        assert window.requests_per_s == pytest.approx(4 / 60)
        assert window.error_rate == 0.25 and window.p95_s == 3.0
        await metrics.stop()
        engine.ctx.hub.request(seen(200, 0.1))  # stopped: no longer counted
        assert at(samples(metrics), total, route="/api", service="api", code="2xx") == 2

    run_virtual(body())


def test_the_window_forgets_requests_older_than_a_minute() -> None:
    clock = [0.0]
    stats = RequestStats(clock=lambda: clock[0])
    stats.add([seen(500, 1.0)])
    clock[0] = 61.0
    stats.add([seen(200, 0.5)])
    window = stats.window("api")
    assert window.error_rate == 0.0 and window.p95_s == 0.5
    assert stats.window("web").p95_s is None
    assert [status_class(s) for s in (200, 302, 499, 504, 0)] == \
        ["2xx", "3xx", "4xx", "5xx", "other"]


def test_services_and_instances_state_replicas_restarts_and_reload_durations(
        tmp_path: Path) -> None:
    runtime = FakeRuntime()
    runtime.script("worker", crash(after=1.0), ready())

    async def body() -> None:
        engine = Engine(make_context(tmp_path, runtime))
        result = await engine.up(plan_of(make_plan("api", replicas=2), make_plan("worker")),
                                 ignore)
        assert result.ok
        metrics = EngineMetrics(engine, engine.ctx.hub)
        follow = asyncio.create_task(_follow(engine, metrics))
        try:
            await advance(0.01)  # subscribed
            worker = engine.runners["worker"]
            await asyncio.wait_for(worker.changed.wait(), 5)
            await advance(5.0)  # crashed once, backed off, healthy again
            for took in (0.3, 1.5):
                engine.runners["api"].record_reload(ReloadRecord(
                    at=0, files=["a.py"], changed=1, action="replace", ok=True,
                    phases={"total": took}))
            await advance(0.01)
            found = samples(metrics)
        finally:
            follow.cancel()
            await engine.stop_all()
        assert at(found, "devenv_service_state", service="api", state="healthy") == 1
        assert at(found, "devenv_service_state", service="api", state="crashed") == 0
        assert at(found, "devenv_service_replicas_ready", service="api") == 2
        assert at(found, "devenv_service_replicas_desired", service="api") == 2
        assert at(found, "devenv_service_restarts_total", service="worker") == 1
        assert at(found, "devenv_instance_restarts_total", service="worker",
                  instance="worker-1") == 1
        assert at(found, "devenv_instance_cpu_seconds_total", service="api",
                  instance="api-2") == 0
        assert at(found, "devenv_instance_resident_memory_bytes", service="api",
                  instance="api-1") == 0
        assert at(found, "devenv_service_reloads_total", service="api") == 2
        assert at(found, "devenv_service_reload_duration_seconds_count", service="api") == 2
        assert at(found, "devenv_service_reload_duration_seconds_bucket", service="api",
                  le="0.5") == 1
        assert at(found, "devenv_service_reload_duration_seconds_count",
                  service="worker") == 0

    run_virtual(body())


def test_span_counters_of_the_trace_receiver_are_exposed_when_it_has_them(
        tmp_path: Path) -> None:
    async def body() -> None:
        engine = Engine(make_context(tmp_path, FakeRuntime()))
        found = samples(EngineMetrics(engine, engine.ctx.hub,
                                      traces=SimpleNamespace(counters=SimpleNamespace(
                                          received=7, dropped=1, rejected=2))))
        assert at(found, "devenv_telemetry_spans_received_total") == 7
        assert at(found, "devenv_telemetry_otlp_rejected_total") == 2
        assert at(found, "devenv_telemetry_spans_dropped_total") == 1
        bare = samples(EngineMetrics(engine, engine.ctx.hub, traces=None))
        assert at(bare, "devenv_telemetry_spans_received_total") is None

    run_virtual(body())


SERVICE_TEXT = """\
# HELP orders_total Orders.
# TYPE orders_total counter
orders_total{kind="book",service="shop"} 3.0
# HELP devenv_thing A name like ours.
# TYPE devenv_thing gauge
devenv_thing 1.0
# HELP latency_seconds Latency.
# TYPE latency_seconds histogram
latency_seconds_bucket{le="0.1"} 1.0
latency_seconds_bucket{le="+Inf"} 2.0
latency_seconds_sum 0.5
latency_seconds_count 2.0
"""


def test_scraped_series_gain_service_and_instance_labels_and_never_clash_with_ours() -> None:
    one = relabel(parse(SERVICE_TEXT), "orders", "orders-1")
    two = relabel(parse(SERVICE_TEXT.replace("3.0", "5.0")), "orders", "orders-2")
    families = {f.name: f for f in merge([one, two])}
    orders = families["orders"]
    assert orders.type == "counter"
    assert [(s.name, s.labels, s.value) for s in orders.samples] == [
        ("orders_total", {"kind": "book", "exported_service": "shop", "service": "orders",
                          "instance": "orders-1"}, 3.0),
        ("orders_total", {"kind": "book", "exported_service": "shop", "service": "orders",
                          "instance": "orders-2"}, 5.0)]
    assert "devenv_thing" not in families
    assert families["service_devenv_thing"].samples[0].name == "service_devenv_thing"
    assert len(families["latency_seconds"].samples) == 8
    # one name, one type: another service's gauge of the same name is left out
    other = relabel(parse("# TYPE orders_total gauge\norders_total 1\n"), "web", "web-1")
    assert len({f.name: f for f in merge([one, other])}["orders"].samples) == 1


def test_text_that_is_not_exposition_is_a_scrape_error_saying_so() -> None:
    with pytest.raises(ScrapeError, match="not Prometheus exposition text"):
        parse("this is { not metrics\n")
    assert parse("") == []


def fake_engine(port: int, path: str) -> Any:
    """The little of an Engine the scraper reads: runners with replicas and endpoints."""
    instance = SimpleNamespace(endpoint=("127.0.0.1", port))
    replica = SimpleNamespace(index=1, state=State.HEALTHY, instance=instance)
    runner = SimpleNamespace(name="orders", plan=SimpleNamespace(metrics_path=path),
                             replicas=[replica], scrape_error=None)
    return SimpleNamespace(runners={"orders": runner}, plan=None)


@pytest.mark.parametrize(("path", "error"), [
    ("/metrics", None),
    ("/garbage", "not Prometheus exposition text"),
    ("/missing", "answered HTTP 404"),
    ("/slow", "did not answer within 0.3s"),
    ("/huge", "more than 10000: drop per-request labels"),
])
def test_scrapes_of_a_real_server_record_each_outcome(path: str, error: str | None) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="")

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=SERVICE_TEXT)

    async def garbage(request: web.Request) -> web.Response:
        return web.Response(text="{{{\n")

    async def huge(request: web.Request) -> web.Response:  # a label per request id
        return web.Response(text="# TYPE hits counter\n" + "".join(
            f'hits_total{{request="{i}"}} 1\n' for i in range(10_001)))

    async def body() -> None:
        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/garbage", garbage)
        app.router.add_get("/slow", slow)
        app.router.add_get("/huge", huge)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        port = free_ports(1)[0]
        await web.TCPSite(runner, "127.0.0.1", port).start()
        engine = fake_engine(port, path)
        scraper = Scraper(engine, timeout=0.3)
        try:
            await scraper.scrape_all()
            found = list(scraper.families())
        finally:
            await scraper.stop()
            await runner.cleanup()
        up = next(f for f in found if f.name == "devenv_scrape_up").samples[0]
        assert up.labels == {"service": "orders", "instance": "orders-1"}
        assert up.value == (1.0 if error is None else 0.0)
        recorded = engine.runners["orders"].scrape_error
        if error is None:
            assert recorded is None
            assert any(f.name == "orders" for f in found)
        else:
            assert recorded.startswith("orders-1: ") and error in recorded

    asyncio.run(body())


def test_a_refused_connection_is_a_scrape_error() -> None:
    async def body() -> None:
        engine = fake_engine(free_ports(1)[0], "/metrics")  # nothing listens there
        scraper = Scraper(engine)
        try:
            await scraper.scrape_all()
        finally:
            await scraper.stop()
        assert "cannot connect" in engine.runners["orders"].scrape_error
        assert scraper.results[("orders", "orders-1")].error

    asyncio.run(body())


def test_only_running_instances_of_services_that_serve_metrics_are_targets() -> None:
    engine = fake_engine(1234, "/metrics")
    engine.runners["web"] = SimpleNamespace(name="web", plan=SimpleNamespace(metrics_path=None),
                                            replicas=[], scrape_error=None)
    starting = SimpleNamespace(index=2, state=State.STARTING,
                               instance=SimpleNamespace(endpoint=("127.0.0.1", 1235)))
    engine.runners["orders"].replicas.append(starting)
    assert Scraper(engine).targets() == [
        Target("orders", "orders-1", "http://127.0.0.1:1234/metrics")]
