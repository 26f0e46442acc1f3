"""Unit tests of hot-reload coalescing (Reloader) with a real Engine and Context on a
FakeRuntime and virtual time: one reload at a time per service, and changes seen during a
reload give exactly one follow-up reload with all their files."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from devenv.config.model import Watch
from devenv.engine.reconciler import Engine
from devenv.engine.reloader import Reloader
from devenv.plan import ServicePlan
from devenv.wire import Progress
from fakes import (
    FakeRuntime,
    advance,
    crash,
    make_context,
    make_plan,
    now,
    plan_of,
    ready,
    run_virtual,
)


def ignore(event: Progress) -> None:
    pass


async def with_engine(root: Path, runtime: FakeRuntime, *services: ServicePlan,
                      body: Callable[[Engine, Reloader], Awaitable[None]]) -> None:
    """`up` the services (no ports: nothing is bound), run `body`, stop everything."""
    engine = Engine(make_context(root, runtime))
    result = await engine.up(plan_of(*services), ignore)
    assert result.ok, result
    try:
        await body(engine, Reloader(engine))
    finally:
        await engine.stop_all()


def reload_lines(engine: Engine, service: str) -> list[str]:
    """What `devenv logs` shows about reloads: one line per reload (and its failure lines)."""
    return [ln.text for ln in engine.ctx.logs.recent(service, 100) if ln.replica == "reload"]


def test_changes_during_a_reload_give_exactly_one_follow_up_with_all_their_files(
        tmp_path: Path) -> None:
    runtime = FakeRuntime()

    async def body(engine: Engine, reloader: Reloader) -> None:
        root = engine.ctx.root
        runtime.script("api", ready(after=2.0))  # each reload takes 2 s to become healthy
        reloader.trigger("api", [str(root / "a.py")], now())
        await advance(0.5)
        # three more changes while that reload runs (c.py seen twice)
        reloader.trigger("api", [str(root / "c.py")], now())
        reloader.trigger("api", [str(root / "b.py"), str(root / "c.py")], now())
        reloader.trigger("api", [str(root / "d.py")], now())
        await advance(30.0)
        lines = reload_lines(engine, "api")
        assert len(lines) == 2, lines
        assert lines[0].startswith("reloaded (replace) after a.py:")
        assert lines[1].startswith("reloaded (replace) after b.py, c.py, d.py:")
        assert engine.runners["api"].reloads == 2
        starts = runtime.start_times("api")
        assert len(starts) == 3  # the first start, then one instance per reload
        # one reload at a time: the follow-up started once the first one's instance was healthy
        assert starts[2] >= starts[1] + 2.0
        assert [i.id for i in runtime.live("api")] == ["api-1#3"]

    run_virtual(with_engine(tmp_path, runtime, make_plan("api"), body=body))


def test_a_change_after_the_reloads_settled_starts_a_new_reload(tmp_path: Path) -> None:
    async def body(engine: Engine, reloader: Reloader) -> None:
        root = engine.ctx.root
        reloader.trigger("api", [str(root / "a.py")], now())
        reloader.trigger("api", [str(root / "b.py")], now())  # coalesced into a follow-up
        await advance(10.0)
        assert engine.runners["api"].reloads == 2
        reloader.trigger("api", [str(root / "c.py")], now())
        await advance(10.0)
        assert engine.runners["api"].reloads == 3

    run_virtual(with_engine(tmp_path, FakeRuntime(), make_plan("api"), body=body))


def test_a_trigger_for_a_service_that_is_not_running_does_nothing(tmp_path: Path) -> None:
    runtime = FakeRuntime()

    async def body(engine: Engine, reloader: Reloader) -> None:
        reloader.trigger("worker", [str(engine.ctx.root / "worker.py")], now())
        await advance(10.0)
        assert len(runtime.starts) == 1  # only api's first start
        assert reload_lines(engine, "worker") == reload_lines(engine, "api") == []

    run_virtual(with_engine(tmp_path, runtime, make_plan("api"), body=body))


def test_a_trigger_for_a_service_with_watch_disabled_does_nothing(tmp_path: Path) -> None:
    runtime = FakeRuntime()

    async def body(engine: Engine, reloader: Reloader) -> None:
        reloader.trigger("api", [str(engine.ctx.root / "a.py")], now())
        await advance(10.0)
        assert len(runtime.starts) == 1
        assert engine.runners["api"].reloads == 0
        assert reload_lines(engine, "api") == []

    plan = make_plan("api", watch=Watch(enabled=False))
    run_virtual(with_engine(tmp_path, runtime, plan, body=body))


def test_a_failed_reload_is_reported_and_the_old_instance_keeps_serving(
        tmp_path: Path) -> None:
    runtime = FakeRuntime()

    async def body(engine: Engine, reloader: Reloader) -> None:
        runtime.script("api", crash(after=0.5, code=1, output=("ImportError: no module foo",)))
        reloader.trigger("api", [str(engine.ctx.root / "a.py")], now())
        await advance(10.0)
        assert reload_lines(engine, "api") == [
            "reload failed: exited with code 1; the previous instance keeps serving",
            "  ImportError: no module foo"]
        assert [i.id for i in runtime.live("api")] == ["api-1#1"]
        assert engine.runners["api"].state == "healthy"

    run_virtual(with_engine(tmp_path, runtime, make_plan("api"), body=body))


def test_a_failed_build_starts_no_new_instance(tmp_path: Path) -> None:
    runtime = FakeRuntime()

    async def body(engine: Engine, reloader: Reloader) -> None:
        runtime.build_code, runtime.build_takes = 2, 3.0
        reloader.trigger("api", [str(engine.ctx.root / "main.go")], now())
        await advance(10.0)
        assert reload_lines(engine, "api") == ["reload failed: build failed (exit code 2)",
                                               "  build exited with 2"]  # and its output
        assert len(runtime.starts) == 1
        builds = [argv for name, argv in runtime.commands if name == "api-0"]
        assert builds == [("/bin/sh", "-c", "go build ./...")]

    plan = make_plan("api", watch=Watch(action="rebuild", build="go build ./..."))
    run_virtual(with_engine(tmp_path, runtime, plan, body=body))
