"""Traces, with the official OpenTelemetry packages: the SDK, configured from the environment
only (devenv hands every service OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES...), the official instrumentations of urllib (calls to other
services), psycopg (PostgreSQL) and redis, and spans by hand where no package fits: the
server side of `http.server`, and the Redis stream's producer and consumers.

Without an OTLP endpoint in the environment (or with OTEL_SDK_DISABLED=true) nothing is
exported, and without the packages installed nothing is traced: the shop works the same.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

try:
    from opentelemetry import propagate, trace
    from opentelemetry.instrumentation.utils import suppress_instrumentation
except ImportError:  # the shop's telemetry packages are not installed (pip install '.[shop]')
    trace = None  # type: ignore[assignment]

ENABLED = trace is not None
STREAM = "orders"
_tracer: Any = None


def setup() -> None:
    """Export spans when an OTLP endpoint is set, and instrument the libraries the shop uses.
    Called once, as a service starts."""
    global _tracer
    if not ENABLED:
        return
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or \
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if endpoint and os.environ.get("OTEL_SDK_DISABLED", "").lower() != "true":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider()  # service name and attributes: OTEL_* variables
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)

        def stop(*_: object) -> None:  # a stopped service sends what it holds, within 1 s
            provider.force_flush(timeout_millis=1000)
            os._exit(0)

        signal.signal(signal.SIGTERM, stop)
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.urllib import URLLibInstrumentor

    URLLibInstrumentor().instrument()
    PsycopgInstrumentor().instrument()
    RedisInstrumentor().instrument()
    _tracer = trace.get_tracer("shop")


def quiet() -> contextlib.AbstractContextManager[None]:
    """No spans inside: health checks, migrations, a consumer's polling."""
    return suppress_instrumentation() if ENABLED else contextlib.nullcontext()


def route_name(pattern: str) -> str:
    """A route's pattern as a span names it: `/users/(\\d+)` is `/users/{}`."""
    return re.sub(r"\([^)]*\)", "{}", pattern)


class _NoSpan:
    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def set_status(self, status: Any) -> None:
        pass


@contextlib.contextmanager
def server_span(method: str, route: str | None, path: str,
                headers: Mapping[str, str]) -> Iterator[Any]:
    """A request this service answers, in the trace its caller's `traceparent` names."""
    if _tracer is None:
        yield _NoSpan()
        return
    parent = propagate.extract({k.lower(): v for k, v in headers.items()})
    with _tracer.start_as_current_span(
            f"{method} {route}" if route else method, context=parent,
            kind=trace.SpanKind.SERVER, record_exception=False, set_status_on_exception=False,
            attributes={"http.request.method": method, "url.path": path,
                        **({"http.route": route} if route else {})}) as span:
        yield span


def finish_server_span(span: Any, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500 and ENABLED:
        span.set_status(trace.Status(trace.StatusCode.ERROR, f"HTTP {status}"))


@contextlib.contextmanager
def producer_span(fields: MutableMapping[str, Any]) -> Iterator[None]:
    """Publishing an event on the stream: its fields carry this span's `traceparent`."""
    if _tracer is None:
        yield
        return
    with _tracer.start_as_current_span(
            f"send {STREAM}", kind=trace.SpanKind.PRODUCER,
            attributes={"messaging.system": "redis", "messaging.destination.name": STREAM,
                        "messaging.operation.type": "send"}):
        propagate.inject(fields)
        yield


@contextlib.contextmanager
def consumer_span(group: str, event_id: str, fields: Mapping[str, str]) -> Iterator[None]:
    """Handling an event from the stream: a span linked to the one that published it (and
    in its trace, so a checkout's trace shows what followed from it)."""
    if _tracer is None:
        yield
        return
    producer = propagate.extract(dict(fields))
    links = []
    producer_span_context = trace.get_current_span(producer).get_span_context()
    if producer_span_context.is_valid:
        links.append(trace.Link(producer_span_context))
    with _tracer.start_as_current_span(
            f"process {STREAM}", context=producer, kind=trace.SpanKind.CONSUMER, links=links,
            attributes={"messaging.system": "redis", "messaging.destination.name": STREAM,
                        "messaging.consumer.group.name": group,
                        "messaging.message.id": event_id,
                        "messaging.operation.type": "process"}):
        yield
