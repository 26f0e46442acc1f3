"""A load pattern: scenarios (weighted request sequences), stages (open-model arrival rates,
closed-model virtual users) and thresholds, read from YAML. Every problem is reported at
once with file:line, as devenv.yaml's are (exit 2)."""

from __future__ import annotations

import json
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

from devenv.config.load import Source, read_yaml
from devenv.config.schema import Path as KeyPath
from devenv.config.schema import did_you_mean, dotted, parse_duration
from devenv.core.errors import ConfigError, Problem
from devenv.loadtest import units
from devenv.loadtest.data import DataSource, fields_in, json_path, names_in, read_csv

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # a header name (RFC 9110 token)
METRICS = ("p50", "p90", "p95", "p99", "max", "errors", "rps")
_THRESHOLD = re.compile(r"^\s*(p50|p90|p95|p99|max|errors|rps)\s*(<=|<|>=|>)\s*"
                        r"(\d+(?:\.\d+)?)\s*(ms|s|%|/s)?\s*$")

# the fields of a data source's values: their columns (maybe none, `[{}]`); PLAIN: they are
# not mappings; None: not known (some are, or a value extracted from a response)
PLAIN: Final = "plain"
Fields: TypeAlias = set[str] | Literal["plain"] | None


@dataclass(frozen=True)
class Check:
    status: tuple[int, ...] = ()  # empty: any status under 400
    body: str | None = None  # the body contains this text
    json: tuple[tuple[str, tuple[str | int, ...], Any], ...] = ()  # (path text, parts, value)

    def status_ok(self, status: int) -> bool:
        return status in self.status if self.status else status < 400


EXISTS = "exists"  # a JSON check's value meaning: present, whatever it is


@dataclass(frozen=True)
class Threshold:
    metric: str  # one of METRICS
    op: str
    value: float  # ms for latencies, a fraction for errors, requests/s for rps
    text: str
    where: str  # file:line

    def holds(self, actual: float) -> bool:
        return {"<": actual < self.value, "<=": actual <= self.value,
                ">": actual > self.value, ">=": actual >= self.value}[self.op]


@dataclass(frozen=True)
class Step:
    name: str
    method: str
    path: str  # a template
    headers: tuple[tuple[str, str], ...] = ()
    json: Any = None  # a template tree, or None
    body: str | None = None
    check: Check = field(default_factory=Check)
    extract: tuple[tuple[str, tuple[str | int, ...]], ...] = ()
    thresholds: tuple[Threshold, ...] = ()

    @property
    def static(self) -> bool:
        """No template anywhere: the request can be encoded once."""
        return ("${" not in self.path and self.json is None and not self.body
                and not any("${" in v for _, v in self.headers))


@dataclass(frozen=True)
class Scenario:
    name: str
    steps: tuple[Step, ...]
    weight: float = 1.0
    think_s: tuple[float, float] = (0.0, 0.0)  # between steps, uniform in [lo, hi]
    data: tuple[DataSource, ...] = ()
    thresholds: tuple[Threshold, ...] = ()


@dataclass(frozen=True)
class Stage:
    kind: str  # rate (hold), ramp, spike: open model; users: closed model
    duration_s: float
    rate: float = 0.0  # requests (iterations) a second at the start
    to: float = 0.0  # at the end (ramp; else = rate)
    users: int = 0

    @property
    def open(self) -> bool:
        return self.kind != "users"


@dataclass(frozen=True)
class Pattern:
    scenarios: tuple[Scenario, ...]
    stages: tuple[Stage, ...]
    thresholds: tuple[Threshold, ...] = ()
    target: tuple[str, str] | None = None  # ("target"|"service"|"url", value)
    connections: int = 0  # open model: most iterations at once (0: from the rate)
    timeout_s: float = 10.0
    file: str = ""

    @property
    def duration_s(self) -> float:
        return sum(s.duration_s for s in self.stages)

    def only(self, name: str) -> Pattern:
        from dataclasses import replace
        return replace(self, scenarios=tuple(s for s in self.scenarios if s.name == name))


PATTERN_HINT = ("a pattern file is a YAML mapping: `scenarios: {NAME: {steps: [{get: /path}]}}` "
                "and `stages: [{rate: 50/s, duration: 30s}]` (see Load tests in the README)")
