"""OTLP/HTTP trace payloads to Spans: protobuf or the OTLP JSON encoding, gzipped or not.

Pure (bytes in, spans out), so the receiver stays a thin handler. Built on the official
definitions (`opentelemetry-proto`); the one twist of OTLP JSON is that its ids are hex,
where protobuf's JSON mapping would read base64, so they are turned into base64 first.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1 import trace_pb2

from devenv.telemetry.model import Attributes, Span

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
MAX_BODY = 8 * 1024 * 1024  # decoded (after gzip) bytes of one request
UNKNOWN_SERVICE = "unknown_service"
KINDS = {0: "internal", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
STATUSES = {0: "unset", 1: "ok", 2: "error"}
_GZIP_MAGIC = b"\x1f\x8b"  # never the start of a protobuf message (wire type 7) nor of JSON
# span times (Unix nanoseconds) outside these are refused: before 2000 is a clock never set
# or a unit mistake, and SQLite stores signed 64-bit integers (up to the year 2262)
MIN_TIME_NS = 946_684_800 * 10**9
MAX_TIME_NS = 2**63 - 1
_ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


class Rejected(ValueError):
    """A payload refused as a whole: `status` is the HTTP status to answer (400, 413, 415)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Decoded:
    spans: list[Span]
    rejected: int = 0  # spans left out (bad ids), reported as a partial success
    reason: str = ""


