"""Traces without an engine: OTLP payloads (as the official SDK encodes them, as OTLP JSON,
gzipped, broken) to spans; the store's queries and bounds; the waterfall's shape."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from devenv.cli.commands.trace import waterfall
from devenv.core.errors import DevenvError, UsageError
from devenv.telemetry import otlp, store
from devenv.telemetry.model import Span
from devenv.telemetry.store import Query, Traces

PROTO, JSON = "application/x-protobuf", "application/json"


def sdk_export() -> tuple[bytes, list[str]]:
    """What the official SDK's OTLP exporter sends for a server span with a child that
    fails and links elsewhere; and the hex ids of (trace, server span, linked span)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create(
        {"service.name": "order", "service.instance.id": "order-2"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("POST /orders", kind=SpanKind.SERVER) as server:
        server.set_attribute("http.route", "/orders")
        server.set_attribute("http.status_code", 500)
        server.set_attribute("retry", True)
        server.set_attribute("ratio", 0.5)
        server.set_attribute("tags", ["a", "b"])
        with tracer.start_as_current_span("charge", kind=SpanKind.CLIENT,
                                          links=[Link(server.get_span_context())]) as child:
            child.record_exception(ValueError("card declined"))
            child.set_status(Status(StatusCode.ERROR, "card declined"))
    body = encode_spans(exporter.get_finished_spans()).SerializeToString()
    ctx = server.get_span_context()
    return body, [f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"]


def test_protobuf_from_the_sdk_becomes_spans_with_resource_kind_status_and_links() -> None:
    body, (trace_id, server_id) = sdk_export()
    for payload in (body, gzip.compress(body)):  # as sent, and as the SDK's gzip sends it
        decoded = otlp.decode(payload, PROTO)
        by_name = {s.name: s for s in decoded.spans}
        server, child = by_name["POST /orders"], by_name["charge"]
        assert (server.trace_id, server.span_id, server.parent_id) == (trace_id, server_id,
                                                                       None)
        assert (server.service, server.instance, server.kind) == ("order", "order-2", "server")
        assert server.attributes == {"http.route": "/orders", "http.status_code": 500,
                                     "retry": True, "ratio": 0.5, "tags": '["a","b"]'}
        assert (child.parent_id, child.kind, child.status, child.status_message) == (
            server_id, "client", "error", "card declined")
        assert child.attributes["exception.type"] == "ValueError"
        assert child.links == ((trace_id, server_id),)
        assert server.end_ns >= child.end_ns > child.start_ns >= server.start_ns


def test_otlp_json_reads_hex_ids_camel_case_and_enum_numbers() -> None:
    export = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "web"}}]},
        "scopeSpans": [{"scope": {"name": "x"}, "spans": [{
            "traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": "eee19b7ec3c1b174",
            "parentSpanId": "eee19b7ec3c1b173", "name": "GET /", "kind": 3,
            "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": 1544712661000000000,
            "attributes": [{"key": "n", "value": {"intValue": "7"}},
                           {"key": "kv", "value": {"kvlistValue": {"values": [
                               {"key": "a", "value": {"boolValue": True}}]}}}],
            "status": {"code": 1}, "futureField": 1}]}]}]}
    decoded = otlp.decode(json.dumps(export).encode(), "application/json; charset=utf-8")
    [span] = decoded.spans
    assert (span.trace_id, span.span_id, span.parent_id) == (
        "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", "eee19b7ec3c1b173")
    assert (span.service, span.instance, span.kind, span.status) == ("web", None, "client", "ok")
    assert span.duration_ns == 10**9
    assert span.attributes == {"n": 7, "kv": '{"a":true}'}
    assert json.loads(otlp.response(JSON)) == {}
    assert otlp.response(PROTO) == b""


@pytest.mark.parametrize(("body", "kind", "status", "says"), [
    (b"\x0a\x05\xff\xff", PROTO, 400, "corrupt"),
    (b"{not json", JSON, 400, "not JSON"),
    (b"[1, 2]", JSON, 400, "expected an object"),
    (b'{"resourceSpans": 3}', JSON, 400, "not an OTLP JSON trace export"),
    (b"\x1f\x8b\x08\x00garbage", PROTO, 400, "bad gzip"),
    (gzip.compress(b"\0" * (otlp.MAX_BODY + 1)), PROTO, 413, "once inflated"),
    (b"x", "text/plain", 415, "unsupported content type"),
])
def test_malformed_payloads_are_refused_with_a_status_and_a_short_reason(
        body: bytes, kind: str, status: int, says: str) -> None:
    with pytest.raises(otlp.Rejected) as caught:
        otlp.decode(body, kind)
    assert caught.value.status == status and says in str(caught.value)
    assert len(str(caught.value)) < 200


