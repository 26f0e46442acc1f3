"""Traces without an engine: OTLP payloads (as the official SDK encodes them, as OTLP JSON,
gzipped, broken) to spans; the store's queries and bounds; the waterfall's shape."""

from __future__ import annotations

import gzip
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from devenv.cli.commands.trace import waterfall
from devenv.core.errors import DevenvError, UsageError
from devenv.telemetry import otlp, store, writerproc
from devenv.telemetry.model import RequestSeen, Span
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
            "name": "ok", "startTimeUnixNano": "1700000000000000000"}
    bad = {"traceId": "zz", "spanId": "b7ad6b7169203331", "name": "bad"}
    export = {"resourceSpans": [{"scopeSpans": [{"spans": [good, bad]}]}]}
    decoded = otlp.decode(json.dumps(export).encode(), JSON)
    assert [s.name for s in decoded.spans] == ["ok"]
    assert decoded.spans[0].service == "unknown_service"
    assert decoded.rejected == 1 and "trace_id" in decoded.reason
    assert json.loads(otlp.response(JSON, decoded.rejected, decoded.reason))[
        "partialSuccess"]["rejectedSpans"] == "1"


def one_span_export(**span: object) -> bytes:
    base = {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331",
            "name": "x", "startTimeUnixNano": "1700000000000000000",
            "endTimeUnixNano": "1700000000001000000"}
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [
        {**base, **span}]}]}]}).encode()


@pytest.mark.parametrize(("times", "says"), [
    ({"endTimeUnixNano": "18446744073709551615"}, "end_time_unix_nano 18446744073709551615"),
    ({"startTimeUnixNano": "9223372036854775808"}, "start_time_unix_nano"),
    ({"startTimeUnixNano": "0", "endTimeUnixNano": "0"}, "start_time_unix_nano 0"),
    ({"startTimeUnixNano": "1700000000", "endTimeUnixNano": "1700000001"}, "from 2000"),
])
def test_spans_with_times_sqlite_cannot_hold_or_absurd_are_refused_as_partial_success(
        times: dict[str, str], says: str) -> None:
    decoded = otlp.decode(one_span_export(**times), JSON)
    assert decoded.spans == [] and decoded.rejected == 1 and says in decoded.reason


def test_an_end_before_the_start_is_a_span_of_no_time() -> None:
    [span] = otlp.decode(one_span_export(endTimeUnixNano="1600000000000000000"), JSON).spans
    assert span.start_ns == span.end_ns == 1_700_000_000 * 10**9


def test_nan_and_infinite_doubles_become_strings_and_the_trace_stays_valid_json(
        tmp_path: Path) -> None:
    def double(key: str, text: str) -> dict[str, object]:
        return {"key": key, "value": {"doubleValue": text}}

    body = one_span_export(attributes=[
        double("nan", "NaN"), double("up", "Infinity"), double("down", "-Infinity"),
        double("ok", "1.5"),
        {"key": "list", "value": {"arrayValue": {"values": [{"doubleValue": "NaN"}]}}}])
    [span] = otlp.decode(body, JSON).spans
    assert span.attributes == {"nan": "NaN", "up": "Infinity", "down": "-Infinity", "ok": 1.5,
                               "list": '["NaN"]'}
    # a span built elsewhere with a bare float('nan') is stored as valid JSON too
    t = Traces(tmp_path / "traces")
    t.open(64 << 20, 3600.0)
    try:
        t.add([span, Span("1" * 32, "2" * 16, None, "web", "y", T0, T0,
                          attributes={"x": float("nan"), "y": float("-inf")})])
        assert t.flush()
    finally:
        t.close()
    for trace_id in (span.trace_id, "1" * 32):
        found = store.trace(t.path, trace_id)
        assert found is not None
        text = json.dumps([s.attributes for s in found.spans], allow_nan=False)  # no NaN
        assert json.loads(text)
    assert store.trace(t.path, "1" * 32).spans[0].attributes == {  # type: ignore[union-attr]
        "x": "NaN", "y": "-Infinity"}


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


def test_a_span_sqlite_cannot_hold_does_not_stop_the_writer(tmp_path: Path) -> None:
    t = Traces(tmp_path / "traces")
    t.open(64 << 20, 3600.0)
    try:
        # what the receiver refuses, if it reached the store another way
        t.add([Span("a" * 32, "b" * 16, None, "web", "bad", T0, 2**64 - 1)])
        assert t.flush(timeout=5)
        # and a failure the writer does not foresee, in the middle of a batch
        t.add([Span("c" * 32, "d" * 16, None, "web", "odd", T0, T0,
                    attributes={"x": object()})])  # type: ignore[dict-item]
        assert t.flush(timeout=5)
        assert any("TypeError" in e for e in t.counters.errors)
        t.add(make_trace(1))
        assert t.flush(timeout=5)  # promptly: the writer is alive
        assert [x.trace_id[:8] for x in store.recent(t.path, Query())] == ["00000001"]
        assert t.counters.stored == 2 and t.counters.dropped == 1
    finally:
        t.close()


