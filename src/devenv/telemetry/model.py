"""The values telemetry passes around, and the hub they pass through."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Attributes = dict[str, str | int | float | bool]


@dataclass(frozen=True)
class Span:
    """One operation of one service, as OpenTelemetry defines it (ids in lower-case hex)."""

    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_id: str | None
    service: str  # service.name
    name: str
    start_ns: int  # Unix epoch nanoseconds
    end_ns: int
    kind: str = "internal"  # server | client | producer | consumer | internal
    status: str = "unset"  # ok | error | unset
    status_message: str = ""
    instance: str | None = None  # service.instance.id
    attributes: Attributes = field(default_factory=dict)
    links: tuple[tuple[str, str], ...] = ()  # (trace_id, span_id) of linked spans

    @property
    def duration_ns(self) -> int:
        return max(self.end_ns - self.start_ns, 0)


@dataclass(frozen=True)
class RequestSeen:
    """One request the ingress answered (or failed to): what metrics and the dashboard count.
    Its edge span, when one was recorded, has `span_id` in trace `trace_id`."""

    route: str  # what matched: a host, or a path prefix ("/api")
    service: str
    instance: str | None  # None: no instance took it (503, 502 before sending)
    method: str
    path: str
    status: int
    start_ns: int
    duration_s: float
    trace_id: str | None = None
    span_id: str | None = None


SpanSink = Callable[[list[Span]], None]
RequestSink = Callable[[RequestSeen], None]


@dataclass
class Hub:
    """Fans spans and requests out to whoever subscribed (the trace store, metrics, the
    dashboard). Publishing never raises: a failing subscriber is counted, not fatal."""

    span_sinks: list[SpanSink] = field(default_factory=list)
    request_sinks: list[RequestSink] = field(default_factory=list)
    errors: int = 0

    def spans(self, spans: list[Span]) -> None:
        for sink in self.span_sinks:
            self._call(sink, spans)

    def request(self, seen: RequestSeen) -> None:
        for sink in self.request_sinks:
            self._call(sink, seen)

    def _call(self, sink: Callable[[Any], None], value: Any) -> None:
        try:
            sink(value)
        except Exception:
            self.errors += 1