def test_spans_with_bad_ids_are_left_out_as_a_partial_success() -> None:
    good = {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331",
            "name": "ok"}
    bad = {"traceId": "zz", "spanId": "b7ad6b7169203331", "name": "bad"}
    export = {"resourceSpans": [{"scopeSpans": [{"spans": [good, bad]}]}]}
    decoded = otlp.decode(json.dumps(export).encode(), JSON)
    assert [s.name for s in decoded.spans] == ["ok"]
    assert decoded.spans[0].service == "unknown_service"
    assert decoded.rejected == 1 and "trace_id" in decoded.reason
    assert json.loads(otlp.response(JSON, decoded.rejected, decoded.reason))[
        "partialSuccess"]["rejectedSpans"] == "1"


# ---- the store

T0 = 1_700_000_000 * 10**9


def make_trace(n: int, services: tuple[str, ...] = ("web", "api"), ms: int = 10,
               error: bool = False, pad: int = 0) -> list[Span]:
    """Trace number n: a root in the first service, a child in each of the others."""
    trace_id = f"{n:08x}" + "0" * 23 + "1"
    start = T0 + n * 10**9
    root = Span(trace_id, f"{1:016x}", None, services[0], f"GET /{n}", start,
                start + ms * 10**6, kind="server", attributes={"pad": "x" * pad})
    kids = [Span(trace_id, f"{i + 2:016x}", root.span_id, svc, f"work {i}",
                 start + 10**6, start + 2 * 10**6, status="error" if error else "unset")
            for i, svc in enumerate(services[1:])]
    return [*kids, root]


@pytest.fixture
def traces(tmp_path: Path) -> Iterator[Traces]:
    t = Traces(tmp_path / ".devenv" / "traces")
    t.open(64 * 1024 * 1024, 3600.0)
    yield t
    t.close()


def test_queries_filter_by_services_time_duration_and_errors_newest_last(
        traces: Traces) -> None:
    traces.add(make_trace(1, ("web", "api")))
    traces.add(make_trace(2, ("web", "cart"), ms=300))
    traces.add(make_trace(3, ("web", "api", "db"), error=True))
    assert traces.flush()

    def ids(**kw: object) -> list[str]:
        return [t.trace_id[:8] for t in store.recent(traces.path, Query(**kw))]  # type: ignore[arg-type]

    assert ids() == ["00000001", "00000002", "00000003"]
    assert ids(services=("api",)) == ["00000001", "00000003"]
    assert ids(services=("api", "db")) == ["00000003"]  # through every one of them
    assert ids(min_duration=0.2) == ["00000002"]
    assert ids(errors=True) == ["00000003"]
    assert ids(since=(T0 + 2 * 10**9) / 1e9 - 0.001) == ["00000002", "00000003"]
    assert ids(limit=2) == ["00000002", "00000003"]
    [third] = store.recent(traces.path, Query(errors=True))
    assert (third.root_service, third.root_name, third.services, third.span_count,
            third.errors, third.status) == ("web", "GET /3", ["api", "db", "web"], 3, 2,
                                            "error")


def test_a_trace_is_found_by_a_unique_prefix_and_clear_errors_otherwise(
        traces: Traces) -> None:
    traces.add(make_trace(0x1234))
    root = make_trace(0x1234)[-1]
    traces.add([Span("00001234" + "f" * 24, "00000000000000ee", None, "web", "other",
                     root.start_ns, root.end_ns)])
    # a span that arrives later joins its trace
    traces.add([Span(root.trace_id, "00000000000000ff", root.span_id, "mail", "send",
                     root.start_ns + 10**5, root.end_ns)])
    assert traces.flush()
    found = store.lookup(traces.path, "000012340000", 3600, 64 << 20)
    assert [s.name for s in found.spans] == ["GET /4660", "send", "work 0"]
    assert found.services == ["api", "mail", "web"] and found.span_count == 3
    assert found.spans[2].offset == 0.001 and found.spans[2].duration == 0.001
    with pytest.raises(UsageError, match="several traces start with 00001234"):
        store.lookup(traces.path, "00001234", 3600, 64 << 20)
    with pytest.raises(UsageError, match="not a trace id"):
        store.lookup(traces.path, "0000123", 3600, 64 << 20)  # fewer than 8 digits
    with pytest.raises(DevenvError) as missing:
        store.lookup(traces.path, "abcdef01", 24 * 3600, 64 << 20)
    assert missing.value.exit_code == 1
    assert missing.value.message == "no trace abcdef01 (traces are kept 24h / 64 MiB)"
    with pytest.raises(UsageError, match="not a trace id"):
        store.lookup(traces.path, "checkout", 3600, 64 << 20)


