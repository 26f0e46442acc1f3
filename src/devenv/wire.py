"""The types that cross the control socket, shared by the engine's API and the client.

States and kinds are enums (`StrEnum`: on the wire, and compared with, their plain values);
results are frozen dataclasses. `to_json` and `from_json` turn them into the documented JSON
and back; keys are only ever added.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from datetime import UTC, datetime
from enum import Enum, StrEnum
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


class State(StrEnum):
    """Of a replica, and of a service. A one-shot job is `running`, then `completed` (exit code
    0) or `failed` (an exit that will not be retried); a server is `healthy` once it is ready."""

    STARTING = "starting"
    RUNNING = "running"  # a one-shot job at work
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    CRASHED = "crashed"
    FAILED = "failed"  # a start or a job that will not be retried
    STOPPED = "stopped"
    COMPLETED = "completed"


class Condition(StrEnum):
    """What a dependent waits for (`up` waits for UP: healthy, or a job that completed)."""

    STARTED = "started"
    HEALTHY = "healthy"
    COMPLETED = "completed"
    UP = "up"


class ActionKind(StrEnum):
    CREATE = "create"
    REPLACE = "replace"
    SCALE = "scale"
    UPDATE = "update"  # settings that need no new instances (watching, draining)
    KEEP = "keep"
    REMOVE = "remove"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether a condition holds: met, pending, or never (with the reason)."""

    met: bool = False
    reason: str = ""  # set only when it never will be

    @property
    def pending(self) -> bool:
        return not self.met and not self.reason


MET, PENDING = Verdict(met=True), Verdict()


def optional(default: Any = None) -> Any:
    """A field left out of the JSON while it is None (documented as optional)."""
    return dataclasses.field(default=default, metadata={"omit_none": True})


@dataclasses.dataclass(frozen=True)
class Replicas:
    ready: int
    desired: int


@dataclasses.dataclass(frozen=True)
class InstanceStatus:
    replica: int
    state: State
    detail: str
    id: str | None
    endpoint: str | None
    restarts: int


@dataclasses.dataclass(frozen=True)
class ReloadRecord:
    at: float
    files: list[str]
    changed: int
    action: str
    ok: bool
    phases: dict[str, float]
    error: str | None = None
    logs: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class DebugInfo:
    """A service running under its debugger (`devenv debug`)."""

    language: str  # python (debugpy) or node (its inspector)
    address: str  # 127.0.0.1:PORT, where a debugger attaches
    wait: bool = False  # its code waits for a debugger before it runs


@dataclasses.dataclass(frozen=True)
class ServiceStatus:
    name: str
    state: State
    detail: str
    replicas: Replicas
    url: str | None
    restarts: int
    reloads: int
    last_reload: ReloadRecord | None
    instances: list[InstanceStatus]
    config_hash: str = ""
    job: bool = False  # a one-shot: its state says running / completed / failed
    watch: str = ""  # how file changes reload it: replace, none (vite reloads itself), off
    cpu_percent: float | None = optional()
    rss_bytes: int | None = optional()
    scrape_error: str | None = optional()  # why its own /metrics could not be scraped
    debug: DebugInfo | None = optional()  # under a debugger: where to attach


@dataclasses.dataclass(frozen=True)
class Link:
    url: str


@dataclasses.dataclass(frozen=True)
class EngineInfo:
    pid: int
    uptime_s: float


@dataclasses.dataclass(frozen=True)
class EnvironmentStatus:
    project: str
    running: bool
    ingress: str | None
    services: list[ServiceStatus]
    engine: EngineInfo | None = optional()  # only while running
    watching: bool | None = optional()  # only while running
    metrics: Link | None = optional()  # only while running
    dashboard: Link | None = optional()  # only while running


@dataclasses.dataclass(frozen=True)
class Progress:
    """One step of `up`, as it happens."""

    service: str
    state: str  # a State, or pending/waiting/blocked/removing/failed
    detail: str = ""
    action: ActionKind | None = optional()
    healthy_s: float | None = optional()
    type: str = "progress"


@dataclasses.dataclass(frozen=True)
class ErrorInfo:
    message: str
    details: list[str] = dataclasses.field(default_factory=list)
    hint: str | None = None
    exit_code: int = 1


@dataclasses.dataclass(frozen=True)
class ServiceResult:
    """What `up` did to one service."""

    name: str
    action: ActionKind
    ok: bool
    url: str | None
    state: str = ""
    detail: str = ""
    started_s: float | None = None
    healthy_s: float | None = None
    logs: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class UpResult:
    ok: bool
    services: list[ServiceResult]
    project: str = ""
    ingress: str | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    datasets_loaded: list[str] = dataclasses.field(default_factory=list)
    error: ErrorInfo | None = optional()
    metrics: Link | None = optional()  # Prometheus exposition of the engine
    dashboard: Link | None = optional()  # the web dashboard (its URL carries a token)
    type: str = "done"


