"""What is counted as it happens: requests the ingress answered (`RequestStats`, a hub
request sink, fed for every request) and fixed-bucket histograms (request latency, reload
durations). `metrics.py` exposes them; these are compiled with the ingress (`devenv/native.py`),
being on its every request's path.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from devenv.telemetry.model import RequestSeen

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RELOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
WINDOW_S = 60.0  # what `devenv metrics` rates and percentiles are computed over
WINDOW_MAX = 20_000  # requests kept per service for it, at most


class Histogram:
    """Fixed buckets, counted as observed; exposed cumulatively."""

    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, n in zip([*map(_num, self.buckets), "+Inf"], self.counts, strict=True):
            total += n
            out.append((bound, float(total)))
        return out


def _num(value: float) -> str:
    return repr(float(value))


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


_CLASSES = tuple(status_class(status) for status in range(600))  # (read for every request)


@dataclass
class RequestStats:
    """Requests the ingress answered, per route and service (fed by the hub)."""

    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)
    latency: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    recent: dict[str, deque[tuple[float, float, int]]] = field(default_factory=dict)
    clock: Any = time.monotonic

    def add(self, batch: list[RequestSeen]) -> None:
        """Count requests answered (a Hub request sink: those of one turn of the loop)."""
        counts, latency, recent = self.counts, self.latency, self.recent
        now = self.clock()
        for seen in batch:
            route, service, status, took = seen.route, seen.service, seen.status, \
                seen.duration_s
            key = (route, service,
                   _CLASSES[status] if 0 <= status < 600 else status_class(status))
            counts[key] = counts.get(key, 0) + 1
            hist = latency.get((route, service))
            if hist is None:
                hist = latency[(route, service)] = Histogram(LATENCY_BUCKETS)
            hist.observe(took)
            window = recent.get(service)
            if window is None:
                window = recent[service] = deque(maxlen=WINDOW_MAX)
            window.append((now, took, status))

    def window(self, service: str, seconds: float = WINDOW_S) -> WindowFigures:
        """Rate, p95 and error rate of a service's requests over the last `seconds`."""
        now = self.clock()
        recent = [r for r in self.recent.get(service, ()) if now - r[0] <= seconds]
        if not recent:
            return WindowFigures(0.0, None, None)
        durations = sorted(r[1] for r in recent)
        p95 = durations[min(len(durations) - 1, int(0.95 * len(durations)))]
        errors = sum(1 for r in recent if r[2] >= 500)
        return WindowFigures(len(recent) / seconds, p95, errors / len(recent))


@dataclass(frozen=True)
class WindowFigures:
    requests_per_s: float
    p95_s: float | None
    error_rate: float | None
