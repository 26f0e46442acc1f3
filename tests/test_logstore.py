"""The log store: lines persisted per service, rotated, read back in order, secrets masked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devenv.engine import logstore
from devenv.engine.logstore import LogStore, query


def test_logs_rotate_and_read_back_in_order(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logstore, "MAX_BYTES", 2000)
    store = LogStore(tmp_path)
    store.set_secrets(["hunter22"])
    for i in range(400):
        store.add("api", "1", "out", f"line {i:03d} password=hunter22", ts=1_000_000 + i)
    store.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["api.log", "api.log.1", "api.log.2", "api.log.3"]  # 3 old ones kept
    assert all(p.stat().st_size <= 2200 for p in tmp_path.iterdir())
    lines = query(tmp_path, ["api"])
    numbers = [int(ln.text.split()[1]) for ln in lines]
    assert numbers == sorted(numbers) and numbers[-1] == 399  # oldest rotated away, in order
    assert len(numbers) < 400
    assert all("hunter22" not in ln.text and "********" in ln.text for ln in lines)
    assert [ln.text for ln in query(tmp_path, ["api"], tail=2)] == [
        "line 398 password=********", "line 399 password=********"]


# ---- start-ups (`logs --startup`)

T0 = 1_700_000_000.0


class Log:
    """A service's log as the engine writes it: events (stream devenv) and output, at
    seconds after T0."""

    def __init__(self, folder: Path):
        self.store = LogStore(folder)
        self.folder = folder

    def event(self, at: float, service: str, replica: str, text: str) -> None:
        self.store.add(service, replica, "devenv", text, ts=T0 + at)

    def out(self, at: float, service: str, replica: str, text: str) -> None:
        self.store.add(service, replica, "out", text, ts=T0 + at)

    def startup(self, *services: str, **starts: Any) -> list[str]:
        """`logs --startup` of these services, `starts` as the engine would say."""
        self.store.flush()
        return [f"{ln.service}-{ln.replica} {ln.text}" for ln in query(
            self.folder, services, startup=True, starts=logstore.Starts(**starts))]


def test_a_portless_service_start_up_is_its_first_seconds(tmp_path: Path) -> None:
    log = Log(tmp_path)
    log.event(0, "worker", "1", "started w1")
    log.event(0.01, "worker", "1", "healthy")  # no health check, no port: at once
    log.out(0.3, "worker", "1", "connecting to redis")
    log.out(2.0, "worker", "1", "ready, waiting for jobs")
    log.out(60, "worker", "1", "job 1 done")
    startup = ["worker-1 connecting to redis", "worker-1 ready, waiting for jobs"]
    assert log.startup("worker", unchecked=frozenset({"worker"})) == startup
    assert log.startup("worker") == startup  # not known (no engine, no config): the same
    assert logstore.STARTUP_GRACE < 60


def test_a_server_start_up_ends_as_it_becomes_healthy(tmp_path: Path) -> None:
    log = Log(tmp_path)
    log.event(0, "api", "1", "started a1")
    log.out(1, "api", "1", "compiling")
    log.event(8, "api", "1", "healthy")
    log.out(8.05, "api", "1", "ready in 8.0s")  # printed as the port opened, seen just after
    log.out(8.5, "api", "1", "GET /")  # the first request is not the start-up
    assert log.startup("api", unchecked=frozenset()) == ["api-1 compiling",
                                                         "api-1 ready in 8.0s"]


def test_a_start_up_ends_at_its_first_connection_however_soon(tmp_path: Path) -> None:
    log = Log(tmp_path)
    log.event(0, "api", "1", "started a1")
    log.event(1, "api", "1", "healthy")
    log.out(1.01, "api", "1", "listening on 8000")
    log.event(1.05, "api", "1", logstore.FIRST_CALLER)  # a caller right after `up`
    log.out(1.06, "api", "1", "GET /whoami")  # within the settle time, still not start-up
    log.out(1.5, "api", "1", "GET /whoami")
    assert log.startup("api", unchecked=frozenset()) == ["api-1 listening on 8000"]


def test_a_one_shot_start_up_is_its_whole_run_until_it_exits(tmp_path: Path) -> None:
    log = Log(tmp_path)
    log.event(0, "build", "1", "started b1")
    log.event(0.01, "build", "1", "healthy")  # (a one-shot counts as up as soon as it starts)
    log.out(0.5, "build", "1", "building 1/2")
    log.out(9, "build", "1", "building 2/2")
    # running: the engine says it is a one-shot
    assert log.startup("build", one_shots=frozenset({"build"})) == [
        "build-1 building 1/2", "build-1 building 2/2"]
    log.out(12, "build", "1", "built in 12s")
    log.event(12.1, "build", "1", "completed (exit code 0)")
    # done: the log shows it ran to its end, with or without the engine
    assert log.startup("build")[-1] == "build-1 built in 12s"
    assert len(log.startup("build")) == 3
    log.event(0, "migrate", "1", "started m1")
    log.event(0.01, "migrate", "1", "healthy")
    log.out(7, "migrate", "1", "error: relation users exists")
    log.event(7.1, "migrate", "1", "exited with code 1; restart: no")
    assert log.startup("migrate") == ["migrate-1 error: relation users exists"]


def test_a_crash_ends_a_start_up_and_only_the_latest_attempt_is_shown(tmp_path: Path) -> None:
    log = Log(tmp_path)
    log.event(0, "api", "1", "started a1")
    log.out(0.2, "api", "1", "fatal: no config")
    log.event(0.3, "api", "1", "exited with code 1; restart #1 in 0.5s")
    log.event(0.8, "api", "1", "started a2")
    log.out(1.0, "api", "1", "fatal: still no config")
    log.event(1.1, "api", "1", "exited with code 1; restart #2 in 1.0s")
    assert log.startup("api") == ["api-1 fatal: still no config"]
    assert log.startup("api", past=True) == ["api-1 fatal: no config",
                                             "api-1 fatal: still no config"]


def test_only_current_instances_unless_past_ones_are_asked_for(tmp_path: Path) -> None:
    log = Log(tmp_path)
    for replica in ("1", "2", "3"):
        log.event(0, "api", replica, f"started a{replica}")
        log.out(0.1, "api", replica, f"replica {replica} listening")
        log.event(0.2, "api", replica, "healthy")
    for replica in ("2", "3"):  # scaled to 1
        log.event(100, "api", replica, "stopped")
    log.event(200, "api", "1", "started a4")  # replaced by a reload (same replica)
    log.out(200.1, "api", "1", "replica 1 listening again")
    log.event(200.2, "api", "1", "healthy")
    log.event(200.3, "api", "1", "stopped")  # the old instance leaves
    new_only = ["api-1 replica 1 listening again"]
    # the engine knows which instances run now
    assert log.startup("api", current=frozenset({("api", "a4")})) == new_only
    # with the engine stopped, the log tells: replicas 2 and 3 left long before the rest
    assert log.startup("api") == new_only
    log.event(900, "api", "1", "stopped")  # the environment stopped
    assert log.startup("api") == new_only
    assert log.startup("api", past=True) == [
        "api-1 replica 1 listening", "api-2 replica 2 listening", "api-3 replica 3 listening",
        "api-1 replica 1 listening again"]


def test_stopped_together_means_current_when_the_environment_is_down(tmp_path: Path) -> None:
    log = Log(tmp_path)
    for replica in ("1", "2"):
        log.event(0, "api", replica, f"started a{replica}")
        log.out(0.1, "api", replica, f"replica {replica} listening")
        log.event(0.2, "api", replica, "healthy")
    log.event(500, "api", "1", "stopped")
    log.event(502, "api", "2", "stopped")  # its stop took longer
    assert log.startup("api") == ["api-1 replica 1 listening", "api-2 replica 2 listening"]
