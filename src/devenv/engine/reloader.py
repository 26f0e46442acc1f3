"""Hot reload: what happens to a service when its files change.

One reload at a time per service; changes that arrive during a reload start one more after
it. `replace` (the default) starts new instances, switches to them once healthy and drains
the old ones; if the new ones fail, the old ones keep serving and the failure, with the new
instances' last output, is shown in status, logs and `up --attach`. Every reload is timed by
phase: detect, build, started, healthy, switched.

A watched one-shot job (jobs are watched only when `watch` says so) runs again, once per
batch of changes; a dependent whose files changed in the same batch waits for that run.

A build runs without any lock (it can take minutes and touches no running instance); only
the switch holds the service's own lock, so nothing else waits on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from devenv.engine.events import Alert
from devenv.engine.reconciler import Engine
from devenv.engine.service import ServiceRunner
from devenv.plan import command_argv
from devenv.runtime.base import InstanceSpec
from devenv.wire import Condition, ReloadRecord

BUILD_TIMEOUT = 600.0


@dataclass
class _State:
    running: bool = False
    pending: list[str] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)  # set while not running


@dataclass
class _Attempt:
    """A reload being made: what it reports when done."""

    phases: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    logs: list[str] = field(default_factory=list)


class Reloader:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._states: dict[str, _State] = {}
        self.tasks: set[asyncio.Task[None]] = set()  # reloads in flight

    def trigger(self, service: str, files: list[str], seen: float) -> None:
        runner = self.engine.runners.get(service)
        if runner is None or not runner.plan.watch.enabled:  # (data services: never)
            return
        state = self._states.setdefault(service, _State())
        if state.running:  # coalesce: one more reload after this one, for everything seen
            state.pending = sorted(set(state.pending) | set(files))
            return
        state.running = True
        state.done.clear()
        task = asyncio.create_task(self._loop(service, files, seen))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _loop(self, service: str, files: list[str], seen: float) -> None:
        state = self._states[service]
        try:
            while True:
                await self._reload(service, files, seen)
                if not state.pending:
                    return
                files, state.pending = state.pending, []
                seen = self.engine.ctx.clock()
        finally:
            state.running = False
            state.done.set()

    async def _reload(self, service: str, files: list[str], seen: float) -> None:
        runner = self.engine.runners.get(service)
        if runner is None:
            return
        ctx = self.engine.ctx
        await self._after_jobs(runner)
        action = "rerun" if runner.plan.job else runner.plan.watch.action
        attempt = _Attempt()
        attempt.phases["detect"] = _detect_delay(files)
        t0 = ctx.clock()
        try:
            ok = await self._act(runner, action, attempt)
        except TimeoutError:  # (bounded waits below: a reload that overran them failed)
            ok, attempt.error = False, f"not back within {ctx.clock() - t0:.0f}s"
        attempt.phases["total"] = round(ctx.clock() - t0 + attempt.phases["detect"], 3)
        record = ReloadRecord(at=time.time(), files=[_short(f, ctx.root) for f in files[:20]],
                              changed=len(files), action=action, ok=ok, phases=attempt.phases,
                              error=attempt.error, logs=attempt.logs)
        self._report(runner, record)
        runner.record_reload(record)

    async def _after_jobs(self, runner: ServiceRunner) -> None:
        """Wait for the reruns of one-shot jobs this service depends on (same batch)."""
        for dep in runner.plan.depends_on:
            state, job = self._states.get(dep), self.engine.runners.get(dep)
            if state and state.running and job and job.plan.job:
                with contextlib.suppress(TimeoutError):  # then reload anyway
                    await asyncio.wait_for(state.done.wait(), job.plan.run_timeout + 10)

    async def _act(self, runner: ServiceRunner, action: str, attempt: _Attempt) -> bool:
        ctx, phases = self.engine.ctx, attempt.phases
        if action == "none":
            return True
        if action == "rerun":
            return await self._rerun(runner, attempt)
        if action == "rebuild" and runner.plan.watch.build is not None:
            t0 = ctx.clock()
            spec = InstanceSpec(service=runner.name, replica=0, command=(),
                                env=runner.plan.env, workdir=runner.plan.workdir,
                                wants_port=False)
            result = await runner.runtime.run(spec, command_argv(runner.plan.watch.build),
                                              BUILD_TIMEOUT)
            phases["build"] = round(ctx.clock() - t0, 3)
            if result.code != 0:
                attempt.error = f"build failed (exit code {result.code})"
                attempt.logs = ctx.logs.mask(result.output).splitlines()[-20:]
                return False
        async with self.engine.holding([runner.name], "reload"):
            if self.engine.runners.get(runner.name) is not runner:
                attempt.error = "the service was stopped or replaced meanwhile"
                return False
            if action == "restart":
                t0 = ctx.clock()
                await runner.restart()
                reason = await runner.wait_condition(Condition.UP, 120)
                phases["healthy"] = round(ctx.clock() - t0, 3)
                attempt.error = reason
                return reason is None
            timings: dict[str, float] = {}
            failure: list[str] = []
            ok = await runner.replace(runner.plan, timings, failure)
        phases.update({k: round(v, 3) for k, v in timings.items()})
        if not ok:
            attempt.error = (failure[0] if failure else "the new instance failed") + \
                "; the previous instance keeps serving"
            attempt.logs = failure[1:][-20:]
        return ok

    async def _rerun(self, runner: ServiceRunner, attempt: _Attempt) -> bool:
        ctx, jobs = self.engine.ctx, self.engine.jobs
        async with self.engine.holding([runner.name], "rerun"):
            if self.engine.runners.get(runner.name) is not runner:
                attempt.error = "the job was stopped or replaced meanwhile"
                return False
            jobs.forget(runner.name)
            t0 = ctx.clock()
            await runner.restart()
        reason = await runner.wait_condition(Condition.UP, runner.plan.run_timeout + 10)
        attempt.phases["completed"] = round(ctx.clock() - t0, 3)
        if reason:
            attempt.error = reason
            attempt.logs = [ln.text for ln in ctx.logs.recent(runner.name, 40)
                            if ln.stream != "devenv"][-20:]
            return False
        await self.engine.record_job(runner.plan)
        return True

    def _report(self, runner: ServiceRunner, record: ReloadRecord) -> None:
        logs = self.engine.ctx.logs
        phases = ", ".join(f"{k} {v:.3f}s" for k, v in record.phases.items())
        what = ", ".join(record.files[:3]) + (" …" if record.changed > 3 else "")
        if record.ok:
            logs.add(runner.name, "reload", "devenv", f"reloaded ({record.action}) after "
                     f"{what}: {phases}")
            return
        logs.add(runner.name, "reload", "alert", f"reload failed: {record.error}")
        self.engine.ctx.events.publish(Alert(runner.name, f"reload failed: {record.error}"))
        for line in record.logs:
            logs.add(runner.name, "reload", "alert", f"  {line}")


def _detect_delay(files: list[str]) -> float:
    """From the newest change on disk to now: how long detection took (incl. coalescing)."""
    newest = 0.0
    for path in files:
        try:
            newest = max(newest, os.stat(path).st_mtime)
        except OSError:
            continue
    return round(max(time.time() - newest, 0.0), 3) if newest else 0.0


def _short(path: str, root: Path) -> str:
    try:
        return os.path.relpath(path, root)
    except ValueError:
        return path
