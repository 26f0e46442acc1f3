"""The engine's Prometheus metrics: what it knows about its services, read when scraped.

`EngineMetrics` owns one `CollectorRegistry` per engine. Nothing runs in the background to
keep the series fresh: the collector reads the runners at scrape time. Only what cannot be
read later is counted as it happens (`counts.py`): requests the ingress answered
(`RequestSeen`, from the hub) and reload durations (`observe_reload`, called for each
`Reloaded` event). Services'
own metrics come from the `Scraper` (telemetry/scrape.py), re-exposed with `service` and
`instance` labels. Like all of `devenv.telemetry`, it imports nothing of the engine at run
time: the engine's routes (engine/api/metrics.py) wire it to the event stream.

Nothing here holds a secret: series carry service names, states, counts and durations only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from devenv.telemetry.counts import (
    RELOAD_BUCKETS,
    Histogram,
    RequestStats,
)
from devenv.telemetry.model import Hub
from devenv.telemetry.scrape import merge
from devenv.wire import State

if TYPE_CHECKING:
    from devenv.engine.reconciler import Engine
    from devenv.telemetry.otlp_metrics import OtlpMetrics
    from devenv.telemetry.scrape import Scraper

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class SpanCounters(Protocol):
    """What the trace receiver may count (engine/api/otlp.py's helper; optional)."""

    received: int
    rejected: int


class EngineCollector(Collector):
    """Reads the engine's runners at scrape time."""

    def __init__(self, metrics: EngineMetrics):
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        runners = list(m.engine.runners.values())
        state = GaugeMetricFamily("devenv_service_state",
                                  "1 for the state the service is in, 0 for the others.",
                                  labels=["service", "state"])
        ready = GaugeMetricFamily("devenv_service_replicas_ready", "Replicas healthy now.",
                                  labels=["service"])
        desired = GaugeMetricFamily("devenv_service_replicas_desired", "Replicas wanted.",
                                    labels=["service"])
        restarts = CounterMetricFamily("devenv_service_restarts", "Restarts after a crash.",
                                       labels=["service"])
        reloads = CounterMetricFamily("devenv_service_reloads", "Reloads (file changes).",
                                      labels=["service"])
        reload_s = HistogramMetricFamily("devenv_service_reload_duration_seconds",
                                         "How long each reload took, from change to switch.",
                                         labels=["service"])
        inst_restarts = CounterMetricFamily("devenv_instance_restarts",
                                            "Restarts of one replica.",
                                            labels=["service", "instance"])
        cpu = CounterMetricFamily("devenv_instance_cpu_seconds",
                                  "CPU time of the instance's processes (user + system).",
                                  labels=["service", "instance"])
        rss = GaugeMetricFamily("devenv_instance_resident_memory_bytes",
                                "Resident memory of the instance's processes.",
                                labels=["service", "instance"])
        inflight = GaugeMetricFamily("devenv_http_requests_in_flight",
                                     "Requests sent to the instance and not yet answered.",
                                     labels=["service", "instance"])
        for runner in runners:
            name = runner.name
            now = runner.state
            for value in State:
                state.add_metric([name, value.value], 1.0 if value == now else 0.0)
            ready.add_metric([name], runner.ready)
            desired.add_metric([name], runner.desired)
            restarts.add_metric([name], runner.restarts)
            reloads.add_metric([name], runner.reloads)
            hist = m.reload_durations.get(name) or Histogram(RELOAD_BUCKETS)
            reload_s.add_metric([name], hist.cumulative(), hist.sum)
            for rep in runner.replicas:
                label = f"{name}-{rep.index}"
                inst_restarts.add_metric([name, label], rep.restarts)
                if rep.backend is not None:
                    inflight.add_metric([name, label], rep.backend.busy)
                res = rep.instance.resources() if rep.instance else None
                if res is not None:
                    cpu.add_metric([name, label], res.cpu_seconds)
                    rss.add_metric([name, label], res.rss_bytes)
        yield from (state, ready, desired, restarts, reloads, reload_s, inst_restarts, cpu,
                    rss, inflight)
        yield from self._requests()
        yield from self._self()
        yield from self._services(runners)

    def _services(self, runners: list[Any]) -> Iterator[Metric]:
        """Services' own metrics: scraped and sent over OTLP, one family per name."""
        groups: list[list[Metric]] = []
        if self.m.scraper is not None:
            groups.append(list(self.m.scraper.families()))
        otlp = self.m.otlp
        if otlp is not None:
            groups.append(otlp.families({r.name for r in runners}))
            for name, doc, value in (
                    ("devenv_telemetry_otlp_metric_points",
                     "OTLP metric data points received.", otlp.counters.points),
                    ("devenv_telemetry_otlp_metric_points_dropped",
                     "OTLP metric data points dropped: over the series cap of an instance.",
                     otlp.counters.dropped),
                    ("devenv_telemetry_otlp_metric_points_skipped",
                     "OTLP metric data points of kinds not kept (exponential histograms).",
                     otlp.counters.skipped)):
                family = CounterMetricFamily(name, doc)
                family.add_metric([], value)
                yield family
        yield from merge(groups)

    def _requests(self) -> Iterator[Metric]:
        stats = self.m.requests
        total = CounterMetricFamily("devenv_http_requests",
                                    "Requests the ingress answered, by status class.",
                                    labels=["route", "service", "code"])
        for (route, service, code), n in sorted(stats.counts.items()):
            total.add_metric([route, service, code], n)
        latency = HistogramMetricFamily("devenv_http_request_duration_seconds",
                                        "Time from the request to the end of its answer, "
                                        "at the ingress.", labels=["route", "service"])
        for (route, service), hist in sorted(stats.latency.items()):
            latency.add_metric([route, service], hist.cumulative(), hist.sum)
        yield total
        yield latency

    def _self(self) -> Iterator[Metric]:
        m = self.m
        errors = CounterMetricFamily("devenv_telemetry_sink_errors",
                                     "Telemetry subscribers that failed on a value.")
        errors.add_metric([], m.hub.errors)
        yield errors
        unsampled = CounterMetricFamily(
            "devenv_telemetry_requests_unsampled",
            "Requests the ingress did not record a trace for (over monitoring.trace_rate).")
        unsampled.add_metric([], m.hub.unsampled)
        yield unsampled
        counters = getattr(m.traces, "counters", None)  # the trace store's (telemetry/store.py)
        for attr, name, doc in (("received", "devenv_telemetry_spans_received",
                                 "Spans handed to the trace store."),
                                ("dropped", "devenv_telemetry_spans_dropped",
                                 "Spans dropped while the trace store's writer was behind."),
                                ("rejected", "devenv_telemetry_otlp_rejected",
                                 "OTLP requests refused (malformed, oversized, no token).")):
            value = getattr(counters, attr, None)
            if isinstance(value, int | float):
                family = CounterMetricFamily(name, doc)
                family.add_metric([], value)
                yield family


class EngineMetrics:
    """The registry of one engine, and what feeds it while it runs (`start`/`stop`)."""

    def __init__(self, engine: Engine, hub: Hub, scraper: Scraper | None = None,
                 traces: object | None = None, otlp: OtlpMetrics | None = None):
        self.engine = engine
        self.hub = hub
        self.scraper = scraper
        self.traces = traces
        self.otlp = otlp
        self.requests = RequestStats(clock=engine.ctx.clock)
        self.reload_durations: dict[str, Histogram] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(EngineCollector(self))
        self._started = False

    def observe_reload(self, service: str, seconds: float) -> None:
        hist = self.reload_durations.get(service)
        if hist is None:
            hist = self.reload_durations[service] = Histogram(RELOAD_BUCKETS)
        hist.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def start(self) -> None:
        """Count requests from now on; scrape services that serve metrics. (Reloads are
        observed by whoever follows the engine's events: engine/api/metrics.py.)"""
        if self._started:
            return
        self._started = True
        self.hub.request_sinks.append(self.requests.add)
        if self.scraper is not None:
            self.scraper.start()

    async def stop(self) -> None:
        self._started = False
        with contextlib.suppress(ValueError):
            self.hub.request_sinks.remove(self.requests.add)
        if self.scraper is not None:
            await self.scraper.stop()

    def summary(self, services: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """`devenv metrics`' rows: each service's status (as `status --json` has it) with
        its request rate, p95 latency and error rate over the last minute."""
        rows = []
        for svc in services:
            figures = self.requests.window(svc["name"])
            scrape = self.scraper.up(svc["name"]) if self.scraper is not None else None
            rows.append({
                "service": svc["name"], "state": svc["state"],
                "ready": svc["replicas"]["ready"], "desired": svc["replicas"]["desired"],
                "restarts": svc["restarts"], "reloads": svc["reloads"],
                "cpu_percent": svc.get("cpu_percent"), "rss_bytes": svc.get("rss_bytes"),
                "requests_per_s": round(figures.requests_per_s, 3),
                "p95_s": None if figures.p95_s is None else round(figures.p95_s, 4),
                "error_rate": None if figures.error_rate is None
                else round(figures.error_rate, 4),
                "scrape_error": svc.get("scrape_error"),
                "scraped_series": scrape,
            })
        return rows
