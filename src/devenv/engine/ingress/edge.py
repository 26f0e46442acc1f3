"""A request's edge span while the ingress answers it: the trace it continues (or starts),
the `traceparent` the instance gets (its parent is the edge span), what the request was
routed to, and, once answered, the `RequestSeen` the hub publishes.

Made for every request, so kept to the least: a request that starts a trace gets its
`traceparent` in one formatting of two random draws; its method and path are decoded, and its
ids read back out of that header, only when it is answered."""

from __future__ import annotations

import time

from devenv.engine.ingress.routes import host_name
from devenv.telemetry import context
from devenv.telemetry.model import RequestSeen
from devenv.telemetry.sampling import RateSampler

CLIENT_GONE = 499  # recorded when the client went away before its response was complete

_seen = tuple.__new__  # (a RequestSeen without its Python-level __new__: one every request)
_time_ns, _perf_ns = time.time_ns, time.perf_counter_ns


class Edge:
    """One request's edge span while it is answered: its trace context, what it was routed
    to, and when it started."""

    __slots__ = ("instance", "method", "outgoing", "parent_id", "route", "sampled", "sent",
                 "service", "start_ns", "started", "target", "tracestate")

    def __init__(self, method: bytes, target: bytes, traceparent: list[str] | None = None,
                 tracestate: list[str] | None = None, sampler: RateSampler | None = None):
        parent = context.parse_headers(traceparent) if traceparent else None
        if parent is None:  # a new trace: sampled at the sampler's rate
            self.parent_id = self.tracestate = None
            self.sampled = sampled = sampler is None or sampler.admit()
            self.outgoing = context.new_traceparent(sampled)
        else:  # a caller's traceparent: its sampled flag is followed
            self.parent_id = parent.span_id
            self.tracestate = context.tracestate(parent, tracestate or ())
            self.sampled = parent.sampled
            self.outgoing = context.child(parent, context.new_span_id()).header().encode()
        self.method = method
        self.target = target
        self.route = ""
        self.service = ""
        self.instance: str | None = None
        self.sent: int | None = None  # the status the client was sent, once it was
        self.start_ns = _time_ns()
        self.started = _perf_ns()

    @property
    def trace_id(self) -> str:
        return self.outgoing[3:35].decode()

    @property
    def span_id(self) -> str:
        return self.outgoing[36:52].decode()

    def finish(self, status: int, error: str | None, host: bytes | str | None
               ) -> RequestSeen:
        """The request as answered: what metrics count and, when its trace is recorded (it
        was sampled, or it failed: a failure always is), its span in the trace store. `host`
        is the Host header as received (its name is read only for a span recorded)."""
        duration = (_perf_ns() - self.started) / 1e9
        method = self.method.decode("latin-1")
        path = self.target.partition(b"?")[0].decode("latin-1")
        if not self.sampled and error is None and status < 500:
            return _seen(RequestSeen, (self.route, self.service, self.instance, method, path,
                                       status, self.start_ns, duration, None, None, None,
                                       None, None))
        if isinstance(host, bytes):
            host = host.decode("latin-1")
        return RequestSeen(self.route, self.service, self.instance, method, path, status,
                           self.start_ns, duration, self.trace_id, self.span_id,
                           self.parent_id, host_name(host) if host else None, error)
