"""`provider: k3d` with the cluster at another Kubernetes version than the pinned one: `devenv
up --yes` recreates it with the data carried over (devenv.runtime.kube_recreate). The real
CLI and engine against a FAKE k3d (tests/test_kube_k3d.py's, its clusters in a state file)
whose `cluster delete`/`create` make the FAKE API server (tests/fake_kube_api.py) stand for
a new, empty cluster; its data pods run a real PostgreSQL. No cluster runs here."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_kube_k3d import k3d_against

import conftest
from conftest import Project, free_ports
from fake_kube_api import FakeKubeApi

K3S_130, K3S_131 = "rancher/k3s:v1.30.6-k3s1", "rancher/k3s:v1.31.4-k3s1"
PSQL = 'PGPASSWORD="$POSTGRES_PASSWORD" psql -X -At -U "$POSTGRES_USER" -d postgres -c '


@pytest.fixture
def krec(project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
         ) -> Iterator[FakeKubeApi]:
    fake = FakeKubeApi(controller=True).start()
    k3d_against(fake.url, "k3d-devenv-krec", tmp_path, conftest.ENV, monkeypatch,
                machine_path=False)
    state = tmp_path / "k3d-clusters.json"
    state.write_text(json.dumps([{"name": "devenv-krec",
                                  "nodes": [{"role": "server", "image": K3S_130}]}]))
    monkeypatch.setitem(conftest.ENV, "FAKE_K3D_STATE", str(state))
    monkeypatch.setitem(conftest.ENV, "FAKE_KUBE_URL", fake.url)
    pin(project, "1.30")
    try:
        yield fake
    finally:
        if project.engine_pid():
            project.devenv("stop", "--persist-data", timeout=60)
        fake.stop()


def pin(project: Project, version: str) -> None:
    db = getattr(project, "_krec_db", None) or free_ports(1)[0]
    project._krec_db = db  # type: ignore[attr-defined]  # (the same port at each pin)
    project.write(f"""\
        version: 1
        name: krec
        runtime: kubernetes
        kubernetes: "{version}"
        cluster: {{provider: k3d, namespace: krec}}
        ingress: {{port: {project.ingress_port}}}
        services:
          postgres: {{kind: postgres, port: {db}, password: s3cret-pw}}
        """)  # (a service `postgres`: its database is `postgres` too)


def psql(project: Project, sql: str) -> str:
    done = project.devenv("exec", "postgres", "--", "sh", "-c", PSQL + json.dumps(sql))
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def k3d_calls(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "k3d.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def with_rows(project: Project) -> None:
    """Up at 1.30, a table with rows in the cluster's postgres."""
    project.up()
    psql(project, "CREATE TABLE product (name text); "
                  "INSERT INTO product VALUES ('Green tea'), ('Coffee')")


def test_kube_up_recreates_the_k3d_cluster_at_the_pinned_version_with_its_data(
        project: Project, krec: FakeKubeApi, tmp_path: Path) -> None:
    with_rows(project)
    pin(project, "1.31")
    # without --yes (and no terminal to ask on): refused, nothing deleted
    refused = project.devenv("up", timeout=120)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "devenv up --yes" in refused.stderr and "nothing deleted" in refused.stderr
    assert not [c for c in k3d_calls(tmp_path) if c[:2] == ["cluster", "delete"]]
    assert psql(project, "SELECT count(*) FROM product") == "2"
    # another project's data on the cluster (a claim in its namespace): refused, named
    other = krec.add_claim("blog", "data-db-0", {
        "app.kubernetes.io/managed-by": "devenv", "app.kubernetes.io/instance": "blog",
        "app.kubernetes.io/name": "db"})
    refused = project.devenv("up", "--yes", timeout=180)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "blog/data-db-0 (project blog, service db)" in refused.stderr
    assert "nothing was deleted" in refused.stderr and "devenv stop" in refused.stderr
    assert not [c for c in k3d_calls(tmp_path) if c[:2] == ["cluster", "delete"]]
    del krec.objects[other]  # (that project stopped, its data saved and its claims gone)
    # --yes: each step said; the old cluster deleted, a new one made with the 1.31 image
    done = project.devenv("up", "--yes", timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    for step in ("1/5 reaching the old cluster's data services: postgres",
                 "2/5 snapshot before-k3d-1.30-to-1.31 saved", "3/5 deleting the old cluster",
                 "4/5 creating it at 1.31", "5/5 restoring snapshot before-k3d-1.30-to-1.31"):
        assert step in done.stderr, done.stderr
    calls = k3d_calls(tmp_path)
    assert ["cluster", "delete", "devenv-krec"] in calls
    assert calls.index(["cluster", "delete", "devenv-krec"]) < calls.index(
        ["cluster", "create", "devenv-krec", "--image", K3S_131, "--wait"])
    # the rows (in the database `postgres`) are in the new cluster's; the snapshot is
    # listed, not automatic (`stop` never prunes it)
    assert psql(project, "SELECT name FROM product ORDER BY 1").splitlines() == \
        ["Coffee", "Green tea"]
    assert project.service("postgres")["state"] == "healthy"
    listed = json.loads(project.devenv("snapshot", "list", "--json", check=True).stdout)
    snap = next(s for s in listed if s["name"] == "before-k3d-1.30-to-1.31")
    assert snap["automatic"] is False
    # the next up has nothing to recreate
    again = project.up()
    assert "recreat" not in again.stderr
    assert not (project.root / ".devenv/data/.k3d-recreate.json").exists()


def test_kube_recreate_killed_after_its_snapshot_or_the_delete_is_carried_on(
        project: Project, krec: FakeKubeApi, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    with_rows(project)
    pin(project, "1.31")
    # killed once its snapshot is committed, before the journal says so: carried on with it
    monkeypatch.setitem(conftest.ENV, "DEVENV_FAULTS", "k3d:committed")
    killed = project.devenv("up", "--yes", timeout=180)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    monkeypatch.setitem(conftest.ENV, "DEVENV_FAULTS", "k3d:deleted")
    killed = project.devenv("up", timeout=180)
    assert "snapshot before-k3d-1.30-to-1.31 was saved before the crash (postgres)" in \
        killed.stderr, killed.stderr
    monkeypatch.delitem(conftest.ENV, "DEVENV_FAULTS")
    assert killed.returncode == -9, killed.stdout + killed.stderr  # (SIGKILL: a crash there)
    assert ["cluster", "delete", "devenv-krec"] in k3d_calls(tmp_path)
    assert not [c for c in k3d_calls(tmp_path) if c[:2] == ["cluster", "create"]]
    # the next up (no --yes: it was agreed to) carries on: made at 1.31, the rows back
    done = project.devenv("up", timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "carrying on the recreate" in done.stderr
    assert ["cluster", "create", "devenv-krec", "--image", K3S_131, "--wait"] in \
        k3d_calls(tmp_path)
    assert psql(project, "SELECT count(*) FROM product") == "2"