TOP = {"target", "service", "url", "scenarios", "stages", "thresholds", "connections",
       "timeout"}
SCENARIO = {"weight", "think", "data", "steps", "thresholds"}
STEP = {"name", "method", "path", "headers", "json", "body", "check", "extract",
        "thresholds", *(m.lower() for m in METHODS)}
CHECK = {"status", "body", "json"}
STAGE = {"rate", "ramp", "spike", "users", "duration"}


class _Reader:
    def __init__(self, src: Source, shown: str, folder: Path):
        self.src, self.shown, self.folder = src, shown, folder
        self.problems: list[Problem] = []

    def where(self, path: KeyPath) -> str:
        file, line = self.src.locate(path, self.shown)
        return f"{file}:{line}" if line else file

    def bad(self, path: KeyPath, message: str) -> None:
        file, line = self.src.locate(path, self.shown)
        self.problems.append(Problem(file, line or None, dotted(path), message))

    def keys(self, node: Any, path: KeyPath, allowed: set[str]) -> bool:
        if not isinstance(node, dict):
            self.bad(path, "expected a mapping of keys")
            return False
        for key in node:
            if key not in allowed:
                self.bad(path + (key,), f"unknown key{did_you_mean(key, allowed)}")
        return True

    def duration(self, value: Any, path: KeyPath) -> float:
        try:
            seconds = units.duration(value)
        except ValueError:
            self.bad(path, f"{value!r} is not a duration like 30s or 500ms")
            return 0.0
        if (problem := units.duration_problem(seconds)):
            self.bad(path, problem)
        return seconds

    def rate(self, value: Any, path: KeyPath, zero_ok: bool = False) -> float:
        try:
            per_s = units.rate(value, zero_ok)
        except ValueError:
            self.bad(path, f"{value!r} is not a rate like 200/s or 600/m")
            return 0.0
        if (problem := units.rate_problem(per_s)):
            self.bad(path, problem)
        return per_s

    def count(self, value: Any, path: KeyPath, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.bad(path, f"{value!r} is not a whole number of {what}")
            return 0
        if (problem := units.count_problem(value, what)):
            self.bad(path, problem)
        return value

    # -- thresholds -------------------------------------------------------------------
    def thresholds(self, node: Any, path: KeyPath) -> tuple[Threshold, ...]:
        if node is None:
            return ()
        if not isinstance(node, list):
            self.bad(path, "expected a list like [p95 < 300ms, errors < 1%]")
            return ()
        out = []
        for i, text in enumerate(node):
            t = threshold(str(text), self.where(path + (i,)))
            if isinstance(t, str):
                self.bad(path + (i,), t)
            else:
                out.append(t)
        return tuple(out)

    # -- scenarios --------------------------------------------------------------------
    def scenario(self, name: str, node: Any, path: KeyPath) -> Scenario | None:
        if not self.keys(node, path, SCENARIO):
            return None
        weight = node.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0:
            self.bad(path + ("weight",), f"{weight!r}: give a number above 0")
            weight = 1
        think = self.think(node.get("think"), path + ("think",))
        data = self.data(node.get("data"), path + ("data",))
        steps_node = node.get("steps")
        steps: list[Step] = []
        if not isinstance(steps_node, list) or not steps_node:
            self.bad(path + ("steps",), "give a list of one or more requests")
        else:
            # the values a step can use, with their columns when they are rows of a table:
            # the data sources', then those extracted before it (taking a name over)
            columns = {d.name: _columns(d.rows) for d in data}
            index: list[int] = []  # (each step's place in the file's list)
            for i, s in enumerate(steps_node):
                step = self.step(s, path + ("steps", i), columns)
                if step:
                    steps.append(step)
                    index.append(i)
                    columns.update((var, None) for var, _ in step.extract)
            seen: set[str] = set()
            for i, step in zip(index, steps, strict=True):
                if step.name in seen:
                    self.bad(path + ("steps", i, "name"), f"a second step named '{step.name}'"
                             "; give each step its own name")
                seen.add(step.name)
        return Scenario(name, tuple(steps), float(weight), think, data,
                        self.thresholds(node.get("thresholds"), path + ("thresholds",)))

    def think(self, value: Any, path: KeyPath) -> tuple[float, float]:
        if value is None:
            return (0.0, 0.0)
        text = str(value)
        parts = text.split("..") if ".." in text else [text, text]
        if len(parts) != 2:
            self.bad(path, f"{value!r}: give a duration (100ms) or a range (100ms..1s)")
            return (0.0, 0.0)
        try:
            lo, hi = (parse_duration(p) for p in parts)
        except ValueError:
            self.bad(path, f"{value!r}: give a duration (100ms) or a range (100ms..1s)")
            return (0.0, 0.0)
        if lo > hi or hi > 600:
            self.bad(path, f"{value!r}: the range must go up, and stay under 10m")
        return (lo, hi)

    def data(self, node: Any, path: KeyPath) -> tuple[DataSource, ...]:
        if node is None:
            return ()
        if not isinstance(node, dict):
            self.bad(path, "expected a mapping of names to lists or {csv: FILE}")
            return ()
        out = []
        for name, spec in node.items():
            at = path + (name,)
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                self.bad(at, "a name of letters, digits and _ (it is used as ${name})")
                continue
            order = "cycle"
            if isinstance(spec, dict):
                if not self.keys(spec, at, {"csv", "values", "order"}):
                    continue
                order = spec.get("order", "cycle")
                if order not in ("cycle", "random"):
                    self.bad(at + ("order",), f"{order!r}: one of 'cycle', 'random'")
                if "csv" in spec:
                    file = self.folder / str(spec["csv"])
                    try:
                        rows: list[Any] = read_csv(file)
                    except (OSError, ValueError, UnicodeDecodeError) as exc:
                        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
                        self.bad(at + ("csv",), f"cannot read {spec['csv']}: {reason}")
                        continue
                else:
                    rows = spec.get("values")  # type: ignore[assignment]
            else:
                rows = spec
            if not isinstance(rows, list) or not rows:
                self.bad(at, "give a non-empty list of values, or {csv: FILE}")
                continue
            out.append(DataSource(name, tuple(rows), order))
        return tuple(out)

    def step(self, node: Any, path: KeyPath, columns: dict[str, Fields]
             ) -> Step | None:
        if not self.keys(node, path, STEP):
            return None
        shorthand = [m for m in METHODS if m.lower() in node]
        method = str(node.get("method", shorthand[0] if shorthand else "GET")).upper()
        target = node.get(shorthand[0].lower()) if shorthand else node.get("path")
        if len(shorthand) > 1 or (shorthand and ("path" in node or "method" in node)):
            self.bad(path, "give the request once: `get: /path`, or `method:` and `path:`")
        if method not in METHODS:
            self.bad(path + ("method",), f"{method!r}: one of {', '.join(METHODS)}")
        if not isinstance(target, str) or not target.startswith("/"):
            key = shorthand[0].lower() if shorthand else "path"
            self.bad(path + (key,), ("no request: give `get: /path` (or post, ...), or "
                                     "`method:` and `path:`") if target is None else
                     f"{target!r}: give a path starting with /, e.g. /api/items")
            target = "/"
        headers = node.get("headers") or {}
        if not isinstance(headers, dict):
            self.bad(path + ("headers",), "expected a mapping of header names to values")
            headers = {}
        for name, value in headers.items():
            if not _TOKEN.fullmatch(str(name)):
                self.bad(path + ("headers", name), "not a header name (letters, digits and "
                         "-, no spaces or colons)")
            elif any(c in str(value) for c in "\r\n\0"):
                self.bad(path + ("headers", name), "a header value cannot hold a line break")
        body = node.get("body")
        if body is not None and "json" in node:
            self.bad(path + ("body",), "give `json:` or `body:`, not both")
        used = names_in(target) | names_in(json.dumps(node.get("json"))) | names_in(
            str(body or "")) | set().union(*(names_in(str(v)) for v in headers.values()))
        for name in sorted(used - columns.keys()):
            self.bad(path, f"'${{{name}}}' is not a data source or a value extracted by an "
                     f"earlier step{did_you_mean(name, columns)}")
        texts = [target, json.dumps(node.get("json")), str(body or ""),
                 *(str(v) for v in headers.values())]
        for name, column in sorted(set().union(*(fields_in(t) for t in texts))):
            have = columns.get(name)
            if have == PLAIN:
                self.bad(path, f"'${{{name}.{column}}}': the values of {name} are not "
                         f"mappings, so they have no field '{column}'; write ${{{name}}}")
            elif isinstance(have, set) and column not in have:
                self.bad(path, f"'${{{name}.{column}}}': {name} has no column '{column}' "
                         f"({_has(have)}){did_you_mean(column, have)}")
        extract = []
        ex = node.get("extract") or {}
        if not isinstance(ex, dict):
            self.bad(path + ("extract",), "expected a mapping of names to JSON paths")
            ex = {}
        for var, text in ex.items():
            try:
                extract.append((str(var), json_path(str(text))))
            except ValueError as exc:
                self.bad(path + ("extract", var), str(exc))
        return Step(str(node.get("name") or f"{method} {target}"), method, target,
                    tuple((str(k), str(v)) for k, v in headers.items()), node.get("json"),
                    None if body is None else str(body),
                    self.check(node.get("check"), path + ("check",)), tuple(extract),
                    self.thresholds(node.get("thresholds"), path + ("thresholds",)))

    def check(self, node: Any, path: KeyPath) -> Check:
        if node is None:
            return Check()
        if not self.keys(node, path, CHECK):
            return Check()
        status = node.get("status", [])
        statuses = status if isinstance(status, list) else [status]
        if not all(isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599
                   for s in statuses):
            self.bad(path + ("status",), f"{status!r}: give a status (200) or a list [200, 201]")
            statuses = []
        body = node.get("body")
        checks = []
        js = node.get("json") or {}
        if not isinstance(js, dict):
            self.bad(path + ("json",), "expected a mapping of JSON paths to values (or exists)")
            js = {}
        for text, value in js.items():
            try:
                checks.append((str(text), json_path(str(text)), value))
            except ValueError as exc:
                self.bad(path + ("json", text), str(exc))
        return Check(tuple(statuses), None if body is None else str(body), tuple(checks))

    # -- stages -----------------------------------------------------------------------
    def stage(self, node: Any, path: KeyPath) -> Stage | None:
        if not self.keys(node, path, STAGE):
            return None
        kinds = [k for k in ("rate", "ramp", "spike", "users") if k in node]
        if len(kinds) != 1:
            self.bad(path, "give one of rate: 50/s (hold), ramp: 10/s..100/s, spike: 500/s, "
                     "users: 20 (closed model)")
            return None
        kind = kinds[0]
        if "duration" not in node:
            self.bad(path, "give its duration: e.g. duration: 30s")
        seconds = self.duration(node.get("duration", 1), path + ("duration",))
        value = node[kind]
        if kind == "users":
            return Stage("users", seconds, users=self.count(value, path + (kind,), "users"))
        if kind == "ramp":
            ends = str(value).replace("->", "..").split("..")
            if len(ends) != 2:
                self.bad(path + (kind,), f"{value!r}: give a ramp like 10/s..100/s")
                return None
            lo, hi = (self.rate(e.strip(), path + (kind,), zero_ok=True) for e in ends)
            if lo == hi == 0:
                self.bad(path + (kind,), f"{value!r}: a ramp from 0/s to 0/s sends nothing")
                return None
            return Stage("ramp", seconds, lo, hi)
        per_s = self.rate(value, path + (kind,))
        return Stage(kind, seconds, per_s, per_s)


def url_problem(url: str, whole: bool = False) -> str | None:
    """What is wrong with a URL to load, if anything. Other paths go under it (a pattern's
    `url`, or --url with --path) unless it is requested `whole`: then it may have a query."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return "give an http:// URL (https is not supported)"
    try:
        port = 80 if parts.port is None else parts.port
    except ValueError:
        port = 0
    if not port:
        return "its port must be a number from 1 to 65535"
    if parts.query and not whole:
        return "a URL that other paths go under cannot have a query"
    return None


def _columns(rows: tuple[Any, ...]) -> Fields:
    """The fields the rows of a data source have (a CSV file's columns; of inline mappings,
    those any row has, maybe none: `[{}]`); PLAIN when no row is a mapping, None when some
    are."""
    if not any(isinstance(r, dict) for r in rows):
        return PLAIN
    if not all(isinstance(r, dict) for r in rows):
        return None
    return set().union(*(map(str, r) for r in rows))


def _has(fields: set[str]) -> str:
    return f"it has {', '.join(sorted(fields))}" if fields else "its rows are empty mappings"


def threshold(text: str, where: str = "") -> Threshold | str:
    """A threshold like `p95 < 300ms`, `errors < 1%`, `rps > 100`; or what is wrong."""
    match = _THRESHOLD.match(text)
    if not match:
        return (f"{text!r} is not a threshold; write e.g. 'p95 < 300ms', 'errors < 1%', "
                f"'rps > 100' (metrics: {', '.join(METRICS)})")
    metric, op, number, unit = match.groups()
    value = float(number)
    if metric == "errors":
        if unit not in ("%", None) or (unit is None and value != 0):
            return f"{text!r}: give errors as a percentage, e.g. errors < 1%"
        value = value / 100
    elif metric == "rps":
        if unit not in ("/s", None):
            return f"{text!r}: rps is requests a second, e.g. rps > 100"
    else:
        if unit not in ("ms", "s"):
            return f"{text!r}: give the unit, e.g. {metric} < 300ms"
        value = value * 1000 if unit == "s" else value
    return Threshold(metric, op, value, text.strip(), where)


def load(file: Path, shown: str | None = None) -> Pattern:
    """Read and check a pattern file; a ConfigError listing every problem otherwise."""
    shown = shown or str(file)
    try:
        src = read_yaml(file, shown)
    except ConfigError as exc:  # (its hint names devenv.yaml's validation)
        raise ConfigError(exc.problems, hint=PATTERN_HINT) from None
    r = _Reader(src, shown, file.parent)
    doc = src.data
    r.keys(doc, (), TOP)
    target = None
    given = [k for k in ("target", "service", "url") if k in doc]
    if len(given) > 1:
        r.bad((given[1],), f"give one of target, service or url (also {given[0]})")
    if given:
        kind, value = given[0], doc[given[0]]
        if not isinstance(value, str) or not value:
            r.bad((kind,), f"{value!r}: give " + ("an http:// URL" if kind == "url" else
                                                  "a service's name"))
        elif kind == "url" and (problem := url_problem(value)):
            r.bad((kind,), f"{value!r}: {problem}")
        else:
            target = (kind, value)
    scenarios: list[Scenario] = []
    node = doc.get("scenarios")
    if not isinstance(node, dict) or not node:
        r.bad(("scenarios",), "give one or more scenarios: scenarios: {NAME: {steps: [...]}}")
    else:
        for name, spec in node.items():
            sc = r.scenario(str(name), spec, ("scenarios", name))
            if sc:
                scenarios.append(sc)
    stages: list[Stage] = []
    node = doc.get("stages")
    if not isinstance(node, list) or not node:
        r.bad(("stages",), "give one or more stages, e.g. [{rate: 50/s, duration: 30s}] or "
              "[{users: 10, duration: 30s}]")
    else:
        for i, spec in enumerate(node):
            st = r.stage(spec, ("stages", i))
            if st:
                stages.append(st)
    connections = 0
    if "connections" in doc:
        connections = r.count(doc["connections"], ("connections",), "connections")
    timeout = r.duration(doc.get("timeout", 10), ("timeout",))
    thresholds = r.thresholds(doc.get("thresholds"), ("thresholds",))
    if r.problems:
        r.problems.sort(key=lambda p: p.line or 0)  # (in the file's order)
        raise ConfigError(r.problems, hint=f"fix the lines above in {shown}")
    return Pattern(tuple(scenarios), tuple(stages), thresholds, target, connections, timeout,
                   shown)


def quick(method: str, path: str, stage: Stage, connections: int, timeout_s: float,
          thresholds: tuple[Threshold, ...] = ()) -> Pattern:
    """The pattern of the command line's quick form: one request, one stage."""
    step = Step(f"{method} {path}", method, path)
    return Pattern((Scenario("default", (step,)),), (stage,), thresholds,
                   connections=connections, timeout_s=timeout_s)
