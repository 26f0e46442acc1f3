# ruff: noqa: F811  (the cluster fixture is imported, then requested)
"""`devenv validate` on `runtime: kubernetes` (the fake API server of
tests/fake_kube_api.py): what the copy made in its own namespace goes with it, its data's
PersistentVolumeClaims too, and its Namespace."""

from __future__ import annotations

from test_kube_runtime_up import NS, cluster  # noqa: F401

from conftest import Project, free_ports
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
