"""OTLP metrics to Prometheus series (telemetry/otlp_metrics.py): each kind and temporality,
names, labels, the caps, forgetting; read back through the Prometheus exposition a user
scrapes."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from devenv.telemetry.otlp import JSON, PROTOBUF, Rejected
from devenv.telemetry.otlp_metrics import (
    CUMULATIVE,
    DELTA,
    OtlpMetrics,
    decode,
    metric_name,
    response,
)

Attrs = dict[str, Any]


def _kv(attrs: Attrs) -> list[KeyValue]:
    out = []
    for key, value in attrs.items():
        any_value = (AnyValue(int_value=value) if isinstance(value, int)
                     else AnyValue(string_value=str(value)))
        out.append(KeyValue(key=key, value=any_value))
    return out


def _request(*metrics: metrics_pb2.Metric, service: str = "api",
             instance: str | None = "api-1") -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    resource: Attrs = {"service.name": service}
    if instance is not None:
        resource["service.instance.id"] = instance
    rm.resource.attributes.extend(_kv(resource))
    rm.scope_metrics.add().metrics.extend(metrics)
    return request


def _number(value: float, attrs: Attrs | None = None) -> metrics_pb2.NumberDataPoint:
    point = metrics_pb2.NumberDataPoint(attributes=_kv(attrs or {}))
    if isinstance(value, int):
        point.as_int = value
    else:
        point.as_double = value
    return point


def counter(name: str, value: float, attrs: Attrs | None = None, unit: str = "",
            temporality: int = CUMULATIVE, monotonic: bool = True) -> metrics_pb2.Metric:
    return metrics_pb2.Metric(
        name=name, unit=unit, description="how many",
        sum=metrics_pb2.Sum(data_points=[_number(value, attrs)], is_monotonic=monotonic,
                            aggregation_temporality=temporality))  # type: ignore[arg-type]


def gauge(name: str, value: float, attrs: Attrs | None = None, unit: str = ""
          ) -> metrics_pb2.Metric:
    return metrics_pb2.Metric(name=name, unit=unit,
                              gauge=metrics_pb2.Gauge(data_points=[_number(value, attrs)]))


def histogram(name: str, bounds: list[float], counts: list[int], total: float,
              unit: str = "s", temporality: int = CUMULATIVE, attrs: Attrs | None = None
              ) -> metrics_pb2.Metric:
    point = metrics_pb2.HistogramDataPoint(attributes=_kv(attrs or {}), count=sum(counts),
                                           sum=total, bucket_counts=counts,
                                           explicit_bounds=bounds)
    return metrics_pb2.Metric(name=name, unit=unit, histogram=metrics_pb2.Histogram(
        data_points=[point], aggregation_temporality=temporality))  # type: ignore[arg-type]


def exposition(store: OtlpMetrics, services: set[str] | None = None) -> str:
    registry = CollectorRegistry(auto_describe=False)

    class Collector:
        def collect(self) -> Any:
            return store.families(services)

    registry.register(Collector())  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def samples(store: OtlpMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(exposition(store)):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(store: OtlpMetrics, name: str, **labels: str) -> float | None:
    labels.setdefault("service", "api")
    labels.setdefault("instance", "api-1")
    return samples(store).get((name, tuple(sorted(labels.items()))))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- kinds and temporality


def test_a_cumulative_monotonic_sum_is_a_counter_with_its_latest_value() -> None:
    store = OtlpMetrics()
    store.add(_request(counter("orders.placed", 3, {"kind": "book"})))
    store.add(_request(counter("orders.placed", 5, {"kind": "book"})))
    text = exposition(store)
    assert "# TYPE orders_placed_total counter" in text
    assert "# HELP orders_placed_total how many" in text
    assert value(store, "orders_placed_total", kind="book") == 5.0


def test_a_delta_sum_is_accumulated_into_a_cumulative_counter() -> None:
    store = OtlpMetrics()
    for n in (2, 3, 4):
        store.add(_request(counter("jobs.done", n, temporality=DELTA)))
    assert value(store, "jobs_done_total") == 9.0


def test_a_non_monotonic_sum_is_a_gauge_delta_or_not() -> None:
    store = OtlpMetrics()
    store.add(_request(counter("queue.depth", 7, monotonic=False)))
    store.add(_request(counter("queue.depth", 4, monotonic=False)))
    store.add(_request(counter("conns", 2, monotonic=False, temporality=DELTA)))
    store.add(_request(counter("conns", -1, monotonic=False, temporality=DELTA)))
    assert "# TYPE queue_depth gauge" in exposition(store)
    assert value(store, "queue_depth") == 4.0
    assert value(store, "conns") == 1.0


def test_a_gauge_is_a_gauge_and_unit_one_makes_it_a_ratio() -> None:
    store = OtlpMetrics()
    store.add(_request(gauge("cpu.utilization", 0.25, unit="1"), gauge("temp", 21.5)))
    assert value(store, "cpu_utilization_ratio") == 0.25
    assert value(store, "temp") == 21.5


def test_a_cumulative_histogram_has_cumulative_le_buckets_sum_and_count() -> None:
    store = OtlpMetrics()
    store.add(_request(histogram("http.server.duration", [0.1, 0.5], [1, 2, 3], 4.2)))
    assert "# TYPE http_server_duration_seconds histogram" in exposition(store)
    name = "http_server_duration_seconds"
    assert value(store, f"{name}_bucket", le="0.1") == 1.0
    assert value(store, f"{name}_bucket", le="0.5") == 3.0
    assert value(store, f"{name}_bucket", le="+Inf") == 6.0
    assert value(store, f"{name}_count") == 6.0
    assert value(store, f"{name}_sum") == pytest.approx(4.2)


def test_a_delta_histogram_is_accumulated_and_restarts_when_its_buckets_change() -> None:
    store = OtlpMetrics()
    store.add(_request(histogram("lat", [1.0], [1, 0], 0.5, temporality=DELTA)))
    store.add(_request(histogram("lat", [1.0], [2, 1], 3.0, temporality=DELTA)))
    assert value(store, "lat_seconds_bucket", le="1.0") == 3.0
    assert value(store, "lat_seconds_bucket", le="+Inf") == 4.0
    assert value(store, "lat_seconds_sum") == 3.5
    store.add(_request(histogram("lat", [2.0], [1, 0], 1.0, temporality=DELTA)))
    assert value(store, "lat_seconds_bucket", le="2.0") == 1.0
    assert value(store, "lat_seconds_bucket", le="1.0") is None


def test_a_summary_has_quantiles_and_an_exponential_histogram_is_skipped() -> None:
    point = metrics_pb2.SummaryDataPoint(count=10, sum=5.0, quantile_values=[
        metrics_pb2.SummaryDataPoint.ValueAtQuantile(quantile=0.5, value=0.4)])
    summary = metrics_pb2.Metric(name="rpc", unit="s",
                                 summary=metrics_pb2.Summary(data_points=[point]))
    expo = metrics_pb2.Metric(name="expo", exponential_histogram=metrics_pb2.ExponentialHistogram(
        data_points=[metrics_pb2.ExponentialHistogramDataPoint(count=3)]))
    store = OtlpMetrics()
    store.add(_request(summary, expo))
    assert value(store, "rpc_seconds", quantile="0.5") == 0.4
    assert value(store, "rpc_seconds_count") == 10.0
    assert "expo" not in exposition(store)
    assert store.counters.skipped == 1


def test_a_point_flagged_no_recorded_value_is_ignored() -> None:
    metric = counter("x", 5)
    metric.sum.data_points[0].flags = 1
    store = OtlpMetrics()
    store.add(_request(metric))
    assert value(store, "x_total") is None


# ---- names and labels


@pytest.mark.parametrize(("name", "unit", "kind", "expected"), [
    ("http.server.request.duration", "s", "histogram", "http_server_request_duration_seconds"),
    ("process.memory.usage", "By", "gauge", "process_memory_usage_bytes"),
    ("network.io", "By/s", "gauge", "network_io_bytes_per_second"),
    ("requests", "{request}", "counter", "requests"),
    ("requests.total", "", "counter", "requests"),
    ("latency_seconds", "s", "histogram", "latency_seconds"),
    ("my-app.hits", "1", "counter", "my_app_hits"),
    ("9lives", "", "gauge", "_9lives"),
    ("temp", "Cel", "gauge", "temp_celsius"),
    ("weird", "furlongs", "gauge", "weird_furlongs"),
])
def test_otel_names_and_units_become_prometheus_names(name: str, unit: str, kind: str,
                                                      expected: str) -> None:
    assert metric_name(name, unit, kind) == expected


def test_labels_are_the_attributes_plus_service_and_instance_theirs_renamed_exported() -> None:
    store = OtlpMetrics()
    store.add(_request(counter("hits", 1, {"http.route": "/a", "service": "x",
                                           "instance": "y", "code": 200})))
    assert value(store, "hits_total", http_route="/a", exported_service="x",
                 exported_instance="y", code="200") == 1.0


def test_an_instance_without_an_id_is_named_after_its_service_and_devenv_names_prefixed(
        ) -> None:
    store = OtlpMetrics()
    store.add(_request(gauge("devenv.fake", 1), service="web", instance=None))
    assert value(store, "service_devenv_fake", service="web", instance="web") == 1.0


def test_instances_and_services_are_merged_into_one_family_per_name() -> None:
    store = OtlpMetrics()
    store.add(_request(counter("hits", 1), instance="api-1"))
    store.add(_request(counter("hits", 2), instance="api-2"))
    store.add(_request(counter("hits", 3), service="web", instance="web-1"))
    text = exposition(store)
    assert text.count("# TYPE hits_total counter") == 1
    assert value(store, "hits_total", instance="api-2") == 2.0
    assert value(store, "hits_total", service="web", instance="web-1") == 3.0


# ---- caps and forgetting


def test_series_over_an_instances_cap_are_dropped_counted_and_reported() -> None:
    store = OtlpMetrics(max_series=3)
    dropped = store.add(_request(*[counter("hits", 1, {"n": i}) for i in range(5)]))
    assert dropped == 2 and store.counters.dropped == 2
    assert store.series("api") == 3
    assert store.add(_request(counter("hits", 9, {"n": 0}))) == 0  # known series still move
    assert value(store, "hits_total", n="0") == 9.0
    assert store.add(_request(counter("hits", 1), instance="api-2")) == 0  # cap per instance


def test_instances_over_the_cap_are_dropped() -> None:
    store = OtlpMetrics(max_instances=1)
    store.add(_request(counter("hits", 1), instance="a"))
    assert store.add(_request(counter("hits", 1), instance="b")) == 1
    assert store.counters.dropped == 1


def test_an_instance_silent_for_the_expiry_is_forgotten_and_a_removed_service_too() -> None:
    clock = Clock()
    store = OtlpMetrics(clock=clock, expire_s=300)
    store.add(_request(counter("hits", 1), instance="api-1"))
    store.add(_request(counter("hits", 1), service="web", instance="web-1"))
    clock.now += 200
    store.add(_request(counter("hits", 2), instance="api-1"))
    clock.now += 200
    assert value(store, "hits_total") == 2.0  # api-1 reported 200 s ago
    assert value(store, "hits_total", service="web", instance="web-1") is None
    assert "hits_total" not in exposition(store, services={"web"})  # api removed
    assert store.series("api") == 0


# ---- decoding


def test_decode_reads_protobuf_json_and_gzip_alike() -> None:
    request = _request(counter("hits", 4, {"k": "v"}))
    as_json = json_format.MessageToDict(request)
    as_json["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["sum"]["dataPoints"][0][
        "exemplars"] = [{"traceId": "5b8efff798038103d269b633813fc60c",
                         "spanId": "eee19b7ec3c1b174", "asDouble": 1}]
    bodies = [(request.SerializeToString(), PROTOBUF),
              (gzip.compress(request.SerializeToString()), PROTOBUF),
              (json.dumps(as_json).encode(), JSON),
              (gzip.compress(json.dumps(as_json).encode()), f"{JSON}; charset=utf-8")]
    for body, kind in bodies:
        store = OtlpMetrics()
        store.add(decode(body, kind))
        assert value(store, "hits_total", k="v") == 4.0, kind


@pytest.mark.parametrize(("body", "kind", "status", "says"), [
    (b"\x0a\xff\xff", PROTOBUF, 400, "corrupt"),
    (b"{nope", JSON, 400, "not JSON"),
    (b"[1]", JSON, 400, "expected an object"),
    (b'{"resourceMetrics": 3}', JSON, 400, "not an OTLP JSON metrics export"),
    (b"x", "text/plain", 415, "unsupported content type"),
    (b"\x1f\x8bxx", PROTOBUF, 400, "bad gzip"),
])
def test_decode_refuses_what_is_not_a_metrics_export(body: bytes, kind: str, status: int,
                                                      says: str) -> None:
    with pytest.raises(Rejected) as caught:
        decode(body, kind)
    assert caught.value.status == status and says in str(caught.value)


def test_the_response_reports_dropped_points_as_a_partial_success() -> None:
    answer = ExportMetricsServiceResponse()
    answer.ParseFromString(response(PROTOBUF, 2, "over the cap"))
    assert answer.partial_success.rejected_data_points == 2
    assert json.loads(response(JSON)) == {}
