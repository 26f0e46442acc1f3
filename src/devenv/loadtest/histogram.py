"""An HDR-style latency histogram: integer microseconds in log-spaced buckets, 128 to each
power of two (under 0.8% error), mergeable across workers and sparse on the wire."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

SUB_BITS = 7
SUB = 1 << SUB_BITS  # buckets in each power of two
LINEAR = SUB * 2  # below this, one bucket per microsecond
SIZE = LINEAR + 40 * SUB  # up to 2^48 us (about 9 years)


def index_of(us: int) -> int:
    """The bucket of a value in microseconds (negative counts as 0)."""
    if us < LINEAR:
        return us if us > 0 else 0
    shift = us.bit_length() - SUB_BITS - 1
    return LINEAR + (shift - 1) * SUB + (us >> shift) - SUB


def upper_of(index: int) -> int:
    """The largest value in microseconds that falls in bucket `index`."""
    if index < LINEAR:
        return index
    shift = (index - LINEAR) // SUB + 1
    return (((index - LINEAR) % SUB + SUB + 1) << shift) - 1


class Histogram:
    __slots__ = ("counts", "max_us", "total")

    def __init__(self) -> None:
        self.counts = [0] * SIZE
        self.total = 0
        self.max_us = 0

    def record(self, us: int) -> None:
        if us < LINEAR:
            self.counts[us if us > 0 else 0] += 1
        else:
            shift = us.bit_length() - SUB_BITS - 1
            i = LINEAR + (shift - 1) * SUB + (us >> shift) - SUB
            self.counts[i if i < SIZE else SIZE - 1] += 1
        self.total += 1
        if us > self.max_us:
            self.max_us = us

    def merge(self, other: Histogram) -> None:
        counts = self.counts
        for i, n in enumerate(other.counts):
            if n:
                counts[i] += n
        self.total += other.total
        self.max_us = max(self.max_us, other.max_us)

    def percentile(self, p: float) -> int:
        """The value (us) at or below which `p` percent of the recorded values fall; the
        bucket's upper edge, never above the largest value seen. 0 when empty."""
        if not self.total:
            return 0
        rank = max(1, -(-self.total * p // 100))  # ceil, at least the first value
        seen = 0
        for i, n in enumerate(self.counts):
            if n:
                seen += n
                if seen >= rank:
                    return min(upper_of(i), self.max_us)
        return self.max_us

    def summary_ms(self) -> dict[str, float]:
        return {**{f"p{p}": round(self.percentile(p) / 1000, 3) for p in (50, 90, 95, 99)},
                "max": round(self.max_us / 1000, 3)}

    def sparse(self) -> dict[int, int]:
        """The non-empty buckets, to send to another process."""
        return {i: n for i, n in enumerate(self.counts) if n}

    @classmethod
    def from_sparse(cls, buckets: Mapping[int, int], max_us: int) -> Histogram:
        h = cls()
        for i, n in buckets.items():
            h.counts[int(i)] += n
            h.total += n
        h.max_us = max_us
        return h

    @classmethod
    def merged(cls, parts: Iterable[Histogram]) -> Histogram:
        h = cls()
        for part in parts:
            h.merge(part)
        return h
