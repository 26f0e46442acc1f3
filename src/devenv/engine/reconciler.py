"""Reconcile desired state (a Plan) with what runs: compute the convergence plan, then apply it.

`up` and `stop` hold the engine's lock (one plan change at a time); every mutation of a
service holds that service's own lock, so a slow reload or data operation on one service
never stalls another. Services start as soon as their own dependencies meet their
conditions, so independent services start in parallel; a service whose config hash is
unchanged is left alone (`up` is idempotent). Every selected service's address is taken
before any instance starts, so a port that is in use fails `up` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

from devenv.core.errors import DevenvError, UsageError
from devenv.engine.context import Context
from devenv.engine.events import StateChanged, Subscription
from devenv.engine.jobs import JobRecords, fingerprint
from devenv.engine.service import ServiceRunner
from devenv.plan import Plan, ServicePlan
from devenv.runtime.base import AddressInUse
from devenv.wire import (
    ActionKind,
    Condition,
    OpResult,
    Progress,
    ServiceResult,
    ServiceStatus,
    State,
    UpResult,
)

ProgressSink = Callable[[Progress], None]
LOG_TAIL = 15
COME_BACK_TIMEOUT = 120.0  # a service taken offline (data restore) must be healthy again
LOCK_TIMEOUT = 300.0  # the longest any operation waits for another on the same service


@dataclass(frozen=True)
class Action:
    service: str
    kind: ActionKind
    replicas: int


def convergence_plan(plan: Plan, running: dict[str, ServiceRunner],
                     scaled: dict[str, int], rerun: Iterable[str] = ()) -> list[Action]:
    """What to do to each service: pure, from desired and actual state. A one-shot job runs
    again when its config changed, when it failed, or when named in `rerun`."""
    rerun = set(rerun)
    actions = [Action(n, ActionKind.REMOVE, 0) for n in running if n not in plan.services]
    for name in plan.selected:
        want = plan.services[name]
        replicas = scaled.get(name, want.replicas)
        runner = running.get(name)
        if runner is None:
            actions.append(Action(name, ActionKind.CREATE, replicas))
        elif runner.plan.config_hash != want.config_hash or (want.job and (
                name in rerun or runner.state in (State.FAILED, State.CRASHED))):
            actions.append(Action(name, ActionKind.REPLACE, replicas))
        elif runner.desired != replicas or runner.state in (State.STOPPED, State.CRASHED):
            actions.append(Action(name, ActionKind.SCALE, replicas))
        elif runner.plan != want:  # watching, draining: taken on by what runs
            actions.append(Action(name, ActionKind.UPDATE, replicas))
        else:
            actions.append(Action(name, ActionKind.KEEP, replicas))
    return actions


class Engine:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.runners: dict[str, ServiceRunner] = {}
        self.plan: Plan | None = None
        self.scaled: dict[str, int] = {}
        self.lock = asyncio.Lock()  # plan changes: up, stop
        self.jobs = JobRecords(ctx.root)
        self.on_routes_changed: Callable[[], None] = lambda: None

    # ---- up

    async def up(self, plan: Plan, progress: ProgressSink, rerun: Iterable[str] = ()
                 ) -> UpResult:
        async with self.lock:
            t0 = self.ctx.clock()
            rerun = set(rerun) | await self._stale_jobs(plan)
            actions = convergence_plan(plan, self.runners, self.scaled, rerun)
            for act in actions:
                if act.kind == ActionKind.REMOVE:
                    progress(Progress(act.service, "removing"))
                    async with self.holding([act.service], "removal"):
                        await self.runners.pop(act.service).close()
            todo = {a.service: a for a in actions if a.kind != ActionKind.REMOVE}
            await self._open_addresses(plan, todo)
            self.plan = plan
            self.ctx.logs.set_secrets([*(s for p in plan.services.values() for s in p.secrets()),
                                       *self.ctx.secrets])
            created = {name: asyncio.Event() for name in todo}
            results: dict[str, ServiceResult] = {}
            with self.ctx.events.subscribe(StateChanged) as sub:
                relay = asyncio.create_task(_relay(sub, progress, set(todo)))
                try:
                    await asyncio.gather(*(
                        self._bring_up(plan.services[n], todo[n], created, results, progress, t0,
                                       n in rerun)
                        for n in todo))
                finally:
                    relay.cancel()
            self.on_routes_changed()
            order = [n for n in plan.selected if n in results]
            return UpResult(ok=all(r.ok for r in results.values()),
                            services=[results[n] for n in order], project=plan.project)

    async def record_job(self, plan: ServicePlan) -> None:
        """A job completed: remember its files (and data) as they are after its run, so what
        it wrote itself does not count as a change."""
        print_ = await self.ctx.blocking(fingerprint, plan, self.ctx.root)
        await self.ctx.blocking(self.jobs.completed, plan.name, print_)

    async def _stale_jobs(self, plan: Plan) -> set[str]:
        """Completed jobs whose files or data changed since their run (a file edited while
        not watched, `data reset`, `snapshot restore`): they run again."""
        stale = set()
        for name in plan.selected:
            want, runner = plan.services[name], self.runners.get(name)
            if not want.job or runner is None or runner.state != State.COMPLETED:
                continue
            before = self.jobs.recorded(name)
            now = await self.ctx.blocking(fingerprint, want, self.ctx.root)
            if before is not None and now is not None and now != before:
                stale.add(name)
        return stale

    async def _open_addresses(self, plan: Plan, todo: dict[str, Action]) -> None:
        """Make the runners of new services and take every address before anything starts;
        if one is taken, give back what this call took and fail with every taken port."""
        fresh: dict[str, ServiceRunner] = {}
        taken: list[str] = []
        for name, act in todo.items():
            if act.kind != ActionKind.CREATE or name in self.runners:
                continue
            runner = ServiceRunner(plan.services[name], self.ctx)
            try:
                await runner.open()
                fresh[name] = runner
            except AddressInUse as exc:
                taken.append(str(exc))
        if taken:
            for runner in fresh.values():
                await runner.close()
            raise UsageError("cannot take the services' addresses; nothing was started",
                             details=taken, hint="stop what holds the port, or give the "
                             "service another `port:` (devenv config set services.NAME.port N)")
        self.runners.update(fresh)

    async def _bring_up(self, want: ServicePlan, act: Action, created: dict[str, asyncio.Event],
                        results: dict[str, ServiceResult], progress: ProgressSink, t0: float,
                        rerun: bool = False) -> None:
        name = want.name
        started_s: float | None = None

        def done(ok: bool, state: str, detail: str = "", healthy_s: float | None = None,
                 logs: list[str] | None = None) -> None:
            results[name] = ServiceResult(name=name, action=act.kind, ok=ok, url=want.url,
                                          state=state, detail=detail, started_s=started_s,
                                          healthy_s=healthy_s, logs=logs or [])

        done(False, "")
        try:
            blocked = await self._await_dependencies(want, created, progress)
            if blocked:
                done(False, "blocked", blocked)
                progress(Progress(name, "blocked", blocked))
                return
            runner = self.runners[name]
            if want.job and act.kind in (ActionKind.CREATE, ActionKind.REPLACE):
                print_ = await self.ctx.blocking(fingerprint, want, self.ctx.root)
                if act.kind == ActionKind.CREATE and not rerun and \
                        self.jobs.unchanged(want, print_):
                    runner.completed_earlier("completed earlier; nothing it depends on changed "
                                             f"(`devenv up --rerun {name}` runs it again)")
                    done(True, runner.state, runner.detail)
                    progress(Progress(name, runner.state, runner.detail, action=act.kind))
                    return
                self.jobs.forget(name)
            if act.kind not in (ActionKind.KEEP, ActionKind.UPDATE):
                started_s = round(self.ctx.clock() - t0, 3)
                progress(Progress(name, State.STARTING, action=act.kind))
            async with self.holding([name], "up"):
                if act.kind in (ActionKind.SCALE, ActionKind.UPDATE, ActionKind.KEEP):
                    runner.plan = want  # the same processes (same config hash); new settings
                if act.kind == ActionKind.REPLACE and not await runner.replace(want):
                    kept = "new instance failed; the previous one keeps serving"
                    done(False, runner.state, kept, logs=self._tail(runner))
                    progress(Progress(name, "failed", kept))
                    return
                if act.kind in (ActionKind.CREATE, ActionKind.REPLACE, ActionKind.SCALE):
                    await runner.scale(act.replicas)
            created[name].set()  # dependents look at it now that its replicas are asked for
            reason = await _bounded(runner, Condition.UP)
            if reason:
                done(False, runner.state, reason, logs=self._tail(runner))
                progress(Progress(name, "failed", reason))
                return
            if want.job and act.kind in (ActionKind.CREATE, ActionKind.REPLACE):
                await self.record_job(want)
            healthy_s = round(self.ctx.clock() - t0, 3) \
                if act.kind not in (ActionKind.KEEP, ActionKind.UPDATE) else None
            detail = runner.detail if want.job else ""
            done(True, runner.state, detail, healthy_s=healthy_s)
            progress(Progress(name, runner.state, detail, action=act.kind, healthy_s=healthy_s))
        finally:
            created[name].set()

    def _tail(self, runner: ServiceRunner) -> list[str]:
        return [ln.text for ln in self.ctx.logs.recent(runner.name, LOG_TAIL * 4)
                if ln.stream != "devenv"][-LOG_TAIL:]

    async def _await_dependencies(self, want: ServicePlan, created: dict[str, asyncio.Event],
                                  progress: ProgressSink) -> str | None:
        for dep, condition in want.depends_on.items():
            if dep in created:
                await created[dep].wait()
            runner = self.runners.get(dep)
            if runner is None:
                return f"dependency '{dep}' is not running"
            if runner.condition(Condition(condition)).pending:
                progress(Progress(want.name, "waiting", f"for {dep} ({condition})"))
            reason = await _bounded(runner, Condition(condition))
            if reason:
                return f"dependency '{dep}' failed: {reason}"
        return None

    # ---- other mutations: each under the locks of the services it touches

    @contextlib.asynccontextmanager
    async def holding(self, names: Iterable[str], doing: str,
                      timeout: float = LOCK_TIMEOUT) -> AsyncIterator[dict[str, ServiceRunner]]:
        """The named services' runners, with their locks held (taken in name order) for
        `doing`; waiting longer than `timeout` for one fails, naming what holds it."""
        runners = {n: self.runners[n] for n in sorted(set(names)) if n in self.runners}
        async with contextlib.AsyncExitStack() as stack:
            for name, runner in runners.items():
                try:
                    await asyncio.wait_for(runner.lock.acquire(), timeout)
                except TimeoutError:
                    raise DevenvError(f"{name} is busy ({runner.doing or 'another operation'}) "
                                      f"and did not become free within {timeout:g}s; "
                                      f"nothing was done for {doing}",
                                      hint="try again when it is done (`devenv status`)"
                                      ) from None
                stack.callback(runner.lock.release)
                runner.doing = doing
                stack.callback(setattr, runner, "doing", "")
            yield runners

    @contextlib.asynccontextmanager
    async def offline(self, runners: dict[str, ServiceRunner]) -> AsyncIterator[None]:
        """Stop the (held) services' instances, keeping their addresses, which hold new
        callers meanwhile; after the block, start them again and wait until healthy."""
        await asyncio.gather(*(r.pause() for r in runners.values()))
        try:
            yield
        finally:
            await asyncio.gather(*(r.scale(r.desired or 1) for r in runners.values()))
        reasons = await asyncio.gather(*(r.wait_condition(Condition.UP, COME_BACK_TIMEOUT)
                                         for r in runners.values()))
        failed = {n: why for n, why in zip(runners, reasons, strict=True) if why}
        if failed:
            raise DevenvError("services did not come back",
                              details=[f"{n}: {why}" for n, why in failed.items()])

    async def restart(self, names: list[str]) -> OpResult:
        order = [n for n in (self.plan.selected if self.plan else []) if n in names]
        order += [n for n in names if n not in order]
        failed = {}
        for name in order:
            async with self.holding([name], "restart") as held:
                reason = await held[name].roll()
            reason = reason or await self.runners[name].wait_condition(Condition.UP)
            if reason:
                failed[name] = reason
        return OpResult(ok=not failed, failed=failed)

    async def scale(self, counts: dict[str, int]) -> OpResult:
        async with self.holding(counts, "scale") as held:
            for name, count in counts.items():
                self.scaled[name] = count
                await held[name].scale(count)
        failed = {}
        for name in counts:
            reason = await self.runners[name].wait_condition(Condition.UP)
            if reason:
                failed[name] = reason
        return OpResult(ok=not failed, failed=failed)

    async def stop_all(self) -> None:
        """Stop every service, dependents before what they depend on."""
        async with self.lock:
            runners = dict(self.runners)
            done = {n: asyncio.Event() for n in runners}

            async def stop(name: str) -> None:
                for other, runner in runners.items():
                    if name in runner.plan.depends_on:
                        await done[other].wait()
                async with self.holding([name], "stop"):
                    await runners[name].close()
                done[name].set()

            await asyncio.gather(*(stop(n) for n in runners))
            self.runners.clear()
            self.scaled.clear()

    def status(self) -> list[ServiceStatus]:
        order = list(self.plan.services) if self.plan else []
        names = [n for n in order if n in self.runners]
        names += [n for n in self.runners if n not in names]
        return [self.runners[n].status() for n in names]


async def _bounded(runner: ServiceRunner, condition: Condition) -> str | None:
    """Wait for `condition`, at most the service's up budget; None when met, else why not."""
    try:
        return await runner.wait_condition(condition, runner.up_budget)
    except TimeoutError:
        return f"still {runner.state} after {runner.up_budget:g}s" + (
            f" ({runner.detail})" if runner.detail else "")


async def _relay(sub: Subscription, progress: ProgressSink, names: set[str]) -> None:
    async for event in sub:
        if isinstance(event, StateChanged) and event.service in names:
            progress(Progress(event.service, event.state, event.detail))