def test_the_store_stays_under_its_size_dropping_the_oldest_traces_whole(
        tmp_path: Path) -> None:
    t = Traces(tmp_path / "traces")
    t.open(1024 * 1024, 3600.0)
    try:
        for n in range(1, 3001):
            t.add(make_trace(n, pad=300))
            if n % 200 == 0:
                assert t.flush()
                assert t.size_bytes() < 1.5 * 1024 * 1024
    finally:
        t.close()
    assert t.size_bytes() <= 1024 * 1024
    kept = store.recent(t.path, Query(limit=10_000))
    assert kept[-1].trace_id[:8] == f"{3000:08x}"  # the newest are kept
    assert 300 < len(kept) < 3000 and t.counters.pruned == 3000 - len(kept)
    assert all(s.span_count == 2 for s in kept)  # whole traces, never a part
    assert (tmp_path / "traces").stat().st_mode & 0o777 == 0o700
    assert t.path.stat().st_mode & 0o777 == 0o600


def test_old_traces_are_pruned_and_the_rest_survive_a_restart(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    monkeypatch.setattr(store, "PRUNE_EVERY", 0.05)
    clock = [1000.0]
    t = Traces(tmp_path / "traces", clock=lambda: clock[0])
    t.open(64 << 20, 60.0)
    t.add(make_trace(1))
    assert t.flush()
    clock[0] += 45
    t.add(make_trace(2))
    assert t.flush()
    t.close()

    again = Traces(tmp_path / "traces", clock=lambda: clock[0])  # a new engine
    again.open(64 << 20, 60.0)
    try:
        assert [x.trace_id[:8] for x in store.recent(again.path, Query())] == [
            "00000001", "00000002"]
        clock[0] += 30  # trace 1 is 75 s old now, trace 2 30 s
        from conftest import wait_for

        assert wait_for(lambda: [x.trace_id[:8] for x in store.recent(
            again.path, Query())] == ["00000002"], timeout=5)
    finally:
        again.close()


def test_a_writer_far_behind_drops_and_counts_instead_of_growing(tmp_path: Path) -> None:
    t = Traces(tmp_path / "traces")  # not opened: nothing writes
    for n in range(store.MAX_QUEUED // 2 + 10):
        t.add(make_trace(n))
    assert t.counters.received == 2 * (store.MAX_QUEUED // 2 + 10)
    assert t.counters.dropped == t.counters.received - store.MAX_QUEUED
    t.open(64 << 20, 3600.0)
    try:
        assert t.flush()
        assert t.counters.stored == store.MAX_QUEUED
    finally:
        t.close()


# ---- the waterfall


def test_the_waterfall_puts_each_span_under_its_parent_with_a_bar_on_the_trace_scale(
        traces: Traces) -> None:
    spans = make_trace(7, ("gateway", "order", "payment"), ms=100, error=True)
    grandchild = Span(spans[0].trace_id, "00000000000000aa", spans[0].span_id, "db", "SELECT",
                      T0 + 7 * 10**9 + 50 * 10**6, T0 + 7 * 10**9 + 100 * 10**6,
                      attributes={"db.statement": "SELECT * FROM orders WHERE " + "x" * 100})
    traces.add([*spans, grandchild])
    assert traces.flush()
    trace = store.lookup(traces.path, f"{7:08x}", 3600, 64 << 20)
    lines = [line.plain for line in waterfall(trace, 100)]
    assert lines[0].startswith(f"trace {trace.trace_id}") and "4 services" in lines[0]
    body = [line for line in lines[1:] if "█" in line]
    expected = ["gateway GET /7", "├─ order work 0", "│  └─ db SELECT", "└─ payment work 1"]
    assert len(body) == len(expected)
    assert all(line.startswith(label + " ") for line, label in zip(body, expected, strict=True))
    assert all(len(line) <= 100 + len("  error") for line in lines)
    root_bar = body[0].split("█")
    assert body[0].count("█") > 3 * body[1].count("█")  # 100 ms against 1 ms
    assert root_bar
    assert any("db.statement=SELECT * FROM orders WHERE xxx" in line and "…" in line
               for line in lines)
    assert sum("error" in line for line in body) == 2