@dataclasses.dataclass(frozen=True)
class Rolled:
    """Dependents rolled (new instances, no downtime) after services they depend on with
    `restart: true` restarted or had their data replaced."""

    services: list[str]  # rolled, in dependency order
    after: list[str]  # the restarted services they depend on
    failed: dict[str, str] = dataclasses.field(default_factory=dict)  # not rolled: why

    def text(self) -> str:
        """`rolled api, worker (depend on db with restart: true)`"""
        names = self.services or list(self.failed)
        verb = "depends" if len(names) == 1 else "depend"
        head = "rolled " + (", ".join(self.services) or "nothing")
        return f"{head} ({verb} on {', '.join(self.after)} with restart: true)"


@dataclasses.dataclass(frozen=True)
class DebugResult:
    """Of `debug`: the service's debugger (None after --off), and where its code runs."""

    service: str
    ok: bool
    debug: DebugInfo | None
    workdir: str  # the service's folder, absolute: an IDE's path mappings
    replicas: int  # running now (1 while debugged; the plan's again after --off)
    error: str | None = optional()  # why the debugged instance failed (the previous serve)
    attach: str | None = optional()  # how tools other than VS Code attach
    detail: str | None = optional()  # e.g. started, not healthy yet (kept under the debugger)


@dataclasses.dataclass(frozen=True)
class OpResult:
    """Of `restart` and `scale`: which services did not come back, and why."""

    ok: bool
    failed: dict[str, str]
    rolled: Rolled | None = optional()  # dependents rolled after a restart
    deferred: dict[str, str] | None = optional()  # scale: counts kept for later, and why


@dataclasses.dataclass(frozen=True)
class DependencyCheck:
    """Of `validate`: could a service's dependency be reached at its address."""

    name: str
    address: str  # host:port, or "" (a job: no address, its completion counts)
    ok: bool
    error: str = ""


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """Of `validate`: a service's `test:` command."""

    code: int
    seconds: float
    output: str  # its last lines


@dataclasses.dataclass(frozen=True)
class ValidationRow:
    service: str
    state: str
    healthy: bool
    test: RunOutcome | None  # None: no `test:` declared (or, unfinished, not run)
    dependencies: list[DependencyCheck]
    # what `validate --timeout` cut short: "" (it finished), "start" (never healthy),
    # "test" (its test:, killed), "checks" (its checks did not answer)
    unfinished: str = ""

    @property
    def ok(self) -> bool:
        return not self.unfinished and self.healthy and (
            self.test is None or self.test.code == 0) and all(d.ok for d in self.dependencies)


@dataclasses.dataclass(frozen=True)
class ValidationResult:
    ok: bool
    services: list[ValidationRow]
    timed_out: str = ""  # the --timeout that ended the run (e.g. "10m"), else ""


@dataclasses.dataclass(frozen=True)
class MigrateResult:
    """Of `migrate --confirm`."""

    ok: bool
    changed: bool  # something was migrated (and kept)
    steps: list[str]  # the plan's steps (and what is left by hand)
    snapshot: str | None = None  # taken first
    applied: list[str] = dataclasses.field(default_factory=list)
    rolled_back: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None
    details: list[str] = dataclasses.field(default_factory=list)
    hint: str | None = None  # what to do when it failed and could not be rolled back


@dataclasses.dataclass(frozen=True)
class ResetResult:
    reset: list[str]
    rolled: Rolled | None = optional()


@dataclasses.dataclass(frozen=True)
class StopResult:
    ok: bool
    stopped: list[str]
    snapshot: str | None
    data: str  # none | kept | discarded
    warning: str | None = optional()


@dataclasses.dataclass(frozen=True)
class LoadResult:
    dataset: str
    counts: dict[str, int]


@dataclasses.dataclass(frozen=True)
class LogLine:
    """One line a service (or devenv about it: stream `devenv`, `alert`) wrote."""

    ts: float
    service: str
    replica: str
    stream: str  # out | err | devenv | alert
    text: str
    time: str = ""  # ts as ISO 8601 UTC

    def __post_init__(self) -> None:
        if not self.time:
            object.__setattr__(self, "time", iso_time(self.ts))


