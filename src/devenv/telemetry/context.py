"""W3C Trace Context (https://www.w3.org/TR/trace-context/): reading a `traceparent` header,
making new ids, and the header a hop sends on. Pure functions, cheap enough for every request.

A `traceparent` is `version-trace_id-parent_id-flags` in lower-case hex (2-32-16-2 digits).
Version `ff` is invalid; version `00` is exactly those four fields; a later version may add
fields after a `-`, which are ignored (the first four are read as version 00's). All-zero
trace or parent ids are invalid. The flags byte is kept as received (bit 0: sampled).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from typing import NamedTuple

SAMPLED = "01"
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


class TraceParent(NamedTuple):  # (a tuple: one is made for every request)
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits: the span of the caller, the parent of the next one
    flags: str = SAMPLED  # 2 hex digits

    def header(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    @property
    def sampled(self) -> bool:
        return bool(int(self.flags, 16) & 1)


# version, trace id, parent id, flags; a later version may add fields after a `-`
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?",
                          re.DOTALL)


def parse(header: str | None) -> TraceParent | None:
    """The trace a `traceparent` header continues, or None when it is absent or invalid."""
    if header is None:
        return None
    match = _TRACEPARENT.fullmatch(header.strip(" \t"))
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return TraceParent(trace_id, span_id, flags)


def parse_headers(values: list[str]) -> TraceParent | None:
    """The trace from a request's `traceparent` headers: more than one is invalid."""
    return parse(values[0]) if len(values) == 1 else None


def tracestate(parent: TraceParent | None, values: Iterable[str]) -> str | None:
    """The `tracestate` to pass on: the received one (several headers joined, as RFC 9110
    allows), only when the `traceparent` it belongs to was valid; None to send none."""
    if parent is None:
        return None
    joined = ",".join(v.strip() for v in values if v.strip())
    return joined or None


def new_trace_id() -> str:
    while True:
        value = random.getrandbits(128)
        if value:
            return f"{value:032x}"


def new_span_id() -> str:
    while True:
        value = random.getrandbits(64)
        if value:
            return f"{value:016x}"


def new_traceparent(sampled: bool) -> bytes:
    """The `traceparent` header value of a new trace's first span, in bytes (what the
    ingress sends for every request that came without one: the cheapest way there). Its
    trace id is `[3:35]`, its span id `[36:52]`."""
    return b"00-%032x-%016x-%s" % (random.getrandbits(128) or 1, random.getrandbits(64) or 1,
                                   b"01" if sampled else b"00")


def child(parent: TraceParent | None, span_id: str) -> TraceParent:
    """The context a hop passes on with its own span `span_id`: the same trace and flags as
    `parent`, or a new sampled trace when there is none."""
    if parent is None:
        return TraceParent(new_trace_id(), span_id, SAMPLED)
    return TraceParent(parent.trace_id, span_id, parent.flags)