def test_a_bad_payload_through_the_receiver_path_leaves_the_store_working(
        traces: Traces) -> None:
    decoded = otlp.decode(one_span_export(endTimeUnixNano="18446744073709551615"), JSON)
    traces.add(decoded.spans)
    decoded = otlp.decode(one_span_export(spanId="b7ad6b7169203332"), JSON)
    traces.add(decoded.spans)
    assert traces.flush(timeout=5)
    [found] = store.recent(traces.path, Query())
    assert found.trace_id == "0af7651916cd43dd8448eb211c80319c" and found.span_count == 1


def test_summaries_follow_spans_arriving_in_any_order_and_retries_count_once(
        traces: Traces) -> None:
    trace_id = "e" * 32
    start = T0

    def span(n: int, parent: int | None, offset_ms: int, service: str, status: str = "unset"
             ) -> Span:
        return Span(trace_id, f"{n:016x}", f"{parent:016x}" if parent else None, service,
                    f"op {n}", start + offset_ms * 10**6, start + (offset_ms + 5) * 10**6,
                    status=status)

    traces.add([span(3, 2, 20, "db")])  # a grandchild first: the root so far
    assert traces.flush()
    [head] = store.recent(traces.path, Query())
    assert (head.root_name, head.span_count) == ("op 3", 1)
    traces.add([span(2, 1, 10, "api", "error"), span(3, 2, 20, "db")])  # and a retry of 3
    assert traces.flush()
    traces.add([span(1, None, 0, "web")])  # the root arrives last
    traces.add([span(4, 1, -50, "cron")])  # earlier, but it has a parent: not the root
    assert traces.flush()
    [head] = store.recent(traces.path, Query())
    assert (head.root_service, head.root_name, head.span_count, head.errors) == (
        "web", "op 1", 4, 1)
    assert head.services == ["api", "cron", "db", "web"]
    assert head.start_ns == start - 50 * 10**6 and head.duration == 0.075


def test_a_trace_takes_at_most_max_spans_and_counts_the_rest(traces: Traces) -> None:
    traces.max_spans = 25
    trace_id = "f" * 32
    for first in range(0, 40, 10):
        traces.add([Span(trace_id, f"{n + 1:016x}", None if n == 0 else f"{1:016x}", "web",
                         f"op {n}", T0 + n, T0 + n + 1) for n in range(first, first + 10)])
    traces.add(make_trace(1))  # other traces are not affected
    assert traces.flush()
    found = store.trace(traces.path, trace_id)
    assert found is not None and found.span_count == len(found.spans) == 25
    assert traces.counters.dropped == 15 and traces.counters.stored == 27
    assert store.trace(traces.path, make_trace(1)[0].trace_id) is not None


OLD_SCHEMA = """
CREATE TABLE spans (
    trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_id TEXT, service TEXT NOT NULL,
    instance TEXT, name TEXT NOT NULL, kind TEXT NOT NULL, start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL, status TEXT NOT NULL, status_message TEXT NOT NULL,
    attributes TEXT NOT NULL, links TEXT NOT NULL,
    PRIMARY KEY (trace_id, span_id)) WITHOUT ROWID;
CREATE TABLE traces (
    trace_id TEXT PRIMARY KEY, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
    span_count INTEGER NOT NULL, errors INTEGER NOT NULL, services TEXT NOT NULL,
    root_service TEXT NOT NULL, root_name TEXT NOT NULL,
    received REAL NOT NULL);
CREATE INDEX traces_by_start ON traces (start_ns);
CREATE INDEX traces_by_received ON traces (received);
"""


def test_a_store_from_before_incremental_summaries_opens_and_keeps_growing(
        tmp_path: Path) -> None:
    import sqlite3

    folder = tmp_path / "traces"
    folder.mkdir(mode=0o700)
    old = sqlite3.connect(folder / store.DB_NAME)
    old.executescript(OLD_SCHEMA)
    root = make_trace(1)[-1]
    old.execute("INSERT INTO spans VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (root.trace_id, root.span_id, None, "web", None, "GET /1", root.start_ns,
                 root.end_ns, "server", "unset", "", "{}", "[]"))
    old.execute("INSERT INTO traces VALUES (?,?,?,?,?,?,?,?,?)",
                (root.trace_id, root.start_ns, root.end_ns, 1, 0, "web", "web", "GET /1", 1.0))
    old.commit()
    old.close()
    t = Traces(folder)
    t.open(64 << 20, 10**9)
    try:
        # a later span that starts earlier (its parent is the root): the root stays
        t.add([Span(root.trace_id, "00000000000000aa", root.span_id, "api", "early",
                    root.start_ns - 10**6, root.end_ns, status="error")])
        assert t.flush()
        assert not t.counters.errors
    finally:
        t.close()
    [head] = store.recent(t.path, Query())
    assert (head.root_name, head.span_count, head.errors, head.services) == (
        "GET /1", 2, 1, ["api", "web"])


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


