"""Fakes for fast, deterministic unit tests of the engine: virtual time and a scripted runtime.

Two fakes, and builders for the values the engine needs:

- `VirtualTimeLoop` (with its `FakeClock`): an asyncio event loop whose clock is virtual. When
  nothing is ready to run it jumps to the next timer instead of sleeping, so backoffs, hold
  timeouts and start periods of tens of seconds take microseconds, in the right order.
- `FakeRuntime` (with `FakeInstance`): the engine's Runtime protocol with no processes. Each
  start follows a `Script` (become ready, crash after N seconds, never become ready, exit 0 like
  a job, fail to start) and every start, stop and command is recorded.

`make_plan` fills a ServicePlan (`health_check` gives it a command health check, answered by
the FakeRuntime); `make_context` builds a Context on the running virtual loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import selectors
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from devenv.config.model import HealthCheck, Route, Watch
from devenv.config.schema import Duration
from devenv.core.errors import DevenvError
from devenv.engine.context import Context
from devenv.engine.logstore import LogStore
from devenv.plan import LIVE_FIELDS, Plan, ServicePlan
from devenv.runtime.base import Instance, InstanceSpec, OutputLine, Resources, RunResult

T = TypeVar("T")

# ---------------------------------------------------------------------------- virtual time


class VirtualTimeError(RuntimeError):
    """The loop can make no progress (a deadlock), or virtual time passed its limit."""


class FakeClock:
    """A fake monotonic clock: virtual seconds that only move when the loop is idle.

    A fake because real waiting makes tests slow and timing-dependent; with it, a test that
    needs 60 s of backoff runs in microseconds and always sees the same times.
    """

    def __init__(self, start: float = 0.0, limit: float = 24 * 3600.0) -> None:
        self.now = start
        self.limit = limit  # a test that waits for ever would otherwise spin for ever

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        if self.now > self.limit:
            raise VirtualTimeError(f"virtual time passed {self.limit:g}s: is a test waiting "
                                   "for something that never happens, without a timeout?")


class _VirtualSelector(selectors.BaseSelector):
    """Delegates to a real selector, but never blocks on a timer: it polls real I/O (the
    loop's self-pipe, any real file descriptor) with a zero timeout and, when nothing is ready,
    moves the virtual clock forward by the time the loop wanted to sleep."""

    REAL_IDLE_WAIT = 1.0  # no timer at all: only a thread or real I/O can still wake the loop

    def __init__(self, clock: FakeClock) -> None:
        self._real = selectors.DefaultSelector()
        self._clock = clock

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None
               ) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer scheduled: a real wait, then call it a deadlock
            ready = self._real.select(self.REAL_IDLE_WAIT)
            if not ready:
                raise VirtualTimeError("deadlock: no task can run, no timer is scheduled")
            return ready
        self._clock.advance(timeout)
        return []

    def close(self) -> None:
        self._real.close()

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.get_key(fileobj)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A fake (virtual-time) event loop: `time()` reads a FakeClock, and idle waits advance it.

    `asyncio.sleep(30)` or `asyncio.wait_for(x, 15)` return at once in real time, at exactly
    +30 s or +15 s in virtual time, in the order their timers were due. Real I/O still works
    (it is polled), but a real wait does not hold virtual time back. Pass `clock=loop.time`
    to the engine's Context so the engine measures the same virtual time.
    """

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.cleanups: list[Callable[[], None]] = []  # run by run_virtual once the loop closed
        super().__init__(_VirtualSelector(self.clock))

    def time(self) -> float:
        return self.clock.time()


def run_virtual(coro: Coroutine[Any, Any, T], start: float = 0.0) -> T:
    """Run `coro` to completion on a fresh VirtualTimeLoop whose clock starts at `start`."""
    loop = VirtualTimeLoop(FakeClock(start))
    try:
        with asyncio.Runner(loop_factory=lambda: loop) as runner:
            return runner.run(coro)
    finally:
        for cleanup in loop.cleanups:
            cleanup()


def now() -> float:
    """The running loop's (virtual) time."""
    return asyncio.get_running_loop().time()


async def advance(seconds: float) -> None:
    """Let `seconds` of virtual time pass, running whatever is due meanwhile."""
    await asyncio.sleep(seconds)


# ---------------------------------------------------------------------------- runtime


@dataclass(frozen=True)
class Script:
    """What one start of an instance does; times are virtual seconds after its start."""

    ready_after: float | None = 0.0  # its health command passes from then on; None: never
    exit_after: float | None = None  # it exits on its own then; None: runs until stopped
    exit_code: int = 1
    unhealthy_after: float | None = None  # health command fails from then on (still running)
    start_error: str | None = None  # runtime.start raises this (e.g. command not found)
    output: tuple[str, ...] = ()  # lines it writes as soon as it starts


def ready(after: float = 0.0, *, output: tuple[str, ...] = ()) -> Script:
    """Starts and becomes healthy `after` seconds later; runs until stopped."""
    return Script(ready_after=after, output=output)


def crash(after: float = 0.0, code: int = 1, *, ready_after: float | None = None,
          output: tuple[str, ...] = ()) -> Script:
    """Exits with `code` after `after` seconds (healthy from `ready_after`, if given)."""
    return Script(ready_after=ready_after, exit_after=after, exit_code=code, output=output)


def never_ready(*, output: tuple[str, ...] = ()) -> Script:
    """Runs but never passes its health check."""
    return Script(ready_after=None, output=output)


def job(after: float = 0.0, code: int = 0) -> Script:
    """A one-shot job: exits with `code` (0 by default) after `after` seconds."""
    return Script(ready_after=None, exit_after=after, exit_code=code)


def start_error(message: str = "cannot run 'app': No such file or directory") -> Script:
    """The runtime cannot start it at all."""
    return Script(start_error=message)


@dataclass(frozen=True)
class Start:
    """One recorded call of FakeRuntime.start."""

    at: float
    service: str
    replica: int
    instance: FakeInstance | None  # None when the start failed


class FakeInstance:
    """A fake Instance: a scripted lifetime on the virtual clock, no process behind it."""

    def __init__(self, spec: InstanceSpec, script: Script, number: int,
                 runtime: FakeRuntime) -> None:
        loop = asyncio.get_running_loop()
        self.spec = spec
        self.script = script
        self.started_at = loop.time()
        self.exit_code: int | None = None
        self.exited_at: float | None = None
        self.stopped = False  # stopped by the engine (not an exit of its own)
        self._id = f"{spec.name}#{number}"
        self._port = 40000 + number if spec.wants_port else None
        self._runtime = runtime
        self._exited = asyncio.Event()
        self._lines: asyncio.Queue[OutputLine | None] = asyncio.Queue()
        for text in script.output:
            self._lines.put_nowait(OutputLine("out", text))
        self._timer = (loop.call_later(script.exit_after, self._exit, script.exit_code)
                       if script.exit_after is not None else None)

    def __repr__(self) -> str:
        return f"<FakeInstance {self._id}>"

    @property
    def id(self) -> str:
        return self._id

    @property
    def endpoint(self) -> tuple[str, int] | None:
        """A made-up address (never dialed: unit-test plans probe health by command)."""
        return ("127.0.0.1", self._port) if self._port else None

    @property
    def alive(self) -> bool:
        return self.exit_code is None

    def healthy(self) -> bool:
        """What the health command answers now."""
        if not self.alive or self.script.ready_after is None:
            return False
        age = now() - self.started_at
        bad = self.script.unhealthy_after
        return age >= self.script.ready_after and (bad is None or age < bad)

    async def output(self) -> AsyncIterator[OutputLine]:
        while (line := await self._lines.get()) is not None:
            yield line

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.exit_code is not None
        return self.exit_code

    async def stop(self) -> int:
        await asyncio.sleep(0)  # a real stop awaits the exit
        if self.alive:
            self.stopped = True
            self._runtime.stops.append(self._id)
            self._exit(-15)  # killed by SIGTERM, as a process would be
        return await self.wait()

    def resources(self) -> Resources | None:
        return Resources(cpu_percent=0.0, rss_bytes=0) if self.alive else None

    def _exit(self, code: int) -> None:
        if not self.alive:
            return
        if self._timer:
            self._timer.cancel()
        self.exit_code, self.exited_at = code, now()
        self._lines.put_nowait(None)
        self._exited.set()


class FakeAddress:
    """A service's stable address that binds nothing: records whether it is open."""

    def __init__(self, service: str, port: int):
        self.service, self.port, self.opened = service, port, False

    async def open(self) -> None:
        self.opened = True

    async def close(self) -> None:
        self.opened = False


class FakeRuntime:
    """A fake Runtime: starts FakeInstances that follow per-service scripts, runs no process.

    A fake because real processes make supervision tests slow (real backoff, real start-up)
    and flaky; this one does exactly what a test scripts, at virtual times, and records every
    start, stop and command so tests can assert on them.

    `script(service, *steps)`: each start takes the next step; the last step repeats. A
    service with no script becomes ready at once. Health commands (`run` with an instance)
    answer 0 while that instance's script says it is healthy; other commands (builds) answer
    `build_code` after `build_takes` seconds.
    """

    name = "fake"

    def __init__(self) -> None:
        self._scripts: dict[str, deque[Script]] = {}
        self._count = 0
        self.starts: list[Start] = []
        self.stops: list[str] = []  # ids of running instances the engine stopped
        self.commands: list[tuple[str, tuple[str, ...]]] = []  # (instance name, argv)
        self.instances: list[FakeInstance] = []
        self.build_code = 0
        self.build_takes = 0.0
        self.closed = False
        self.addresses: dict[str, FakeAddress] = {}

    def script(self, service: str, *steps: Script) -> None:
        self._scripts[service] = deque(steps)

    def _next(self, service: str) -> Script:
        steps = self._scripts.get(service)
        if not steps:
            return ready()
        return steps.popleft() if len(steps) > 1 else steps[0]

    async def start(self, spec: InstanceSpec) -> Instance:
        await asyncio.sleep(0)  # a real start awaits the process
        step = self._next(spec.service)
        if step.start_error is not None:
            self.starts.append(Start(now(), spec.service, spec.replica, None))
            raise DevenvError(f"{spec.service}: {step.start_error}")
        self._count += 1
        instance = FakeInstance(spec, step, self._count, self)
        self.instances.append(instance)
        self.starts.append(Start(now(), spec.service, spec.replica, instance))
        return instance

    async def run(self, spec: InstanceSpec, argv: tuple[str, ...], timeout: float,
                  instance: Instance | None = None) -> RunResult:
        self.commands.append((spec.name, argv))
        if instance is None:
            await asyncio.sleep(min(self.build_takes, timeout))
            code = self.build_code if self.build_takes <= timeout else -9
            return RunResult(code, f"build exited with {code}")
        assert isinstance(instance, FakeInstance)
        return RunResult(0 if instance.healthy() else 1, "")

    async def close(self) -> None:
        self.closed = True
        for instance in self.instances:
            if instance.alive:
                await instance.stop()

    # ---- what tests look at

    def start_times(self, service: str, replica: int | None = None) -> list[float]:
        return [s.at for s in self.starts
                if s.service == service and (replica is None or s.replica == replica)]

    def address(self, service: str, port: int, backends: object) -> FakeAddress:
        address = FakeAddress(service, port)
        self.addresses[service] = address
        return address

    def exec(self, spec: InstanceSpec, argv: tuple[str, ...], *, tty: bool) -> int:
        self.commands.append((spec.name, argv))
        return 0

    def recover(self) -> int:
        return 0

    def live(self, service: str) -> list[FakeInstance]:
        return [i for i in self.instances if i.spec.service == service and i.alive]


# ---------------------------------------------------------------------------- builders

HEALTH = HealthCheck(command="fake-health", interval=Duration(5.0), timeout=Duration(2.0),
                     retries=3, start_period=Duration(60.0))


def health_check(*, start_period: float = 60.0, interval: float = 5.0, retries: int = 3
           ) -> HealthCheck:
    """A command health check (answered by FakeRuntime, so no socket is ever opened)."""
    return replace(HEALTH, start_period=Duration(start_period), interval=Duration(interval),
                   retries=retries)


def make_plan(name: str, *, replicas: int = 1, restart: str = "always",
              health: HealthCheck | None = HEALTH, depends_on: dict[str, str] | None = None,
              command: tuple[str, ...] = ("app",), port: int | None = None,
              watch: Watch | None = None, env: dict[str, str] | None = None,
              route: Route | None = None) -> ServicePlan:
    """A ServicePlan with the other fields filled, and a config hash like `service_plan`'s:
    over everything but replicas and watch. No port by default: a port gives the runner a
    Balancer, which `ServiceRunner.open()` (and so `Engine.up`) would bind for real."""
    plan = ServicePlan(
        name=name, command=command, workdir=".", env={"DEVENV_SERVICE": name, **(env or {})},
        port=port, replicas=replicas, health=health, restart=restart,
        depends_on=dict(depends_on or {}), route=route,
        watch=_resolved(watch or Watch(), restart != "no" or port is not None),
        job=restart == "no" and port is None,
        stop_signal="TERM", stop_timeout=10.0,
    )
    fingerprint = asdict(plan)
    for live in LIVE_FIELDS:
        fingerprint.pop(live)
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode())
    return replace(plan, config_hash=digest.hexdigest()[:16])


