"""Unit tests of supervision (ServiceRunner) on a FakeRuntime and virtual time: restarts and
their backoff, crash loops, restart policies, start failures and zero-downtime replacement.

Every time asserted is virtual: the whole file runs in well under a second of real time.
"""

from __future__ import annotations

import asyncio
from itertools import pairwise
from pathlib import Path

import pytest

from devenv.engine.service import BACKOFF_MAX, STABLE_AFTER, START_ATTEMPTS, ServiceRunner
from devenv.plan import ServicePlan
from devenv.runtime.base import Instance, InstanceSpec
from fakes import (
    FakeRuntime,
    Script,
    advance,
    crash,
    health_check,
    job,
    make_context,
    make_plan,
    never_ready,
    now,
    ready,
    run_virtual,
    start_error,
)


def runner_for(tmp_path: Path, runtime: FakeRuntime, plan: ServicePlan) -> ServiceRunner:
    return ServiceRunner(plan, make_context(tmp_path, runtime))


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 6) for a, b in pairwise(times)]


# ---- restarts and backoff


def test_a_crashing_replica_restarts_with_exponential_backoff_capped_at_30s(
        tmp_path: Path) -> None:
    async def scenario() -> list[float]:
        runtime = FakeRuntime()
        runtime.script("api", crash(code=1))  # exits as soon as it starts, every time
        runner = runner_for(tmp_path, runtime, make_plan("api"))
        await runner.scale(1)
        await advance(62.0)
        await runner.close()
        return runtime.start_times("api")

    starts = run_virtual(scenario())
    assert starts[:9] == [0.0, 0.25, 0.75, 1.75, 3.75, 7.75, 15.75, 31.75, 61.75]
    assert gaps(starts[:9]) == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, BACKOFF_MAX]


def test_a_replica_that_keeps_crashing_stays_at_the_backoff_cap(tmp_path: Path) -> None:
    async def scenario() -> list[float]:
        runtime = FakeRuntime()
        runtime.script("api", crash(code=1))
        runner = runner_for(tmp_path, runtime, make_plan("api"))
        await runner.scale(1)
        await advance(200.0)
        await runner.close()
        return runtime.start_times("api")

    starts = run_virtual(scenario())
    # it never ran even one second: nothing should bring the backoff down again
    assert gaps(starts)[7:] == [BACKOFF_MAX] * len(gaps(starts)[7:])


def test_five_crashes_within_a_minute_are_shown_as_a_crash_loop(tmp_path: Path) -> None:
    async def scenario() -> tuple[str, str, str, int]:
        runtime = FakeRuntime()
        runtime.script("api", crash(code=1))
        runner = runner_for(tmp_path, runtime, make_plan("api"))
        await runner.scale(1)
        await advance(3.0)  # crashed at 0, 0.25, 0.75 and 1.75: four crashes
        before = runner.replicas[0].detail
        await advance(1.0)  # the fifth at 3.75
        after, service, restarts = runner.detail, runner.state, runner.replicas[0].restarts
        await runner.close()
        return before, after, service, restarts

    before, after, state, restarts = run_virtual(scenario())
    assert before == "exited with code 1; restart #4 in 2.0s"
    assert after == "replica 1: crash loop: exited with code 1; restart #5 in 4.0s"
    assert state == "crashed"
    assert restarts == 4


def test_a_service_in_a_crash_loop_says_so_while_its_replica_starts_again(
        tmp_path: Path) -> None:
    async def scenario() -> list[tuple[str, str]]:
        runtime = FakeRuntime()
        runtime.script("api", crash(code=1))
        runner = runner_for(tmp_path, runtime, make_plan("api"))
        seen: list[tuple[str, str]] = []  # what `status` shows as each start begins
        start = runtime.start

        async def observed(spec: InstanceSpec) -> Instance:
            seen.append((runner.state, runner.detail))
            return await start(spec)

        runtime.start = observed  # type: ignore[method-assign]
        await runner.scale(1)
        await advance(40.0)
        await runner.close()
        return seen

    looping = [detail for state, detail in run_virtual(scenario()) if state == "crashed"]
    assert len(looping) >= 3  # the sixth start on: five crashes within a minute
    assert all(detail.startswith("replica 1: crash loop: ") for detail in looping), looping


