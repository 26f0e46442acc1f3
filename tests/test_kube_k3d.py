"""`provider: k3d`: the k3d commands devenv runs, recorded by a fake k3d on PATH (no cluster
can run here), and doctor's check for the k3d CLI."""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv.checks import k3d_check
from devenv.core.errors import DevenvError
from devenv.kube import k3d

# A FAKE k3d: it records each command. Its clusters are $FAKE_K3D_CLUSTERS; or, when
# $FAKE_K3D_STATE names a file, that file's list, which `cluster delete` and `cluster create`
# change, telling the fake API server ($FAKE_KUBE_URL, tests/fake_kube_api.py) that it now
# fakes a NEW cluster (every object and volume gone): no cluster runs here.
FAKE_K3D = """#!{python}
import json, os, sys, urllib.request
with open(os.environ["FAKE_K3D_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if os.environ.get("FAKE_K3D_FAIL") in (sys.argv[1], " ".join(sys.argv[1:3])):
    print("boom: no docker", file=sys.stderr)
    sys.exit(3)
state = os.environ.get("FAKE_K3D_STATE")
clusters = json.loads(open(state).read() if state else
                      os.environ.get("FAKE_K3D_CLUSTERS", "[]"))
if sys.argv[1:3] == ["cluster", "list"]:
    print(json.dumps(clusters))
elif state and sys.argv[1:3] in (["cluster", "delete"], ["cluster", "create"]):
    name = sys.argv[3]
    clusters = [c for c in clusters if c["name"] != name]
    if sys.argv[2] == "create":
        image = sys.argv[sys.argv.index("--image") + 1]
        clusters.append({{"name": name, "nodes": [{{"role": "server", "image": image}}]}})
    urllib.request.urlopen(urllib.request.Request(
        os.environ["FAKE_KUBE_URL"] + "/fake/new-cluster", method="POST"), timeout=60)
    with open(state, "w") as fh:
        fh.write(json.dumps(clusters))
"""


def write_fake_k3d(tmp_path: Path) -> Path:
    """The fake k3d in `tmp_path/bin`; that folder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "k3d"
    exe.write_text(FAKE_K3D.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def k3d_against(server: str, context: str, tmp_path: Path, env: dict[str, str],
                monkeypatch: pytest.MonkeyPatch, *, machine_path: bool = True) -> None:
    """Set in `env` (the tests' environment for devenv): the fake k3d first on PATH (with the
    machine's PATH behind it, or, without `machine_path`, only this Python's folder: no
    kubectl), its log in `tmp_path`, and a kubeconfig whose `context` (k3d names it
    k3d-<cluster>) reaches the fake API server at `server`."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": context,
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "fake", "user": {}}],
        "contexts": [{"name": context, "context": {"cluster": "fake", "user": "fake"}}]}))
    rest = env["PATH"] if machine_path else str(Path(sys.executable).parent)
    monkeypatch.setitem(env, "PATH", f"{write_fake_k3d(tmp_path)}{os.pathsep}{rest}")
    monkeypatch.setitem(env, "KUBECONFIG", str(kubeconfig))
    monkeypatch.setitem(env, "FAKE_K3D_LOG", str(tmp_path / "k3d.log"))


@pytest.fixture
def fake_k3d(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    bin_dir = write_fake_k3d(tmp_path)
    log = tmp_path / "k3d.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_K3D_LOG", str(log))
    yield log


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_k3d_creates_the_cluster_at_the_pinned_version(fake_k3d: Path) -> None:
    found = k3d.ensure_cluster("devenv-shop", "1.31")
    assert found.action == "created"
    assert _calls(fake_k3d) == [
        ["cluster", "list", "-o", "json"],
        ["cluster", "create", "devenv-shop", "--image", "rancher/k3s:v1.31.4-k3s1", "--wait"]]
    k3d.import_images("devenv-shop", ["devenv.local/shop-api:dev"])
    assert _calls(fake_k3d)[-1] == ["image", "import", "devenv.local/shop-api:dev",
                                    "--cluster", "devenv-shop"]


def test_k3d_reuses_a_cluster_at_that_version(fake_k3d: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    clusters = [{"name": "devenv-shop", "nodes": [
        {"role": "server", "image": "rancher/k3s:v1.28.9-k3s1"}]}]
    monkeypatch.setenv("FAKE_K3D_CLUSTERS", json.dumps(clusters))
    assert k3d.ensure_cluster("devenv-shop", "1.28.9").action == "reused"
    other = k3d.ensure_cluster("devenv-shop", "1.31")  # the version changed
    assert (other.action, other.found_image) == ("recreate-needed",
                                                 "rancher/k3s:v1.28.9-k3s1")
    assert all(c[:2] == ["cluster", "list"] for c in _calls(fake_k3d))  # nothing made


def test_k3d_failure_says_what_k3d_said(fake_k3d: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_K3D_FAIL", "cluster")
    with pytest.raises(DevenvError) as caught:
        k3d.ensure_cluster("devenv-shop", "1.31")
    assert "k3d cluster list -o json failed (3)" in caught.value.message
    assert caught.value.details == ["boom: no docker"]
    with pytest.raises(DevenvError) as unknown:
        k3d.k3s_image("1.37")
    assert 'give a patch release' in (unknown.value.hint or "")


def test_k3d_doctor_check(fake_k3d: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert k3d_check().status == "ok"
    monkeypatch.setenv("PATH", "/nonexistent")
    check = k3d_check()
    assert check.status == "fail" and "k3d" in check.message
    assert "install.sh" in check.fix
