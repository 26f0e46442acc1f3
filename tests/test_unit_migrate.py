"""Schema migrations (config/migrate.py), the plan's Kubernetes parts (devenv/migration.py)
and the candidate's pure parts (devenv/candidate.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_kube_k3d import fake_k3d

from devenv.candidate import declared_ports, parse_ports, set_path
from devenv.config.load import load
from devenv.config.migrate import Migration, Pin, Rename, upgrade_data, upgrade_text
from devenv.config.model import CURRENT_VERSION
from devenv.core.errors import ConfigError, UsageError
from devenv.migration import make, rewrite_api_versions

__all__ = ["fake_k3d"]  # (the fixture, used by name)

V1 = """\
# the shop's services
version: 1
services:
  api:
    command: [python, app.py]   # the server
    cwd: api      # its folder
    port: 8000
profiles:
  fast:
    overrides:
      api: {cwd: api, replicas: 2}
"""


def test_version_1_is_rewritten_with_comments_and_layout_kept() -> None:
    up = upgrade_text(V1)
    assert (up.old_version, up.new_version) == (1, CURRENT_VERSION)
    assert up.text == V1.replace("version: 1", "version: 2").replace(
        "cwd: api      # its folder", "path: api     # its folder").replace(
        "{cwd: api,", "{path: api,")
    assert [".".join(c.path) for c in up.changes] == ["services.api.cwd",
                                                      "profiles.fast.overrides.api.cwd"]


def test_a_current_file_is_left_as_it_is() -> None:
    text = "version: 2\nservices: {}\n"
    up = upgrade_text(text)
    assert not up.changed and up.text == text


def test_a_newer_or_missing_version_is_refused_with_its_line() -> None:
    with pytest.raises(ConfigError) as exc:
        upgrade_text("# x\nversion: 99\n")
    assert "devenv.yaml:2 version" in str(exc.value.details[0])
    assert "upgrade devenv" in exc.value.details[0]
    with pytest.raises(ConfigError):
        upgrade_text("services: {}\n")


def test_both_names_set_keeps_the_new_one() -> None:
    up = upgrade_text("version: 1\nservices:\n  api: {command: x, cwd: a, path: b}\n")
    assert "path: b" in up.text and "cwd" not in up.text
    assert "is set too and wins" in str(up.changes[0])


def test_a_chain_of_migrations_renames_then_pins_a_changed_default() -> None:
    registry = {
        1: Migration(1, (Rename(("services", "*", "cwd"), "path", "one name"),)),
        2: Migration(2, (Pin(("services", "*", "restart"), "always", "default became no"),)),
    }
    up = upgrade_text("version: 1\nservices:\n  a:\n    cwd: x\n  b:\n    restart: 'no'\n",
                      registry=registry, target=3)
    assert up.text == ("version: 3\nservices:\n  a:\n    path: x\n    restart: always\n"
                       "  b:\n    restart: 'no'\n")


def test_in_memory_migration_keeps_each_keys_line() -> None:
    data = {"version": 1, "services": {"api": {"cwd": "a"}}}
    where = {("services", "api", "cwd"): ("devenv.yaml", 7)}
    changes = upgrade_data(data, 1, where)
    assert data == {"version": 2, "services": {"api": {"path": "a"}}}
    assert where == {("services", "api", "path"): ("devenv.yaml", 7)}
    assert len(changes) == 1


def test_a_version_1_file_still_loads_and_warns_once(tmp_path: Path) -> None:
    (tmp_path / "api").mkdir()
    (tmp_path / "devenv.yaml").write_text(V1)
    loaded = load(tmp_path, "fast")
    assert loaded.project.services["api"].path == "api"
    assert loaded.project.version == CURRENT_VERSION
    assert any("services.api.cwd: renamed to services.api.path" in w and
               "devenv migrate --confirm" in w for w in loaded.warnings)
    # an error in a migrated key still names the line it was written on
    (tmp_path / "devenv.yaml").write_text("version: 1\nservices:\n  api:\n"
                                          "    command: x\n    cwd: [a]\n")
    with pytest.raises(ConfigError) as exc:
        load(tmp_path)
    assert any(d.startswith("devenv.yaml:5 services.api.path") for d in exc.value.details)


def test_version_2_has_no_cwd(tmp_path: Path) -> None:
    (tmp_path / "devenv.yaml").write_text("version: 2\nservices:\n  api: {command: x, cwd: a}\n")
    with pytest.raises(ConfigError) as exc:
        load(tmp_path)
    assert "cwd" in exc.value.details[0]


def test_personal_overrides_migrate_with_the_file(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "devenv.yaml").write_text("version: 1\nservices:\n  api: {command: x}\n")
    (tmp_path / ".devenv").mkdir()
    (tmp_path / ".devenv" / "local.yaml").write_text("services:\n  api:\n    cwd: a  # mine\n")
    assert load(tmp_path).project.services["api"].path == "a"
    plan = make(tmp_path)
    shown = {c.shown: c for c in plan.files}
    # (ruamel keeps the comment's column: one space fewer)
    assert shown[".devenv/local.yaml"].new == "services:\n  api:\n    path: a # mine\n"
    assert "+version: 2" in shown["devenv.yaml"].diff()
    assert not plan.data


MANIFEST = """\
# autoscaling for the api
apiVersion: autoscaling/v2beta2   # old
kind: HorizontalPodAutoscaler
metadata: {name: api}
spec: {}
---
apiVersion: policy/v1beta1
kind: PodSecurityPolicy
metadata: {name: strict}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
"""


def test_deprecated_api_versions_are_rewritten_or_listed() -> None:
    new, rewritten, manual = rewrite_api_versions(MANIFEST, "1.31", "k8s/hpa.yaml")
    assert new == MANIFEST.replace("autoscaling/v2beta2   # old", "autoscaling/v2   # old")
    assert rewritten == ["HorizontalPodAutoscaler api: apiVersion autoscaling/v2beta2 → "
                         "autoscaling/v2 (removed in 1.26, target 1.31)"]
    assert len(manual) == 1 and manual[0].startswith("k8s/hpa.yaml:7: PodSecurityPolicy strict")
    assert "by hand" in manual[0]
    # for a version that still serves it, nothing changes
    assert rewrite_api_versions(MANIFEST, "1.22", "x")[1] == []


def test_the_plan_rewrites_a_services_manifest(tmp_path: Path) -> None:
    (tmp_path / "k8s").mkdir()
    (tmp_path / "k8s" / "hpa.yaml").write_text(MANIFEST)
    (tmp_path / "devenv.yaml").write_text(
        "version: 2\nservices:\n  api:\n    command: x\n"
        "    kubernetes: {manifests: [k8s/hpa.yaml]}\n")
    plan = make(tmp_path)
    assert [c.shown for c in plan.files] == ["k8s/hpa.yaml"]
    assert "+apiVersion: autoscaling/v2   # old" in plan.files[0].diff()
    assert any("PodSecurityPolicy" in k for k in plan.kube)
    assert (tmp_path / "k8s" / "hpa.yaml").read_text() == MANIFEST  # a plan changes nothing


K3D_PROJECT = "version: 2\nname: shop\nruntime: kubernetes\nkubernetes: '1.31'\n" \
    "cluster: {provider: k3d}\nservices: {}\n"


def test_the_kube_plan_recreates_a_k3d_cluster_at_another_version(
        tmp_path: Path, fake_k3d: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "devenv.yaml").write_text(K3D_PROJECT)
    monkeypatch.setenv("FAKE_K3D_CLUSTERS", json.dumps([{"name": "devenv-shop", "nodes": [
        {"role": "server", "image": "rancher/k3s:v1.29.9-k3s1"}]}]))
    plan = make(tmp_path)
    assert plan.changed and plan.cluster is not None
    assert plan.cluster_snapshot == "before-k3d-1.29-to-1.31"
    step = plan.steps()[-1]
    assert step.startswith("cluster devenv-shop: Kubernetes 1.29 → 1.31")
    assert "`k3d cluster delete devenv-shop`" in step and "snapshot before-k3d-1.29-to-1.31" \
        in step
    assert plan.to_json()["cluster"]["to_image"] == "rancher/k3s:v1.31.4-k3s1"
    # a snapshot of that name already there: the next free one is named
    (tmp_path / ".devenv" / "snapshots" / "before-k3d-1.29-to-1.31").mkdir(parents=True)
    assert make(tmp_path).cluster_snapshot == "before-k3d-1.29-to-1.31-2"
    # a plan only lists clusters
    assert [c[:2] for c in map(json.loads, fake_k3d.read_text().splitlines())] == \
        [["cluster", "list"]] * 2
    # at the pinned version, or not made yet: nothing to do
    monkeypatch.setenv("FAKE_K3D_CLUSTERS", json.dumps([{"name": "devenv-shop", "nodes": [
        {"role": "server", "image": "rancher/k3s:v1.31.4-k3s1"}]}]))
    assert make(tmp_path).cluster is None and not make(tmp_path).changed
    monkeypatch.setenv("FAKE_K3D_CLUSTERS", "[]")
    assert make(tmp_path).cluster is None


def test_the_kube_plan_notes_a_k3d_that_cannot_list(
        tmp_path: Path, fake_k3d: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "devenv.yaml").write_text(K3D_PROJECT)
    monkeypatch.setenv("FAKE_K3D_FAIL", "cluster list")
    plan = make(tmp_path)
    assert plan.cluster is None and not plan.changed
    assert plan.kube == ["cluster devenv-shop: cannot list k3d clusters: k3d cluster list -o "
                         "json failed (3)"]


def test_candidate_ports_and_values() -> None:
    assert parse_ports("20001,20005-20007") == [20001, 20005, 20006, 20007]
    for bad in ("x", "9-1", "70000", ""):
        with pytest.raises(UsageError):
            parse_ports(bad)
    doc: dict[str, object] = {"services": {"api": {"port": 1}}}
    set_path(doc, "services.api.replicas", 2)
    set_path(doc, "ingress.port", 41000)
    assert doc == {"services": {"api": {"port": 1, "replicas": 2}}, "ingress": {"port": 41000}}
    with pytest.raises(UsageError):
        set_path(doc, "services.api.port.x", 1)


def test_the_default_candidate_ports_are_never_ephemeral_nor_the_suites() -> None:
    """An outgoing connection takes a port of the ephemeral range; had the copy's default
    range been inside it (41000-41999 was), the copy could not bind what it picked."""
    from devenv.candidate import DEFAULT_PORTS
    from ports import BENCHES, EPHEMERAL, TESTS

    ports = parse_ports(DEFAULT_PORTS)
    low = int(EPHEMERAL.read_text().split()[0]) if EPHEMERAL.exists() else 32768
    assert max(ports) < min(low, 32768)  # Linux's default range starts at 32768
    assert not set(ports) & (set(TESTS) | set(BENCHES))
    assert len(ports) >= 1000


def test_every_declared_port_is_remapped(tmp_path: Path) -> None:
    (tmp_path / "devenv.yaml").write_text(
        "version: 2\nmonitoring: {port: 9100}\nservices:\n  api: {command: x, port: 8000}\n"
        "  job: {command: y, restart: 'no'}\n")
    assert declared_ports(load(tmp_path).project) == ["services.api.port", "ingress.port",
                                                      "monitoring.port"]


def test_candidate_names_never_the_running_environment(tmp_path: Path) -> None:
    """`validate`'s copy: its own name (so namespace and labels on a cluster), its own
    namespace when one is given, the project's k3d cluster, and its own Docker names."""
    from devenv import candidate
    from devenv.data.container import volume_name
    from devenv.kube.render import namespace, project_selector
    from devenv.runtime.docker_spec import network_name

    long = "a" * 70
    assert candidate.copy_name(long, "abc123").endswith("-validate-abc123")
    assert len(candidate.copy_name(long, "abc123")) <= 63
    source = tmp_path / "shop"
    source.mkdir()
    (source / "devenv.yaml").write_text(
        "version: 2\nname: shop\nruntime: kubernetes\nkubernetes: '1.31'\n"
        "cluster: {provider: k3d, namespace: shopns}\n"
        "services:\n  api: {image: x/api:1, port: 8000}\n")
    copy = candidate.make(source, {}, None, list(range(42000, 42100)))
    try:
        real, copied = load(source), load(copy.root)
        assert copied.name.startswith("shop-validate-") and copied.name != real.name
        assert namespace(copied).startswith("shopns-validate-")
        assert project_selector(copied.name) != project_selector(real.name)
        assert copied.project.cluster.name == "devenv-shop"  # the same k3d cluster
        assert network_name(copy.root) != network_name(source)
        assert volume_name(copy.root, "db") != volume_name(source, "db")
    finally:
        candidate.remove(copy)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_migrate_rewrites_keep_the_files_owner_mode_and_symlink(tmp_path: Path) -> None:
    """The engine run as root rewrites devenv.yaml: still the user's file, its mode, and a
    symlinked devenv.yaml stays a link (the file it names gets the text)."""
    from devenv.engine.migration import rewrite

    real = tmp_path / "shared" / "devenv.yaml"
    real.parent.mkdir()
    real.write_text("version: 1\n")
    os.chown(real, 1234, 2345)
    real.chmod(0o640)
    link = tmp_path / "devenv.yaml"
    link.symlink_to(real)
    rewrite(link, "version: 2\n")
    assert link.is_symlink() and link.read_text() == "version: 2\n"
    st = real.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1234, 2345, 0o640)
    assert [p.name for p in real.parent.iterdir()] == ["devenv.yaml"]  # no temp file left
