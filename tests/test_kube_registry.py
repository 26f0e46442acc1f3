# ruff: noqa: F811  (the docker and registry fixtures are imported, then requested)
"""Images devenv builds, on a cluster that exists (`cluster.provider: existing`): tagged with
their files' digest and pushed to `registry:`, the Deployment running that reference.

The pure parts (the tag, the reference, `render`, the refusal without a registry) need
nothing; the end-to-end test runs the real CLI and engine with a real Docker Engine
(tests/docker_env.py), Debian's real docker-registry on 127.0.0.1 (the fixture of
tests/test_publish_registry_docker.py) and the FAKE API server (tests/fake_kube_api.py): what
it proves is what devenv builds, pushes and applies, not how a real cluster pulls."""

from __future__ import annotations

import contextlib
import json
import shutil
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_publish_registry_docker import registry  # noqa: F401  (the fixture)

import conftest
from conftest import Project, free_ports, wait_for
from devenv.cli.main import main
from devenv.config.load import load
from devenv.core.errors import EXIT_USAGE, UsageError
from devenv.kube.render import check_registry, content_tag, render
from devenv.plan import make_plan
from docker_env import _checked, docker_engine, image  # noqa: F401  (the fixtures)
from fake_kube_api import FakeKubeApi

NS = "kreg"


def _files(root: Path, head: str) -> Path:
    (root / "api").mkdir(parents=True)
    (root / "api" / "Dockerfile").write_text("FROM scratch\nCOPY greeting.txt /\n")
    (root / "api" / "greeting.txt").write_text("hello\n")
    (root / "devenv.yaml").write_text(
        f"version: 2\nname: K Shop\nruntime: kubernetes\n{head}\nservices:\n"
        "  api: {build: ./api, port: 8000}\n  web: {image: example/web:1, port: 8001}\n")
    return root


def _containers(loaded: Any) -> dict[str, dict[str, Any]]:
    return {item.service: m["spec"]["template"]["spec"]["containers"][0]
            for item in render(loaded, make_plan(loaded)) for m in item.manifests
            if m["kind"] == "Deployment"}


# ---- pure parts: no Docker Engine, no registry, no cluster


def test_kube_built_image_tag_is_its_files_digest(tmp_path: Path) -> None:
    a = _files(tmp_path / "a", "") / "api"
    tag = content_tag(a)
    assert len(tag) == 16 and int(tag, 16) >= 0  # a valid, immutable tag: hex, not :latest
    b = tmp_path / "b"
    shutil.copytree(a, b)  # elsewhere, other mtimes: the same files, the same tag
    (b / "greeting.txt").touch()
    assert content_tag(b) == tag
    (b / "__pycache__").mkdir()  # (what a fingerprint skips)
    (b / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert content_tag(b) == tag
    (b / "greeting.txt").write_text("hello!\n")  # other bytes: another tag
    assert content_tag(b) != tag
    assert content_tag(a, "Dockerfile.dev") != tag  # another Dockerfile: another build


def test_kube_render_on_an_existing_cluster_runs_the_pushed_reference(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    root = _files(tmp_path / "shop", "cluster: {provider: existing}\n"
                  "registry: {url: \"127.0.0.1:5000\"}")
    tag = content_tag(root / "api")
    api = _containers(load(root))["api"]
    assert (api["image"], api["imagePullPolicy"]) == (
        f"127.0.0.1:5000/k-shop/k-shop-api:{tag}", "IfNotPresent")
    assert _containers(load(root))["web"]["image"] == "example/web:1"

    team = _files(tmp_path / "team", "cluster: {provider: existing}\n"
                  "registry: {url: \"reg.example.com\", namespace: acme/dev}")
    assert _containers(load(team))["api"]["image"] == \
        f"reg.example.com/acme/dev/k-shop-api:{tag}"

    k3d = _files(tmp_path / "k3d", "cluster: {provider: k3d}\n"
                 "registry: {url: \"127.0.0.1:5000\"}")  # k3d: imported, as before
    api = _containers(load(k3d))["api"]
    assert (api["image"], api["imagePullPolicy"]) == ("devenv.local/k-shop-api:dev", "Never")

    none = _files(tmp_path / "none", "cluster: {provider: existing}")
    with pytest.raises(UsageError) as refused:
        check_registry(load(none), ["api", "web"])
    assert refused.value.exit_code == EXIT_USAGE
    assert "api: devenv builds its image" in refused.value.message
    hint = refused.value.hint or ""
    assert "registry: {url:" in hint and "services.api an `image:`" in hint
    assert "cluster.provider: k3d" in hint
    check_registry(load(none), ["web"])  # (only an image: nothing to push)
    monkeypatch.chdir(none)
    assert main(["render", "--services", "api"]) == 0  # render still writes them, and says why not
    said = capsys.readouterr()
    assert "api: devenv builds its image" in said.err.replace("\n", " ")
    assert "image: devenv.local/k-shop-api:dev" in said.out


# ---- a real Docker Engine, a real registry, the fake API server


@pytest.fixture
def existing(project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
             ) -> Iterator[FakeKubeApi]:
    """The fake API server as the kubeconfig's context `office` (a cluster that exists)."""
    fake = FakeKubeApi(controller=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "office",
        "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
        "users": [{"name": "fake", "user": {}}],
        "contexts": [{"name": "office", "context": {"cluster": "fake", "user": "fake"}}]}))
    monkeypatch.setitem(conftest.ENV, "KUBECONFIG", str(kubeconfig))
    try:
        yield fake
    finally:
        if project.engine_pid():
            project.devenv("stop", timeout=60)
        fake.stop()


