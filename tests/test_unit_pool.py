"""Unit tests of the Pool (a service's stable address) on virtual time: holding callers while
nothing is ready, least-busy choice, exclusion, and draining."""

from __future__ import annotations

import asyncio

import pytest

from devenv.engine.pool import Backend, NoBackend, Pool
from fakes import now, run_virtual


def backend(name: str) -> Backend:
    return Backend(name, "127.0.0.1", 1)  # never dialed: the pool only hands it out


def test_pick_holds_the_caller_until_a_backend_becomes_ready() -> None:
    async def scenario() -> tuple[Backend, float]:
        pool = Pool("web", hold_timeout=15.0)
        fresh = backend("web-1")
        asyncio.get_running_loop().call_later(3.0, pool.add, fresh)
        picked = await pool.pick()
        return picked, now()

    picked, at = run_virtual(scenario())
    assert picked.id == "web-1"
    assert at == pytest.approx(3.0)  # served as soon as it was ready, not at a poll tick


def test_pick_gives_up_after_exactly_the_hold_timeout() -> None:
    async def scenario() -> float:
        pool = Pool("web", hold_timeout=15.0)
        with pytest.raises(NoBackend, match="web"):
            await pool.pick()
        return now()

    assert run_virtual(scenario()) == pytest.approx(15.0)


def test_a_backend_that_comes_and_goes_while_waiting_does_not_extend_the_hold() -> None:
    async def scenario() -> float:
        pool = Pool("web", hold_timeout=15.0)
        flaky = backend("web-1")

        def blip() -> None:  # ready and gone again before the waiting caller runs
            pool.add(flaky)
            pool.remove(flaky)

        asyncio.get_running_loop().call_later(5.0, blip)  # the caller keeps its deadline
        with pytest.raises(NoBackend):
            await pool.pick()
        return now()

    assert run_virtual(scenario()) == pytest.approx(15.0)


def test_pick_prefers_the_least_busy_backend() -> None:
    async def scenario() -> list[str]:
        pool = Pool("web")
        a, b, c = backend("a"), backend("b"), backend("c")
        for one in (a, b, c):
            pool.add(one)
        a.inflight, b.inflight, c.inflight = 3, 1, 2
        return [(await pool.pick()).id for _ in range(3)]

    assert run_virtual(scenario()) == ["b", "b", "b"]


def test_equally_busy_backends_take_turns() -> None:
    async def scenario() -> list[str]:
        pool = Pool("web")
        pool.add(backend("a"))
        pool.add(backend("b"))
        return [(await pool.pick()).id for _ in range(4)]

    picks = run_virtual(scenario())
    assert sorted(picks) == ["a", "a", "b", "b"]
    assert picks[0] != picks[1] and picks[1] != picks[2]


def test_requests_in_flight_steer_new_ones_elsewhere() -> None:
    async def scenario() -> None:
        pool = Pool("web")
        a, b = backend("a"), backend("b")
        pool.add(a)
        pool.add(b)
        async with pool.use() as first:
            async with pool.use() as second:
                assert {first.id, second.id} == {"a", "b"}  # spread over both
                assert (a.inflight, b.inflight) == (1, 1)
            assert (await pool.pick()) is second  # idle again, while `first` is still busy
        assert (a.inflight, b.inflight) == (0, 0)

    run_virtual(scenario())


def test_exclude_skips_a_backend_even_when_it_is_the_least_busy() -> None:
    async def scenario() -> str:
        pool = Pool("web")
        idle, busy = backend("idle"), backend("busy")
        busy.inflight = 5
        pool.add(idle)
        pool.add(busy)
        return (await pool.pick(exclude={"idle"})).id

    assert run_virtual(scenario()) == "busy"


def test_exclude_of_every_ready_backend_waits_then_fails() -> None:
    async def scenario() -> float:
        pool = Pool("web", hold_timeout=4.0)
        pool.add(backend("a"))
        with pytest.raises(NoBackend):
            await pool.pick(exclude={"a"})
        return now()

    assert run_virtual(scenario()) == pytest.approx(4.0)


def test_drain_takes_the_backend_out_at_once_and_returns_when_its_work_is_done() -> None:
    async def scenario() -> tuple[list[str], float, str]:
        pool = Pool("web")
        old, new = backend("old"), backend("new")
        pool.add(old)
        release = asyncio.Event()

        async def request() -> None:
            async with pool.use() as b:
                assert b is old
                await release.wait()

        task = asyncio.create_task(request())
        await asyncio.sleep(0)
        pool.add(new)
        asyncio.get_running_loop().call_later(2.0, release.set)
        drain = asyncio.create_task(pool.drain(old, timeout=10.0))
        await asyncio.sleep(0)
        during = [(await pool.pick()).id for _ in range(3)]  # new work avoids the old one
        await drain
        await task
        return during, now(), ",".join(b.id for b in pool.ready)

    during, drained_at, left = run_virtual(scenario())
    assert during == ["new", "new", "new"]
    assert drained_at == pytest.approx(2.0)  # as soon as the request finished
    assert left == "new"


def test_drain_of_an_idle_backend_returns_at_once() -> None:
    async def scenario() -> float:
        pool = Pool("web")
        idle = backend("a")
        pool.add(idle)
        await pool.drain(idle, timeout=10.0)
        assert pool.ready == []
        return now()

    assert run_virtual(scenario()) == 0.0


def test_drain_gives_up_after_its_timeout_when_work_never_finishes() -> None:
    async def scenario() -> tuple[float, int]:
        pool = Pool("web")
        stuck = backend("a")
        pool.add(stuck)

        async def endless_request() -> None:
            async with pool.use():
                await asyncio.Event().wait()

        task = asyncio.create_task(endless_request())
        await asyncio.sleep(0)
        await pool.drain(stuck, timeout=10.0)
        at, inflight = now(), stuck.inflight
        assert stuck.waiters == []  # (given up: nothing left to wake)
        task.cancel()
        return at, inflight

    at, inflight = run_virtual(scenario())
    assert at == pytest.approx(10.0)
    assert inflight == 1


def test_drain_closes_a_merely_open_connection_after_the_idle_timeout() -> None:
    async def scenario() -> float:
        pool = Pool("web")
        old = backend("old")
        pool.add(old)

        async def quiet_websocket() -> None:  # open, answered, waiting for nothing
            async with pool.use():
                await asyncio.Event().wait()

        task = asyncio.create_task(quiet_websocket())
        await asyncio.sleep(0)
        await pool.drain(old, timeout=10.0, idle_timeout=2.0)
        task.cancel()
        return now()

    assert run_virtual(scenario()) == pytest.approx(2.0)


def test_drain_waits_longer_for_a_connection_waiting_for_its_answer() -> None:
    async def scenario() -> float:
        pool = Pool("web")
        old = backend("old")
        pool.add(old)
        answered = asyncio.Event()

        async def slow_request() -> None:  # asked; the answer takes 5 s; then kept open
            async with pool.use() as b:
                b.working(1)
                await asyncio.sleep(5.0)
                b.working(-1)
                answered.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(slow_request())
        await asyncio.sleep(0)
        await pool.drain(old, timeout=10.0, idle_timeout=2.0)
        assert answered.is_set()
        task.cancel()
        return now()

    assert run_virtual(scenario()) == pytest.approx(5.0)  # the answer, then no idle wait
