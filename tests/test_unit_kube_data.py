"""The cluster data path's parts (devenv.data.cluster, devenv.runtime.kube_recreate): pure
checks, and the kinds' scripts run against a REAL PostgreSQL / Redis (tests/fake_kube_api.py's
`DataServer`, what a data pod runs there), each script run as a local process with the pod's
environment instead of through the API's exec stream. No engine, no API server."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from devenv import data
from devenv.core.errors import DevenvError
from devenv.data import cluster, settings_class
from devenv.data.base import DataService
from devenv.data.snapshots import SnapshotStore, now_manifest
from devenv.runtime import kube_recreate
from fake_kube_api import DataServer

LABELS = {"app.kubernetes.io/managed-by": "devenv"}


# ---- pure parts


def test_a_redis_dump_is_kept_only_when_it_is_every_key_and_nothing_else() -> None:
    good = ["6b31\n", "-1\n", "0011\n", "\n", "5000\n", "00aa\n", "dbsize 2\n"]
    into = io.StringIO()
    assert cluster.checked_dump(good, into) == 2
    assert into.getvalue() == "".join(good[:-1])  # (keys.hex: three lines a key, no count)
    assert [k for k in cluster.keys(io.StringIO(into.getvalue()))] == [
        (b"k1", -1, b"\x00\x11"), (b"", 5000, b"\x00\xaa")]
    # what redis-cli printed (exit code 0, without -e) for an error reply during a dump
    with pytest.raises(DevenvError, match=r"did not end with the key count.*LOADING"):
        cluster.checked_dump(["LOADING Redis is loading the dataset in memory\n"],
                             io.StringIO())
    with pytest.raises(DevenvError, match="holds 1 keys where the database holds 2"):
        cluster.checked_dump(good[:3] + ["dbsize 2\n"], io.StringIO())
    with pytest.raises(DevenvError, match="line 2 is not part of a key: 'BUSY"):
        cluster.checked_dump(["6b31\n", "BUSY script\n", "0011\n", "dbsize 1\n"],
                             io.StringIO())
    with pytest.raises(DevenvError, match="cut short"):
        list(cluster.keys(["6b31\n", "-1\n"]))
    with pytest.raises(DevenvError, match="line 3 is not part of a key: 'zz'"):
        list(cluster.keys(["6b31\n", "-1\n", "zz\n"]))  # (was bytes.fromhex's ValueError)


def test_data_reset_drops_the_postgres_database_only_when_it_is_the_services() -> None:
    listed = ["postgres", "shop", "devenv_restore_old_0"]
    own = cluster.wipe_sql(listed, ["postgres"], "devenv")
    assert 'DROP DATABASE IF EXISTS "postgres" WITH (FORCE)' in own
    assert own[-1] == 'CREATE DATABASE "postgres" OWNER "devenv"'
    other = cluster.wipe_sql(listed, ["shop"], "devenv")
    assert not any('"postgres"' in s for s in other)  # (the maintenance database stays)
    assert other[-1] == 'CREATE DATABASE "shop" OWNER "devenv"'


def claim(ns: str, name: str, project: str, service: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "labels": {
        **LABELS, "app.kubernetes.io/instance": project, "app.kubernetes.io/name": service}}}


def test_claims_a_recreate_would_lose_are_every_one_outside_its_snapshot() -> None:
    items = [claim("shop", "data-db-0", "shop", "db"),  # carried
             claim("shop", "data-cache-0", "shop", "cache"),  # carried
             claim("shop", "data-olddb-0", "shop", "olddb"),  # a renamed service
             claim("shop-old", "data-db-0", "shop", "db"),  # a renamed namespace
             claim("blog", "data-db-0", "blog", "db"),  # another project
             claim("shop-validate-1a2b", "data-db-0", "shop-validate-1a2b", "db")]
    assert kube_recreate.uncovered_claims(items, "shop", "shop", ["db", "cache"]) == [
        "blog/data-db-0 (project blog, service db)",
        "shop-old/data-db-0 (project shop, service db)",
        "shop-validate-1a2b/data-db-0 (project shop-validate-1a2b, service db)",
        "shop/data-olddb-0 (project shop, service olddb)"]
    # nothing carried (none of this project's data services on it): all of them named
    assert len(kube_recreate.uncovered_claims(items, "shop", "shop", [])) == 6


def test_the_carry_over_snapshot_survives_the_pruning_of_automatic_ones(
        tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snapshots")

    def save(name: str, manifest: dict[str, Any]) -> None:
        staging = store.staging(name)
        (staging / "db").mkdir()
        (staging / "db" / "0.dump").write_bytes(b"x")
        manifest["services"]["db"] = {"kind": "postgres", "version": "16"}
        store.commit(staging, name, manifest)

    save("before-k3d-1.30-to-1.31", kube_recreate.carry_manifest("shop", []))
    for i in range(4):  # (four `devenv stop`s, keeping the default 3)
        save(f"auto-{i}", now_manifest("shop", True, []))
        store.prune_automatic(3)
    assert [s.name for s in store.all()] == ["before-k3d-1.30-to-1.31", "auto-1", "auto-2",
                                             "auto-3"]


# ---- the kinds' scripts against a real server


@pytest.fixture
def pod(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """start(kind, env) → a DataServer; `cluster.run` runs each script with its env."""
    servers: list[DataServer] = []
    volumes = Path(tempfile.mkdtemp(prefix="kube-data-unit-"))
    os.chmod(volumes, 0o755)  # (the data user of a confined server reaches its folder)

    def start(kind: str, env: dict[str, str]) -> DataServer:
        server = DataServer(kind, volumes / f"v{len(servers)}", env, "")
        servers.append(server)
        server.start()
        return server

    async def run(ds: DataService[Any], script: str, what: str, *,
                  feed: Path | None = None, out: IO[bytes] | None = None,
                  timeout: float = cluster.EXEC_TIMEOUT) -> str:
        server = servers[-1]
        if feed is not None:
            script = f"DEVENV_SIZE={feed.stat().st_size}; " + script
        with open(feed or os.devnull, "rb") as stdin:
            proc = await asyncio.create_subprocess_exec(
                "sh", "-c", script, stdin=stdin, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=server.exec_env())
            got, errors = await asyncio.wait_for(proc.communicate(), timeout)
        if proc.returncode:
            raise DevenvError(f"{ds.name}: {what} failed in pod (exit code {proc.returncode})",
                              details=errors.decode().splitlines()[-10:])
        if out is not None:
            out.write(got)
            return ""
        return got.decode()

    monkeypatch.setattr(cluster, "run", run)
    try:
        yield start
    finally:
        for server in servers:
            asyncio.run(server.cleanup())
        shutil.rmtree(volumes, ignore_errors=True)


def psql(server: DataServer, db: str, sql: str) -> str:
    env = {**server.exec_env(), "PGUSER": "devenv", "PGPASSWORD": "pw"}
    done = subprocess.run(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_service_named_postgres_is_snapshotted_restored_and_reset(
        pod: Any, tmp_path: Path) -> None:
    # its database is named after it: `postgres`
    server = pod("postgres", {"POSTGRES_USER": "devenv", "POSTGRES_PASSWORD": "pw",
                              "POSTGRES_DB": "postgres"})
    ds = DataService("postgres", "postgres", settings_class("postgres")(password="pw"),
                     tmp_path / "state", 5000, cluster=True)
    psql(server, "postgres", "CREATE TABLE product (name text); "
                             "INSERT INTO product VALUES ('Green tea'), ('Coffee')")
    snap = tmp_path / "snap" / "postgres"
    asyncio.run(cluster.postgres.snapshot(ds, snap))
    assert json.loads((snap / "cluster.json").read_text())["databases"] == ["postgres"]
    assert cluster.postgres.missing(ds, snap) == []  # (a recreate may delete the cluster)
    psql(server, "postgres", "DELETE FROM product")
    cluster.postgres.stage_restore(ds, snap)
    assert cluster.postgres.swap_restore(ds)
    cluster.postgres.drop_restore(ds)
    assert psql(server, "postgres", "SELECT name FROM product ORDER BY 1") == \
        "Coffee\nGreen tea"
    # `data reset`: empty, made again (it failed on CREATE DATABASE "postgres")
    asyncio.run(cluster.postgres.wipe(ds))
    assert psql(server, "postgres", "SELECT count(*) FROM pg_tables WHERE tablename = "
                                    "'product'") == "0"
    assert psql(server, "postgres", "SELECT string_agg(datname, ',' ORDER BY datname) FROM "
                                    "pg_database") == "postgres,template0,template1"


def test_a_snapshot_lacking_a_declared_database_is_said_to(pod: Any, tmp_path: Path) -> None:
    server = pod("postgres", {"POSTGRES_USER": "devenv", "POSTGRES_PASSWORD": "pw",
                              "POSTGRES_DB": "shop"})
    ds = DataService("db", "postgres", settings_class("postgres")(
        password="pw", databases=["shop", "audit"]), tmp_path / "state", 5000, cluster=True)
    snap = tmp_path / "snap" / "db"
    asyncio.run(cluster.postgres.snapshot(ds, snap))  # ("audit" is not on the server)
    assert cluster.postgres.missing(ds, snap) == ["audit"]
    psql(server, "postgres", "CREATE DATABASE audit")
    shutil.rmtree(snap)
    asyncio.run(cluster.postgres.snapshot(ds, snap))
    assert cluster.postgres.missing(ds, snap) == []


def test_redis_error_replies_fail_the_snapshot_and_a_swap_must_answer_one(
        pod: Any, tmp_path: Path) -> None:
    server = pod("redis", {"REDIS_PASSWORD": "pw"})
    ds = DataService("cache", "redis", settings_class("redis")(password="pw"),
                     tmp_path / "state", 5000, cluster=True)
    env = {**server.exec_env(), "REDISCLI_AUTH": "pw"}
    for args in (["SET", "greeting", "hello world"], ["SET", "", "empty name"],
                 ["SET", "short", "lived", "EX", "600"]):
        subprocess.run(["redis-cli", "--no-auth-warning", *args], env=env, check=True,
                       capture_output=True)
    snap = tmp_path / "snap" / "cache"
    asyncio.run(cluster.redis.snapshot(ds, snap))
    assert json.loads((snap / "cluster.json").read_text())["keys"] == 3
    assert len((snap / "keys.hex").read_text().splitlines()) == 9
    # an error reply (here NOAUTH: the pod's password is not the server's) fails the
    # snapshot; redis-cli said it with exit code 0, and the reply became the "dump"
    server.env["REDIS_PASSWORD"] = "wrong"
    with pytest.raises(DevenvError, match="snapshot \\(DUMP\\) failed"):
        asyncio.run(cluster.redis.snapshot(ds, tmp_path / "snap2" / "cache"))
    assert not (tmp_path / "snap2" / "cache" / "keys.hex").exists()
    server.env["REDIS_PASSWORD"] = "pw"
    # restored, the swap answering 1; every key back (the empty name too)
    subprocess.run(["redis-cli", "--no-auth-warning", "FLUSHALL"], env=env, check=True)
    cluster.redis.stage_restore(ds, snap)
    assert cluster.redis.swap_restore(ds)
    cluster.redis.drop_restore(ds)
    got = subprocess.run(["redis-cli", "--no-auth-warning", "--raw", "MGET", "greeting", "",
                          "short"], env=env, capture_output=True, text=True).stdout
    assert got.splitlines() == ["hello world", "empty name", "lived"]
    # a swap whose staged copy is gone (its marker missing) is a failure, not done
    cluster.redis.stage_restore(ds, snap)
    subprocess.run(["redis-cli", "--no-auth-warning", "-n", "15", "FLUSHDB"], env=env,
                   check=True)
    with pytest.raises(DevenvError, match="answered '0', not 1"):
        cluster.redis.swap_restore(ds)


@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_a_cluster_snapshot_is_refused_on_the_local_runtime_saying_where_it_came_from(
        tmp_path: Path, kind: str) -> None:
    src = tmp_path / "snap" / "svc"
    src.mkdir(parents=True)
    (src / "cluster.json").write_text(json.dumps({"kind": kind, "databases": ["svc"]}))
    ds = DataService("svc", kind, settings_class(kind)(), tmp_path / "state", 5000)
    with pytest.raises(DevenvError, match="taken on the kubernetes runtime") as refused:
        data.stage_restore(ds, src)  # (was a bare FileNotFoundError: no base.tar/dump.rdb)
    assert "local processes" in refused.value.message and not (tmp_path / "state").exists()


def test_an_exec_stream_ended_without_its_status_is_a_failure() -> None:
    from devenv.runtime.kube_stream import exit_status

    assert exit_status('{"status": "Success"}') == 0
    with pytest.raises(DevenvError, match="ended without the command's exit status"):
        exit_status("")  # (the heartbeat closed a dead connection)
