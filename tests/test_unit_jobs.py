"""One-shot jobs on a fake runtime and a virtual clock: their states, their bound, and `up`
leaving a completed one alone (issue 9: items 1, 10, 14); settings that `up` changes on
running instances (item 9)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from devenv.config.model import Watch
from devenv.engine.reconciler import Engine
from devenv.engine.reloader import Reloader
from devenv.plan import ServicePlan
from devenv.wire import Progress
from fakes import (
    FakeRuntime,
    advance,
    job,
    make_context,
    make_plan,
    never_ready,
    now,
    plan_of,
    ready,
    run_virtual,
)


def a_job(name: str = "build", **kw: object) -> ServicePlan:
    """A one-shot (restart: no, no port) working in its own folder of the project."""
    return replace(make_plan(name, restart="no", health=None), workdir=name, **kw)


def test_a_job_is_running_then_completed_with_its_exit_code(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.script("build", job(after=4.0))
        engine = Engine(make_context(tmp_path, runtime))
        seen: list[Progress] = []
        result = await engine.up(plan_of(a_job()), seen.append)
        assert result.ok
        assert (result.services[0].state, result.services[0].detail) == \
            ("completed", "exit code 0 after 4.0s")
        assert "running" in [p.state for p in seen]  # never "healthy"
        assert "healthy" not in [p.state for p in seen]
        status = engine.status()[0]
        assert (status.state, status.detail, status.job) == \
            ("completed", "exit code 0 after 4.0s", True)
        await engine.stop_all()

    run_virtual(scenario())


def test_a_job_that_never_ends_fails_up_after_its_run_timeout(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.script("build", never_ready())  # runs forever
        engine = Engine(make_context(tmp_path, runtime))
        web = make_plan("web", depends_on={"build": "completed"})
        result = await engine.up(plan_of(a_job(run_timeout=5.0), web), lambda _: None)
        assert now() == 5.0  # bounded: at the job's run_timeout, not later
        by_name = {r.name: r for r in result.services}
        assert not result.ok
        assert by_name["build"].state == "failed"
        assert "did not finish within 5s (run_timeout)" in by_name["build"].detail
        assert by_name["web"].state == "blocked"
        assert runtime.stops == ["build-1#1"]  # it was stopped, not left running
        assert [s.service for s in runtime.starts] == ["build"]
        await engine.stop_all()

    run_virtual(scenario())


def test_a_dependency_on_a_job_waits_for_it_to_complete_not_to_start(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.script("migrate", job(after=3.0))
        engine = Engine(make_context(tmp_path, runtime))
        api = make_plan("api", depends_on={"migrate": "healthy"})  # `depends_on: [migrate]`
        result = await engine.up(plan_of(a_job("migrate"), api), lambda _: None)
        assert result.ok
        starts = {s.service: s.at for s in runtime.starts}
        assert starts["api"] == 3.0
        await engine.stop_all()

    run_virtual(scenario())


def test_a_completed_job_is_not_rerun_until_its_files_change_or_rerun_says(
        tmp_path: Path) -> None:
    (tmp_path / ".devenv").mkdir()  # where the engine keeps what it remembers
    (tmp_path / "build").mkdir()
    source = tmp_path / "build" / "main.ts"
    source.write_text("one")

    async def up(rerun: tuple[str, ...] = ()) -> tuple[str, int]:
        runtime = FakeRuntime()
        runtime.script("build", job(after=1.0))
        engine = Engine(make_context(tmp_path, runtime))  # a new engine: after `stop`
        result = await engine.up(plan_of(a_job()), lambda _: None, rerun)
        await engine.stop_all()
        assert result.ok
        return result.services[0].detail, len(runtime.starts)

    async def scenario() -> None:
        assert await up() == ("exit code 0 after 1.0s", 1)
        detail, starts = await up()
        assert starts == 0
        assert detail.startswith("completed earlier; nothing it depends on changed")
        assert "devenv up --rerun build" in detail
        assert (await up(("build",)))[1] == 1
        source.write_text("two!")  # a file of the job changed: it runs
        assert (await up())[1] == 1
        assert (await up())[1] == 0

    run_virtual(scenario())


def test_a_failed_job_runs_again_on_the_next_up(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.script("build", job(after=1.0, code=2), job(after=1.0))
        engine = Engine(make_context(tmp_path, runtime))
        first = await engine.up(plan_of(a_job()), lambda _: None)
        assert not first.ok and first.services[0].detail == "exited with code 2 after 1.0s"
        second = await engine.up(plan_of(a_job()), lambda _: None)
        assert second.ok and second.services[0].state == "completed"
        assert len(runtime.starts) == 2
        await engine.stop_all()

    run_virtual(scenario())


def test_changing_watch_on_a_running_engine_takes_effect_without_new_instances(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.script("api", ready())
        engine = Engine(make_context(tmp_path, runtime))
        await engine.up(plan_of(make_plan("api")), lambda _: None)
        off = make_plan("api", watch=Watch(enabled=False))
        result = await engine.up(plan_of(off), lambda _: None)
        assert result.services[0].action == "update"
        assert engine.runners["api"].plan.watch.enabled is False
        assert engine.status()[0].watch == "off"
        Reloader(engine).trigger("api", [str(tmp_path / "a.py")], now())
        await advance(10.0)
        assert len(runtime.starts) == 1  # no new instance: neither for the update nor a reload
        again = await engine.up(plan_of(off), lambda _: None)
        assert again.services[0].action == "keep"
        await engine.stop_all()

    run_virtual(scenario())


def test_a_watched_job_reruns_on_a_change_and_its_dependent_waits_for_it(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.script("build", job(after=1.0), job(after=4.0))
        runtime.script("web", ready())
        engine = Engine(make_context(tmp_path, runtime))
        build = a_job(watch=Watch(enabled=True, action="replace"))
        web = make_plan("web", depends_on={"build": "completed"})
        assert (await engine.up(plan_of(build, web), lambda _: None)).ok
        reloader = Reloader(engine)
        changed = now()
        reloader.trigger("build", [str(tmp_path / "build" / "x.ts")], changed)
        reloader.trigger("web", [str(tmp_path / "build" / "x.ts")], changed)
        await advance(30.0)
        builds, webs = runtime.start_times("build"), runtime.start_times("web")
        assert len(builds) == 2  # one run per change
        assert len(webs) == 2 and webs[1] >= builds[1] + 4.0  # after the rerun completed
        lines = [ln.text for ln in engine.ctx.logs.recent("build", 50) if ln.replica == "reload"]
        assert lines and lines[0].startswith("reloaded (rerun)")
        await engine.stop_all()

    run_virtual(scenario())


def test_a_dependent_reload_still_happens_when_a_jobs_reruns_outlast_its_wait(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.script("build", job(after=1.0), job(after=18.0), job(after=18.0))
        runtime.script("web", ready())
        engine = Engine(make_context(tmp_path, runtime))
        build = a_job(watch=Watch(enabled=True, action="replace"), run_timeout=20.0)
        web = make_plan("web", depends_on={"build": "completed"})
        assert (await engine.up(plan_of(build, web), lambda _: None)).ok
        reloader = Reloader(engine)
        file = str(tmp_path / "build" / "x.ts")
        reloader.trigger("build", [file], now())
        reloader.trigger("web", [file], now())
        await advance(1.0)
        reloader.trigger("build", [file], now())  # a second run queued: 36 s in all
        await advance(120.0)
        assert len(runtime.start_times("build")) == 3
        assert engine.runners["web"].reloads == 1  # it waited 30 s at most, then reloaded
        assert engine.runners["web"].last_reload is not None
        assert engine.runners["web"].last_reload.ok
        await engine.stop_all()

    run_virtual(scenario())


def test_a_running_engine_reruns_a_completed_job_whose_files_changed_not_its_own_output(
        tmp_path: Path) -> None:
    (tmp_path / ".devenv").mkdir()
    (tmp_path / "build").mkdir()
    source = tmp_path / "build" / "main.ts"
    source.write_text("one")

    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.script("build", job(after=1.0))
        engine = Engine(make_context(tmp_path, runtime))
        out = tmp_path / "build" / "out.js"  # what the job writes while it runs
        asyncio.get_running_loop().call_later(0.5, out.write_text, "built")
        assert (await engine.up(plan_of(a_job()), lambda _: None)).ok
        assert out.exists() and len(runtime.starts) == 1
        again = await engine.up(plan_of(a_job()), lambda _: None)
        assert (again.services[0].action, len(runtime.starts)) == ("keep", 1)
        source.write_text("two!")  # edited while not watched: the next `up` runs it
        third = await engine.up(plan_of(a_job()), lambda _: None)
        assert (third.services[0].action, len(runtime.starts)) == ("replace", 2)
        await engine.stop_all()

    run_virtual(scenario())
