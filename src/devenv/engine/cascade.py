"""Dependents rolled after what they depend on restarts: `depends_on: {db: {restart: true}}`.

A service that keeps connections to a dependency (a PostgreSQL pool) holds dead ones once
the dependency's process is replaced: by `devenv restart db`, a snapshot restore, a data
reset, a failed dataset load put back, or the supervisor restarting it after a crash. Each
service that declared `restart: true` on such a dependency is rolled as `restart` rolls (new
instances healthy before the old ones drain) once the dependency is healthy again, in
dependency order and transitively (its own `restart: true` dependents after it).

Two ways in: an operation runs inside `Cascade.around(names, why)`, which sees which of
those services serve from entirely new instances afterwards and rolls their dependents
before the operation answers (what was rolled goes into its answer); and a watcher of
`StateChanged` events catches a replica the supervisor restarted after a crash while no
operation held its service (what it rolls goes to the logs).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass

from devenv.core.errors import DevenvError
from devenv.engine.events import StateChanged
from devenv.engine.reconciler import Engine
from devenv.engine.service import Replica
from devenv.wire import Condition, OpResult, Rolled, State

COME_BACK_TIMEOUT = 120.0  # for a restarted dependency to be healthy before its dependents roll
ROLL_TIMEOUT = 120.0  # for a rolled dependent to be up again
CRASH = "restarted after a crash"


def to_roll(restart_with: Mapping[str, Sequence[str]], restarted: Iterable[str]) -> list[str]:
    """What to roll after `restarted` restarted: the services with `restart: true` on one of
    them, or on one of those, transitively; in the mapping's order (start order), without
    the restarted themselves (they are new already)."""
    first = set(restarted)
    chosen: set[str] = set()
    grew = True
    while grew:
        grew = False
        for name, deps in restart_with.items():
            if name not in chosen and name not in first and \
                    any(d in first or d in chosen for d in deps):
                chosen.add(name)
                grew = True
    return [n for n in restart_with if n in chosen]


@dataclass
class Outcome:
    """What `Cascade.around` rolled once its operation was done (None: nothing)."""

    rolled: Rolled | None = None


class Cascade:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.tasks: set[asyncio.Task[object]] = set()  # rolls after crashes, in flight
        self._lock = asyncio.Lock()  # one cascade at a time
        self._busy: dict[str, int] = {}  # services inside `around`: their operation rolls
        # each replica's restart count when it was last seen healthy
        self._seen: weakref.WeakKeyDictionary[Replica, int] = weakref.WeakKeyDictionary()
        self._watcher: asyncio.Task[None] | None = None

    # ---- operations

    async def restart(self, names: list[str]) -> OpResult:
        """`devenv restart NAMES`, then their `restart: true` dependents; a dependent that
        could not be rolled fails the restart (it still holds the old connections)."""
        async with self.around(names, "restarted") as outcome:
            result = await self.engine.restart(names)
        rolled = outcome.rolled
        if rolled is None:
            return result
        failed = {**result.failed, **rolled.failed}
        return OpResult(ok=not failed, failed=failed, rolled=rolled)

    @contextlib.asynccontextmanager
    async def around(self, names: Iterable[str], why: str) -> AsyncIterator[Outcome]:
        """Run an operation that may restart `names` (or replace their data); afterwards,
        even when it failed (a failed load was put back), roll the dependents of those that
        now serve from new instances only. Cancelled: nothing is rolled."""
        names = [n for n in dict.fromkeys(names) if n in self.engine.runners]
        before = {n: self._serving(n) for n in names}
        for name in names:
            self._busy[name] = self._busy.get(name, 0) + 1
        outcome = Outcome()
        try:
            try:
                yield outcome
            except Exception as exc:
                outcome.rolled = await self._after(names, before, why)
                if outcome.rolled and isinstance(exc, DevenvError):
                    exc.details.append(outcome.rolled.text())
                raise
            outcome.rolled = await self._after(names, before, why)
        finally:
            for name in names:
                self._busy[name] -= 1
                if not self._busy[name]:
                    del self._busy[name]

    async def _after(self, names: list[str], before: dict[str, frozenset[object]],
                     why: str) -> Rolled | None:
        restarted = []
        for name in names:
            now = self._serving(name)
            if now and not now & before[name]:
                restarted.append(name)
            self._remember(name)
        return await self.roll(restarted, why) if restarted else None

    def _serving(self, name: str) -> frozenset[object]:
        runner = self.engine.runners.get(name)
        if runner is None:
            return frozenset()
        return frozenset(r.instance for r in runner.replicas
                         if r.state == State.HEALTHY and r.instance is not None)

    # ---- rolling

    def _graph(self) -> dict[str, tuple[str, ...]]:
        """Each running service (with replicas) and its `restart: true` dependencies, in
        start order."""
        runners = self.engine.runners
        plan = self.engine.plan
        names = [n for n in (plan.services if plan else ()) if n in runners]
        names += [n for n in runners if n not in names]
        return {n: runners[n].plan.restart_with for n in names if runners[n].desired > 0}

    async def roll(self, restarted: Sequence[str], why: str) -> Rolled | None:
        """Roll the `restart: true` dependents of `restarted` (which `why`), each once the
        services it depends on are healthy again (or rolled), the independent ones at once."""
        async with self._lock:
            graph = self._graph()
            todo = to_roll(graph, restarted)
            if not todo:
                return None
            first = [n for n in graph if n in restarted]
            after = [n for n in first if any(n in graph[t] for t in todo)]
            logs = self.engine.ctx.logs
            for dep in after:
                logs.add(dep, "restart", "devenv", f"{why}: rolling its dependents with "
                         "restart: true: " + ", ".join(t for t in todo if dep in graph[t]))
            done = {n: asyncio.Event() for n in todo}
            failed: dict[str, str] = {}

            async def one(name: str) -> None:
                try:
                    deps = [d for d in graph[name] if d in done or d in first]
                    for dep in deps:
                        if dep in done:
                            await done[dep].wait()
                    blocked = next((d for d in deps if d in failed), None)
                    if blocked is not None:
                        failed[name] = f"not rolled: {blocked} was not"
                        return
                    for dep in deps:
                        if dep in first and (reason := await self._up(dep, COME_BACK_TIMEOUT)):
                            failed[name] = f"not rolled: {dep} is not back ({reason})"
                            return
                    logs.add(name, "restart", "devenv", f"rolling: {', '.join(after)} {why} "
                             f"(depends on {', '.join(deps)} with restart: true)")
                    reason = await self._roll_one(name, why)
                    if reason:
                        failed[name] = f"not rolled after {', '.join(after)} {why}: {reason}"
                finally:
                    done[name].set()

            await asyncio.gather(*(one(n) for n in todo))
            for name, reason in failed.items():
                logs.add(name, "restart", "alert", reason)
            rolled = Rolled(services=[n for n in todo if n not in failed], after=after,
                            failed={n: failed[n] for n in todo if n in failed})
            for dep in after:
                logs.add(dep, "restart", "devenv", f"{why}: {rolled.text()}")
            return rolled

    async def _roll_one(self, name: str, why: str) -> str | None:
        """Roll one service under its lock; None when it is up on new instances."""
        if name not in self.engine.runners:
            return "it is no longer running"
        try:
            async with self.engine.holding([name], f"a roll after a dependency {why}") as held:
                reason = await held[name].roll()
        except DevenvError as exc:
            return exc.message
        finally:
            self._remember(name)
        runner = self.engine.runners.get(name)  # a job reruns: it may take its run_timeout
        limit = max(ROLL_TIMEOUT, runner.plan.run_timeout + 10) if runner and runner.plan.job \
            else ROLL_TIMEOUT
        return reason or await self._up(name, limit)

    async def _up(self, name: str, timeout: float) -> str | None:
        runner = self.engine.runners.get(name)
        if runner is None:
            return "not running"
        try:
            return await runner.wait_condition(Condition.UP, timeout)
        except TimeoutError:
            return f"not up within {timeout:g}s ({runner.state})"

    # ---- after a crash

    def watch(self) -> None:
        """Watch for replicas the supervisor restarts after a crash (once; idempotent)."""
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch(), name="cascade-watch")

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        for task in self.tasks:
            task.cancel()

    async def _watch(self) -> None:
        with self.engine.ctx.events.subscribe(StateChanged) as sub:
            async for event in sub:
                assert isinstance(event, StateChanged)
                if self._crash_restarted(event.service):
                    task: asyncio.Task[object] = asyncio.create_task(
                        self.roll([event.service], CRASH))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)

    def _crash_restarted(self, name: str) -> bool:
        """Whether a replica of `name` that was healthy before is healthy again after the
        supervisor restarted it, while no operation holds the service (an operation that
        restarts it rolls its dependents itself, or `up` replaces what it must)."""
        runner = self.engine.runners.get(name)
        if runner is None:
            return False
        held = name in self._busy or runner.lock.locked() or self.engine.lock.locked()
        found = False
        for rep in runner.replicas:
            if rep.state != State.HEALTHY:
                continue
            seen = self._seen.get(rep)
            if seen is not None and rep.restarts > seen and not held:
                found = True
            self._seen[rep] = rep.restarts
        return found

    def _remember(self, name: str) -> None:
        runner = self.engine.runners.get(name)
        for rep in runner.replicas if runner else []:
            if rep.state == State.HEALTHY:
                self._seen[rep] = rep.restarts
