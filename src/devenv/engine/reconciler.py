"""Reconcile desired state (a Plan) with what runs: compute the convergence plan, then apply it.

Mutations are serialised by one lock, so concurrent CLI calls never interleave. Services start
as soon as their own dependencies meet their conditions, so independent services start in
parallel; a service whose config hash is unchanged is left alone (`up` is idempotent).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from devenv.engine.context import Context, Event
from devenv.engine.service import PortInUse, ServiceRunner
from devenv.plan import Plan, ServicePlan

Progress = Callable[[Event], None]
LOG_TAIL = 15


@dataclass(frozen=True)
class Action:
    service: str
    kind: str  # create | replace | scale | keep | remove
    replicas: int


def convergence_plan(plan: Plan, running: dict[str, ServiceRunner],
                     scaled: dict[str, int]) -> list[Action]:
    """What to do to each service: pure, from desired and actual state."""
    actions = [Action(n, "remove", 0) for n in running if n not in plan.services]
    for name in plan.selected:
        want = plan.services[name]
        replicas = scaled.get(name, want.replicas)
        runner = running.get(name)
        if runner is None:
            actions.append(Action(name, "create", replicas))
        elif runner.plan.config_hash != want.config_hash:
            actions.append(Action(name, "replace", replicas))
        elif runner.desired != replicas or runner.state in ("stopped", "crashed"):
            actions.append(Action(name, "scale", replicas))
        else:
            actions.append(Action(name, "keep", replicas))
    return actions


class Engine:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.runners: dict[str, ServiceRunner] = {}
        self.plan: Plan | None = None
        self.scaled: dict[str, int] = {}
        self.lock = asyncio.Lock()
        self.on_routes_changed: Callable[[], None] = lambda: None

    # ---- up

    async def up(self, plan: Plan, progress: Progress) -> dict[str, Any]:
        async with self.lock:
            t0 = self.ctx.clock()
            actions = convergence_plan(plan, self.runners, self.scaled)
            for act in actions:
                if act.kind == "remove":
                    progress({"service": act.service, "state": "removing"})
                    await self.runners.pop(act.service).close()
            self.plan = plan
            self.ctx.logs.set_secrets(s for p in plan.services.values() for s in p.secrets())
            todo = {a.service: a for a in actions if a.kind != "remove"}
            created = {name: asyncio.Event() for name in todo}
            results: dict[str, dict[str, Any]] = {}
            listen = self.ctx.bus.listen()
            relay = asyncio.create_task(_relay(listen, progress, set(todo)))
            try:
                await asyncio.gather(*(
                    self._bring_up(plan.services[n], todo[n], created, results, progress, t0)
                    for n in todo))
            finally:
                relay.cancel()
                self.ctx.bus.unlisten(listen)
            self.on_routes_changed()
            ok = all(r["ok"] for r in results.values())
            order = [n for n in plan.selected if n in results]
            return {"ok": ok, "services": [results[n] for n in order]}

    async def _bring_up(self, want: ServicePlan, act: Action, created: dict[str, asyncio.Event],
                        results: dict[str, dict[str, Any]], progress: Progress, t0: float) -> None:
        name = want.name
        result: dict[str, Any] = {"name": name, "action": act.kind, "ok": False, "url": want.url,
                                  "started_s": None, "healthy_s": None, "detail": "", "logs": []}
        results[name] = result
        try:
            blocked = await self._await_dependencies(want, created, progress)
            if blocked:
                result.update(state="blocked", detail=blocked)
                progress({"service": name, "state": "blocked", "detail": blocked})
                return
            runner = self.runners.get(name)
            if act.kind != "keep":
                result["started_s"] = round(self.ctx.clock() - t0, 3)
                progress({"service": name, "state": "starting", "action": act.kind})
            if runner is None:
                runner = ServiceRunner(want, self.ctx)
                try:
                    await runner.open()
                except PortInUse as exc:
                    await runner.close()
                    result.update(state="crashed", detail=str(exc))
                    progress({"service": name, "state": "crashed", "detail": str(exc)})
                    return
                self.runners[name] = runner
            created[name].set()
            if act.kind == "replace" and not await runner.replace(want):
                return self._failed(runner, result, progress, "new instance failed; the "
                                    "previous one keeps serving")
            if act.kind in ("create", "replace", "scale"):
                await runner.scale(act.replicas)
            reason = await runner.wait_condition("up")
            if reason:
                return self._failed(runner, result, progress, reason)
            if act.kind != "keep":
                result["healthy_s"] = round(self.ctx.clock() - t0, 3)
            result.update(ok=True, state=runner.state)
            progress({"service": name, "state": runner.state, "action": act.kind,
                      "healthy_s": result["healthy_s"]})
        finally:
            created[name].set()

    def _failed(self, runner: ServiceRunner, result: dict[str, Any], progress: Progress,
                reason: str) -> None:
        lines = [ln.text for ln in self.ctx.logs.recent(runner.name, LOG_TAIL * 4)
                 if ln.stream != "devenv"][-LOG_TAIL:]
        result.update(state=runner.state, detail=reason, logs=lines)
        progress({"service": runner.name, "state": "failed", "detail": reason})

    async def _await_dependencies(self, want: ServicePlan, created: dict[str, asyncio.Event],
                                  progress: Progress) -> str | None:
        for dep, condition in want.depends_on.items():
            if dep in created:
                await created[dep].wait()
            runner = self.runners.get(dep)
            if runner is None:
                return f"dependency '{dep}' is not running"
            if runner.condition_state(condition) == "":
                progress({"service": want.name, "state": "waiting",
                          "detail": f"for {dep} ({condition})"})
            reason = await runner.wait_condition(condition)
            if reason:
                return f"dependency '{dep}' failed: {reason}"
        return None

    # ---- other mutations

    async def restart(self, names: list[str]) -> dict[str, Any]:
        async with self.lock:
            order = [n for n in (self.plan.selected if self.plan else []) if n in names]
            order += [n for n in names if n not in order]
            failed = {}
            for name in order:
                runner = self.runners[name]
                await runner.restart()
                reason = await runner.wait_condition("up")
                if reason:
                    failed[name] = reason
            return {"ok": not failed, "failed": failed}

    async def scale(self, counts: dict[str, int]) -> dict[str, Any]:
        async with self.lock:
            failed = {}
            for name, count in counts.items():
                self.scaled[name] = count
                await self.runners[name].scale(count)
            for name in counts:
                reason = await self.runners[name].wait_condition("up")
                if reason:
                    failed[name] = reason
            return {"ok": not failed, "failed": failed}

    async def stop_all(self) -> None:
        """Stop every service, dependents before what they depend on."""
        async with self.lock:
            runners = dict(self.runners)
            done = {n: asyncio.Event() for n in runners}

            async def stop(name: str) -> None:
                for other, runner in runners.items():
                    if name in runner.plan.depends_on:
                        await done[other].wait()
                await runners[name].close()
                done[name].set()

            await asyncio.gather(*(stop(n) for n in runners))
            self.runners.clear()
            self.scaled.clear()

    def status(self) -> list[dict[str, Any]]:
        order = list(self.plan.services) if self.plan else []
        names = [n for n in order if n in self.runners]
        names += [n for n in self.runners if n not in names]
        return [self.runners[n].status() for n in names]


async def _relay(queue: asyncio.Queue[Event], progress: Progress, names: set[str]) -> None:
    while True:
        event = await queue.get()
        if event.get("service") in names:
            progress(event)
