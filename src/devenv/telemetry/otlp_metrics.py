"""Services' OTLP metrics, kept as Prometheus series and re-exposed like scraped ones.

Pure: `decode` turns an OTLP/HTTP `ExportMetricsServiceRequest` (protobuf or OTLP JSON,
gzipped or not; body handling shared with the trace receiver, telemetry/otlp.py) into the
message; `OtlpMetrics.add` keeps the latest value of each series of each instance;
`OtlpMetrics.families` gives them as Prometheus families with `service` (the resource's
`service.name`) and `instance` (`service.instance.id`) labels, relabelled as the scrape path
does (telemetry/scrape.py: theirs of those names become `exported_*`).

Kinds: a gauge is a gauge; a monotonic sum a counter (`_total`); a non-monotonic sum a gauge;
an explicit-bucket histogram a histogram (`le` buckets); a summary a summary (`quantile`).
Delta temporality is accumulated into cumulative values here. Exponential histograms are
skipped (counted in `skipped`).

Names follow OTel's Prometheus conventions, simply: characters Prometheus does not allow
(dots, dashes, ...) become `_`; the unit is appended as a word when it is a known UCUM unit
(`s` → `_seconds`, `ms` → `_milliseconds`, `By` → `_bytes`, `By/s` → `_bytes_per_second`, `1`
on a gauge → `_ratio`; `{request}`-style annotations add nothing, unknown units are appended
sanitised) unless the name already ends with it; a counter's own `_total` is added by the
exposition.

Bounded: at most `max_series` series per instance (beyond: new series are dropped and
counted in `dropped`) and `max_instances` instances; an instance that has not reported for
`expire_s` seconds, or whose service is no longer running, is forgotten.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.metrics.v1 import metrics_pb2
from prometheus_client.core import Metric

from devenv.telemetry.otlp import (
    PROTOBUF,
    UNKNOWN_SERVICE,
    attributes,
    flat,
    parse_export,
)
from devenv.telemetry.scrape import merge, relabel

MAX_SERIES = 10_000  # per instance
MAX_INSTANCES = 256
EXPIRE_S = 300.0
DELTA, CUMULATIVE = 1, 2  # AggregationTemporality
NO_RECORDED_VALUE = 1  # DataPointFlags
_GZIP_MAGIC = b"\x1f\x8b"

UNITS = {
    "s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds",
    "min": "minutes", "h": "hours", "d": "days",
    "By": "bytes", "KBy": "kilobytes", "MBy": "megabytes", "GBy": "gigabytes",
    "KiBy": "kibibytes", "MiBy": "mebibytes", "GiBy": "gibibytes",
    "bit": "bits", "m": "meters", "V": "volts", "A": "amperes", "J": "joules", "W": "watts",
    "g": "grams", "Cel": "celsius", "Hz": "hertz", "%": "percent",
}
PER_UNITS = {"s": "second", "min": "minute", "h": "hour", "d": "day", "m": "meter"}
_INVALID = re.compile(r"[^a-zA-Z0-9_:]+")
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9_]+")
_ANNOTATION = re.compile(r"\{[^}]*\}")

Labels = tuple[tuple[str, str], ...]


# ---- decoding


def decode(body: bytes, content_type: str | None) -> ExportMetricsServiceRequest:
    """The export request a body holds; `Rejected` (400, 413, 415) saying what is wrong."""
    return parse_export(body, content_type, ExportMetricsServiceRequest(), "metrics",
                        _without_exemplars)


def response(kind: str, rejected: int = 0, reason: str = "") -> bytes:
    """An ExportMetricsServiceResponse in `kind`'s encoding (partial success when data
    points were dropped)."""
    answer = ExportMetricsServiceResponse()
    if rejected:
        answer.partial_success.rejected_data_points = rejected
        answer.partial_success.error_message = reason
    if kind == PROTOBUF:
        return answer.SerializeToString()
    return json.dumps(json_format.MessageToDict(answer)).encode()


def _without_exemplars(data: Any) -> Any:
    """OTLP JSON without exemplars (their ids are hex, which protobuf's JSON mapping would
    read as base64; they are not kept anyway)."""
    if isinstance(data, list):
        return [_without_exemplars(v) for v in data]
    if not isinstance(data, dict):
        return data
    return {k: v if k in ("attributes", "value") else _without_exemplars(v)
            for k, v in data.items() if k != "exemplars"}


# ---- naming


def metric_name(name: str, unit: str, kind: str) -> str:
    """The Prometheus family name of an OTel metric (a counter's without `_total`)."""
    base = _sanitize(name, _INVALID) or "unnamed"
    if kind == "counter" and base.endswith("_total"):
        base = base[: -len("_total")] or "unnamed"
    suffix = unit_suffix(unit, kind)
    if suffix and not base.endswith("_" + suffix):
        base = f"{base}_{suffix}"
    return base if not base[0].isdigit() else "_" + base


def unit_suffix(unit: str, kind: str) -> str:
    """The word a unit adds to a name: "" for none."""
    unit = _ANNOTATION.sub("", unit).strip()
    if not unit:
        return ""
    if unit == "1":
        return "ratio" if kind == "gauge" else ""
    main, _, per = unit.partition("/")
    words = [UNITS.get(main, _sanitize(main, _INVALID_LABEL))] if main else []
    if per:
        words.append("per_" + PER_UNITS.get(per, _sanitize(per, _INVALID_LABEL)))
    return "_".join(w for w in words if w and w != "per_")


def label_name(key: str) -> str:
    out = _sanitize(key, _INVALID_LABEL) or "key"
    if out[0].isdigit() or out.startswith("__"):
        out = "key_" + out.lstrip("_")
    return out


def _sanitize(text: str, invalid: re.Pattern[str]) -> str:
    return re.sub("__+", "_", invalid.sub("_", text))


# ---- the store


@dataclass
class Series:
    """The cumulative state of one series (`kind`: gauge, counter, histogram, summary)."""

    kind: str
    value: float = 0.0
    bounds: tuple[float, ...] = ()
    counts: tuple[float, ...] = ()  # per bucket (not cumulative): len(bounds) + 1
    sum: float = 0.0
    count: float = 0.0
    quantiles: tuple[tuple[float, float], ...] = ()


@dataclass
class Source:
    """One instance's series: (family name, kind, labels) → state."""

    seen: float
    series: dict[tuple[str, str, Labels], Series] = field(default_factory=dict)
    docs: dict[str, str] = field(default_factory=dict)


@dataclass
class Counters:
    points: int = 0  # data points taken
    dropped: int = 0  # data points of new series over a cap (series per instance, instances)
    skipped: int = 0  # data points of kinds not kept (exponential histograms)


class OtlpMetrics:
    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 max_series: int = MAX_SERIES, max_instances: int = MAX_INSTANCES,
                 expire_s: float = EXPIRE_S):
        self.clock = clock
        self.max_series = max_series
        self.max_instances = max_instances
        self.expire_s = expire_s
        self.sources: dict[tuple[str, str], Source] = {}
        self.counters = Counters()

    def add(self, request: ExportMetricsServiceRequest) -> int:
        """Take an export request; the number of data points dropped (over a cap)."""
        now = self.clock()
        self.expire(now)
        dropped = 0
        for resource_metrics in request.resource_metrics:
            resource = attributes(resource_metrics.resource.attributes)
            service = str(resource.get("service.name") or UNKNOWN_SERVICE)
            instance = str(resource.get("service.instance.id") or service)
            source = self.sources.get((service, instance))
            if source is None:
                if len(self.sources) >= self.max_instances:
                    n = _points(resource_metrics)
                    self.counters.dropped += n
                    dropped += n
                    continue
                source = self.sources[(service, instance)] = Source(now)
            source.seen = now
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    dropped += self._metric(source, metric)
        return dropped

    def _metric(self, source: Source, metric: metrics_pb2.Metric) -> int:
        which = metric.WhichOneof("data")
        dropped = 0
        if which == "gauge":
            name = metric_name(metric.name, metric.unit, "gauge")
            for point in metric.gauge.data_points:
                dropped += self._number(source, name, "gauge", point, delta=False)
        elif which == "sum":
            kind = "counter" if metric.sum.is_monotonic else "gauge"
            name = metric_name(metric.name, metric.unit, kind)
            delta = metric.sum.aggregation_temporality == DELTA
            for point in metric.sum.data_points:
                dropped += self._number(source, name, kind, point, delta)
        elif which == "histogram":
            name = metric_name(metric.name, metric.unit, "histogram")
            delta = metric.histogram.aggregation_temporality == DELTA
            for hpoint in metric.histogram.data_points:
                dropped += self._histogram(source, name, hpoint, delta)
        elif which == "summary":
            name = metric_name(metric.name, metric.unit, "summary")
            for spoint in metric.summary.data_points:
                series = self._series(source, name, "summary", spoint.attributes, "quantile")
                if series is None:
                    dropped += 1
                    continue
                series.sum, series.count = spoint.sum, float(spoint.count)
                series.quantiles = tuple((q.quantile, q.value) for q in spoint.quantile_values)
        else:  # exponential histograms (and data of no kind)
            self.counters.skipped += _points_of(metric)
            return 0
        if metric.description:
            source.docs[name] = metric.description
        return dropped

    def _number(self, source: Source, name: str, kind: str,
                point: metrics_pb2.NumberDataPoint, delta: bool) -> int:
        if point.flags & NO_RECORDED_VALUE:
            return 0
        which = point.WhichOneof("value")
        value = float(point.as_int if which == "as_int" else point.as_double)
        series = self._series(source, name, kind, point.attributes)
        if series is None:
            return 1
        series.value = series.value + value if delta else value
        return 0

    def _histogram(self, source: Source, name: str, point: metrics_pb2.HistogramDataPoint,
                   delta: bool) -> int:
        if point.flags & NO_RECORDED_VALUE:
            return 0
        bounds = tuple(point.explicit_bounds)
        counts = tuple(float(c) for c in point.bucket_counts)
        if len(counts) != len(bounds) + 1:  # no buckets (or malformed): count and sum only
            bounds, counts = (), (float(point.count),)
        series = self._series(source, name, "histogram", point.attributes, "le")
        if series is None:
            return 1
        if delta and series.bounds == bounds and len(series.counts) == len(counts):
            series.counts = tuple(a + b for a, b in zip(series.counts, counts, strict=True))
            series.sum += point.sum
            series.count += point.count
        else:
            series.bounds, series.counts = bounds, counts
            series.sum, series.count = point.sum, float(point.count)
        return 0

    def _series(self, source: Source, name: str, kind: str, attrs: Any,
                reserved: str = "") -> Series | None:
        self.counters.points += 1
        labels: dict[str, str] = {}
        for pair in attrs:
            key = label_name(pair.key)
            labels[f"exported_{key}" if key == reserved else key] = _text(flat(pair.value))
        key3 = (name, kind, tuple(sorted(labels.items())))
        series = source.series.get(key3)
        if series is None:
            if len(source.series) >= self.max_series:
                self.counters.dropped += 1
                return None
            series = source.series[key3] = Series(kind)
        return series

    # ---- forgetting

    def expire(self, now: float | None = None) -> None:
        """Forget instances that have not reported for `expire_s`."""
        now = self.clock() if now is None else now
        for key in [k for k, s in self.sources.items() if now - s.seen > self.expire_s]:
            del self.sources[key]

    def forget(self, keep: Collection[str]) -> None:
        """Forget the instances of services not in `keep` (removed, stopped)."""
        for key in [k for k in self.sources if k[0] not in keep]:
            del self.sources[key]

    def series(self, service: str) -> int:
        return sum(len(s.series) for (svc, _), s in self.sources.items() if svc == service)

    # ---- exposition

    def families(self, services: Collection[str] | None = None) -> list[Metric]:
        """Every instance's families, relabelled and merged by name (`services`: the running
        ones; the others' series are forgotten first)."""
        self.expire()
        if services is not None:
            self.forget(services)
        return merge(relabel(_families(source), service, instance)
                     for (service, instance), source in sorted(self.sources.items()))


