"""Fault injection: the engine is killed (SIGKILL, through DEVENV_FAULTS failpoints, or from
outside) at each step of a dataset load and a snapshot save; the next command repairs or
rolls back, says what it did, and no data written before the failure is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest

from conftest import ENV, Project, named, procs_in, wait_for
from test_data import rds, shop, sql  # noqa: F401 - `shop` is a fixture


def add_dataset(project: Project, name: str, files: dict[str, str]) -> None:
    """A dataset of new files (target -> (file name, content)) added to devenv.yaml."""
    lines = [f"  {name}:", "    files:"]
    for target, content in files.items():
        file = f"data/{name}-{target.replace('/', '-')}" + (".sql" if "/" in target else
                                                            ".redis")
        (project.root / file).write_text(content)
        lines.append(f"      {target}: [{file}]")
    text = (project.root / "devenv.yaml").read_text()
    (project.root / "devenv.yaml").write_text(
        text.replace("profiles:", "\n".join(lines) + "\nprofiles:", 1))


def up_with_fault(project: Project, point: str) -> None:
    """`up` an engine armed to kill itself at `point`."""
    env = {**ENV, "DEVENV_FAULTS": point}
    result = subprocess.run([sys.executable, "-m", "devenv", "up"], cwd=project.root,
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr


def state(project: Project) -> tuple[list[tuple[object, ...]], dict[bytes, bytes]]:
    rows = sql(project, "SELECT id, name FROM product ORDER BY id")
    client = rds(project)
    return rows, {k: client.type(k) for k in client.keys("*")}


@pytest.mark.parametrize("point", ["load:guarded", "load:staged", "load:between-commits"])
def test_a_dataset_load_killed_at_any_step_is_undone_by_the_next_up(
        shop: Project, point: str) -> None:  # noqa: F811
    add_dataset(shop, "extra", {"db/shop": "INSERT INTO product VALUES (7, 'Mate', 2);\n",
                                "cache": "SET extra 1\nHSET cart:9 product 7\n"})
    shop.up()
    shop.devenv("data", "load", "--dataset", "demo", check=True)
    client = rds(shop)
    client.set("written-before", "kept")  # data written before the failure
    before = state(shop)
    shop.devenv("stop", "--persist-data", check=True)

    up_with_fault(shop, point)
    engine = shop.engine_pid()
    cut = shop.devenv("data", "load", "--dataset", "extra")
    assert cut.returncode == 1 and "stopped answering" in cut.stderr, cut.stderr
    assert wait_for(lambda: not psutil.pid_exists(engine or 0), timeout=10)

    again = shop.devenv("up", check=True)
    assert "was cut short" in again.stderr, again.stderr
    assert state(shop) == before
    assert rds(shop).get("written-before") == b"kept"
    assert not [s for s in shop.devenv("snapshot", "list", "--json", check=True).stdout
                if "before-" in s]


def test_transaction_control_in_dataset_sql_is_refused_before_anything_runs(
        shop: Project) -> None:  # noqa: F811
    add_dataset(shop, "sneaky", {"db/shop": (
        "CREATE TABLE product (id int PRIMARY KEY, name text);\nCOMMIT;\n"
        "INSERT INTO product VALUES (5, 'Tea');\n")})
    shop.up()
    result = shop.devenv("data", "load", "--dataset", "sneaky")
    assert result.returncode == 1
    assert "data/sneaky-db-shop.sql:2: COMMIT is not allowed in a dataset" in result.stderr
    assert sql(shop, "SELECT count(*) FROM pg_tables WHERE tablename = 'product'") == [(0,)]


def test_a_redis_command_failing_at_run_time_leaves_nothing_loaded(shop: Project) -> None:  # noqa: F811
    add_dataset(shop, "runtime-error", {
        "db/shop": "CREATE TABLE product (id int PRIMARY KEY, name text);\n",
        "cache": "SET greeting hello\nSET plain x\nHSET plain field 1\nSET after y\n"})
    shop.up()
    result = shop.devenv("data", "load", "--dataset", "runtime-error")
    assert result.returncode == 1 and "runtime-error-cache.redis:3" in result.stderr, \
        result.stderr
    assert rds(shop).keys("*") == []
    assert sql(shop, "SELECT count(*) FROM pg_tables WHERE tablename = 'product'") == [(0,)]


def test_kill_9_of_the_engine_mid_snapshot_save_leaves_no_half_snapshot(shop: Project) -> None:  # noqa: F811
    shop.up()
    shop.devenv("data", "load", "--dataset", "demo", check=True)
    before = state(shop)
    saving = shop.popen("snapshot", "save", "half")
    folder = shop.root / ".devenv" / "snapshots"
    assert wait_for(lambda: folder.is_dir() and any(
        p.name.startswith(".staging-") for p in folder.iterdir()), timeout=20, interval=0.005)
    os.kill(shop.engine_pid() or 0, signal.SIGKILL)
    saving.communicate(timeout=20)
    assert saving.returncode == 1
    listed = shop.devenv("snapshot", "list", "--json", check=True).stdout
    assert "half" not in listed
    shop.up()
    assert not any(p.name.startswith(".staging-") for p in folder.iterdir())
    assert state(shop) == before
    shop.devenv("snapshot", "save", "half", check=True)  # the name is free again


def _server(project: Project, name: str) -> psutil.Process:
    """The data server process of service `name`: the one listening on its instance's port."""
    endpoint = project.service(name)["instances"][0]["endpoint"]
    port = int(endpoint.rsplit(":", 1)[1])
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == "LISTEN" and conn.pid:
            return psutil.Process(conn.pid)
    raise AssertionError(f"no server process for {name} on port {port}")


