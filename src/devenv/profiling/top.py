"""The functions a profile spent its time in: by self time (the frame on top of the stack)
and by total time (anywhere on the stack, once per sample however deep it recurses)."""

from __future__ import annotations

from dataclasses import dataclass

from devenv.profiling.speedscope import Frame, Samples


@dataclass(frozen=True)
class Ranked:
    frame: Frame
    self_s: float
    total_s: float
    self_pct: float
    total_pct: float


def rank(samples: Samples) -> list[Ranked]:
    """Every function seen, with its self and total time (and their shares of the whole)."""
    own: dict[int, float] = {}
    total: dict[int, float] = {}
    for stack, weight in samples.stacks:
        own[stack[-1]] = own.get(stack[-1], 0.0) + weight
        for index in set(stack):
            total[index] = total.get(index, 0.0) + weight
    whole = samples.seconds or 1.0
    return [Ranked(samples.frames[i], own.get(i, 0.0), t, 100 * own.get(i, 0.0) / whole,
                   100 * t / whole) for i, t in total.items()]


def top_self(samples: Samples, n: int = 10) -> list[Ranked]:
    ranked = [r for r in rank(samples) if r.self_s > 0]
    return sorted(ranked, key=lambda r: (-r.self_s, -r.total_s, r.frame.name))[:n]


def top_total(samples: Samples, n: int = 10) -> list[Ranked]:
    return sorted(rank(samples), key=lambda r: (-r.total_s, -r.self_s, r.frame.name))[:n]
