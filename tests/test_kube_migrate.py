"""`devenv migrate` on `provider: k3d` with the cluster at another Kubernetes version than
the pinned one: the dry run shows the recreate and changes nothing; --confirm recreates the
cluster with its data carried over; a failure after the delete says what to run. The real
CLI and engine against test_kube_recreate.py's FAKE k3d and FAKE API server (its data pods
run a real PostgreSQL). No cluster runs here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_kube_recreate import K3S_131, k3d_calls, krec, pin, psql, with_rows

import conftest
from conftest import Project
from fake_kube_api import FakeKubeApi

__all__ = ["krec"]  # (the fixture, used by name)

SNAPSHOT = "before-k3d-1.30-to-1.31"
CREATE = ["cluster", "create", "devenv-krec", "--image", K3S_131, "--wait"]


def _snapshots(project: Project) -> list[str]:
    listed = json.loads(project.devenv("snapshot", "list", "--json", check=True).stdout)
    return [s["name"] for s in listed]


def _changes(tmp_path: Path) -> list[list[str]]:
    return [c for c in k3d_calls(tmp_path) if c[:2] in (["cluster", "delete"],
                                                         ["cluster", "create"])]


def test_kube_migrate_dry_run_shows_the_cluster_recreate_and_changes_nothing(
        project: Project, krec: FakeKubeApi, tmp_path: Path) -> None:
    with_rows(project)
    pin(project, "1.31")
    yaml_before = (project.root / "devenv.yaml").read_text()
    dry = project.devenv("migrate", "--dry-run", timeout=60)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    said = " ".join(dry.stdout.split())
    assert "cluster devenv-krec: Kubernetes 1.30 → 1.31" in said, said
    assert f"snapshot {SNAPSHOT} of its data services taken" in said
    assert "`k3d cluster delete devenv-krec`" in said
    assert f"`k3d cluster create devenv-krec --image {K3S_131}`" in said
    assert "dry run: nothing was changed" in said
    as_json = json.loads(project.devenv("migrate", "--dry-run", "--json", check=True).stdout)
    assert as_json["changed"] is True
    assert {k: as_json["cluster"][k] for k in ("from", "to", "snapshot", "to_image")} == \
        {"from": "1.30", "to": "1.31", "snapshot": SNAPSHOT, "to_image": K3S_131}
    # nothing changed: no delete or create, no snapshot, the file and the rows as they were
    assert _changes(tmp_path) == []
    assert SNAPSHOT not in _snapshots(project)
    assert not (project.root / ".devenv/data/.k3d-recreate.json").exists()
    assert (project.root / "devenv.yaml").read_text() == yaml_before
    assert psql(project, "SELECT count(*) FROM product") == "2"


def test_kube_migrate_confirm_recreates_the_cluster_at_the_pinned_version_with_its_data(
        project: Project, krec: FakeKubeApi, tmp_path: Path) -> None:
    with_rows(project)
    pin(project, "1.31")
    done = project.devenv("migrate", "--confirm", timeout=180)  # (no --yes: it is the consent)
    assert done.returncode == 0, done.stdout + done.stderr
    said = " ".join(done.stdout.split())
    assert f"snapshot {SNAPSHOT} taken first" in said, said
    assert ("applied: cluster devenv-krec: Kubernetes 1.30 → 1.31, recreated; the data of postgres "
            f"carried over (snapshot {SNAPSHOT})") in said
    assert "the environment came up healthy" in said
    assert _changes(tmp_path) == [["cluster", "delete", "devenv-krec"], CREATE]
    # the rows are in the new cluster's postgres, which runs healthy
    assert psql(project, "SELECT name FROM product ORDER BY 1").splitlines() == \
        ["Coffee", "Green tea"]
    assert project.service("postgres")["state"] == "healthy"
    assert SNAPSHOT in _snapshots(project)
    # each step is in the engine's log; nothing is left to migrate
    logs = project.devenv("logs", "devenv", check=True).stdout
    assert "4/5 creating it at 1.31" in logs and "5/5 restoring snapshot" in logs
    assert project.devenv("migrate", "--dry-run", check=True).stdout.startswith(
        "nothing to migrate")


def test_kube_migrate_failing_after_the_delete_says_what_to_run_and_is_audited(
        project: Project, krec: FakeKubeApi, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(conftest.ENV, "FAKE_K3D_FAIL", "cluster create")  # (the engine's too)
    with_rows(project)
    pin(project, "1.31")
    failed = project.devenv("migrate", "--confirm", timeout=180)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    said = " ".join(failed.stderr.split())
    assert "migration failed: k3d cluster create devenv-krec" in said, said
    assert "the old cluster devenv-krec is deleted" in said
    assert f"its data is in snapshot {SNAPSHOT}" in said
    assert "then `devenv up` carries on" in said
    assert f"`devenv snapshot restore {SNAPSHOT}`" in said
    assert "nothing else was migrated" in said
    assert ["cluster", "delete", "devenv-krec"] in k3d_calls(tmp_path)
    # the audit trail records it: exit 1 and why
    records = [json.loads(line) for line in
               (project.root / ".devenv/audit.log").read_text().splitlines()]
    last = records[-1]
    assert last["command"] == "migrate" and last["exit"] == 1
    assert "the old cluster devenv-krec is deleted" in last["error"]
    # what it said to do works: `devenv up` carries on, the rows are back
    monkeypatch.delitem(conftest.ENV, "FAKE_K3D_FAIL")
    up = project.devenv("up", timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "carrying on the recreate" in up.stderr
    assert CREATE in k3d_calls(tmp_path)
    assert psql(project, "SELECT count(*) FROM product") == "2"
