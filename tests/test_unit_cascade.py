"""Dependents with `restart: true` rolled after their dependency restarts, on a fake runtime
and a virtual clock: exactly those, in dependency order, once the dependency is healthy."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from devenv.engine.cascade import Cascade, to_roll
from devenv.engine.reconciler import Engine
from devenv.plan import ServicePlan
from devenv.wire import Rolled
from fakes import FakeRuntime, crash, make_context, make_plan, plan_of, ready, run_virtual


def on(name: str, *restart_with: str, depends: tuple[str, ...] = ()) -> ServicePlan:
    """A service depending (healthy) on `restart_with` with restart: true, and on `depends`
    without."""
    plan = make_plan(name, depends_on={d: "healthy" for d in (*restart_with, *depends)})
    return replace(plan, restart_with=restart_with)


SHOP = plan_of(on("db"), on("cache"), on("api", "db", depends=("cache",)), on("worker", "db"),
               on("web", "api"), on("report", depends=("db",)), on("mailer", "cache"))


async def until(check: Callable[[], bool], timeout: float = 300.0) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.05)
    await asyncio.wait_for(poll(), timeout)


def starts(runtime: FakeRuntime, name: str) -> list[float]:
    return runtime.start_times(name)


def test_what_rolls_is_the_restart_true_dependents_transitively_in_start_order() -> None:
    graph = {n: p.restart_with for n, p in SHOP.services.items()}
    assert to_roll(graph, ["db"]) == ["api", "worker", "web"]  # not report (no restart: true)
    assert to_roll(graph, ["cache"]) == ["mailer"]  # api depends on cache without it
    assert to_roll(graph, ["db", "api"]) == ["worker", "web"]  # api restarted already
    assert to_roll(graph, ["web", "report"]) == []


def test_a_dependency_restart_rolls_its_dependents_after_it_is_healthy_in_order(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.script("db", ready(), ready(after=5.0))  # its restart takes 5 s to be healthy
        runtime.script("api", ready(), ready(after=2.0))
        engine = Engine(make_context(tmp_path, runtime))
        assert (await engine.up(SHOP, lambda _: None)).ok
        old_api = runtime.live("api")[0]
        cascade = Cascade(engine)

        result = await cascade.restart(["db"])

        assert result.ok, result.failed
        assert result.rolled == Rolled(services=["api", "worker", "web"], after=["db"])
        assert result.rolled.text() == "rolled api, worker, web (depend on db with restart: true)"
        for name in ("db", "api", "worker", "web"):
            assert len(starts(runtime, name)) == 2, name
        for name in ("cache", "report", "mailer"):
            assert len(starts(runtime, name)) == 1, name
        db_healthy = starts(runtime, "db")[1] + 5.0
        assert starts(runtime, "api")[1] >= db_healthy
        assert starts(runtime, "worker")[1] >= db_healthy
        assert starts(runtime, "web")[1] >= starts(runtime, "api")[1] + 2.0  # api healthy
        # rolled with no gap: the old api served until the new one was healthy
        assert old_api.exited_at is not None
        assert old_api.exited_at >= starts(runtime, "api")[1] + 2.0
        assert all(engine.runners[n].ready == 1 for n in SHOP.services)
        lines = [ln.text for ln in engine.ctx.logs.recent("db", 20)]
        assert "restarted: rolled api, worker, web (depend on db with restart: true)" in lines
        api_lines = [ln.text for ln in engine.ctx.logs.recent("api", 20)]
        assert "rolling: db restarted (depends on db with restart: true)" in api_lines
        await engine.stop_all()

    run_virtual(scenario())


def test_a_crash_restart_of_the_dependency_rolls_its_dependents(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        # healthy, crashes at 30 s, comes back healthy 3 s after the supervisor restarts it
        runtime.script("db", crash(after=30.0, ready_after=0.0), ready(after=3.0))
        runtime.script("api", ready(), ready(after=1.0))
        engine = Engine(make_context(tmp_path, runtime))
        cascade = Cascade(engine)
        cascade.watch()
        assert (await engine.up(SHOP, lambda _: None)).ok

        await until(lambda: len(starts(runtime, "web")) == 2 and engine.runners["web"].ready)
        await until(lambda: not cascade.tasks)

        db_healthy = starts(runtime, "db")[1] + 3.0
        assert min(starts(runtime, n)[1] for n in ("api", "worker")) >= db_healthy
        assert starts(runtime, "web")[1] >= starts(runtime, "api")[1] + 1.0  # api healthy
        for name in ("cache", "report", "mailer"):
            assert len(starts(runtime, name)) == 1, name
        lines = [ln.text for ln in engine.ctx.logs.recent("db", 20)]
        assert ("restarted after a crash: rolled api, worker, web (depend on db with "
                "restart: true)") in lines
        cascade.stop()
        await engine.stop_all()

    run_virtual(scenario())


def test_an_operation_that_replaces_the_data_rolls_dependents_once_it_is_back(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.script("db", ready(), ready(after=4.0))
        engine = Engine(make_context(tmp_path, runtime))
        cascade = Cascade(engine)
        cascade.watch()
        assert (await engine.up(SHOP, lambda _: None)).ok

        async with cascade.around(["db", "cache"], "restored from snapshot s") as outcome, \
                engine.holding(["db"], "restore") as held, engine.offline(held):
            pass  # (a restore swaps the data here)
        assert outcome.rolled == Rolled(services=["api", "worker", "web"], after=["db"])
        assert starts(runtime, "api")[1] >= starts(runtime, "db")[1] + 4.0

        async with cascade.around(["db", "cache"], "a load that changed nothing") as outcome:
            pass
        assert outcome.rolled is None
        await asyncio.sleep(60)
        assert not cascade.tasks  # and the watcher took the restore for no crash
        assert len(starts(runtime, "api")) == 2
        cascade.stop()
        await engine.stop_all()

    run_virtual(scenario())


def test_a_dependent_that_fails_to_roll_keeps_serving_and_fails_the_restart(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.script("api", ready(), crash(after=0.5))  # its new instance crashes
        engine = Engine(make_context(tmp_path, runtime))
        assert (await engine.up(SHOP, lambda _: None)).ok
        old_api = runtime.live("api")[0]

        result = await Cascade(engine).restart(["db"])

        assert not result.ok
        assert result.rolled is not None and result.rolled.services == ["worker"]
        assert "exited with code 1" in result.failed["api"]
        assert result.failed["web"] == "not rolled: api was not"
        assert old_api.alive and engine.runners["api"].ready == 1
        assert len(starts(runtime, "web")) == 1
        await engine.stop_all()

    run_virtual(scenario())
