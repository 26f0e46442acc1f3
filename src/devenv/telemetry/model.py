"""The values telemetry passes around, and the hub they pass through."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

Attributes = dict[str, str | int | float | bool]
INGRESS_SERVICE = "devenv-ingress"  # the `service.name` of the ingress's edge spans


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


class RequestSeen(NamedTuple):
    """One request the ingress answered (or failed to): what metrics and the dashboard count,
    and, when its trace is recorded, its edge span (`edge_span`), made by the trace store's
    writer rather than on the ingress's hot path. A tuple: it is made for every request."""

    route: str  # what matched: a host, or a path prefix ("/api")
    service: str
    instance: str | None  # None: no instance took it (503, 502 before sending)
    method: str
    path: str
    status: int
    start_ns: int
    duration_s: float
    trace_id: str | None = None  # its edge span's trace (None: no span recorded)
    span_id: str | None = None
    parent_id: str | None = None  # the caller's span, from its traceparent
    host: str | None = None  # the Host it asked for (no port)
    error: str | None = None  # why it failed, when it did (the span's status message)


def edge_span(seen: RequestSeen) -> Span:
    """The ingress's span of a request (service `devenv-ingress`, kind server)."""
    attributes: Attributes = {"http.request.method": seen.method, "url.path": seen.path,
                              "http.response.status_code": seen.status}
    if seen.host:
        attributes["server.address"] = seen.host
    if seen.route:
        attributes["devenv.route"] = seen.route
    if seen.service:
        attributes["devenv.service"] = seen.service
    if seen.instance:
        attributes["devenv.instance"] = seen.instance
    return Span(seen.trace_id or "", seen.span_id or "", seen.parent_id, INGRESS_SERVICE,
                f"{seen.method} {seen.route}" if seen.route else seen.method, seen.start_ns,
                seen.start_ns + round(seen.duration_s * 1e9), kind="server",
                status="unset" if seen.error is None else "error",
                status_message=seen.error or "", attributes=attributes)


SpanSink = Callable[[list[Span]], None]
RequestSink = Callable[[list[RequestSeen]], None]  # (the requests of one turn of the loop)


@dataclass
class Hub:
    """Fans spans and requests out to whoever subscribed (the trace store, metrics, the
    dashboard). Publishing never raises: a failing subscriber is counted, not fatal."""

    span_sinks: list[SpanSink] = field(default_factory=list)
    request_sinks: list[RequestSink] = field(default_factory=list)
    errors: int = 0
    unsampled: int = 0  # requests the ingress did not record a trace for (over its rate)

    def spans(self, spans: list[Span]) -> None:
        for sink in self.span_sinks:
            try:
                sink(spans)
            except Exception:
                self.errors += 1

    def requests(self, batch: list[RequestSeen]) -> None:
        """Requests answered, to every request sink (the ingress gives those of one turn of
        its loop together: one call a sink for them all)."""
        for sink in self.request_sinks:
            try:
                sink(batch)
            except Exception:
                self.errors += 1

    def request(self, seen: RequestSeen) -> None:
        self.requests([seen])