def test_crashes_spread_over_more_than_a_minute_are_not_a_crash_loop(tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.script("api", crash(after=20.0, code=1, ready_after=0.0))  # serves 20 s, dies
        runner = runner_for(tmp_path, runtime, make_plan("api"))
        await runner.scale(1)
        details: set[str] = set()
        for _ in range(400):  # 200 s, looking every half second
            await advance(0.5)
            details.add(runner.replicas[0].detail)
        assert len(runtime.starts) >= 8  # backoff keeps growing: never healthy 30 s at a time
        assert any(d.startswith("exited with code 1; restart #8 ") for d in details)
        assert not any("crash loop" in d for d in details)
        await runner.close()

    run_virtual(scenario())


@pytest.mark.parametrize(("lasted", "next_start_after", "crash_loop"), [
    (STABLE_AFTER + 10, 0.25, False),  # stable: the crash count starts again
    (10.0, 4.0, True),  # not stable: the fifth crash in a minute
], ids=["stable", "not-stable"])
def test_a_replica_healthy_long_enough_has_its_crash_count_reset(
        tmp_path: Path, lasted: float, next_start_after: float, crash_loop: bool) -> None:
    async def scenario() -> tuple[float, str, float]:
        runtime = FakeRuntime()
        runtime.script("api", crash(), crash(), crash(), crash(),  # 0, 0.25, 0.75, 1.75
                       crash(after=lasted, ready_after=0.0),  # starts at 3.75, healthy at once
                       ready())
        runner = runner_for(tmp_path, runtime, make_plan("api"))
        await runner.scale(1)
        crashed_at = 3.75 + lasted
        await advance(crashed_at + 0.1)
        detail = runner.replicas[0].detail
        await advance(10.0)
        await runner.close()
        return crashed_at, detail, runtime.start_times("api")[5]

    crashed_at, detail, sixth_start = run_virtual(scenario())
    assert sixth_start - crashed_at == pytest.approx(next_start_after)
    assert ("crash loop" in detail) is crash_loop


def test_only_time_spent_healthy_resets_the_crash_count(tmp_path: Path) -> None:
    async def scenario() -> str:
        runtime = FakeRuntime()
        runtime.script("api", crash(), crash(), crash(), crash(),  # 0, 0.25, 0.75, 1.75
                       crash(after=35.0, ready_after=25.0),  # 3.75: healthy 28.75, dies 38.75
                       ready())
        runner = runner_for(tmp_path, runtime, make_plan("api"))
        await runner.scale(1)
        await advance(38.8)
        detail = runner.replicas[0].detail
        await runner.close()
        return detail

    # five crashes in 39 s, and only 10 s of health in between: still a crash loop
    assert run_virtual(scenario()).startswith("crash loop: exited with code 1")


# ---- restart policies


@pytest.mark.parametrize(("restart", "script", "restarted", "state", "detail"), [
    # (no port and restart no: a one-shot job, running until it exits)
    ("no", crash(after=2.0, code=3, ready_after=0.0), False, "failed",
     "exited with code 3 after 2.0s"),
    ("no", job(after=2.0), False, "completed", "exit code 0 after 2.0s"),
    # (on-failure: a server, or a worker, that may end its work with exit code 0)
    ("on-failure", job(after=2.0), False, "completed", "exited with code 0"),
    ("on-failure", crash(after=2.0, code=3, ready_after=0.0), True, "healthy", ""),
    ("always", job(after=2.0), True, "healthy", ""),  # even a clean exit is restarted
], ids=["no-crash", "no-exit0", "on-failure-exit0", "on-failure-crash", "always-exit0"])
def test_restart_policy(tmp_path: Path, restart: str, script: Script, restarted: bool,
                        state: str, detail: str) -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.script("api", script, ready())  # a restart (if any) becomes healthy
        runner = runner_for(tmp_path, runtime, make_plan("api", restart=restart))
        await runner.scale(1)
        await advance(100.0)
        assert len(runtime.starts) == (2 if restarted else 1)
        assert runner.restarts == (1 if restarted else 0)
        assert runner.state == state
        assert (runner.replicas[0].state, runner.replicas[0].detail) == (state, detail)
        await runner.close()

    run_virtual(scenario())


def test_restart_no_fails_up_with_the_exit_code(tmp_path: Path) -> None:
    async def scenario() -> tuple[str | None, float, int]:
        runtime = FakeRuntime()
        runtime.script("api", crash(after=1.0, code=3))
        runner = runner_for(tmp_path, runtime, make_plan("api", restart="no"))
        await runner.scale(1)
        reason = await runner.wait_condition("up", 30)
        at = now()
        await runner.close()
        return reason, at, len(runtime.starts)

    reason, at, starts = run_virtual(scenario())
    assert reason == "exited with code 3 after 1.0s"
    assert at == pytest.approx(1.0)
    assert starts == 1


def test_a_one_shot_job_completes(tmp_path: Path) -> None:
    async def scenario() -> tuple[str | None, float, str]:
        runtime = FakeRuntime()
        runtime.script("migrate", job(after=4.0))
        runner = runner_for(tmp_path, runtime, make_plan("migrate", restart="on-failure"))
        await runner.scale(1)
        reason = await runner.wait_condition("completed", 30)
        at, state = now(), runner.state
        await runner.close()
        return reason, at, state

    reason, at, state = run_virtual(scenario())
    assert reason is None
    assert at == pytest.approx(4.0)
    assert state == "completed"


# ---- starting


def test_a_start_that_never_becomes_healthy_fails_after_its_start_period(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        runtime.script("api", never_ready())
        runner = runner_for(tmp_path, runtime,
                            make_plan("api", health=health_check(start_period=5)))
        await runner.scale(1)
        reason = await runner.wait_condition("up", 60)
        assert reason is not None and reason.startswith("not healthy after 5s (start_period)")
        assert 5.0 < now() <= 5.5  # probes back off to 0.5 s apart after the first 3 s
        await advance(0.1)
        first = runtime.starts[0].instance
        assert first is not None and first.stopped  # the hung instance was not left running
        await runner.close()

    run_virtual(scenario())


def test_up_fails_when_a_new_service_crashes_start_attempts_times_before_health(
        tmp_path: Path) -> None:
    async def scenario() -> tuple[str | None, float, int]:
        runtime = FakeRuntime()
        runtime.script("api", crash(code=3))
        runner = runner_for(tmp_path, runtime, make_plan("api"))
        await runner.scale(1)
        reason = await runner.wait_condition("up", 60)
        seen = reason, now(), len(runtime.starts)
        await runner.close()
        return seen

    reason, at, starts = run_virtual(scenario())
    assert START_ATTEMPTS == 3
    assert starts == START_ATTEMPTS
    assert at == pytest.approx(0.75)  # the third crash: 0, 0.25, 0.75; no waiting longer
    assert reason is not None and reason.startswith("exited with code 3")


def test_up_succeeds_when_the_last_allowed_attempt_becomes_healthy(tmp_path: Path) -> None:
    async def scenario() -> tuple[str | None, float, int]:
        runtime = FakeRuntime()
        runtime.script("api", *[crash(code=3)] * (START_ATTEMPTS - 1), ready())
        runner = runner_for(tmp_path, runtime, make_plan("api"))
        await runner.scale(1)
        reason = await runner.wait_condition("up", 60)
        seen = reason, now(), runner.replicas[0].restarts
        await runner.close()
        return seen

    reason, at, restarts = run_virtual(scenario())
    assert reason is None
    assert at == pytest.approx(0.75)
    assert restarts == START_ATTEMPTS - 1


def test_a_command_that_cannot_start_fails_up_with_the_runtimes_message(
        tmp_path: Path) -> None:
    async def scenario() -> str | None:
        runtime = FakeRuntime()
        runtime.script("api", start_error("cannot run 'ap': No such file or directory"))
        runner = runner_for(tmp_path, runtime, make_plan("api"))
        await runner.scale(1)
        reason = await runner.wait_condition("up", 60)
        await runner.close()
        return reason

    reason = run_virtual(scenario())
    assert reason is not None and reason.startswith("api: cannot run 'ap'")


def test_replicas_failing_their_health_checks_leave_the_pool(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[str], str, str, float]:
        runtime = FakeRuntime()
        runtime.script("api", ready(), Script(ready_after=0.0, unhealthy_after=10.0))
        plan = make_plan("api", replicas=2, port=18080, health=health_check(interval=5, retries=3))
        runner = runner_for(tmp_path, runtime, plan)
        await runner.scale(2)
        assert await runner.wait_condition("up", 10) is None
        assert len(runner.pool.ready) == 2
        while runner.replicas[1].state == "healthy":
            await advance(0.5)
        seen = ([b.id for b in runner.pool.ready], runner.replicas[1].state,
                runner.replicas[1].detail, now())
        await runner.close()
        return seen

    in_pool, state, detail, at = run_virtual(scenario())
    assert in_pool == ["api-1#1"]  # only the healthy one still takes traffic
    assert state == "unhealthy"
    assert detail == "3 failed health checks"
    assert 20.0 <= at <= 20.5  # the checks at 10, 15 and 20 s failed


# ---- replace (reloads, changed config)


@pytest.mark.parametrize(("new_script", "why"), [
    (crash(after=1.0, code=2, output=("SyntaxError: invalid syntax",)), "exited with code 2"),
    (never_ready(output=("still booting",)), "not healthy after 5s (start_period)"),
], ids=["new-crashes", "new-never-healthy"])
def test_replace_keeps_the_old_instance_serving_when_the_new_one_fails(
        tmp_path: Path, new_script: Script, why: str) -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        old_plan = make_plan("api", port=18080, health=health_check(start_period=5))
        runner = runner_for(tmp_path, runtime, old_plan)
        await runner.scale(1)
        assert await runner.wait_condition("up", 10) is None
        old = runtime.live("api")[0]
        runtime.script("api", new_script)
        new_plan = make_plan("api", port=18080, health=health_check(start_period=5),
                             command=("app", "--v2"))
        failure: list[str] = []
        assert await runner.replace(new_plan, failure=failure) is False
        assert failure[0] == why
        assert failure[1:] == list(new_script.output)  # the new instance's last output lines
        await advance(30.0)  # and it stays that way: the failed new one is not retried
        assert [b.id for b in runner.pool.ready] == [old.id] == ["api-1#1"]
        assert old.alive and runner.replicas[0].state == "healthy"
        assert runner.plan.config_hash == old_plan.config_hash
        assert len(runtime.starts) == 2
        assert runtime.live("api") == [old]  # the failed new instance is gone
        await runner.close()

    run_virtual(scenario())


def test_replace_switches_traffic_only_once_the_new_instance_is_healthy(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        runtime = FakeRuntime()
        runner = runner_for(tmp_path, runtime, make_plan("api", port=18080))
        await runner.scale(1)
        assert await runner.wait_condition("up", 10) is None
        runtime.script("api", ready(after=2.0))
        new_plan = make_plan("api", port=18080, command=("app", "--v2"))
        timings: dict[str, float] = {}
        replacing = asyncio.create_task(runner.replace(new_plan, timings))
        await advance(1.0)
        # the old one serves while the new one starts
        assert [b.id for b in runner.pool.ready] == ["api-1#1"]
        assert [i.id for i in runtime.live("api")] == ["api-1#1", "api-1#2"]
        assert await replacing is True
        assert [b.id for b in runner.pool.ready] == ["api-1#2"]
        assert runtime.stops == ["api-1#1"]  # the old one was drained, then stopped
        assert runner.plan.config_hash == new_plan.config_hash
        assert runner.state == "healthy"
        assert 2.0 <= timings["healthy"] <= 2.05  # seen healthy within one fast probe
        await runner.close()

    run_virtual(scenario())