@pytest.mark.parametrize("victim", ["cache", "db"])
def test_snapshot_save_after_a_data_server_was_killed_and_came_back(
        shop: Project, victim: str) -> None:  # noqa: F811
    shop.up()
    shop.devenv("data", "load", "--dataset", "demo", check=True)
    restarts = shop.service(victim)["restarts"]
    _server(shop, victim).kill()
    assert wait_for(lambda: (s := shop.service(victim))["restarts"] > restarts
                    and s["state"] == "healthy", timeout=30)
    before = state(shop)
    saved = shop.devenv("snapshot", "save", f"after-{victim}-crash", timeout=60)
    assert saved.returncode == 0, saved.stderr
    restored = shop.devenv("snapshot", "restore", f"after-{victim}-crash", timeout=60)
    assert restored.returncode == 0, restored.stderr
    assert state(shop) == before


@pytest.mark.parametrize("point", ["restore:staged", "restore:journaled",
                                   "restore:swapped-one"])
def test_a_restore_killed_at_any_step_is_finished_or_undone_by_the_next_up(
        shop: Project, point: str) -> None:  # noqa: F811
    add_dataset(shop, "extra", {"db/shop": "INSERT INTO product VALUES (7, 'Mate', 2);\n",
                                "cache": "SET extra 1\n"})
    shop.up()
    shop.devenv("data", "load", "--dataset", "demo", check=True)
    saved = state(shop)
    shop.devenv("snapshot", "save", "good", check=True)
    shop.devenv("data", "load", "--dataset", "extra", check=True)
    changed = state(shop)
    assert changed != saved
    shop.devenv("stop", "--persist-data", check=True)

    up_with_fault(shop, point)
    engine = shop.engine_pid()
    cut = shop.devenv("snapshot", "restore", "good")
    assert cut.returncode == 1 and "stopped answering" in cut.stderr, cut.stderr
    assert wait_for(lambda: not psutil.pid_exists(engine or 0), timeout=10)

    again = shop.devenv("up")
    assert again.returncode == 0, again.stderr
    assert "restore of snapshot 'good' was cut short" in again.stderr
    if point == "restore:staged":
        assert state(shop) == changed  # undone: nothing had changed yet
    else:
        assert state(shop) == saved  # finished: every store is the snapshot's
    leftovers = [p.name for p in (shop.root / ".devenv" / "data").rglob("*restore*")]
    assert leftovers == []


def test_postgres_killed_at_its_first_start_after_a_restore_comes_back(
        shop: Project) -> None:  # noqa: F811
    shop.up()
    shop.devenv("data", "load", "--dataset", "demo", check=True)
    saved = state(shop)
    shop.devenv("snapshot", "save", "good", check=True)
    shop.devenv("data", "reset", check=True)
    shop.devenv("stop", "--persist-data", check=True)
    up_with_fault(shop, "restore:swapped-one")
    shop.devenv("snapshot", "restore", "good")  # the engine dies after the first swap
    up = shop.popen("up")
    victim = wait_for(lambda: [p for p in procs_in(shop.root) if named(p, "postgres")],
                      timeout=30, interval=0.005)
    assert victim, "postgres never started"
    victim[0].kill()  # during its first start on the restored data
    _, err = up.communicate(timeout=120)
    assert up.returncode == 0, err
    assert state(shop) == saved


def test_an_empty_postmaster_pid_left_by_a_kill_as_postgres_started_is_removed(
        shop: Project) -> None:  # noqa: F811
    """The test above kills PostgreSQL at a moment it picks; this is the one moment that
    left it unable to start: between creating its lock file and writing it."""
    shop.up()
    shop.devenv("data", "load", "--dataset", "demo", check=True)
    saved = state(shop)
    shop.devenv("stop", "--persist-data", check=True)
    lock = shop.root / ".devenv/data/db/pgdata/postmaster.pid"
    assert not lock.exists()
    lock.touch()  # what a kill -9 between PostgreSQL's open and write of it leaves
    shop.up()
    assert state(shop) == saved
    logs = shop.devenv("logs", "db", check=True).stdout
    assert "removed postmaster.pid, left empty by a server killed as it started" in logs