def _families(source: Source) -> Iterable[Metric]:
    families: dict[tuple[str, str], Metric] = {}
    for (name, kind, labels), series in sorted(source.series.items()):
        family = families.get((name, kind))
        if family is None:
            family = families[(name, kind)] = Metric(name, source.docs.get(name, ""), kind)
        base = dict(labels)
        if kind == "counter":
            family.add_sample(f"{name}_total", base, series.value)
        elif kind == "gauge":
            family.add_sample(name, base, series.value)
        elif kind == "histogram":
            total = 0.0
            for bound, n in zip([*map(_bound, series.bounds), "+Inf"], series.counts,
                                strict=True):
                total += n
                family.add_sample(f"{name}_bucket", {**base, "le": bound}, total)
            family.add_sample(f"{name}_count", base, series.count)
            family.add_sample(f"{name}_sum", base, series.sum)
        else:  # summary
            for q, v in series.quantiles:
                family.add_sample(name, {**base, "quantile": _bound(q)}, v)
            family.add_sample(f"{name}_count", base, series.count)
            family.add_sample(f"{name}_sum", base, series.sum)
    return families.values()


def _bound(value: float) -> str:
    return "+Inf" if math.isinf(value) and value > 0 else repr(float(value))


def _text(value: str | int | float | bool) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _points_of(metric: metrics_pb2.Metric) -> int:
    which = metric.WhichOneof("data")
    return len(getattr(metric, which).data_points) if which else 0


def _points(resource_metrics: metrics_pb2.ResourceMetrics) -> int:
    return sum(_points_of(m) for scope in resource_metrics.scope_metrics for m in scope.metrics)
