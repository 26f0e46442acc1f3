# ruff: noqa: F811  (the docker fixtures are imported from docker_env, then requested)
"""Data services on the docker runtime: PostgreSQL and Redis in containers, their data in
named volumes (`pytest -k docker`). The image is docker_env's data image: this machine's
PostgreSQL and Redis laid out as the official images are (no registry here)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import psutil
import psycopg
import pytest
import redis

from conftest import ENV, Project, free_ports, wait_for
from devenv.config.load import load
from devenv.data.container import volume_name
from devenv.plan import make_plan
from docker_env import _checked, api, containers, data_image, docker_engine  # noqa: F401


def _project(project: Project, image: str, db: int, cache: int, extra: str = "") -> None:
    data = project.root / "data"
    data.mkdir(exist_ok=True)
    (data / "seed.sql").write_text(
        "CREATE TABLE product (id int PRIMARY KEY, name text NOT NULL);\n"
        "INSERT INTO product VALUES (1, 'Green tea'), (2, 'Coffee');\n")
    (data / "seed.redis").write_text('SET greeting "hello world"\nHSET cart:1 qty 2\n')
    project.write(textwrap.dedent(f"""\
        version: 1
        runtime: docker
        ingress: {{port: {project.ingress_port}}}
        services:
          db:
            kind: postgres
            image: "{image}"
            port: {db}
            databases: [shop]
            password: s3cret-pw
            users: {{reader: read-pw}}
          cache:
            kind: redis
            image: "{image}"
            port: {cache}
        datasets:
          seed:
            files:
              db/shop: [data/seed.sql]
              cache: [data/seed.redis]
        """) + extra)


def sql(port: int, query: str, user: str = "devenv", password: str = "s3cret-pw"
        ) -> list[tuple[Any, ...]]:
    with psycopg.connect(f"postgresql://{user}:{password}@127.0.0.1:{port}/shop",
                         connect_timeout=5) as conn:
        cur = conn.execute(query)
        return cur.fetchall() if cur.description else []


def names(port: int) -> list[str]:
    return [r[0] for r in sql(port, "SELECT name FROM product ORDER BY id")]


def test_docker_data_plan_image_and_volume(tmp_path: Any) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / "devenv.yaml").write_text(textwrap.dedent("""\
        version: 1
        runtime: docker
        services:
          db: {kind: postgres, port: 5433}
          cache: {kind: redis, port: 6380, image: "my/redis:7.2"}
        """))
    plan = make_plan(load(root))
    db, cache = plan.services["db"], plan.services["cache"]
    assert db.runtime == "docker" and db.container is not None
    assert db.container.image == "postgres:16"  # the official image by default
    assert db.container.volumes == ((volume_name(root, "db"), "/var/lib/postgresql/data"),)
    assert db.container.user == "postgres"
    assert cache.container is not None and cache.container.image == "my/redis:7.2"
    # the same file on the local runtime: processes, no image, no volume
    local = make_plan(load(root, environ={"DEVENV_RUNTIME": "local"}))
    assert local.services["db"].container is None and local.services["db"].runtime == "local"


@pytest.mark.timeout(240)
def test_docker_postgres_provision_load_snapshot_restore_reset(
        project: Project, data_image: str, api: Any) -> None:
    db, cache = free_ports(2)
    _project(project, data_image, db, cache)
    project.up()
    assert len(containers(api, project.root, "db")) == 1
    assert len(containers(api, project.root, "cache")) == 1
    volume = volume_name(project.root, "db")
    assert api.inspect_volume(volume)["Labels"]["devenv.service"] == "db"
    # provisioned: the application role owns the database, the extra role logs in, and
    # neither is a superuser
    assert sql(db, "SELECT current_user, current_database()") == [("devenv", "shop")]
    assert sql(db, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
               "reader", "read-pw") == [(False,)]
    with pytest.raises(psycopg.OperationalError):
        sql(db, "SELECT 1", password="wrong")
    cache_client = redis.Redis(port=cache, password="devpass", socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=cache, password="wrong").ping()
    with pytest.raises(redis.ResponseError):  # (CONFIG is gone, as locally)
        cache_client.execute_command("CONFIG", "GET", "dir")
    project.devenv("data", "load", "--dataset", "seed", check=True)
    assert names(db) == ["Green tea", "Coffee"]
    assert cache_client.get("greeting") == b"hello world"
    project.devenv("snapshot", "save", "seeded", check=True)
    snap = project.root / ".devenv" / "snapshots" / "seeded" / "db"
    assert (snap / "base.tar").stat().st_size > 1_000_000
    sql(db, "INSERT INTO product VALUES (3, 'Cocoa')")
    cache_client.set("greeting", "changed")
    project.devenv("snapshot", "restore", "seeded", check=True)
    assert names(db) == ["Green tea", "Coffee"]  # the row added after the snapshot is gone
    assert cache_client.get("greeting") == b"hello world"
    assert cache_client.hget("cart:1", "qty") == b"2"
    assert sql(db, "SELECT 1", "reader", "read-pw") == [(1,)]
    # the restored data is in the same volume; nothing staged is left beside it
    listing = project.devenv("exec", "db", "--", "ls", "/var/lib/postgresql/data").stdout
    assert listing.split() == ["pgdata"], listing
    project.devenv("data", "reset", check=True)
    with pytest.raises(psycopg.errors.UndefinedTable):
        names(db)
    assert sql(db, "SELECT current_user") == [("devenv",)]  # provisioned again
    assert cache_client.get("greeting") is None


def _volumes(api: Any, project: Project) -> list[str]:
    found = api.volumes(filters={"label": f"devenv.project={project.root}"})
    return sorted(v["Name"] for v in found.get("Volumes") or [])


@pytest.mark.timeout(240)
def test_docker_data_volumes_persist_and_a_killed_restore_is_finished_by_the_next_up(
        project: Project, data_image: str, api: Any) -> None:
    db, cache = free_ports(2)
    _project(project, data_image, db, cache)
    project.up()
    project.devenv("data", "load", "--dataset", "seed", check=True)
    cache_client = redis.Redis(port=cache, password="devpass", socket_timeout=5)
    project.devenv("snapshot", "save", "good", check=True)
    sql(db, "INSERT INTO product VALUES (3, 'Cocoa')")
    cache_client.set("greeting", "changed")
    # --persist-data: the containers go, the volumes stay, and the data is there after `up`
    project.devenv("stop", "--persist-data", check=True)
    assert not containers(api, project.root)
    assert _volumes(api, project) == sorted(volume_name(project.root, s) for s in ("db", "cache"))
    result = subprocess.run([sys.executable, "-m", "devenv", "up"], cwd=project.root,
                            capture_output=True, text=True, timeout=120,
                            env={**ENV, "DEVENV_FAULTS": "restore:swapped-one"})
    assert result.returncode == 0, result.stderr
    assert names(db) == ["Green tea", "Coffee", "Cocoa"]
    assert cache_client.get("greeting") == b"changed"
    # the engine dies after one store's swap: the next `up` finishes the other
    engine = project.engine_pid()
    cut = project.devenv("snapshot", "restore", "good")
    assert cut.returncode == 1, cut.stderr
    assert wait_for(lambda: not psutil.pid_exists(engine or 0), timeout=10)
    again = project.devenv("up")
    assert again.returncode == 0, again.stderr
    assert "restore of snapshot 'good' was cut short" in again.stderr
    assert names(db) == ["Green tea", "Coffee"]
    assert cache_client.get("greeting") == b"hello world"
    assert not list((project.root / ".devenv" / "data").rglob("*restore*"))
    # without --persist-data: a snapshot is kept, the volumes go; the next `up` is fresh
    stopped = project.devenv("stop", check=True)
    assert "auto-" in stopped.stdout + stopped.stderr
    assert _volumes(api, project) == []
    project.up()
    with pytest.raises(psycopg.errors.UndefinedTable):
        names(db)


@pytest.mark.timeout(180)
def test_docker_data_secrets_never_in_a_container_config(
        project: Project, data_image: str, api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin secret (initdb, a restore's ALTER ROLE) and Redis's password hash reach
    their containers as owner-only files, never in a config `docker inspect` shows; a
    helper's failure shows its output with the secret masked."""
    import hashlib
    import json

    from devenv import data
    from devenv.core.errors import DevenvError
    from devenv.data import container
    from devenv.plan import data_service

    db, cache = free_ports(2)
    _project(project, data_image, db, cache)
    configs: list[dict[str, Any]] = []
    marked: list[bool] = []  # whether recover would look, when each helper was made
    marker = project.root / ".devenv" / "run" / "docker.json"

    class Spy:  # the real client; each helper's config read before it is removed
        def __getattr__(self, name: str) -> Any:
            return getattr(api, name)

        def create_container(self, *args: Any, **kw: Any) -> Any:
            marked.append(marker.exists())
            return api.create_container(*args, **kw)

        def remove_container(self, cid: str, **kw: Any) -> Any:
            configs.append(api.inspect_container(cid)["Config"])
            return api.remove_container(cid, **kw)

    monkeypatch.setattr(container, "_client", Spy())
    loaded = load(project.root)
    pg, rd = data_service(loaded, "db"), data_service(loaded, "cache")
    data.prepare(pg)
    data.prepare(rd)
    admin = (pg.folder / "admin.secret").read_text().strip()
    hashed = hashlib.sha256(b"devpass").hexdigest()
    assert len(configs) >= 3 and admin
    assert marked and all(marked)  # a kill -9 during the first initdb: recover finds it
    shown = json.dumps(configs)
    assert admin not in shown and hashed not in shown and "DEVENV_SECRET" not in shown
    assert hashed not in " ".join(data.server(rd).command)  # nor the server's command line
    with pytest.raises(DevenvError) as failed:
        container.helper(str(project.root), "db", data_image, pg.volume or "", "/data",
                         ["sh", "-c", "cat /tmp/pw; ls -ln /tmp/pw; exit 3"],
                         user="postgres", files={"pw": f"{admin}\n".encode()}, mask=[admin])
    details = "\n".join(failed.value.details)
    assert admin not in details and "***" in details and "-rw-------" in details, details
    # and the servers start on them: logins with the passwords work, wrong ones do not
    project.up()
    assert sql(db, "SELECT current_user") == [("devenv",)]
    assert redis.Redis(port=cache, password="devpass", socket_timeout=5).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=cache, password="wrong", socket_timeout=5).ping()


