"""Durations, rates and the limits past which a figure is refused."""

from __future__ import annotations

import re
from typing import Any

from devenv.config.schema import parse_duration

MAX_RATE = 1_000_000.0  # requests a second: past this no one machine generates or serves
MAX_CONNECTIONS = 20_000  # connections (or virtual users): past this, descriptors run out
MAX_DURATION_S = 24 * 3600.0
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)\s*(?:/\s*(s|m|h|sec|min))?\s*$")
_PER = {None: 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def duration(value: Any) -> float:
    """Seconds from 30s, 500ms, 2m or a number of seconds; ValueError otherwise."""
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError
    return seconds


def rate(value: Any, zero_ok: bool = False) -> float:
    """Requests a second from 200/s, 600/m or a number; ValueError otherwise (and for 0,
    unless `zero_ok`: a ramp's end)."""
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int | float):
        per_s = float(value)
    else:
        match = _RATE.match(str(value))
        if not match:
            raise ValueError
        per_s = float(match.group(1)) / _PER[match.group(2)]
    if per_s < 0 or (per_s == 0 and not zero_ok):
        raise ValueError
    return per_s


def rate_problem(per_s: float) -> str | None:
    if per_s != per_s:  # (NaN: YAML's .nan)
        return "not a number: give a rate like 200/s"
    if per_s > MAX_RATE:
        if per_s == float("inf"):
            return f"an endless rate is over the limit of {MAX_RATE:,.0f}/s"
        exact = per_s == int(per_s) or per_s >= 1e15  # (else its fraction is the excess)
        return (f"{shown(per_s) if exact else f'{per_s:,.3f}/s'} is over the limit of "
                f"{shown(MAX_RATE)}")
    return None


def shown(per_s: float) -> str:
    """A rate as read: 200/s, 1,000,000/s, 2.5/s, 0.167/s (not 1e+06/s)."""
    if per_s >= 1000 or per_s == int(per_s):
        return f"{per_s:,.0f}/s"
    return f"{per_s:.3g}/s" if per_s >= 0.001 else f"{per_s:.10f}".rstrip("0") + "/s"


def count_problem(n: int, what: str = "connections") -> str | None:
    if n < 1:
        return f"{n} {what}: give at least 1"
    if n > MAX_CONNECTIONS:
        return f"{n} {what} is over the limit of {MAX_CONNECTIONS:,}"
    return None


def duration_problem(seconds: float) -> str | None:
    if seconds > MAX_DURATION_S:
        return f"{seconds:g}s is over the limit of {MAX_DURATION_S:,.0f}s (24h)"
    return None
