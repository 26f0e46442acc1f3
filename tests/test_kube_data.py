"""On `runtime: kubernetes` a data service runs once, as its StatefulSet in the cluster, and
devenv's data commands act on that server through the API's exec stream: the real CLI and
engine against the FAKE API server (tests/fake_kube_api.py), whose data services' pods run
a real PostgreSQL / Redis (the bundled binaries) and whose `exec` runs the pod's command as a
local process reaching it. Not a real cluster: none can run here."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
import redis
from test_kube_k3d import k3d_against

import conftest
from conftest import Project, free_ports
from fake_kube_api import FakeKubeApi

NS = "kdata"
PSQL = 'PGPASSWORD="$POSTGRES_PASSWORD" psql -X -At -U "$POSTGRES_USER" -d shop -c '
REDIS = 'REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli --no-auth-warning '


@pytest.fixture
def kdata(project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
          ) -> Iterator[FakeKubeApi]:
    fake = FakeKubeApi(controller=True).start()
    k3d_against(fake.url, "k3d-devenv-kdata", tmp_path, conftest.ENV, monkeypatch,
                machine_path=False)  # (no kubectl: `devenv exec` uses the API's exec stream)
    monkeypatch.setitem(conftest.ENV, "FAKE_K3D_CLUSTERS", json.dumps([{
        "name": "devenv-kdata", "nodes": [{"role": "server",
                                           "image": "rancher/k3s:v1.31.4-k3s1"}]}]))
    data = project.root / "data"
    data.mkdir()
    (data / "schema.sql").write_text(
        "CREATE TABLE product (id serial PRIMARY KEY, name text NOT NULL);\n"
        "INSERT INTO product (name) VALUES ('Green tea'), ('Coffee');\n")
    (data / "cache.redis").write_text('SET greeting "hello world"\n')
    db, cache = free_ports(2)
    project.write(f"""\
        version: 1
        name: kdata
        runtime: kubernetes
        kubernetes: "1.31"
        cluster: {{provider: k3d, namespace: {NS}}}
        ingress: {{port: {project.ingress_port}}}
        services:
          db: {{kind: postgres, port: {db}, databases: [shop], password: s3cret-pw}}
          cache: {{kind: redis, port: {cache}}}
        datasets:
          demo:
            files:
              db/shop: [data/schema.sql]
              cache: [data/cache.redis]
        """)
    try:
        yield fake
    finally:
        if project.engine_pid():
            project.devenv("stop", "--persist-data", timeout=60)
        fake.stop()


def in_pod(project: Project, service: str, script: str) -> str:
    """`devenv exec SERVICE -- sh -c SCRIPT`: in its pod, through the API's exec stream."""
    done = project.devenv("exec", service, "--", "sh", "-c", script)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def products(project: Project) -> list[str]:
    return in_pod(project, "db", PSQL + "'SELECT name FROM product ORDER BY id'").splitlines()


def local_servers(project: Project) -> list[str]:
    """Data servers this machine runs for the project (the local runtime's mark them)."""
    found = []
    for proc in psutil.process_iter(["name"]):
        try:
            if proc.info["name"] in ("postgres", "redis-server") and \
                    proc.environ().get("DEVENV_PROJECT") == str(project.root):
                found.append(f"{proc.info['name']} {proc.pid}")
        except psutil.Error:
            continue
    return found