@pytest.mark.timeout(120)
def test_docker_exec_stream_ends_at_its_deadline_or_when_cancelled(
        project: Project, data_image: str, api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A snapshot's stream out of a container that stops sending is shut from outside: at
    its deadline, or at once when cancelled (not at the next chunk, which may never come)."""
    import io
    import threading
    import time

    from devenv.core.errors import DevenvError
    from devenv.data import container

    monkeypatch.setattr(container, "_client", api)
    cid = api.create_container(data_image, ["sleep", "120"],
                               labels={"devenv.project": str(project.root)})["Id"]
    try:
        api.start(cid)
        silent = ["sh", "-c", "echo hello; sleep 30"]  # says hello, then nothing
        took = time.monotonic()
        with pytest.raises(DevenvError, match="did not finish within 1s"):
            container.exec_to_file(cid, silent, io.BytesIO(), threading.Event(), timeout=1)
        assert time.monotonic() - took < 5
        stop = threading.Event()
        threading.Timer(0.5, stop.set).start()
        took = time.monotonic()
        with pytest.raises(DevenvError, match="cancelled"):
            container.exec_to_file(cid, silent, io.BytesIO(), stop, timeout=60)
        assert time.monotonic() - took < 5
        out = io.BytesIO()  # and a tool that ends: its whole output
        container.exec_to_file(cid, ["sh", "-c", "echo all of it"], out, threading.Event())
        assert out.getvalue() == b"all of it\n"
    finally:
        api.remove_container(cid, force=True)