def iso_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclasses.dataclass(frozen=True)
class SnapshotSummary:
    name: str
    created: str
    automatic: bool
    size_bytes: int
    datasets: list[str]
    services: dict[str, dict[str, str]]  # name -> {kind, version}
    rolled: Rolled | None = optional()  # of a restore: dependents rolled after it


# ---------------------------------------------------------------- traces


@dataclasses.dataclass(frozen=True)
class SpanLink:
    trace_id: str
    span_id: str


@dataclasses.dataclass(frozen=True)
class SpanInfo:
    """One span of a trace (`devenv trace --json`): times in seconds, `offset` from the
    trace's start; ids in lower-case hex; `kind` server|client|producer|consumer|internal;
    `status` ok|error|unset."""

    span_id: str
    parent_id: str | None
    service: str
    instance: str | None
    name: str
    kind: str
    start: str  # ISO 8601 UTC
    start_ns: int  # Unix epoch nanoseconds
    offset: float
    duration: float
    status: str
    status_message: str
    attributes: dict[str, str | int | float | bool]
    links: list[SpanLink]


@dataclasses.dataclass(frozen=True)
class TraceSummary:
    """One trace in a list: its root span's service and name, the services it crossed;
    `status` is error when any span failed, else ok."""

    trace_id: str
    start: str  # ISO 8601 UTC
    start_ns: int
    duration: float  # seconds, first span's start to last span's end
    root_service: str
    root_name: str
    services: list[str]
    span_count: int
    errors: int  # spans with status error
    status: str


@dataclasses.dataclass(frozen=True)
class Trace(TraceSummary):
    """A trace with its spans, in start order."""

    spans: list[SpanInfo] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class FunctionTime:
    """One function of a CPU profile: time on top of the stack (self) and anywhere on it
    (total), in seconds and as shares of all samples."""

    function: str
    file: str
    line: int
    self_s: float
    total_s: float
    self_pct: float
    total_pct: float


@dataclasses.dataclass(frozen=True)
class MemoryWindow:
    """One instance's resident memory, sampled over the profile's window."""

    instance: str
    samples: int
    min_bytes: int
    avg_bytes: int
    max_bytes: int


@dataclasses.dataclass(frozen=True)
class AllocationSite:
    """Where memory was allocated (the innermost Python frame), at the window's peak."""

    function: str
    file: str
    line: int
    bytes: int
    allocations: int


@dataclasses.dataclass(frozen=True)
class ProfileTick:
    """`profile` at work: sent every second while the sampler runs."""

    instance: str
    sampler: str
    elapsed: float
    seconds: float
    type: str = "tick"


@dataclasses.dataclass(frozen=True)
class ProfileResult:
    """`devenv profile`: the files written (under .devenv/profiles/), the top functions by
    self and by total time (CPU), and memory over the window (`--memory`). `notes` say what
    could not be done (e.g. allocation sites for a language without a tracer)."""

    service: str
    instance: str
    sampler: str  # py-spy, node-inspector, memray, rss
    seconds: float
    samples: int = 0
    sampled_s: float = 0.0
    files: list[str] = dataclasses.field(default_factory=list)
    top_self: list[FunctionTime] = dataclasses.field(default_factory=list)
    top_total: list[FunctionTime] = dataclasses.field(default_factory=list)
    memory: list[MemoryWindow] = dataclasses.field(default_factory=list)
    allocations: list[AllocationSite] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    type: str = "done"


# ---------------------------------------------------------------- JSON


def to_json(value: Any) -> Any:
    """Plain JSON data: dataclasses as objects (optional Nones left out), enums as values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if item is None and f.metadata.get("omit_none"):
                continue
            out[f.name] = to_json(item)
        return out
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def from_json(tp: type[T], data: Any) -> T:
    """The typed value of `data`; keys this version does not know are ignored."""
    result: T = _convert(tp, data)
    return result


@functools.cache
def _hints(tp: type) -> tuple[dict[str, Any], frozenset[str]]:
    """A dataclass's field types and the names its constructor takes (worked out once)."""
    return get_type_hints(tp), frozenset(f.name for f in dataclasses.fields(tp) if f.init)


def _convert(tp: Any, data: Any) -> Any:
    origin = get_origin(tp)
    if data is None:
        return None
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        return _convert(options[0], data) if len(options) == 1 else data
    if origin is list:
        return [_convert(get_args(tp)[0], v) for v in data]
    if origin is tuple:
        return tuple(data)
    if origin is dict:
        return {k: _convert(get_args(tp)[1], v) for k, v in data.items()}
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(data)
        except ValueError:
            return data  # a value a newer engine added: kept as text
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints, known = _hints(tp)
        return tp(**{k: _convert(hints[k], v) for k, v in data.items() if k in known})
    return data
