"""`cluster.provider: k3d`: a local k3s cluster made (or reused) through the k3d CLI, always
with argv lists (no shell). Only the commands are tested here (a fake k3d on PATH records
them): no cluster can run where this was written.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from devenv.core.errors import DevenvError
from devenv.kube.render import slug

INSTALL_HINT = ("install k3d: curl -s https://raw.githubusercontent.com/k3d-io/k3d/main/"
                "install.sh | bash (or brew install k3d); see https://k3d.io")
# k3s patch releases for a bare major.minor (give kubernetes.version "1.31.4" to choose)
K3S_PATCH = {"1.28": "1.28.15", "1.29": "1.29.10", "1.30": "1.30.6", "1.31": "1.31.4",
             "1.32": "1.32.0"}

Runner = Callable[[Sequence[str]], str]  # argv → its standard output; raises on failure


def k3s_image(version: str) -> str:
    parts = version.removeprefix("v").split(".")
    full = ".".join(parts) if len(parts) == 3 else K3S_PATCH.get(".".join(parts[:2]))
    if full is None:
        raise DevenvError(f"no k3s release known for Kubernetes {version}",
                          hint='give a patch release, e.g. kubernetes: "1.33.1"')
    return f"rancher/k3s:v{full}-k3s1"


def cluster_name(project: str, name: str | None) -> str:
    return name or f"devenv-{slug(project)}"


def run(argv: Sequence[str]) -> str:
    """Run the k3d CLI; its output, or a clear error with what it said."""
    k3d = shutil.which("k3d")
    if k3d is None:
        raise DevenvError("the k3d command is not installed", hint=INSTALL_HINT)
    done = subprocess.run([k3d, *argv[1:]], capture_output=True, text=True, check=False,
                          timeout=600)
    if done.returncode != 0:
        raise DevenvError(f"{' '.join(argv)} failed ({done.returncode})",
                          details=(done.stderr or done.stdout).strip().splitlines()[-10:])
    return done.stdout


@dataclass(frozen=True)
class Ensured:
    name: str
    action: str  # "created", "reused", "recreate-needed" (or, from `found`, "missing")
    image: str
    found_image: str | None = None


def minor(image: str) -> str:
    """A k3s image's Kubernetes major.minor ("rancher/k3s:v1.30.6-k3s1" → "1.30")."""
    tag = image.rsplit(":", 1)[-1].removeprefix("v")
    return ".".join(tag.split("-", 1)[0].split(".")[:2]) or tag


def found(name: str, version: str, runner: Runner = run) -> Ensured:
    """What runs under `name`, changing nothing: "missing", "reused" (at the pinned version)
    or "recreate-needed" (at another: `found_image`)."""
    image = k3s_image(version)
    clusters = json.loads(runner(["k3d", "cluster", "list", "-o", "json"]) or "[]")
    cluster = next((c for c in clusters if c.get("name") == name), None)
    if cluster is None:
        return Ensured(name, "missing", image)
    images = {n.get("image") for n in cluster.get("nodes", []) if n.get("role") == "server"}
    if images and image not in images:
        return Ensured(name, "recreate-needed", image, sorted(str(i) for i in images)[0])
    return Ensured(name, "reused", image)


def create_cluster(name: str, image: str, runner: Runner = run) -> None:
    runner(["k3d", "cluster", "create", name, "--image", image, "--wait"])


def delete_cluster(name: str, runner: Runner = run) -> None:
    """The cluster, its nodes and its volumes (every PersistentVolume's data) deleted."""
    runner(["k3d", "cluster", "delete", name])


def ensure_cluster(name: str, version: str, runner: Runner = run) -> Ensured:
    """The cluster at the pinned version: created when missing (waiting for it), reused when
    it runs that version. At another version it is left alone and said so: recreating it
    deletes it, so only `devenv up` does, when asked (devenv.runtime.kube_recreate)."""
    ensured = found(name, version, runner)
    if ensured.action == "missing":
        create_cluster(name, ensured.image, runner)
        return Ensured(name, "created", ensured.image)
    return ensured


def import_images(name: str, images: Sequence[str], runner: Runner = run) -> None:
    """Images built with Docker, loaded into the cluster's nodes (no registry needed)."""
    if images:
        runner(["k3d", "image", "import", *images, "--cluster", name])