def test_concurrent_opens_open_the_store_once(tmp_path: Path) -> None:
    """Two `up`s at once both open the store (each in a thread): neither fails."""
    traces = Traces(tmp_path / "traces")
    errors: list[BaseException] = []

    def opening() -> None:
        try:
            traces.open(64 * 1024 * 1024, 3600.0)
        except BaseException as exc:  # (the test reports it)
            errors.append(exc)

    threads = [threading.Thread(target=opening) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    try:
        assert errors == []
        writers = [t for t in threading.enumerate() if t.name == "trace-store" and t.is_alive()]
        assert len(writers) == 1  # one writer: not one a caller, fighting over the file
    finally:
        traces.close()


def test_a_writer_process_that_died_is_started_again_and_the_ingress_spans_are_made_there(
        traces: Traces) -> None:
    traces.add(make_trace(1))
    assert traces.flush()
    (writer,) = [p for p in psutil.Process().children()
                 if "devenv.telemetry.writer" in " ".join(p.cmdline())]
    writer.kill()
    writer.wait(5)
    # an edge span travels as the request the ingress saw, and is made by the writer
    seen = RequestSeen("/api", "api", "api-2", "POST", "/api/orders", 502, T0, 0.25,
                       "e" * 32, "f" * 16, "a" * 16, "shop.localhost",
                       "the instance closed the connection")
    traces.add_requests([seen, seen._replace(trace_id=None)])  # no span for the second
    assert traces.flush()
    found = store.trace(traces.path, "e" * 32)
    assert found is not None and traces.counters.errors == []
    (span,) = found.spans
    assert (span.service, span.name, span.parent_id, span.status, span.status_message) == (
        "devenv-ingress", "POST /api", "a" * 16, "error", "the instance closed the connection")
    assert span.duration == 0.25 and span.attributes == {
        "http.request.method": "POST", "url.path": "/api/orders",
        "http.response.status_code": 502, "server.address": "shop.localhost",
        "devenv.route": "/api", "devenv.service": "api", "devenv.instance": "api-2"}
    assert traces.counters.received == 3 and traces.counters.stored == 3


def test_a_new_store_can_be_read_as_soon_as_it_is_opened(tmp_path: Path) -> None:
    t = Traces(tmp_path / "traces")
    t.open(64 << 20, 3600.0)
    try:
        assert store.recent(t.path, Query()) == [] and t.flush()
    finally:
        t.close()


def test_a_store_that_cannot_be_read_is_moved_aside_and_a_new_one_started(
        tmp_path: Path) -> None:
    folder = tmp_path / "traces"
    folder.mkdir()
    (folder / store.DB_NAME).write_bytes(b"not a database, a disk that lied" * 200)
    told: list[str] = []
    t = Traces(folder)
    t.on_error = told.append
    t.open(64 << 20, 3600.0)
    try:
        t.add(make_trace(1))
        assert t.flush() and len(store.recent(t.path, Query())) == 1
        (kept,) = folder.glob(f"{store.DB_NAME}.broken-*")
        assert kept.read_bytes().startswith(b"not a database")  # kept, for a look
        assert told == t.counters.errors and len(told) == 1
        assert "could not be read" in told[0] and kept.name in told[0]
    finally:
        t.close()


def test_a_writer_that_does_not_answer_is_stopped_and_the_next_one_writes(
        tmp_path: Path) -> None:
    t = Traces(tmp_path / "traces")
    t.answer_timeout = 1.0
    t.open(64 << 20, 3600.0)
    try:
        t.add(make_trace(1))
        assert t.flush()
        (writer,) = [p for p in psutil.Process().children()
                     if "devenv.telemetry.writer" in " ".join(p.cmdline())]
        writer.suspend()  # (SIGSTOP: alive, answering nothing)
        t.add(make_trace(2))
        assert t.flush(timeout=10)  # bounded: the batch is given up after answer_timeout
        assert not writer.is_running() or writer.status() == psutil.STATUS_ZOMBIE
        assert t.counters.lost == 2 and "did not answer within 1s" in t.counters.errors[-1]
        t.add(make_trace(3))  # a new writer takes the next spans
        assert t.flush()
        assert [x.trace_id[:8] for x in store.recent(t.path, Query())] == [
            f"{1:08x}", f"{3:08x}"]
    finally:
        t.close()


def test_a_writer_that_cannot_start_says_why_and_is_not_restarted_for_every_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[object] = []
    real = subprocess.Popen

    def popen(*args: Any, **kwargs: Any) -> Any:
        started.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(writerproc.subprocess, "Popen", popen)
    monkeypatch.setattr(writerproc, "RETRY_FIRST", 60.0)  # (a slow machine stays within it)
    t = Traces(tmp_path / "traces")
    t.open(64 << 20, 3600.0)
    try:
        t.path.unlink()
        t.path.mkdir()  # what the writer opens is no longer a file
        for n in range(4):
            t.add(make_trace(n))
            assert t.flush()
        assert t.counters.lost == 8 and t.counters.stored == 0
        assert any(f"cannot open the trace store {t.path}" in e for e in t.counters.errors), \
            t.counters.errors
        # after two failures in a row it waits (RETRY_FIRST, doubling) before starting another
        assert len(started) == 2 and "spans lost" in t.counters.errors[-1]
    finally:
        t.close()
