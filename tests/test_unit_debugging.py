"""The engine's side of `devenv debug` (engine/debugging.py): the folder debugpy is imported
from, root, the port's messages; and sessions on a FakeRuntime with a virtual clock (a start
that never becomes healthy, a config that can no longer be debugged, `scale` meanwhile)."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import free_ports
from devenv.config.model import Debug
from devenv.core.errors import DevenvError, UsageError
from devenv.engine.debugging import (
    check_free,
    debug_off,
    debug_on,
    debugpy_path,
    deferred_counts,
    refuse_root,
)
from devenv.engine.events import Alert
from devenv.engine.reconciler import Engine
from devenv.engine.service import ServiceRunner
from fakes import (
    FakeRuntime,
    health_check,
    make_context,
    make_plan,
    never_ready,
    plan_of,
    ready,
    run_virtual,
)

ROOT = os.geteuid() == 0


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# ---- the folder put first on a debugged service's PYTHONPATH


def test_a_planted_file_in_the_debugpy_folder_does_not_survive(tmp_path: Path) -> None:
    folder = tmp_path / ".devenv/run/debugpy"
    folder.mkdir(parents=True)
    os.chmod(folder, 0o777)  # anyone could have written here
    (folder / "sitecustomize.py").write_text("import os; os.system('id > /tmp/owned')\n")
    assert debugpy_path(tmp_path) == str(folder)
    assert os.listdir(folder) == ["debugpy"] and (folder / "debugpy").is_symlink()
    assert _mode(folder) == 0o700 and _mode(folder.parent) == 0o700


def test_missing_parents_are_made_owner_only(tmp_path: Path) -> None:
    debugpy_path(tmp_path)
    for made in (".devenv", ".devenv/run", ".devenv/run/debugpy"):
        assert _mode(tmp_path / made) == 0o700, made


def test_a_debugpy_folder_that_is_a_link_is_replaced_and_its_target_left_alone(
        tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "sitecustomize.py").write_text("")
    (tmp_path / ".devenv/run").mkdir(parents=True)
    (tmp_path / ".devenv/run/debugpy").symlink_to(elsewhere)
    folder = Path(debugpy_path(tmp_path))
    assert not folder.is_symlink() and os.listdir(folder) == ["debugpy"]
    assert os.listdir(elsewhere) == ["sitecustomize.py"]  # (removed the link, not followed)


@pytest.mark.skipif(not ROOT, reason="needs root to give the folder to another user")
def test_a_run_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    run = tmp_path / ".devenv/run"
    run.mkdir(parents=True)
    os.chown(run, 65534, 65534)
    with pytest.raises(DevenvError, match="belongs to uid 65534") as caught:
        debugpy_path(tmp_path)
    assert "remove" in (caught.value.hint or "")
    assert not (run / "debugpy").exists()


# ---- root, and the port


@pytest.mark.skipif(not ROOT, reason="runs as root only where the tests run as root")
def test_debugging_as_root_is_refused_unless_allowed() -> None:
    with pytest.raises(UsageError) as caught:
        refuse_root("api", allow_root=False)
    assert caught.value.exit_code == 2
    assert "code execution as root to anyone on this machine" in caught.value.message
    assert "--allow-root" in (caught.value.hint or "")
    assert "dev container" in (caught.value.hint or "")
    refuse_root("api", allow_root=True)


def test_a_taken_debug_port_names_the_port_its_holder_and_the_setting() -> None:
    (port,) = free_ports(1)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        with pytest.raises(UsageError) as caught:
            check_free("api", port, declared=False)
    message, hint = caught.value.message, caught.value.hint or ""
    assert f"debug port {port} (127.0.0.1:{port}" in message
    assert f"held by pid {os.getpid()}" in message and "nothing was changed" in message
    assert f"stop pid {os.getpid()}" in hint and "services.api.debug.port" in hint


# ---- sessions on a fake runtime


def _engine_with(tmp_path: Path, runtime: FakeRuntime, replicas: int = 2,
                 start_period: float = 5.0) -> tuple[Engine, ServiceRunner]:
    engine = Engine(make_context(tmp_path, runtime))
    return engine, ServiceRunner(make_plan("api", command=("python", "app.py"),
                                           replicas=replicas,
                                           health=health_check(start_period=start_period)),
                                 engine.ctx)


async def _up(tmp_path: Path, runtime: FakeRuntime, replicas: int = 2
              ) -> tuple[Engine, ServiceRunner]:
    engine, runner = _engine_with(tmp_path, runtime, replicas)
    result = await engine.up(plan_of(runner.plan), lambda _: None)
    assert result.ok
    return engine, engine.runners["api"]


def test_a_debugged_instance_never_healthy_is_answered_after_start_period_and_kept(
        tmp_path: Path) -> None:
    (port,) = free_ports(1)

    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.script("api", ready(), ready(), never_ready())  # the debugged one: never
        engine, runner = await _up(tmp_path, runtime)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        result = await asyncio.wait_for(
            debug_on(engine, tmp_path, runner, Debug(port=port), wait=False, allow_root=True),
            60)
        assert loop.time() - t0 < 10  # start_period is 5 s
        assert result.ok and result.debug is not None
        assert "started; not healthy yet after 5s (start_period)" in (result.detail or "")
        assert not runner.lock.locked()  # other commands on api go on
        (rep,) = runner.replicas
        assert rep.debugged and rep.instance is not None and rep.instance.alive
        assert runner.debug is not None and "kept: under a debugger" in runner.detail
        scaled = await asyncio.wait_for(engine.scale({"api": 3}), 5)  # not waited for either
        assert scaled.ok and len(runner.replicas) == 1 and runner.debug.replicas == 3
        await engine.stop_all()

    run_virtual(scenario())


def test_a_config_that_can_no_longer_be_debugged_ends_the_session(tmp_path: Path) -> None:
    (port,) = free_ports(1)

    async def scenario() -> None:
        runtime = FakeRuntime()
        engine, runner = await _up(tmp_path, runtime)
        alerts = engine.ctx.events.subscribe(Alert)
        await debug_on(engine, tmp_path, runner, Debug(port=port), wait=False, allow_root=True)
        assert len(runner.replicas) == 1
        original = runner.plan
        changed = replace(original, command=("./server",), config_hash="other")
        async with engine.holding(["api"], "up"):  # as `up` or a reload would
            assert await runner.replace(changed)
        assert runner.debug is None
        assert [r.debugged for r in runner.replicas] == [False, False]  # its 2 replicas
        alert = await asyncio.wait_for(alerts.get(), 1)
        assert isinstance(alert, Alert) and alert.text.startswith("debugging ended: ")
        assert "services.api.debug: {language: python}" not in alert.text  # (the why only)

        # the same through a restart (a reload's `restart` action): the kept count comes back
        runner.plan = original
        await debug_on(engine, tmp_path, runner, Debug(port=port), wait=False, allow_root=True)
        runner.plan = changed
        async with engine.holding(["api"], "reload"):
            await runner.restart()
        assert runner.debug is None and runner.desired == 2
        assert [r.debugged for r in runner.replicas] == [False, False]
        await engine.stop_all()

    run_virtual(scenario())


def test_scale_while_debugged_says_when_the_count_applies_and_off_applies_it(
        tmp_path: Path) -> None:
    (port,) = free_ports(1)

    async def scenario() -> None:
        runtime = FakeRuntime()
        engine, runner = await _up(tmp_path, runtime)
        await debug_on(engine, tmp_path, runner, Debug(port=port), wait=False, allow_root=True)
        result = await engine.scale({"api": 3})
        assert result.ok and len(runner.replicas) == 1
        assert deferred_counts(engine.runners, {"api": 3}) == {
            "api": "under a debugger: runs 1 replica until `devenv debug api --off`, then 3"}
        off = await debug_off(engine, tmp_path, runner)
        assert off.ok and off.replicas == 3
        assert runner.ready == 3 and not any(r.debugged for r in runner.replicas)
        assert deferred_counts(engine.runners, {"api": 2}) is None
        await engine.stop_all()

    run_virtual(scenario())