def _tags(registry: str, name: str) -> list[str]:
    try:
        with urllib.request.urlopen(f"http://{registry}/v2/{name}/tags/list", timeout=5) as r:
            return list(json.loads(r.read()).get("tags") or [])
    except OSError:
        return []


def test_kube_existing_cluster_build_is_pushed_and_a_change_rolls_out(
        project: Project, existing: FakeKubeApi, registry: str, image: str,
        docker_engine: Any, _checked: list[Path]) -> None:
    _checked.append(project.root)
    (port,) = free_ports(1)
    layout = textwrap.dedent(f"""\
        version: 2
        name: kreg
        runtime: kubernetes
        cluster: {{provider: existing, context: office, namespace: {NS}}}
        ingress: {{port: {project.ingress_port}}}
        {{registry}}
        services:
          api: {{build: ./api, path: api, port: {port}}}
        """)
    api = project.root / "api"
    api.mkdir()
    (api / "Dockerfile").write_text(f"FROM {image}\nCOPY greeting.txt /app/\n")
    (api / "greeting.txt").write_text(f"made in {project.root}\n")  # a layer of its own

    project.write(layout.replace("{registry}", ""))  # no registry: refused, nothing started
    refused = project.devenv("up")
    assert refused.returncode == 2, refused.stderr
    said = " ".join(refused.stderr.split())
    assert "api: devenv builds its image" in said and "registry: {url:" in said
    assert project.engine_pid() is None and not existing.pods("api")

    project.write(layout.replace("{registry}", f"registry: {{url: \"{registry}\"}}"))
    client = docker_engine.api()
    deployment = f"/apis/apps/v1/namespaces/{NS}/deployments/api"
    pushed: list[str] = []
    try:
        project.up()
        first = f"{registry}/kreg/kreg-api:{content_tag(api)}"
        pushed.append(first)
        assert content_tag(api) in _tags(registry, "kreg/kreg-api")  # in the registry
        template = existing.objects[deployment]["spec"]["template"]
        assert template["spec"]["containers"][0]["image"] == first
        (pod,) = existing.pods("api")

        (api / "greeting.txt").write_text("changed\n")  # the watcher rebuilds: a new tag
        second = f"{registry}/kreg/kreg-api:{content_tag(api)}"
        pushed.append(second)
        assert wait_for(lambda: existing.objects[deployment]["spec"]["template"]["spec"][
            "containers"][0]["image"] == second, timeout=60), project.devenv("logs").stdout
        assert content_tag(api) in _tags(registry, "kreg/kreg-api")
        assert wait_for(lambda: existing.pods("api") and pod not in existing.pods("api"),
                        timeout=30)  # rolled out: the old pod replaced
    finally:
        for ref in pushed:  # (the registry keeps them; the Engine's copies go)
            with contextlib.suppress(Exception):  # (not built: the test failed before)
                client.remove_image(ref, force=True)


def test_kube_push_to_a_registry_that_is_not_there_says_what_it_said(
        image: str, docker_engine: Any) -> None:
    from devenv.core.errors import DevenvError
    from devenv.runtime.kube_runtime import _push

    (nobody,) = free_ports(1)
    client = docker_engine.api()
    repo = f"127.0.0.1:{nobody}/kreg/kreg-api"
    client.tag(image, repo, "0123456789abcdef")
    try:
        with pytest.raises(DevenvError) as failed:
            _push("api", f"{repo}:0123456789abcdef", f"127.0.0.1:{nobody}")
        said = failed.value.message
        assert said.startswith(f"api: cannot push {repo}:0123456789abcdef to the registry at "
                               f"127.0.0.1:{nobody}: ")
        assert "connection refused" in said.lower()  # (the Engine's words, passed on)
        assert "registry.url" in (failed.value.hint or "")
    finally:
        client.remove_image(f"{repo}:0123456789abcdef")
