"""One service at run time: its replicas, their restarts and health, and its stable address.

A replica's life is one task: start an instance, probe it until ready, put it in the pool,
watch its health, and when it exits apply the restart policy with exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from devenv import data as kinds
from devenv.core.errors import UsageError
from devenv.engine.context import Context
from devenv.engine.debugging import DebugSession
from devenv.engine.events import Alert, Reloaded, StateChanged
from devenv.engine.health import probe
from devenv.engine.jobs import new_data_generation
from devenv.engine.logstore import FIRST_CALLER
from devenv.engine.pool import Backend, Pool
from devenv.plan import ServicePlan
from devenv.runtime.base import Address, Instance, InstanceSpec
from devenv.wire import (
    MET,
    PENDING,
    Condition,
    InstanceStatus,
    ReloadRecord,
    Replicas,
    ServiceStatus,
    State,
    Verdict,
)

BACKOFF_FIRST = 0.25
BACKOFF_MAX = 30.0
STABLE_AFTER = 30.0  # healthy this long: the crash count starts again
CRASH_LOOP = (5, 60.0)  # this many crashes within this many seconds is a crash loop
START_ATTEMPTS = 3  # crashes before first health that fail an `up`
BUSY_DRAIN_TIMEOUT = 10.0  # a request still being answered by a replaced instance
FAST_PROBE, FAST_PROBE_FOR = 0.05, 3.0  # readiness probes at most 50 ms apart for 3 s
TAIL_LINES = 30  # each replica's last output lines, to show why a new instance failed


@dataclass(eq=False)
class Replica:
    index: int
    plan: ServicePlan
    state: State = State.STARTING
    detail: str = ""
    instance: Instance | None = None
    backend: Backend | None = None
    restarts: int = 0
    start_crashes: int = 0
    ever_healthy: bool = False
    stopping: bool = False
    gave_up: bool = False
    start_attempts: int = START_ATTEMPTS  # crashes before its first health that fail it
    crashes: list[float] = field(default_factory=list)  # times, within the crash-loop window
    backoff: int = 0  # crashes since it was last stably healthy: the next delay's exponent
    healthy_since: float | None = None  # when the current instance became healthy
    task: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    started_at: float | None = None
    healthy_at: float | None = None
    incoming: bool = False  # a replacement not yet switched to: its output is labelled so
    debugged: bool = False  # under a debugger: health failures keep it
    waits: bool = False  # debugged with --wait: its code waits for a debugger to attach
    overdue: bool = False  # debugged, not healthy within start_period: kept, not waited for

    @property
    def label(self) -> str:
        """How its output is labelled: `1`, or `1(new)` for a replacement still starting,
        so a failed reload's output is not mistaken for the instance still serving."""
        return f"{self.index}(new)" if self.incoming else str(self.index)

    @property
    def failed_start(self) -> bool:
        return not self.ever_healthy and (self.start_crashes >= self.start_attempts
                                          or self.gave_up)


