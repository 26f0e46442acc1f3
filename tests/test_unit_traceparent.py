"""W3C trace context: which `traceparent` headers continue a trace, and what a hop passes on."""

from __future__ import annotations

import pytest

from devenv.telemetry.context import (
    TraceParent,
    child,
    new_span_id,
    new_trace_id,
    new_traceparent,
    parse,
    parse_headers,
    tracestate,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


@pytest.mark.parametrize(("header", "flags"), [
    (f"00-{TRACE}-{SPAN}-01", "01"),
    (f"00-{TRACE}-{SPAN}-00", "00"),  # not sampled: kept
    (f"00-{TRACE}-{SPAN}-09", "09"),  # unknown flag bits: kept
    (f"  00-{TRACE}-{SPAN}-01 ", "01"),  # optional white space around the value
    (f"01-{TRACE}-{SPAN}-01", "01"),  # a later version, read as version 00
    (f"cc-{TRACE}-{SPAN}-01-what-comes-later", "01"),  # with fields it adds
])
def test_a_valid_traceparent_is_continued_with_its_flags(header: str, flags: str) -> None:
    assert parse(header) == TraceParent(TRACE, SPAN, flags)


@pytest.mark.parametrize("header", [
    None, "", "garbage",
    f"ff-{TRACE}-{SPAN}-01",  # version ff is forbidden
    f"0g-{TRACE}-{SPAN}-01",
    f"00-{TRACE}-{SPAN}-01-extra",  # version 00 has exactly four fields
    f"01-{TRACE}-{SPAN}-01x",  # a later version's extra fields start with '-'
    f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
    f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
    f"00-{TRACE.upper()}-{SPAN}-01",  # upper-case hex is not allowed
    f"00-{TRACE[:-1]}-{SPAN}-01",
    f"00-{TRACE}-{SPAN}1-01",
    f"00-{TRACE}-{SPAN}-0z",
    f"00_{TRACE}_{SPAN}_01",
])
def test_an_invalid_traceparent_starts_a_new_trace(header: str | None) -> None:
    assert parse(header) is None


def test_two_traceparent_headers_are_invalid() -> None:
    good = f"00-{TRACE}-{SPAN}-01"
    assert parse_headers([good]) == TraceParent(TRACE, SPAN, "01")
    assert parse_headers([]) is None
    assert parse_headers([good, good]) is None


def test_tracestate_passes_through_only_with_a_valid_traceparent() -> None:
    parent = TraceParent(TRACE, SPAN)
    assert tracestate(parent, ["congo=t61rcWkgMzE"]) == "congo=t61rcWkgMzE"
    assert tracestate(parent, ["rojo=00f067aa0ba902b7", " congo=t61rcWkgMzE"]) == \
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    assert tracestate(parent, []) is None
    assert tracestate(None, ["congo=t61rcWkgMzE"]) is None  # a new trace: its state is gone


def test_a_child_keeps_the_trace_and_flags_and_a_new_trace_is_sampled() -> None:
    span = new_span_id()
    passed = child(TraceParent(TRACE, SPAN, "00"), span)
    assert passed.header() == f"00-{TRACE}-{span}-00"
    assert parse(passed.header()) == passed and not passed.sampled
    fresh = child(None, span)
    assert fresh.trace_id != TRACE and fresh.span_id == span and fresh.sampled
    assert parse(fresh.header()) == fresh


def test_new_ids_are_lower_case_hex_of_the_right_size_and_differ() -> None:
    traces = {new_trace_id() for _ in range(1000)}
    spans = {new_span_id() for _ in range(1000)}
    assert len(traces) == len(spans) == 1000
    assert all(len(t) == 32 and int(t, 16) and t == t.lower() for t in traces)
    assert all(len(s) == 16 and int(s, 16) and s == s.lower() for s in spans)


def test_a_new_traceparent_is_well_formed_its_ids_fresh_and_where_the_ingress_reads_them(
) -> None:
    for sampled, flags in ((True, "01"), (False, "00")):
        headers = [new_traceparent(sampled) for _ in range(1000)]
        parsed = [parse(h.decode()) for h in headers]
        assert len({p.trace_id for p in parsed if p}) == len({p.span_id for p in parsed if p}) \
            == 1000
        for header, got in zip(headers, parsed, strict=True):
            assert got == (header[3:35].decode(), header[36:52].decode(), flags)