def test_kube_data_commands_act_on_the_clusters_one_server(
        project: Project, kdata: FakeKubeApi) -> None:
    project.up()
    # one server per data service: the StatefulSet's pod; none on this machine
    assert set(kdata.data) == {"db-0", "cache-0"}
    assert local_servers(project) == []
    db = project.service("db")
    assert db["state"] == "healthy" and [i["id"] for i in db["instances"]] == ["db-1#db-0"]
    assert project.service("cache")["state"] == "healthy"  # (redis-cli ping in its pod)
    # a dataset goes into the cluster's server (seen in its pod) ...
    project.devenv("data", "load", "--dataset", "demo", check=True)
    assert products(project) == ["Green tea", "Coffee"]
    assert in_pod(project, "cache", REDIS + "GET greeting") == "hello world"
    # ... which the engine's address reaches too (a port-forward to the pod)
    url = db["url"].replace("***", "s3cret-pw")
    cache = redis.Redis.from_url(project.service("cache")["url"].replace("***", "devpass"))
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM product").fetchone() == (2,)
        conn.execute("DELETE FROM product WHERE name = 'Coffee'")
        # a snapshot of the cluster's data; changed; restored
        project.devenv("snapshot", "save", "one", check=True)
        assert "one" in project.devenv("snapshot", "list", check=True).stdout
        conn.execute("DELETE FROM product")
    cache.set("greeting", "changed")
    project.devenv("snapshot", "restore", "one", check=True, timeout=60)
    # (seen in the pods; no staging database or key left behind)
    seen = in_pod(project, "db", PSQL + "'SELECT name FROM product ORDER BY id' -c "
                  "'SELECT datname FROM pg_database ORDER BY 1'")
    assert seen.splitlines() == ["Green tea", "postgres", "shop", "template0", "template1"]
    seen = in_pod(project, "cache", f"{REDIS} GET greeting; {REDIS} -n 15 DBSIZE")
    assert seen.splitlines() == ["hello world", "0"]
    assert project.service("db")["state"] == "healthy"
    # reset: empty, provisioned data in the same server
    project.devenv("data", "reset", check=True)
    assert in_pod(project, "db", PSQL + "\"SELECT count(*) FROM pg_tables WHERE tablename = "
                  "'product'\"") == "0"
    assert in_pod(project, "cache", REDIS + "DBSIZE") == "0"
    assert set(kdata.data) == {"db-0", "cache-0"} and local_servers(project) == []


def cut_copy(project: Project, name: str, into: str) -> None:
    """Snapshot `into`: `name` with its PostgreSQL dump cut in half, its manifest's checksums
    agreeing (as a copy cut short, then checksummed, would): only the restore can tell."""
    store = project.root / ".devenv" / "snapshots"
    shutil.copytree(store / name, store / into)
    dump = store / into / "db" / "0.dump"
    dump.write_bytes(dump.read_bytes()[: dump.stat().st_size // 2])
    manifest = json.loads((store / into / "manifest.json").read_text())
    manifest["name"] = into
    manifest["services"]["db"]["files"]["0.dump"] = {
        "size": dump.stat().st_size, "sha256": hashlib.sha256(dump.read_bytes()).hexdigest()}
    (store / into / "manifest.json").write_text(json.dumps(manifest))


def test_kube_a_failed_restore_changes_nothing_and_a_crashed_one_is_finished(
        project: Project, kdata: FakeKubeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(conftest.ENV, "DEVENV_FAULTS", "restore:journaled")
    project.up()  # (its engine dies once a restore's copies are staged and journaled)
    project.devenv("data", "load", "--dataset", "demo", check=True)
    project.devenv("snapshot", "save", "good", check=True)
    cut_copy(project, "good", "cut")
    databases = "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database"
    seen = in_pod(project, "db", PSQL + "\"DELETE FROM product WHERE name = 'Coffee'\" -c "
                  "'SELECT name FROM product' -c " + shlex.quote(databases))
    assert seen.splitlines() == ["DELETE 1", "Green tea", "postgres,shop,template0,template1"]
    # a dump that pg_restore cannot read: the restore fails, saying the live data is as it was
    failed = project.devenv("snapshot", "restore", "cut", timeout=60)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "the live data of db is unchanged" in failed.stderr, failed.stderr
    seen = in_pod(project, "db", PSQL + "'SELECT name FROM product' -c " +
                  shlex.quote(databases))
    assert seen.splitlines() == ["Green tea", "postgres,shop,template0,template1"]
    # a restore whose engine is killed (kill -9) after its copies are staged: the next `up`
    # finishes it, and says so
    engine = project.engine_pid()
    crashed = project.devenv("snapshot", "restore", "good", timeout=60)
    assert crashed.returncode != 0
    assert conftest.wait_for(lambda: not psutil.pid_exists(engine or 0), 10)
    monkeypatch.delitem(conftest.ENV, "DEVENV_FAULTS")
    again = project.devenv("up", timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "restore of snapshot 'good' was cut short by a crash after its data was ready; " \
        "it was completed" in again.stderr, again.stderr
    seen = in_pod(project, "db", PSQL + "'SELECT name FROM product ORDER BY id' -c " +
                  shlex.quote(databases))
    assert seen.splitlines() == ["Green tea", "Coffee", "postgres,shop,template0,template1"]
    seen = in_pod(project, "cache", f"{REDIS} GET greeting; {REDIS} -n 15 DBSIZE")
    assert seen.splitlines() == ["hello world", "0"]
