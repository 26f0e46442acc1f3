"""The run's figures, merged from every worker: totals, latency percentiles, errors by
kind, per step and by second; thresholds checked against them; the JSON document."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from devenv.loadtest import units
from devenv.loadtest.histogram import Histogram
from devenv.loadtest.pattern import Pattern, Threshold

ERROR_KINDS = ("connect", "timeout", "status", "check")
LATE_SHARE = 0.01  # more arrivals than this started late: the summary says so
SATURATED = 0.9  # a worker using this share of a core or more is the limit of an open run
StepKey = tuple[str, str]  # (scenario, step): names may hold any character, "/" too


def step_label(key: StepKey) -> str:
    """How a step is named in the summary and the JSON document: "scenario/step"."""
    return f"{key[0]}/{key[1]}"


@dataclass
class Figures:
    hist: Histogram = field(default_factory=Histogram)
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    codes: Counter[int] = field(default_factory=Counter)  # the statuses of `status` errors
    failed: Counter[str] = field(default_factory=Counter)  # why `check` errors failed

    def add_wire(self, wire: dict[str, Any]) -> None:
        self.hist.merge(Histogram.from_sparse(wire["buckets"], wire["max_us"]))
        self.requests += wire["requests"]
        self.errors.update(wire["errors"])
        self.codes.update({int(k): n for k, n in wire.get("codes", {}).items()})
        self.failed.update(wire.get("failed", {}))  # (a second's figures have neither)

    def add(self, other: Figures) -> None:
        self.hist.merge(other.hist)
        self.requests += other.requests
        self.errors.update(other.errors)
        self.codes.update(other.codes)
        self.failed.update(other.failed)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def as_json(self, seconds: float) -> dict[str, Any]:
        return {"requests": self.requests,
                "rps": round(self.requests / seconds, 1) if seconds > 0 else 0.0,
                "errors": {"total": self.error_count,
                           "rate": round(self.error_count / self.requests, 5)
                           if self.requests else 0.0,
                           "by_kind": {k: self.errors.get(k, 0) for k in ERROR_KINDS},
                           "status_codes": {str(c): n for c, n in sorted(self.codes.items())},
                           "checks_failed": dict(self.failed.most_common())},
                "latency_ms": self.hist.summary_ms() if self.hist.total else
                dict.fromkeys(("p50", "p90", "p95", "p99", "max"))}  # (none measured: null)


UNITS = {"errors": "%", "rps": "/s"}  # (a latency's: ms)


@dataclass(frozen=True)
class Verdict:
    scope: str  # "" (the whole run), a scenario, or scenario/step
    threshold: Threshold
    actual: float
    requests: int = 1  # in the scope: none measured means nothing to hold the threshold to
    reason: str = ""  # why it has no figure, when that is not "no requests"

    @property
    def ok(self) -> bool:
        return self.requests > 0 and self.threshold.holds(self.actual)

    @property
    def why(self) -> str:
        """Why a threshold broke without a figure to compare ("" when it has one)."""
        return "" if self.requests > 0 else (self.reason or "no requests")

    @property
    def unit(self) -> str:
        """The unit the threshold is written in, which its figure is given in."""
        return UNITS.get(self.threshold.metric, "ms")

    @property
    def shown(self) -> float:
        """The figure in that unit (errors as a percentage; kept as a fraction)."""
        return self.actual * 100 if self.threshold.metric == "errors" else self.actual

    @property
    def said(self) -> str:
        """What the summary and the report say of its figure: why there is none, or it."""
        if self.why:
            return self.why
        unit = self.unit
        if unit == "/s":
            return f"was {units.shown(self.shown)}"
        return f"was {self.shown:,.2f}{' ms' if unit == 'ms' else unit}"

    def as_json(self) -> dict[str, Any]:
        return {"scope": self.scope or "all", "threshold": self.threshold.text,
                "actual": round(self.shown, 4) if self.requests else None,
                "unit": self.unit, "ok": self.ok,
                "requests": self.requests, "where": self.threshold.where,
                **({"reason": self.why} if self.why else {})}


@dataclass
class Results:
    target: str
    asked: str  # what was asked, in words: "200/s for 30s", "32 connections for 10s"
    duration_s: float = 0.0  # the time it took
    timeline: dict[int, Figures] = field(default_factory=dict)
    steps: dict[StepKey, Figures] = field(default_factory=dict)
    workers: int = 1
    rate_asked: float | None = None
    arrivals: int = 0  # open model: arrivals a connection took
    not_sent: int = 0  # open model: arrivals due that were never measured
    busy: int = 0  # open model: arrivals taken late, every connection being busy
    lag_max_s: float = 0.0
    lagged: int = 0  # open model: arrivals a free connection started late (the loop was)
    last_s: float = 0.0  # when the last request was answered, from the start
    cpu_share: float = 0.0  # open model: the most of a core a worker used (over a second)
    interrupted: bool = False
    steps_lost: bool = False  # stopped before the workers handed in their per-step figures
    hurried: bool = False  # a second Ctrl-C stopped them at once
    cut_s: float | None = None  # when the Ctrl-C came, from the start
    cut_off: int = 0  # closed model: requests in flight at the Ctrl-C, cut off (not counted)
    verdicts: list[Verdict] = field(default_factory=list)
    order: list[StepKey] = field(default_factory=list)  # the pattern's steps, as written

    def add_seconds(self, seconds: list[tuple[int, dict[str, Any]]]) -> None:
        for sec, wire in seconds:
            self.timeline.setdefault(sec, Figures()).add_wire(wire)

    def add_done(self, done: dict[str, Any]) -> None:
        for scenario, step, wire in done["steps"]:
            self.steps.setdefault((scenario, step), Figures()).add_wire(wire)
        self.arrivals += done["arrivals"]
        self.not_sent += done["not_sent"]
        self.busy += done["busy"]
        self.lag_max_s = max(self.lag_max_s, done["lag_max_s"])
        self.lagged += done["lagged"]
        self.cut_off += done["cut_off"]
        self.last_s = max(self.last_s, done["last_s"])
        self.cpu_share = max(self.cpu_share, done["cpu_share"])

    def total(self) -> Figures:
        out = Figures()
        for figures in self.timeline.values():
            out.add(figures)
        for figures in self.steps.values():  # (the seconds do not carry these)
            out.codes.update(figures.codes)
            out.failed.update(figures.failed)
        return out

    def step_rows(self) -> list[tuple[StepKey, Figures]]:
        """Every step's figures, in the pattern's order (a step no iteration reached: none);
        unless the workers were stopped at once (then no step's came)."""
        if self.steps_lost:
            return []
        keys = self.order + [k for k in self.steps if k not in self.order]
        return [(k, self.steps.get(k, Figures())) for k in keys]

    def scenario(self, name: str) -> Figures:
        out = Figures()
        for key, figures in self.steps.items():
            if key[0] == name:
                out.add(figures)
        return out

    @property
    def late_share(self) -> float:
        """Of the arrivals taken, the share started late because every connection was busy."""
        return min(1.0, self.busy / self.arrivals) if self.arrivals else 0.0

    @property
    def behind(self) -> str | None:
        """Why the asked rate was not kept, if it was not: the generator could not (then the
        figures are the generator's, not the service's), the machine was busy, or every
        connection was."""
        if self.rate_asked is None:
            return None
        lagged = self.lagged / self.arrivals if self.arrivals else 0.0
        late = self.late_share > LATE_SHARE or lagged > LATE_SHARE or self.not_sent
        if late and self.cpu_share >= SATURATED:
            return (f"the generator could not keep the asked rate (a worker used "
                    f"{self.cpu_share:.0%} of a core while {self.busy + self.lagged:,} of "
                    f"{self.arrivals:,} arrivals started late): the figures are the "
                    f"generator's limit, not the service's; give more --workers (it had "
                    f"{self.workers}; at most one a core) or lower the rate")
        said: list[str] = []
        if lagged > LATE_SHARE:
            said.append(f"{self.lagged:,} of {self.arrivals:,} arrivals ({lagged:.0%}) "
                        f"started up to {self.lag_max_s * 1000:.0f} ms late with connections "
                        f"free, while the generator used {self.cpu_share:.0%} of a core: the "
                        "machine was busy with other work (their latency counts the wait)")
        if self.late_share > LATE_SHARE:
            said.append(f"{self.busy:,} of {self.arrivals:,} arrivals "
                        f"({self.late_share:.0%}) started late: every connection was busy "
                        "(the latency counts the wait); raise --connections if the service "
                        "should take more at once")
        if self.not_sent:
            said.append(f"{_n(self.not_sent, 'arrival')} due were never sent or answered "
                        "before the run " + ("was stopped" if self.interrupted else "ended"))
        return "; ".join(said) or None

    @property
    def cut_note(self) -> str | None:
        """The closed model's requests in flight at a Ctrl-C, not waited for (not counted)."""
        if not self.cut_off:
            return None
        return (f"{_n(self.cut_off, 'request')} in flight when the run was stopped "
                f"{'were' if self.cut_off != 1 else 'was'} cut off (not counted)")

    def check(self, pattern: Pattern) -> list[Verdict]:
        seconds = max(self.duration_s, 1e-9)

        def judge(scope: str, figures: Figures, thresholds: tuple[Threshold, ...]
                  ) -> list[Verdict]:
            return [Verdict(scope, t, _metric(figures, t.metric, seconds), figures.requests)
                    for t in thresholds]

        self.order = [(sc.name, st.name) for sc in pattern.scenarios for st in sc.steps]
        verdicts = judge("", self.total(), pattern.thresholds)
        if self.steps_lost:  # (no per-step figures came: nothing to judge them by)
            self.verdicts = verdicts + [
                Verdict(scope, t, 0.0, 0, "not measured: the run was stopped at once")
                for sc in pattern.scenarios
                for scope, t in [*((sc.name, t) for t in sc.thresholds),
                                 *((step_label((sc.name, st.name)), t) for st in sc.steps
                                   for t in st.thresholds)]]
            return self.verdicts
        for sc in pattern.scenarios:
            verdicts += judge(sc.name, self.scenario(sc.name), sc.thresholds)
            for step in sc.steps:
                key = (sc.name, step.name)
                verdicts += judge(step_label(key), self.steps.get(key, Figures()),
                                  step.thresholds)
        self.verdicts = verdicts
        return verdicts

    def as_json(self) -> dict[str, Any]:
        seconds = max(self.duration_s, 1e-9)
        total = self.total()
        doc = {"target": self.target, "asked": self.asked, "duration_s": round(seconds, 3),
               "interrupted": self.interrupted, "steps_lost": self.steps_lost,
               **total.as_json(seconds)}
        doc["steps"] = {step_label(k): v.as_json(seconds) for k, v in self.step_rows()}
        doc["thresholds"] = [v.as_json() for v in self.verdicts]
        doc["generator"] = {"workers": self.workers, "rate_asked": self.rate_asked,
                            "not_sent": self.not_sent, "late_max_ms":
                            round(self.lag_max_s * 1000, 1), "lagged": self.lagged,
                            "arrivals": self.arrivals, "cut_off": self.cut_off,
                            "late": self.busy, "late_share": round(self.late_share, 4),
                            "cpu_share": round(self.cpu_share, 3), "behind": self.behind}
        doc["timeline"] = [{"t": sec, "requests": f.requests, "errors": f.error_count,
                            **{k: v for k, v in f.hist.summary_ms().items()
                               if k in ("p50", "p95", "p99", "max")}}
                           for sec, f in sorted(self.timeline.items())]
        return doc


def _n(count: int, thing: str) -> str:
    return f"{count:,} {thing}{'s' if count != 1 else ''}"


def _metric(figures: Figures, metric: str, seconds: float) -> float:
    if metric == "errors":
        return figures.error_count / figures.requests if figures.requests else 0.0
    if metric == "rps":
        return figures.requests / seconds
    if metric == "max":
        return figures.hist.max_us / 1000
    return figures.hist.percentile(float(metric[1:])) / 1000
