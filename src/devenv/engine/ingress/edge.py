"""A request's edge span while the ingress answers it: the trace it continues (or starts),
the `traceparent` the instance gets (its parent is the edge span), what the request was
routed to, and, once answered, the `RequestSeen` the hub publishes."""

from __future__ import annotations

import time

from devenv.engine.ingress.routes import host_name
from devenv.telemetry import context
from devenv.telemetry.model import RequestSeen
from devenv.telemetry.sampling import RateSampler

CLIENT_GONE = 499  # recorded when the client went away before its response was complete
UNSAMPLED = "00"  # traceparent flags: not recorded


class Edge:
    """One request's edge span while it is answered: its trace context, what it was routed
    to, and when it started."""

    __slots__ = ("instance", "method", "outgoing", "parent_id", "path", "route", "sampled",
                 "sent", "service", "start_ns", "started", "tracestate")

    def __init__(self, method: str, path: str, traceparent: list[str],
                 tracestate: list[str], sampler: RateSampler | None = None):
        parent = context.parse_headers(traceparent) if traceparent else None
        if parent is None:  # a new trace: sampled at the sampler's rate
            self.parent_id = self.tracestate = None
            self.sampled = sampled = sampler is None or sampler.admit()
            trace_id, span_id = context.new_ids()
            self.outgoing = context.TraceParent(trace_id, span_id,
                                                context.SAMPLED if sampled else UNSAMPLED)
        else:  # a caller's traceparent: its sampled flag is followed
            self.parent_id = parent.span_id
            self.tracestate = context.tracestate(parent, tracestate)
            self.sampled = parent.sampled
            self.outgoing = context.child(parent, context.new_span_id())
        self.method = method
        self.path = path
        self.route = ""
        self.service = ""
        self.instance: str | None = None
        self.sent: int | None = None  # the status the client was sent, once it was
        self.start_ns = time.time_ns()
        self.started = time.perf_counter_ns()

    def finish(self, status: int, error: str | None, host: bytes | str | None
               ) -> RequestSeen:
        """The request as answered: what metrics count and, when its trace is recorded (it
        was sampled, or it failed: a failure always is), its span in the trace store. `host`
        is the Host header as received (its name is read only for a span recorded)."""
        duration = (time.perf_counter_ns() - self.started) / 1e9
        if not self.sampled and error is None and status < 500:
            return RequestSeen(self.route, self.service, self.instance, self.method,
                               self.path, status, self.start_ns, duration)
        if isinstance(host, bytes):
            host = host.decode("latin-1")
        outgoing = self.outgoing
        return RequestSeen(self.route, self.service, self.instance, self.method, self.path,
                           status, self.start_ns, duration, outgoing.trace_id,
                           outgoing.span_id, self.parent_id, host_name(host) if host else None,
                           error)
