"""The last 15 minutes per service, in 5-second buckets: request rate and p95 latency (from
the requests the ingress saw) and CPU and memory (sampled). What the dashboard's charts and
sparklines draw.

Memory is bounded whatever the load: each series is a ring of `window / bucket` buckets, a
bucket's latencies are counts in a fixed set of logarithmic bins (not the samples), and the
number of services kept is capped. Pure: the caller gives the times.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from devenv.telemetry.model import RequestSeen

BUCKET_S = 5.0
WINDOW_S = 15 * 60.0
MAX_SERVICES = 200
# latency bins: bin i holds durations up to LOW * GROWTH**i (about 5% wide, 100 us .. 10 min)
LOW = 1e-4
GROWTH = 1.05
BINS = math.ceil(math.log(600.0 / LOW) / math.log(GROWTH)) + 1


def latency_bin(seconds: float) -> int:
    if seconds <= LOW:
        return 0
    return min(math.ceil(math.log(seconds / LOW) / math.log(GROWTH)), BINS - 1)


def bin_upper(index: int) -> float:
    return float(LOW * GROWTH ** index)


@dataclass
class _Requests:
    slot: int  # bucket number: floor(time / bucket)
    count: int = 0
    errors: int = 0  # 5xx, or no answer
    bins: dict[int, int] = field(default_factory=dict)  # latency bin -> count

    def p95(self) -> float | None:
        if not self.count:
            return None
        rank = math.ceil(0.95 * self.count)
        seen = 0
        for index in sorted(self.bins):
            seen += self.bins[index]
            if seen >= rank:
                return bin_upper(index)
        return None  # (unreachable: the bins add up to the count)


@dataclass
class _Sample:
    slot: int
    cpu_percent: float
    rss_bytes: int


class Series:
    """Per service: rings of request buckets and of resource samples."""

    def __init__(self, bucket_s: float = BUCKET_S, window_s: float = WINDOW_S,
                 max_services: int = MAX_SERVICES):
        self.bucket_s = bucket_s
        self.size = max(int(window_s // bucket_s), 1)
        self.max_services = max_services
        self._requests: dict[str, deque[_Requests]] = {}
        self._samples: dict[str, deque[_Sample]] = {}
        self.dropped = 0  # values of services past the cap

    def slot(self, at: float) -> int:
        return math.floor(at / self.bucket_s)

    def requests(self, batch: list[RequestSeen]) -> None:
        """Count requests answered (a Hub request sink: those of one turn of the loop)."""
        for seen in batch:
            self.request(seen)

    def request(self, seen: RequestSeen) -> None:
        """Count one request in the bucket of its start."""
        ring = self._ring(self._requests, seen.service)
        if ring is None:
            return
        slot = self.slot(seen.start_ns / 1e9)
        bucket = next((b for b in reversed(ring) if b.slot == slot), None)
        if bucket is None:
            if ring and slot < ring[-1].slot:
                return  # older than the newest bucket: late, and rare; not worth a reorder
            bucket = _Requests(slot)
            ring.append(bucket)
        bucket.count += 1
        if seen.status >= 500 or seen.status == 0:
            bucket.errors += 1
        index = latency_bin(seen.duration_s)
        bucket.bins[index] = bucket.bins.get(index, 0) + 1

    def sample(self, at: float, service: str, cpu_percent: float, rss_bytes: int) -> None:
        """One resource sample of a service (the latest in a bucket wins)."""
        ring = self._ring(self._samples, service)
        if ring is None:
            return
        slot = self.slot(at)
        if ring and ring[-1].slot >= slot:
            if ring[-1].slot == slot:
                ring[-1] = _Sample(slot, cpu_percent, rss_bytes)
            return
        ring.append(_Sample(slot, cpu_percent, rss_bytes))

    def forget(self, keep: set[str]) -> None:
        """Drop the series of services no longer running."""
        for rings in (self._requests, self._samples):
            for name in [n for n in rings if n not in keep]:
                del rings[name]

    def _ring(self, rings: dict[str, deque[Any]], service: str) -> deque[Any] | None:
        ring = rings.get(service)
        if ring is None:
            if len(rings) >= self.max_services:
                self.dropped += 1
                return None
            ring = rings[service] = deque(maxlen=self.size)
        return ring

    def snapshot(self, now: float) -> dict[str, Any]:
        """Every series over the window ending at `now`, one value per bucket (None: no
        data), oldest first: {bucket_s, start, services: {name: {rate, p95_ms, errors, cpu,
        rss}}}. `start` is the first bucket's time (Unix seconds)."""
        last = self.slot(now)
        first = last - self.size + 1
        services: dict[str, dict[str, list[Any]]] = {}
        for name in sorted(set(self._requests) | set(self._samples)):
            rate: list[float | None] = [0.0] * self.size
            p95: list[float | None] = [None] * self.size
            errors: list[int] = [0] * self.size
            cpu: list[float | None] = [None] * self.size
            rss: list[int | None] = [None] * self.size
            for bucket in self._requests.get(name, ()):
                if first <= bucket.slot <= last:
                    i = bucket.slot - first
                    rate[i] = round(bucket.count / self.bucket_s, 3)
                    worst = bucket.p95()
                    p95[i] = round(worst * 1000, 2) if worst is not None else None
                    errors[i] = bucket.errors
            for sample in self._samples.get(name, ()):
                if first <= sample.slot <= last:
                    cpu[sample.slot - first] = sample.cpu_percent
                    rss[sample.slot - first] = sample.rss_bytes
            services[name] = {"rate": rate, "p95_ms": p95, "errors": errors, "cpu": cpu,
                              "rss": rss}
        return {"bucket_s": self.bucket_s, "start": first * self.bucket_s,
                "services": services}
