"""The engine's `up` on a fake runtime and a virtual clock: dependency order and failure."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from devenv.engine.reconciler import Engine
from devenv.wire import Progress
from fakes import FakeRuntime, Script, crash, make_context, make_plan, plan_of, ready, run_virtual


def test_a_dependent_never_starts_when_its_dependency_fails_to_start(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.script("db", crash(after=0.1, code=1))
        engine = Engine(make_context(tmp_path, runtime))
        seen: list[Progress] = []
        result = await engine.up(plan_of(make_plan("db"), make_plan("api", depends_on={
            "db": "healthy"})), seen.append)
        by_name = {r.name: r for r in result.services}
        assert not result.ok
        assert by_name["api"].state == "blocked"
        assert "dependency 'db' failed" in by_name["api"].detail
        assert [s.service for s in runtime.starts] == ["db"] * 3  # START_ATTEMPTS, no api
        await engine.stop_all()

    run_virtual(scenario())


def test_a_dependent_starts_only_once_its_dependency_is_healthy(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.script("db", ready(after=5.0))
        engine = Engine(make_context(tmp_path, runtime))
        result = await engine.up(plan_of(make_plan("db"), make_plan("api", depends_on={
            "db": "healthy"})), lambda _: None)
        assert result.ok
        starts = {s.service: s.at for s in runtime.starts}
        assert starts["api"] >= starts["db"] + 5.0
        await engine.stop_all()

    run_virtual(scenario())


def test_a_failed_one_shot_fails_its_dependents_at_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.script("job", crash(after=0.5, code=1))
        engine = Engine(make_context(tmp_path, runtime))
        job = make_plan("job", restart="no", health=None)
        web = make_plan("web", depends_on={"job": "completed"})
        result = await asyncio.wait_for(engine.up(plan_of(job, web), lambda _: None), 60)
        by_name = {r.name: r for r in result.services}
        assert not result.ok
        assert engine.runners["job"].state == "failed"
        assert by_name["web"].state == "blocked"
        assert "dependency 'job' failed: exited with code 1" in by_name["web"].detail
        assert [s.service for s in runtime.starts] == ["job"]
        await engine.stop_all()

    run_virtual(scenario())


def test_up_does_not_wait_on_a_service_that_was_up_once_and_now_crash_loops(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.script("api", *[crash(after=3.0, code=1, ready_after=0.0)] * 30)
        engine = Engine(make_context(tmp_path, runtime))
        assert (await engine.up(plan_of(make_plan("api")), lambda _: None)).ok
        await asyncio.sleep(40.0)  # healthy for 3 s each time, then a crash: a crash loop
        began = asyncio.get_running_loop().time()
        again = await asyncio.wait_for(engine.up(plan_of(make_plan("api")), lambda _: None),
                                       600)
        assert not again.ok
        assert "crash loop" in again.services[0].detail
        assert asyncio.get_running_loop().time() - began < 5.0
        await engine.stop_all()

    run_virtual(scenario())


def test_up_gives_up_on_a_service_that_stays_unhealthy_after_its_budget(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.script("api", Script(ready_after=0.0, unhealthy_after=5.0))
        engine = Engine(make_context(tmp_path, runtime))
        assert (await engine.up(plan_of(make_plan("api")), lambda _: None)).ok
        await asyncio.sleep(60.0)  # its health check fails from 5 s on: unhealthy, running
        assert engine.runners["api"].state == "unhealthy"
        began = asyncio.get_running_loop().time()
        again = await asyncio.wait_for(engine.up(plan_of(make_plan("api")), lambda _: None),
                                       100_000)
        waited = asyncio.get_running_loop().time() - began
        runner = engine.runners["api"]
        assert not again.ok
        assert waited == pytest.approx(runner.up_budget, abs=1.0)
        assert again.services[0].detail.startswith(f"still unhealthy after {runner.up_budget:g}s")
        await engine.stop_all()

    run_virtual(scenario())