class ServiceRunner:
    """One service's replicas and address. Mutations happen under `lock` (one per service),
    taken by the engine; reading its state needs no lock."""

    def __init__(self, plan: ServicePlan, ctx: Context):
        self.plan = plan
        self.ctx = ctx
        self.name = plan.name
        self.runtime = ctx.runtimes(plan.runtime)
        self.pool = Pool(plan.name, ctx.hold_timeout)
        self.address: Address | None = (
            self.runtime.address(plan.name, plan.port, self.pool) if plan.port else None)
        self.lock = asyncio.Lock()
        self.doing = ""  # what holds the lock, to say what others wait for
        self.replicas: list[Replica] = []
        self.desired = 0
        self.restarts = 0
        self.changed = asyncio.Event()
        self._state = State.STOPPED
        self.reloads = 0
        self.last_reload: ReloadRecord | None = None
        self.hints: set[str] = set()  # what to do about known problems in its output
        self.scrape_error: str | None = None  # its own /metrics failed (telemetry/scrape.py)
        self.debug: DebugSession | None = None  # under a debugger (engine/debugging.py)
        self._open = False

    # ---- lifecycle

    async def open(self) -> None:
        """Take the service's stable address (AddressInUse when it is taken)."""
        if self.address and not self._open:
            await self.address.open()
            self._open = True

    async def scale(self, count: int) -> None:
        session = self.debug
        if self._debug_plan(self.plan) is not None and self.debug is not None:
            self.debug.replicas, count = count, 1  # one debugged replica; the count is for after
        elif session is not None and count == self.desired:  # it just ended: what it kept
            count = session.replicas
        self.desired = count
        while len(self.replicas) < count:
            self._spawn(self._next_index(), self.plan)
        surplus = self.replicas[count:]
        del self.replicas[count:]
        await asyncio.gather(*(self._retire(r) for r in surplus))
        self._touch()

    async def replace(self, plan: ServicePlan, timings: dict[str, float] | None = None,
                      failure: list[str] | None = None) -> bool:
        """Roll every replica to `plan` with no downtime: new ones start and must be healthy
        before the old ones leave the pool and drain. If any new one fails, the old ones keep
        serving. `timings` gets seconds from the start to started/healthy/switched/drained;
        `failure` gets the failed new instances' last output lines."""
        clock, t0 = self.ctx.clock, self.ctx.clock()
        old = list(self.replicas)
        # a new instance that crashes once has failed: the old one is still serving
        if plan.job:  # a one-shot is rerun: nothing serves, there is no switch to make
            self.plan = plan
            await self.restart()
            return True
        session = self.debug
        if self._debug_plan(plan) is not None:  # one debugged instance (it alone holds the
            fresh = [self._replica(r.index, plan, start_attempts=1,  # debug port)
                                   incoming=bool(old)) for r in old[:1]]
            going = [r for r in old if r.debugged]  # they hold the debug port: they go first
            if going:  # (callers wait at the address meanwhile)
                self.replicas = [r for r in self.replicas if not r.debugged]
                old = [r for r in old if not r.debugged]
                await asyncio.gather(*(self._retire(r) for r in going))
        else:
            fresh = [Replica(index=r.index, plan=plan, start_attempts=1, incoming=bool(old))
                     for r in old]
        for rep in fresh:
            self._run(rep)
        ok = await self._await_all(fresh)
        marks = timings if timings is not None else {}
        if any(r.started_at for r in fresh):
            marks["started"] = max(r.started_at or t0 for r in fresh) - t0
        if not ok:
            if failure is not None:
                for rep in fresh:
                    if rep.failed_start or rep.state != State.HEALTHY:
                        failure.append(rep.detail or "failed to start")
                        failure.extend(rep.tail)
            await asyncio.gather(*(self._retire(r) for r in fresh))
            self._touch()
            return False
        marks["healthy"] = max(r.healthy_at or t0 for r in fresh) - t0
        self.plan = plan
        self.replicas = fresh
        for rep in fresh:
            rep.incoming = False
        for rep in old:  # traffic moves now: new instances are in the pool, old ones leave
            if rep.backend:
                self.pool.remove(rep.backend)
        marks["switched"] = clock() - t0
        await asyncio.gather(*(self._retire(r) for r in old))
        marks["drained"] = clock() - t0
        if session is not None and self.debug is None:  # it ended: the count it kept
            await self.scale(session.replicas)
        self._touch()
        return True

    async def restart(self) -> None:
        """Stop every replica, then start them again (a gap; reload's `restart` action). A
        data server's clients hold their connections for good: it is not drained."""
        old, self.replicas = self.replicas, []
        await asyncio.gather(*(self._retire(r, drain=self.plan.data is None) for r in old))
        await self.scale(self.desired)

    async def roll(self) -> str | None:
        """New replicas, with no gap: each new one healthy before the old ones drain (as a
        reload does); if they fail, the old ones keep serving. A data service (one server on
        its data) is stopped, then started. None when done, else why not."""
        if self.plan.data is not None or not any(r.state == State.HEALTHY
                                                 for r in self.replicas):
            await self.restart()  # nothing is serving: no gap to avoid
            return None
        failure: list[str] = []
        if await self.replace(self.plan, failure=failure):
            return None
        return (failure[0] if failure else "the new instances failed") + \
            "; the previous ones keep serving"

    def completed_earlier(self, note: str) -> None:
        """Show a one-shot as completed without running it (it ran before, nothing changed)."""
        self.desired = self.plan.replicas
        self.replicas = [Replica(index=i + 1, plan=self.plan, state=State.COMPLETED,
                                 detail=note) for i in range(self.desired)]
        self._touch()

    async def close(self) -> None:
        old, self.replicas = self.replicas, []
        self.desired = 0
        await asyncio.gather(*(self._retire(r, drain=False) for r in old))
        if self.address and self._open:
            await self.address.close()
            self._open = False
        self._touch()

    # ---- waiting

    async def wait_condition(self, condition: Condition, timeout: float | None = None
                             ) -> str | None:
        """Wait until the service meets `condition`; None when it does, else why it cannot."""
        async def check() -> str | None:
            while True:
                verdict = self.condition(condition)
                if not verdict.pending:
                    return None if verdict.met else verdict.reason
                self.changed.clear()
                await self.changed.wait()
        return await asyncio.wait_for(check(), timeout)

    def condition(self, condition: Condition) -> Verdict:
        """Whether the service meets `condition` now, will later, or never will."""
        reps = self.replicas
        # never: a start that failed, or a replica that crashed and will not be restarted
        # (a one-shot job with `restart: no` that exited with an error)
        failed = [r for r in reps if r.failed_start
                  or (r.gave_up and r.state in (State.CRASHED, State.FAILED))]
        if failed:
            return Verdict(reason=failed[0].detail or "failed to start")
        if condition != Condition.STARTED and self._looping() is not None:
            return Verdict(reason=self.detail or "crash loop")  # it was up once: not now
        if condition == Condition.STARTED:
            return MET if all(r.instance or r.state == State.COMPLETED for r in reps) \
                else PENDING
        if self.plan.job:  # healthy (or up) means done, for a job
            condition = Condition.COMPLETED
        if condition == Condition.UP:  # healthy, or a job that completed
            done = reps and all(r.state == State.COMPLETED for r in reps)
            return MET if done or self.ready >= self.desired or self._kept() else PENDING
        if condition == Condition.COMPLETED:
            if any(r.state == State.COMPLETED for r in reps) and reps:
                return MET
            return PENDING if reps else Verdict(reason="not running")
        return MET if self.ready >= self.desired or self._kept() else PENDING

    def _kept(self) -> bool:
        """Debugged, and no longer waited for: its instance waits for a debugger, or was
        not healthy within start_period (a debugger may hold it)."""
        return self.debug is not None and bool(self.replicas) and all(
            r.state == State.HEALTHY or ((r.waits or r.overdue) and r.instance is not None)
            for r in self.replicas)

    @property
    def up_budget(self) -> float:
        """The longest `up` (or a dependent) waits for it to come up: a job's run_timeout;
        a server's every start attempt, each at most its start_period, with backoff."""
        if self.plan.job:
            return self.plan.run_timeout + 10
        period = self.plan.health.start_period if self.plan.health else 60.0
        return START_ATTEMPTS * period + 60

    async def _await_all(self, reps: list[Replica]) -> bool:
        while True:
            if any(r.failed_start for r in reps):
                return False
            if all(r.state == State.HEALTHY or ((r.waits or r.overdue) and r.instance)
                   for r in reps):  # (one that waits for a debugger cannot be healthy
                return True  # before; one not healthy in time is kept, not waited for)
            self.changed.clear()
            await self.changed.wait()

    # ---- one replica

    def _next_index(self) -> int:
        used = {r.index for r in self.replicas}
        return next(i for i in range(1, len(used) + 2) if i not in used)

    def _replica(self, index: int, plan: ServicePlan, **more: Any) -> Replica:
        """A new replica of `plan`; under the service's debugger while a session is on."""
        debugged = self._debug_plan(plan)
        if debugged is None or self.debug is None:
            return Replica(index=index, plan=plan, **more)
        return Replica(index=index, plan=debugged, debugged=True, waits=self.debug.wait,
                       **more)

    def _debug_plan(self, plan: ServicePlan) -> ServicePlan | None:
        """`plan` as the debug session runs it; None without a session. A session that
        cannot run `plan` (its config changed under it) is ended, with an alert: the service
        runs as planned again."""
        if self.debug is None:
            return None
        try:
            return self.debug.apply(plan)
        except UsageError as exc:
            self.debug = None
            text = f"debugging ended: {exc.message}; it runs as planned again"
            self.ctx.logs.add(self.name, "debug", "alert", text)
            self.ctx.events.publish(Alert(self.name, text))
            return None

    def _spawn(self, index: int, plan: ServicePlan) -> Replica:
        rep = self._replica(index, plan)
        self.replicas.append(rep)
        self._run(rep)
        return rep

    def _run(self, rep: Replica) -> None:
        rep.task = asyncio.create_task(self._life(rep), name=f"{self.name}-{rep.index}")

    def _spec(self, rep: Replica) -> InstanceSpec:
        p = rep.plan  # (the service's own variables win over the telemetry ones)
        env = p.env if p.data else {**self.ctx.service_env(p.name, rep.index), **p.env}
        return InstanceSpec(service=p.name, replica=rep.index, command=p.command, env=env,
                            workdir=p.workdir, wants_port=p.port is not None,
                            stop_signal=p.stop_signal, stop_timeout=p.stop_timeout,
                            container=p.container)

    def _event(self, rep: Replica, text: str) -> None:
        self.ctx.logs.add(self.name, rep.label, "devenv", text)

    def _set(self, rep: Replica, state: State, detail: str = "") -> None:
        rep.state, rep.detail = state, detail
        self._touch()

    async def _life(self, rep: Replica) -> None:
        spec = self._spec(rep)
        while not rep.stopping:
            self._set(rep, State.STARTING)
            try:
                if rep.plan.data:
                    await asyncio.to_thread(kinds.prepare, rep.plan.data)
                rep.instance = await self.runtime.start(spec)
            except Exception as exc:
                rep.instance = None
                if await self._crashed(rep, str(exc)):
                    continue
                return
            rep.started_at = self.ctx.clock()
            self._event(rep, f"started {rep.instance.id}")
            self.changed.set()  # (a replace waits for a --wait debugged one to start)
            pump = asyncio.create_task(self._pump(rep, rep.instance))
            exit_task = asyncio.create_task(rep.instance.wait())
            if rep.plan.job:
                code = await self._run_job(rep, exit_task)
                await asyncio.wait([pump], timeout=1.0)
                if rep.stopping:
                    self._set(rep, State.STOPPED, f"exit code {code}")
                    return
                if not rep.gave_up:
                    self._job_exited(rep, code)
                return
            ready = await self._until_ready(rep, spec, exit_task)
            if ready and rep.plan.data and not rep.plan.data.provisioned:
                ready = await self._provision(rep)
            watcher = None
            if ready:
                self._healthy(rep)
                watcher = asyncio.create_task(self._watch_health(rep, spec))
            code = await exit_task if ready or exit_task.done() else await rep.instance.stop()
            if watcher:
                watcher.cancel()
            self._unroute(rep)
            await asyncio.wait([pump], timeout=1.0)
            if rep.stopping:
                self._set(rep, State.STOPPED, f"exit code {code}")
                return
            if code == 0 and rep.plan.restart != "always":
                self._set(rep, State.COMPLETED, "exited with code 0")
                self._event(rep, "completed (exit code 0)")
                return
            reason = rep.detail if rep.state == State.FAILED else f"exited with code {code}"
            if rep.plan.restart == "no":
                rep.gave_up = True
                self._set(rep, State.FAILED, reason)
                self._event(rep, f"{reason}; restart: no")
                return
            if not await self._crashed(rep, reason):
                return

    async def _run_job(self, rep: Replica, exit_task: asyncio.Task[int]) -> int:
        """A one-shot's run: `running` until it exits, stopped and failed after run_timeout."""
        assert rep.instance is not None
        self._set(rep, State.RUNNING)
        limit = rep.plan.run_timeout
        done, _ = await asyncio.wait([exit_task], timeout=limit)
        if done:
            return exit_task.result()
        rep.gave_up = True
        code = await rep.instance.stop()
        self._set(rep, State.FAILED, f"did not finish within {limit:g}s (run_timeout); stopped")
        self._event(rep, rep.detail)
        return code

    def _job_exited(self, rep: Replica, code: int) -> None:
        """Record how a one-shot ended: completed, or failed (it is not run again)."""
        now = self.ctx.clock()
        took = now - (now if rep.started_at is None else rep.started_at)
        if code == 0:
            self._set(rep, State.COMPLETED, f"exit code 0 after {took:.1f}s")
            self._event(rep, f"completed (exit code 0) after {took:.1f}s")
            return
        rep.gave_up = True
        self._set(rep, State.FAILED, f"exited with code {code} after {took:.1f}s")
        self._event(rep, f"failed: {rep.detail}; restart: no")

    async def _crashed(self, rep: Replica, reason: str) -> bool:
        """Record a crash and back off; False when the replica is being stopped."""
        now = self.ctx.clock()
        if rep.healthy_since is not None and now - rep.healthy_since > STABLE_AFTER:
            rep.crashes.clear()
            rep.backoff = 0
        rep.healthy_since = None
        rep.crashes = [t for t in rep.crashes if now - t < CRASH_LOOP[1]] + [now]
        rep.backoff += 1
        if not rep.ever_healthy:
            rep.start_crashes += 1
        delay = min(BACKOFF_FIRST * 2 ** min(rep.backoff - 1, 16), BACKOFF_MAX)
        loop = len(rep.crashes) >= CRASH_LOOP[0]
        label = "crash loop: " if loop else ""
        detail = f"{label}{reason}; restart #{rep.restarts + 1} in {delay:.1f}s"
        if rep.failed_start and rep.start_attempts == 1:
            detail = reason  # a replacement that failed is not restarted: it is dropped
        self._set(rep, State.CRASHED, detail)
        self._event(rep, detail)
        rep.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(rep.wake.wait(), delay)
        if rep.stopping:
            return False
        rep.restarts += 1
        if rep in self.replicas:  # an incoming replacement's crashes are the reload's story
            self.restarts += 1
        return True

    async def _until_ready(self, rep: Replica, spec: InstanceSpec,
                           exit_task: asyncio.Task[int]) -> bool:
        assert rep.instance is not None
        check = rep.plan.health
        budget = check.start_period if check else 60.0
        began = self.ctx.clock()
        deadline = began + budget
        delay = 0.02
        while not exit_task.done() and not rep.stopping:
            if await probe(check, rep.instance, spec, self.runtime):
                return True
            if self.ctx.clock() > deadline and rep.debugged and not rep.overdue:
                rep.overdue = True  # (a debugger may hold it): kept, no longer waited for
                self._set(rep, State.STARTING, f"not healthy after {budget:g}s "
                          "(start_period); kept: under a debugger")
                self._event(rep, rep.detail)
            elif self.ctx.clock() > deadline and not rep.debugged:
                rep.gave_up = True  # a start that times out fails `up` at once
                self._set(rep, State.FAILED, f"not healthy after {budget:g}s (start_period)")
                self._event(rep, rep.detail)
                return False
            await asyncio.wait([exit_task], timeout=delay)
            # probe often while a start is young (a reload waits on it), then back off
            cap = FAST_PROBE if self.ctx.clock() - began < FAST_PROBE_FOR else 0.5
            delay = min(delay * 1.5, cap)
        return False

    async def _provision(self, rep: Replica) -> bool:
        """First healthy start on fresh data: create databases and users, once."""
        data = rep.plan.data
        assert data is not None and rep.instance is not None and rep.instance.endpoint
        try:
            await kinds.provision(data, rep.instance.endpoint[1])
        except Exception as exc:
            rep.gave_up = True
            self._set(rep, State.FAILED, f"provisioning failed: {exc}")
            self._event(rep, rep.detail)
            return False
        await self.ctx.blocking(new_data_generation, self.ctx.root, self.name)
        self._event(rep, "provisioned fresh data")
        return True

    async def pause(self) -> None:
        """Stop every replica but keep the address and desired count (for data restores)."""
        old, self.replicas = self.replicas, []
        await asyncio.gather(*(self._retire(r, drain=False) for r in old))
        self._touch()

    def _healthy(self, rep: Replica) -> None:
        if not rep.ever_healthy:
            rep.healthy_at = self.ctx.clock()
        if rep.healthy_since is None:
            rep.healthy_since = self.ctx.clock()
        rep.ever_healthy = True
        rep.start_crashes = 0
        instance = rep.instance
        assert instance is not None
        if instance.endpoint:
            host, port = instance.endpoint
            if rep.backend is None:  # its first caller ends its start-up (logs --startup)
                rep.backend = Backend(instance.id, host, port)
                rep.backend.on_first_use = lambda: self._event(rep, FIRST_CALLER)
            if not rep.stopping:
                self.pool.add(rep.backend)
        self._set(rep, State.HEALTHY)
        self._event(rep, "healthy")

    def _unroute(self, rep: Replica) -> None:
        if rep.backend:
            self.pool.remove(rep.backend)
        rep.backend = None

    async def _watch_health(self, rep: Replica, spec: InstanceSpec) -> None:
        check = rep.plan.health
        interval = check.interval if check else 5.0
        retries = check.retries if check else 3
        failures = 0
        assert rep.instance is not None
        while True:
            await asyncio.sleep(interval)
            if await probe(check, rep.instance, spec, self.runtime):
                if rep.state == State.UNHEALTHY:
                    self._healthy(rep)
                failures = 0
                continue
            failures += 1
            if rep.debugged:  # paused at a breakpoint, most likely: it stays as it is
                if failures == retries:
                    self._event(rep, f"{failures} failed health checks; kept (under a "
                                "debugger: stopped at a breakpoint?)")
                continue
            if failures >= retries and rep.state == State.HEALTHY:
                if rep.backend:
                    self.pool.remove(rep.backend)
                rep.healthy_since = None
                self._set(rep, State.UNHEALTHY, f"{failures} failed health checks")
                self._event(rep, rep.detail)

    async def _pump(self, rep: Replica, instance: Instance) -> None:
        async for line in instance.output():
            logged = self.ctx.logs.add(self.name, rep.label, line.stream, line.text)
            rep.tail.append(logged.text)
            hint = kinds.explain(line.text)
            if hint and hint not in self.hints:  # once per service: not on every retry
                self.hints.add(hint)
                self.ctx.logs.add(self.name, rep.label, "alert", f"hint: {hint}")
                rep.tail.append(f"hint: {hint}")

    async def _retire(self, rep: Replica, drain: bool = True) -> None:
        rep.stopping = True
        rep.wake.set()
        if rep.backend and drain:
            await self.pool.drain(rep.backend, BUSY_DRAIN_TIMEOUT, self.plan.drain_timeout)
        elif rep.backend:
            self.pool.remove(rep.backend)
        if rep.instance:
            await rep.instance.stop()
            self._event(rep, "stopped")
        if rep.task:
            await asyncio.wait([rep.task], timeout=5.0)

    # ---- what it looks like

    @property
    def ready(self) -> int:
        return sum(1 for r in self.replicas if r.state == State.HEALTHY)

    def _looping(self) -> Replica | None:
        """A replica that crashed CRASH_LOOP times within its window, even if it is up again
        right now (a service without a port or check counts as healthy the moment it starts)."""
        now = self.ctx.clock()
        count, window = CRASH_LOOP
        for rep in self.replicas:
            if sum(1 for t in rep.crashes if now - t < window) >= count:
                return rep
        return None

    @property
    def state(self) -> State:
        reps = self.replicas
        if not reps:
            return State.STOPPED
        if self.plan.job:
            return _job_state(reps)
        if self._looping() is not None:
            return State.CRASHED
        if self.ready >= self.desired:
            return State.HEALTHY
        if all(r.state == State.COMPLETED for r in reps):
            return State.COMPLETED
        if any(r.state in (State.CRASHED, State.FAILED) for r in reps):
            return State.CRASHED
        if any(r.state == State.STARTING for r in reps):
            return State.STARTING
        if all(r.state in (State.STOPPED, State.COMPLETED) for r in reps):
            return State.STOPPED
        return State.UNHEALTHY

    @property
    def detail(self) -> str:
        looping = self._looping()
        if looping is not None and looping.state not in (State.CRASHED, State.FAILED):
            # up, or starting, again (crashed, its own detail says so, and when it restarts)
            return f"replica {looping.index}: crash loop: {len(looping.crashes)} crashes " \
                f"within {CRASH_LOOP[1]:g}s"
        for rep in self.replicas:
            if rep.detail and rep.state not in (State.HEALTHY, State.STOPPED):
                one = self.plan.job and len(self.replicas) == 1
                return rep.detail if one else f"replica {rep.index}: {rep.detail}"
        return ""

    def record_reload(self, record: ReloadRecord) -> None:
        self.reloads += 1
        self.last_reload = record
        self.ctx.events.publish(Reloaded(self.name, record))
        self._touch()

    def _touch(self) -> None:
        self.changed.set()
        state = self.state
        if state != self._state or self.detail:
            self._state = state
            self.ctx.events.publish(StateChanged(self.name, state, self.detail, self.ready,
                                                 self.desired))

    def status(self) -> ServiceStatus:
        return ServiceStatus(
            name=self.name, state=self.state, detail=self.detail,
            replicas=Replicas(ready=self.ready, desired=self.desired), url=self.plan.url,
            restarts=self.restarts, reloads=self.reloads, last_reload=self.last_reload,
            config_hash=self.plan.config_hash, job=self.plan.job,
            watch=self.plan.watch_mode, scrape_error=self.scrape_error,
            debug=self.debug.info() if self.debug else None,
            instances=[
                InstanceStatus(
                    replica=r.index, state=r.state, detail=r.detail,
                    id=r.instance.id if r.instance else None,
                    endpoint=":".join(map(str, r.instance.endpoint))
                    if r.instance and r.instance.endpoint else None,
                    restarts=r.restarts)
                for r in self.replicas])


def _job_state(reps: list[Replica]) -> State:
    """A one-shot's state from its replicas': failed beats crashed beats running."""
    states = {r.state for r in reps}
    if states == {State.COMPLETED}:
        return State.COMPLETED
    if any(r.gave_up for r in reps) or State.FAILED in states:
        return State.FAILED
    for state in (State.CRASHED, State.RUNNING, State.STARTING):
        if state in states:
            return state
    return State.STOPPED
