"""Published artifacts as an override layer: which services run from a packed copy of their
folder instead of their source.

The manifest (`artifacts.yaml` in a config branch, and `.devenv/artifacts.yaml` for what
this checkout runs, written by `devenv sync`) maps a service to the digest of its packed
tree. A service listed there runs from `.devenv/artifacts/<digest>/`: its folder (and the
env files inside it) point there, and it is not watched (there is no source to edit).

A service that runs as a container on the docker runtime is published as an image in a
registry instead: its entry holds `image: <registry>/<namespace>/<service>@sha256:<hex>`
(the digest is the image manifest's, so what runs is what was pushed) and no tree; the
service runs that image (pulled by the docker runtime), its `build:` dropped, not watched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from devenv.config.model import SERVICE_NAMES
from devenv.core.errors import ConfigError, Problem

DIGEST = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a git tree id (SHA-1 or SHA-256)
# an image pinned by its manifest's digest: registry host[:port], a path, @sha256:<64 hex>
IMAGE = re.compile(r"[a-z0-9.-]+(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)+@sha256:([0-9a-f]{64})")
KEYS = ("digest", "image", "source", "version")
ARTIFACTS_DIR = ".devenv/artifacts"
LOCAL_FILE = ".devenv/artifacts.yaml"  # what this checkout runs, relative to the project
HEADER = "# Services run from published artifacts (devenv publish / devenv sync).\n"


@dataclass(frozen=True)
class Artifact:
    service: str
    digest: str  # its content address: the packed tree's git id, or the image's sha256
    source: str  # the service's folder it was packed from, relative to the project
    version: str = ""  # a label given at publish (--version), else empty
    image: str = ""  # an image artifact: the image pinned by digest (repo@sha256:...)

    @property
    def is_tree(self) -> bool:
        """A packed folder in the git repository (else an image in a registry)."""
        return not self.image

    @property
    def folder(self) -> str:
        """Where it is unpacked, relative to the project."""
        return f"{ARTIFACTS_DIR}/{self.digest}"

    def to_plain(self) -> dict[str, str]:
        plain = ({"image": self.image} if self.image else {"digest": self.digest})
        plain["source"] = self.source
        if self.version:
            plain["version"] = self.version
        return plain


def parse(data: Any, shown: str) -> dict[str, Artifact]:
    """The manifest's artifacts by service; a ConfigError naming every bad entry."""
    if data in (None, {}):
        return {}
    problems: list[Problem] = []
    services = data.get("services") if isinstance(data, dict) else None
    if not isinstance(services, dict) or set(data) - {"services"}:
        raise ConfigError([Problem(shown, 1, "", "expected `services:` mapping each service to "
                                   "{digest or image, source, version}")])
    out: dict[str, Artifact] = {}
    for name, entry in services.items():
        at = f"services.{name}"
        if (bad := SERVICE_NAMES.problem(str(name)) if isinstance(name, str)
                else "is not a name") is not None:
            problems.append(Problem(shown, None, "services", f"{str(name)[:40]!r} {bad}"))
            continue
        if not isinstance(entry, dict):
            problems.append(Problem(shown, None, at, "expected {digest or image, source, "
                                    "version}"))
            continue
        unknown = set(entry) - set(KEYS)
        digest, source = str(entry.get("digest", "")), str(entry.get("source", ""))
        version, image = str(entry.get("version") or ""), str(entry.get("image") or "")
        pinned = IMAGE.fullmatch(image)
        if unknown:
            problems.append(Problem(shown, None, at, f"unknown key {sorted(unknown)[0]!r}; "
                                    "known: " + ", ".join(KEYS)))
        elif image and "digest" in entry:
            problems.append(Problem(shown, None, at, "an entry has a digest (a packed folder) "
                                    "or an image, not both"))
        elif image and not pinned:
            problems.append(Problem(shown, None, at + ".image", f"{image!r} is not an image "
                                    "pinned by digest (registry/path@sha256:<64 hex>)"))
        elif pinned and _inside(source):
            out[str(name)] = Artifact(str(name), pinned.group(4), source, version, image)
        elif not image and not DIGEST.fullmatch(digest):
            problems.append(Problem(shown, None, at + ".digest", f"{digest!r} is not a git "
                                    "tree id (40 or 64 hex digits)"))
        elif not _inside(source):
            problems.append(Problem(shown, None, at + ".source", f"{source!r} is not a folder "
                                    "inside the project"))
        else:
            out[str(name)] = Artifact(str(name), digest, source, version)
    if problems:
        raise ConfigError(problems)
    return out


def render(artifacts: dict[str, Artifact]) -> str:
    """The manifest's text (stable: sorted by service)."""
    if not artifacts:
        return HEADER
    lines = [HEADER.rstrip("\n"), "services:"]
    for name in sorted(artifacts):
        art = artifacts[name]
        lines.append(f"  {_quoted(name)}:")
        lines += [f"    {k}: {_quoted(v)}" for k, v in art.to_plain().items()]
    return "\n".join(lines) + "\n"


def _quoted(value: str) -> str:
    import json

    return json.dumps(value)  # a JSON string is a YAML string


def _inside(path: str) -> bool:
    if not path or path.startswith(("/", "~")):
        return False
    return ".." not in PurePosixPath(path).parts


def apply(services: dict[str, Any], artifacts: dict[str, Artifact]) -> None:
    """Point each artifact-backed service (in the plain config data) at its unpacked copy:
    `path`, the env files inside its folder, and no watching."""
    for name, art in artifacts.items():
        svc = services.get(name)
        if not isinstance(svc, dict):
            continue  # a service the configuration does not declare: nothing to run
        if art.image:  # the pushed image, pulled by the docker runtime; no build
            svc.pop("build", None)
            svc["image"] = art.image
            watch = svc.get("watch")
            svc["watch"] = {**(watch if isinstance(watch, dict) else {}), "enabled": False}
            continue
        old = str(PurePosixPath(str(svc.get("path", svc.get("cwd", ".")))))
        svc.pop("cwd", None)
        svc["path"] = art.folder
        files = svc.get("env_file")
        if isinstance(files, str):
            files = [files]
        if isinstance(files, list):
            svc["env_file"] = [_moved(f, old, art.folder) for f in files]
        watch = svc.get("watch")
        svc["watch"] = {**(watch if isinstance(watch, dict) else {}), "enabled": False}


def _moved(file: Any, old: str, new: str) -> Any:
    if not isinstance(file, str):
        return file
    path = PurePosixPath(file)
    if old == ".":
        return f"{new}/{path}"
    try:
        return f"{new}/{path.relative_to(old)}"
    except ValueError:
        return file  # outside the service's folder: read where it is
