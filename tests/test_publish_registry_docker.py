# ruff: noqa: F811  (the docker fixtures are imported from docker_env, then requested)
"""Published images: on the docker runtime, clone A publishes a container service's image to
a real registry (Debian's docker-registry, started here), clone B syncs the config branch and
runs the service from the image pulled from that registry, its local copy removed first.
Real git (two clones and a bare remote), a real Docker Engine (tests/docker_env.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from git_clones import git, make_clones, stopped_after

from conftest import Project, free_ports, wait_for
from devenv.config import artifacts as manifest
from devenv.config.load import load
from devenv.core.errors import ConfigError, UsageError
from devenv.teams import images
from docker_env import _checked, docker_engine, image  # noqa: F401  (the fixtures)

DIGEST = "ab" * 32

# ---- pure parts: no Docker Engine, no registry


def test_docker_image_artifacts_in_the_manifest_pin_the_image_and_drop_the_build() -> None:
    ref = f"127.0.0.1:5000/shop/api@sha256:{DIGEST}"
    found = manifest.parse({"services": {"api": {"image": ref, "source": "api",
                                                 "version": "v1"}}}, "artifacts.yaml")
    art = found["api"]
    assert (art.image, art.digest, art.is_tree) == (ref, DIGEST, False)
    text = manifest.render(found)
    assert f'image: "{ref}"' in text and "digest" not in text
    services: dict[str, Any] = {"api": {"build": {"context": "api"}, "path": "api",
                                        "watch": {"action": "rebuild"}}}
    manifest.apply(services, found)
    assert services["api"] == {"image": ref, "path": "api",
                               "watch": {"action": "rebuild", "enabled": False}}
    for bad, said in (("127.0.0.1:5000/shop/api:v1", "not an image pinned by digest"),
                      (f"shop api@sha256:{DIGEST}", "not an image pinned by digest")):
        with pytest.raises(ConfigError) as caught:
            manifest.parse({"services": {"api": {"image": bad, "source": "api"}}}, "a.yaml")
        assert said in str(caught.value.problems[0])
    with pytest.raises(ConfigError) as both:
        manifest.parse({"services": {"api": {"image": ref, "digest": DIGEST[:40],
                                             "source": "api"}}}, "a.yaml")
    assert "not both" in str(both.value.problems[0])


def _project(root: Path, head: str) -> Path:
    root.mkdir()
    (root / "devenv.yaml").write_text(
        "version: 2\nruntime: docker\n" + head + "services:\n  api: {build: ./api, port: 8000}\n"
        "  web: {command: python web.py}\n")
    return root


def test_docker_publish_names_the_image_from_the_registry_key(tmp_path: Path) -> None:
    loaded = load(_project(tmp_path / "My Shop", "registry: {url: \"127.0.0.1:5000\"}\n"))
    assert images.wants_image(loaded, "api") and not images.wants_image(loaded, "web")
    assert images.repository(loaded, "api") == "127.0.0.1:5000/my-shop/api"

    none = load(_project(tmp_path / "none", ""))
    with pytest.raises(UsageError) as missing:
        images.repository(none, "api")
    assert "registry.url 127.0.0.1:5000" in (missing.value.hint or "")

    bad = load(_project(tmp_path / "bad", "registry:\n  url: http://reg:5000\n"
                        "  namespace: Team\n"))
    with pytest.raises(ConfigError) as caught:
        images.repository(bad, "api")
    said = [str(p) for p in caught.value.problems]
    assert said[0].startswith("devenv.yaml:4 registry.url: 'http://reg:5000' is not")
    assert said[1].startswith("devenv.yaml:5 registry.namespace: 'Team' is not")


# ---- a real registry and a real Docker Engine


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory, docker_engine: Any) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1:<free port>, plain HTTP, no auth, its storage in
    a temporary folder; `host:port`. Installed when missing (as root), else skipped."""
    binary = shutil.which("docker-registry")
    if binary is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "docker-registry"], timeout=600,
                       capture_output=True, check=False,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        binary = shutil.which("docker-registry")
    if binary is None:
        pytest.skip("no docker-registry (Debian: apt-get install docker-registry; "
                    "`make tools` does it as root)")
    trusted = docker_engine.api().info().get("RegistryConfig", {}).get(
        "InsecureRegistryCIDRs") or []
    if "127.0.0.0/8" not in trusted:
        pytest.skip(f"the Docker Engine does not trust registries on loopback ({trusted})")
    (port,) = free_ports(1)
    folder = tmp_path_factory.mktemp("registry")
    config = folder / "config.yml"
    config.write_text(textwrap.dedent(f"""\
        version: 0.1
        log: {{level: warn}}
        storage:
          filesystem: {{rootdirectory: {folder / "data"}}}
          delete: {{enabled: true}}
        http: {{addr: "127.0.0.1:{port}"}}
        """))
    with open(folder / "registry.log", "wb") as log:
        proc = subprocess.Popen([binary, "serve", str(config)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        if not wait_for(lambda: _answers(f"http://127.0.0.1:{port}/v2/"), timeout=20):
            pytest.skip("docker-registry did not answer: "
                        + (folder / "registry.log").read_text(errors="replace")[-300:])
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _docker_project(a: Project, b: Project, registry: str, image: str, port: int) -> None:
    """Clone A's devenv.yaml made a docker project with a built `api`, pushed; B pulls it."""
    a.write(f"version: 2\nruntime: docker\nregistry: {{url: \"{registry}\"}}\n"
            f"ingress: {{port: {a.ingress_port}}}\nservices:\n"
            f"  api: {{build: ./api, port: {port}, health: {{http: /healthz}}, "
            "ingress: {host: api.localhost}}\n")
    # a layer of its own (the test's folder in it), so the registry holds a new image
    (a.root / "api" / "Dockerfile").write_text(
        f"FROM {image}\nCOPY greeting.txt /app/\nENV GREETING=from-registry\n")
    (a.root / "api" / "greeting.txt").write_text(f"made in {a.root}\n")
    git(a.root, "add", "-A")
    git(a.root, "commit", "-qm", "api in a container")
    git(a.root, "push", "-q", "origin", "HEAD:refs/heads/main")
    git(b.root, "pull", "-q", "origin", "main")


def test_docker_published_image_runs_in_a_teammates_clone_from_the_registry(
        tmp_path: Path, registry: str, image: str, docker_engine: Any,
        _checked: list[Path]) -> None:
    from docker.errors import NotFound

    (port,) = free_ports(1)
    a, b, remote = make_clones(tmp_path, "api:\n  command: unused\n")
    _checked += [a.root, b.root]
    client = docker_engine.api()
    with stopped_after(a, b):
        _docker_project(a, b, registry, image, port)
        a.devenv("config", "branch", "feature-x", check=True)
        started = time.monotonic()
        published = a.devenv("publish", "--service", "api", "--version", "v1", "--push",
                             check=True, timeout=300)
        pushed_in = time.monotonic() - started
        repo = f"{registry}/a/api"
        assert f"published api v1: image {repo}@sha256:" in published.stdout
        ref = published.stdout.split("image ", 1)[1].split()[0]
        blob = git(a.root, "rev-parse", "refs/devenv/config/feature-x:artifacts.yaml")
        assert f'image: "{ref}"' in git(remote, "cat-file", "blob", blob)  # pushed, recorded
        with urllib.request.urlopen(f"http://{registry}/v2/a/api/tags/list") as resp:
            assert b'"v1"' in resp.read()  # in the registry itself

        client.remove_image(client.inspect_image(ref)["Id"], force=True)
        with pytest.raises(NotFound):  # so B's Docker Engine has to pull it
            client.inspect_image(ref)
        shutil.rmtree(b.root / "api")  # B runs the image, never a build of its own
        synced = b.devenv("sync", "--branch", "feature-x", "--yes", check=True)
        assert f"+ artifact: image {ref} (from ./, version v1)" in synced.stdout
        started = time.monotonic()
        b.up()
        up_in = time.monotonic() - started
        code, body = b.ingress("/whoami", host="api.localhost")
        assert code == 200 and body["greeting"] == "from-registry"
        assert ref in client.inspect_image(ref)["RepoDigests"]  # pulled from the registry
        print(f"publish (build+push) {pushed_in:.1f}s; up with the pull {up_in:.1f}s")
    with contextlib.suppress(Exception):  # (the pulled image: the registry keeps it)
        client.remove_image(ref, force=True)


def test_docker_publish_to_a_registry_that_is_not_there_says_how_to_fix_it(
        tmp_path: Path, image: str, docker_engine: Any) -> None:
    (port, nobody) = free_ports(2)
    a, b, _ = make_clones(tmp_path, "api:\n  command: unused\n")
    with stopped_after(a, b):
        _docker_project(a, b, f"127.0.0.1:{nobody}", image, port)
        a.devenv("config", "branch", "feature-x", check=True)
        failed = a.devenv("publish", "--service", "api", timeout=300)
        assert failed.returncode == 1, failed.stderr
        assert f"to the registry at 127.0.0.1:{nobody}" in failed.stderr
        assert "docker-registry serve" in failed.stderr and "registry.url" in failed.stderr
        blob = git(a.root, "rev-parse", "refs/devenv/config/feature-x:artifacts.yaml")
        assert "api" not in git(a.root, "cat-file", "blob", blob)  # nothing recorded
        client = docker_engine.api()
        for tagged in client.images(name=f"127.0.0.1:{nobody}/a/api"):  # (made for the push)
            with contextlib.suppress(Exception):
                client.remove_image(tagged["Id"], force=True)
