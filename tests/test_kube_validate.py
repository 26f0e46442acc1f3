# ruff: noqa: F811  (the cluster fixture is imported, then requested)
"""`devenv validate` on `runtime: kubernetes` (the fake API server of
tests/fake_kube_api.py): what the copy made in its own namespace goes with it, its data's
PersistentVolumeClaims too, and its Namespace."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from test_kube_runtime_up import NS, cluster  # noqa: F401

from conftest import Project, free_ports, wait_for
from fake_kube_api import FakeKubeApi


def test_kube_validate_leaves_nothing_of_the_copy_in_the_cluster(
        project: Project, cluster: FakeKubeApi) -> None:
    done = project.devenv("validate", "--all-services", "--json", "--ports",
                          ",".join(str(p) for p in free_ports(5)), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    # the copy made its Namespace and objects in it ...
    applied = {p for m, p, _ in cluster.requests if m == "PATCH"}
    assert [p for p in applied if p.startswith(f"/api/v1/namespaces/{NS}-validate-")
            and p.count("/") == 4], sorted(applied)
    # ... and nothing of it stays: no object in its namespace, not the Namespace either
    made = [p for p in cluster.objects if f"/namespaces/{NS}-validate-" in p]
    assert made == [], sorted(made)
    # the project's own namespace is not the copy's: never deleted
    assert not [p for m, p, _ in cluster.requests if m == "DELETE" and p.rstrip("/") ==
                f"/api/v1/namespaces/{NS}"]


def test_a_copy_whose_engine_died_leaves_nothing_in_the_cluster_either(
        project: Project, cluster: FakeKubeApi) -> None:
    """Its `validate` and its engine killed (kill -9): the next `validate` finds the copy,
    and, with no engine to stop it, deletes its objects and claims itself (from the copy's
    cluster marker) before its folder goes, after which nothing could find them."""
    first = project.popen("validate", "--all-services", "--json", "--ports",
                          ",".join(str(p) for p in free_ports(5)))

    def claims() -> list[str]:
        return [p for p in list(cluster.objects) if f"/namespaces/{NS}-validate-" in p
                and "persistentvolumeclaims" in p]

    assert wait_for(claims, timeout=60, interval=0.01)
    first.send_signal(signal.SIGSTOP)  # (before it can ask its engine to stop)
    copies = [p for p in Path("/tmp").glob("devenv-validate-*")
              if (p / "c" / ".devenv" / "run" / "kubernetes.json").exists()
              and json.loads((p / "owner.json").read_text())["pid"] == first.pid]
    assert len(copies) == 1
    engine = int((copies[0] / "c" / ".devenv" / "run" / "engine.pid").read_text())
    os.kill(engine, signal.SIGKILL)
    first.kill()
    first.wait(10)
    assert claims() and copies[0].exists()
    again = project.devenv("validate", "--all-services", "--json", "--ports",
                           ",".join(str(p) for p in free_ports(5)), timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"removed {copies[0]}" in again.stderr.replace("\n", ""), again.stderr
    assert not copies[0].exists()
    assert not claims(), claims()