def _resolved(watch: Watch, serves: bool) -> Watch:
    """Watch settings as `service_plan` makes them concrete (no dev-server detection)."""
    enabled = serves if watch.enabled is None else watch.enabled
    return replace(watch, enabled=enabled, action="replace" if watch.action == "auto"
                   else watch.action)


def plan_of(*services: ServicePlan, selected: tuple[str, ...] | None = None) -> Plan:
    """A Plan of these services (all of them selected, unless `selected` says otherwise)."""
    names = tuple(s.name for s in services)
    return Plan(project="shop", services={s.name: s for s in services},
                selected=names if selected is None else selected, ingress_port=None,
                hold_timeout=15.0)


def make_context(root: Path, runtime: FakeRuntime, *, hold_timeout: float = 15.0) -> Context:
    """A Context on the running virtual loop: its clock, a LogStore under `root`/logs."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeLoop), "run the test with run_virtual()"
    logs = LogStore(root / "logs")
    loop.cleanups.append(logs.close)
    return Context(root=root, runtimes=lambda name: runtime, logs=logs,
                   hold_timeout=hold_timeout, clock=loop.time, blocking=_inline)


async def _inline(fn: Callable[..., T], *args: Any) -> T:
    """File work run on the loop's thread: a thread's real time would let virtual time run."""
    return fn(*args)