def media_type(content_type: str | None) -> str:
    """The encoding a Content-Type names: PROTOBUF or JSON (415 otherwise)."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind in (PROTOBUF, "application/protobuf"):
        return PROTOBUF
    if kind == JSON:
        return JSON
    raise Rejected(f"unsupported content type {kind or 'none'!r}: send {PROTOBUF} or {JSON}",
                   415)


def decode(body: bytes, content_type: str | None) -> Decoded:
    """The spans of one export request."""
    request = parse_export(body, content_type, ExportTraceServiceRequest(), "trace",
                           _hex_ids_to_base64)
    return spans_of(request)


M = TypeVar("M", bound=Message)


def parse_export(body: bytes, content_type: str | None, request: M, what: str,
                 prepare: Callable[[dict[str, Any]], Any] = lambda data: data) -> M:
    """`request` (an OTLP export message) filled from a body in protobuf or OTLP JSON, gzip
    recognised by its magic bytes (so a body the web server already inflated is not inflated
    twice); `Rejected` (400, 413, 415) saying what is wrong. `prepare` adapts the JSON first
    (OTLP JSON writes ids in hex where protobuf's JSON expects base64)."""
    kind = media_type(content_type)
    body = gunzip(body) if body[:2] == _GZIP_MAGIC else body
    if len(body) > MAX_BODY:
        raise Rejected(f"payload over {MAX_BODY // (1024 * 1024)} MiB", 413)
    name = type(request).__name__
    if kind == PROTOBUF:
        try:
            request.ParseFromString(body)
        except (DecodeError, RuntimeError, ValueError):
            raise Rejected(f"not an OTLP protobuf {what} export ({name}): the message is "
                           "corrupt") from None
        return request
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Rejected(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Rejected(f"not an OTLP JSON {what} export: expected an object")
    try:
        json_format.ParseDict(prepare(data), request, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError) as exc:
        raise Rejected(f"not an OTLP JSON {what} export: {_short(str(exc))}") from None
    return request


def gunzip(body: bytes, limit: int = MAX_BODY) -> bytes:
    """Inflate, refusing more than `limit` bytes out (a small bomb stays small)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise Rejected(f"bad gzip body: {exc}") from None
    if len(out) > limit:
        raise Rejected(f"payload over {limit // (1024 * 1024)} MiB once inflated", 413)
    if not inflater.eof:
        raise Rejected("bad gzip body: truncated")
    return out


def response(kind: str, rejected: int = 0, reason: str = "") -> bytes:
    """An ExportTraceServiceResponse in `kind`'s encoding (partial success when spans were
    left out)."""
    answer = ExportTraceServiceResponse()
    if rejected:
        answer.partial_success.rejected_spans = rejected
        answer.partial_success.error_message = reason
    if kind == PROTOBUF:
        return answer.SerializeToString()
    return json.dumps(json_format.MessageToDict(answer)).encode()


def spans_of(request: ExportTraceServiceRequest) -> Decoded:
    spans: list[Span] = []
    rejected, reason = 0, ""
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        service = str(resource.get("service.name") or UNKNOWN_SERVICE)
        instance = resource.get("service.instance.id")
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                try:
                    spans.append(_span(span, service,
                                       str(instance) if instance is not None else None))
                except ValueError as exc:
                    rejected, reason = rejected + 1, reason or str(exc)
    return Decoded(spans, rejected, reason)


def _span(span: trace_pb2.Span, service: str, instance: str | None) -> Span:
    trace_id, span_id = _id(span.trace_id, 16, "trace_id"), _id(span.span_id, 8, "span_id")
    parent = span.parent_span_id.hex() if any(span.parent_span_id) else None
    attrs = attributes(span.attributes)
    for event in span.events:  # a recorded exception says what failed
        if event.name == "exception":
            for key, value in attributes(event.attributes).items():
                attrs.setdefault(key, value)
            break
    start, end = span.start_time_unix_nano, span.end_time_unix_nano
    if not MIN_TIME_NS <= start <= MAX_TIME_NS:
        raise ValueError(f"start_time_unix_nano {start} is out of range (Unix epoch "
                         "nanoseconds, from 2000 to 2262)")
    if end > MAX_TIME_NS:
        raise ValueError(f"end_time_unix_nano {end} is out of range (Unix epoch nanoseconds, "
                         "up to 2262)")
    links = tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links
                  if len(link.trace_id) == 16 and len(link.span_id) == 8)
    return Span(trace_id=trace_id, span_id=span_id, parent_id=parent, service=service,
                name=span.name or "(unnamed)", start_ns=start,
                end_ns=max(end, start),  # an end before the start: a span of no time
                kind=KINDS.get(span.kind, "internal"),
                status=STATUSES.get(span.status.code, "unset"),
                status_message=span.status.message, instance=instance, attributes=attrs,
                links=links)


def _id(raw: bytes, size: int, what: str) -> str:
    if len(raw) != size or not any(raw):
        raise ValueError(f"{what} must be {size} bytes, not all zero")
    return raw.hex()


def attributes(pairs: Any) -> Attributes:
    out: Attributes = {}
    for pair in pairs:
        assert isinstance(pair, KeyValue)
        out[pair.key] = flat(pair.value)
    return out


def flat(value: AnyValue) -> str | int | float | bool:
    """An AnyValue as a plain value: arrays and key-value lists as JSON text; a double that
    is not a number, or is infinite, as "NaN", "Infinity", "-Infinity" (JSON has no such
    numbers: left as they are, they would break every JSON reader of the trace)."""
    which = value.WhichOneof("value")
    if which in ("array_value", "kvlist_value"):
        return json.dumps(_plain(value), separators=(",", ":"))
    plain = _plain(value)
    return plain if isinstance(plain, str | int | float | bool) else ""


def finite(number: float) -> float | str:
    """`number`, or the name JSON gives a NaN or an infinity in text."""
    if math.isfinite(number):
        return number
    return "NaN" if math.isnan(number) else "Infinity" if number > 0 else "-Infinity"


def _plain(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return ""
    if which == "array_value":
        return [_plain(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _plain(kv.value) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return value.bytes_value.hex()
    if which == "double_value":
        return finite(value.double_value)
    return getattr(value, which)


def _hex_ids_to_base64(data: Any) -> Any:
    """OTLP JSON's hex ids as the base64 protobuf's JSON mapping reads (bad hex stays as it
    is, and then fails the length check of its span)."""
    if isinstance(data, list):
        return [_hex_ids_to_base64(v) for v in data]
    if not isinstance(data, dict):
        return data
    out = {}
    for key, value in data.items():
        if key in _ID_KEYS and isinstance(value, str):
            try:
                value = base64.b64encode(bytes.fromhex(value)).decode()
            except ValueError:
                value = ""
        elif key not in ("attributes", "value"):  # attribute values are left alone
            value = _hex_ids_to_base64(value)
        out[key] = value
    return out


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
