"""Head sampling at the edge: which requests the ingress starts a recorded trace for.

Every request is counted in the metrics; a trace is recorded for at most `rate` new traces a
second (a token bucket holding one second's worth), so a load test through the ingress costs
its trace store little however hard it drives it, while a person clicking through the
system has every request traced. The decision travels in the W3C `traceparent` flags (sampled
or not), so an instrumented service's SDK (parent-based sampling, the default) records its
spans for exactly the same requests. A caller's own `traceparent` is followed as it says.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RateSampler:
    """At most `rate` new traces a second (None: every request)."""

    def __init__(self, rate: int | None = None, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._rate = rate
        self._tokens = float(rate or 0)
        self._last = clock()

    @property
    def rate(self) -> int | None:
        return self._rate

    @rate.setter
    def rate(self, rate: int | None) -> None:
        if rate != self._rate:
            self._rate, self._tokens, self._last = rate, float(rate or 0), self.clock()

    def admit(self) -> bool:
        rate = self._rate
        if rate is None:
            return True
        now = self.clock()
        tokens = min(float(rate), self._tokens + (now - self._last) * rate)
        self._last = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens
        return False
