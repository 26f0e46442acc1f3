# ruff: noqa: F811  (the cluster fixture is imported, then requested)
"""`devenv validate` on `runtime: kubernetes` (the fake API server of
tests/fake_kube_api.py): what the copy made in its own namespace goes with it, its data's
PersistentVolumeClaims too."""

from __future__ import annotations

from test_kube_runtime_up import NS, cluster  # noqa: F401

from conftest import Project, free_ports
from fake_kube_api import FakeKubeApi


def test_kube_validate_leaves_nothing_of_the_copy_in_the_cluster(
        project: Project, cluster: FakeKubeApi) -> None:
    done = project.devenv("validate", "--all-services", "--json", "--ports",
                          ",".join(str(p) for p in free_ports(5)), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    made = [p for p in cluster.objects if f"/namespaces/{NS}-validate-" in p]
    assert not [p for p in made if "persistentvolumeclaims" in p], sorted(made)
    assert not [p for p in made if p.count("/") > 5], sorted(made)
