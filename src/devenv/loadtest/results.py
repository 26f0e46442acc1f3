"""The run's figures, merged from every worker: totals, latency percentiles, errors by
kind, per step and by second; thresholds checked against them; the JSON document."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from devenv.loadtest.histogram import Histogram
from devenv.loadtest.pattern import Pattern, Threshold

ERROR_KINDS = ("connect", "timeout", "status", "check")


@dataclass
class Figures:
    hist: Histogram = field(default_factory=Histogram)
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def add_wire(self, wire: dict[str, Any]) -> None:
        self.hist.merge(Histogram.from_sparse(wire["buckets"], wire["max_us"]))
        self.requests += wire["requests"]
        self.errors.update(wire["errors"])

    def add(self, other: Figures) -> None:
        self.hist.merge(other.hist)
        self.requests += other.requests
        self.errors.update(other.errors)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def as_json(self, seconds: float) -> dict[str, Any]:
        return {"requests": self.requests,
                "rps": round(self.requests / seconds, 1) if seconds > 0 else 0.0,
                "errors": {"total": self.error_count,
                           "rate": round(self.error_count / self.requests, 5)
                           if self.requests else 0.0,
                           "by_kind": {k: self.errors.get(k, 0) for k in ERROR_KINDS}},
                "latency_ms": self.hist.summary_ms()}


@dataclass(frozen=True)
class Verdict:
    scope: str  # "" (the whole run), a scenario, or scenario/step
    threshold: Threshold
    actual: float

    @property
    def ok(self) -> bool:
        return self.threshold.holds(self.actual)

    def as_json(self) -> dict[str, Any]:
        return {"scope": self.scope or "all", "threshold": self.threshold.text,
                "actual": round(self.actual, 4), "ok": self.ok,
                "where": self.threshold.where}


@dataclass
class Results:
    target: str
    asked: str  # what was asked, in words: "200/s for 30s", "32 connections for 10s"
    duration_s: float = 0.0  # the time it took
    timeline: dict[int, Figures] = field(default_factory=dict)
    steps: dict[str, Figures] = field(default_factory=dict)
    workers: int = 1
    rate_asked: float | None = None
    not_sent: int = 0
    busy: int = 0
    lag_max_s: float = 0.0
    interrupted: bool = False
    verdicts: list[Verdict] = field(default_factory=list)

    def add_seconds(self, seconds: list[tuple[int, dict[str, Any]]]) -> None:
        for sec, wire in seconds:
            self.timeline.setdefault(sec, Figures()).add_wire(wire)

    def add_done(self, done: dict[str, Any]) -> None:
        for key, wire in done["steps"].items():
            self.steps.setdefault(key, Figures()).add_wire(wire)
        self.not_sent += done["not_sent"]
        self.busy += done["busy"]
        self.lag_max_s = max(self.lag_max_s, done["lag_max_s"])

    def total(self) -> Figures:
        out = Figures()
        for figures in self.timeline.values():
            out.add(figures)
        return out

    def scenario(self, name: str) -> Figures:
        out = Figures()
        for key, figures in self.steps.items():
            if key.split("/", 1)[0] == name:
                out.add(figures)
        return out

    @property
    def behind(self) -> str | None:
        """Why the generator did not keep the asked rate, if it did not: then the figures
        are the generator's, not the service's."""
        if self.rate_asked is None:
            return None
        if self.lag_max_s > 0.05:
            return (f"the generator could not keep the asked rate (it started requests up to "
                    f"{self.lag_max_s * 1000:.0f} ms late with connections free): the "
                    "figures are the generator's limit, not the service's; lower the rate")
        if self.not_sent:
            return (f"{self.not_sent} requests of the asked rate were never sent: every "
                    "connection was busy (the latency counts the wait); raise --connections "
                    "if the service should take more at once")
        return None

    def check(self, pattern: Pattern) -> list[Verdict]:
        seconds = max(self.duration_s, 1e-9)
        verdicts = [Verdict("", t, _metric(self.total(), t.metric, seconds))
                    for t in pattern.thresholds]
        for sc in pattern.scenarios:
            verdicts += [Verdict(sc.name, t, _metric(self.scenario(sc.name), t.metric, seconds))
                         for t in sc.thresholds]
            for step in sc.steps:
                key = f"{sc.name}/{step.name}"
                verdicts += [Verdict(key, t, _metric(self.steps.get(key, Figures()), t.metric,
                                                     seconds)) for t in step.thresholds]
        self.verdicts = verdicts
        return verdicts

    def as_json(self) -> dict[str, Any]:
        seconds = max(self.duration_s, 1e-9)
        total = self.total()
        doc = {"target": self.target, "asked": self.asked, "duration_s": round(seconds, 3),
               "interrupted": self.interrupted, **total.as_json(seconds)}
        doc["steps"] = {k: v.as_json(seconds) for k, v in self.steps.items()}
        doc["thresholds"] = [v.as_json() for v in self.verdicts]
        doc["generator"] = {"workers": self.workers, "rate_asked": self.rate_asked,
                            "not_sent": self.not_sent, "late_max_ms":
                            round(self.lag_max_s * 1000, 1), "behind": self.behind}
        doc["timeline"] = [{"t": sec, "requests": f.requests, "errors": f.error_count,
                            **{k: v for k, v in f.hist.summary_ms().items()
                               if k in ("p50", "p95", "p99", "max")}}
                           for sec, f in sorted(self.timeline.items())]
        return doc


def _metric(figures: Figures, metric: str, seconds: float) -> float:
    if metric == "errors":
        return figures.error_count / figures.requests if figures.requests else 0.0
    if metric == "rps":
        return figures.requests / seconds
    if metric == "max":
        return figures.hist.max_us / 1000
    return figures.hist.percentile(float(metric[1:])) / 1000
