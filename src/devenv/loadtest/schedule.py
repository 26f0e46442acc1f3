"""Open-model arrival times: when the n-th iteration is meant to start, from stages of
arrival rates (hold, linear ramp, spike). Latency counts from these intended times, so a
stalled server shows in the figures instead of slowing the generator down with it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from devenv.loadtest.pattern import Stage


@dataclass(frozen=True)
class _Piece:
    start: float  # seconds from the run's start
    duration: float
    rate: float
    to: float
    before: float  # arrivals before this piece


class Schedule:
    """Arrivals of the open stages among `stages` (closed stages take their time, no
    arrivals). Worker `part` of `parts` takes arrivals part, part+parts, part+2*parts..."""

    def __init__(self, stages: tuple[Stage, ...], part: int = 0, parts: int = 1):
        self.pieces: list[_Piece] = []
        at = before = 0.0
        for s in stages:
            if s.open:
                self.pieces.append(_Piece(at, s.duration_s, s.rate, s.to, before))
                before += (s.rate + s.to) / 2 * s.duration_s
            at += s.duration_s
        self.total = before
        self.part, self.parts = part, parts
        self.n = 0  # this worker's next arrival

    def arrival(self, k: float) -> float | None:
        """When arrival number k (0-based, of all workers) is meant to start; None past the
        open stages."""
        for p in self.pieces:
            count = (p.rate + p.to) / 2 * p.duration
            if k < p.before + count:
                x = k - p.before
                slope = (p.to - p.rate) / p.duration
                if abs(slope) < 1e-12:
                    return p.start + x / p.rate
                # x = rate*t + slope*t^2/2  ->  t = (-rate + sqrt(rate^2 + 2*slope*x)) / slope
                return p.start + (-p.rate + math.sqrt(p.rate ** 2 + 2 * slope * x)) / slope
        return None

    def next(self) -> float | None:
        """This worker's next intended start (seconds from the run's start), or None."""
        at = self.arrival(self.n * self.parts + self.part)
        if at is not None:
            self.n += 1
        return at

    def stage_at(self, t: float) -> int:
        """Index among the open pieces of the one holding time t (for labels)."""
        for i, p in enumerate(self.pieces):
            if p.start <= t < p.start + p.duration:
                return i
        return -1
