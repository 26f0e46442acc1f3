"""Published artifacts as an override layer: which services run from a packed copy of their
folder instead of their source.

The manifest (`artifacts.yaml` in a config branch, and `.devenv/artifacts.yaml` for what
this checkout runs, written by `devenv sync`) maps a service to the digest of its packed
tree. A service listed there runs from `.devenv/artifacts/<digest>/`: its folder (and the
env files inside it) point there, and it is not watched (there is no source to edit).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from devenv.core.errors import ConfigError, Problem

DIGEST = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a git tree id (SHA-1 or SHA-256)
ARTIFACTS_DIR = ".devenv/artifacts"
LOCAL_FILE = ".devenv/artifacts.yaml"  # what this checkout runs, relative to the project
HEADER = "# Services run from published artifacts (devenv publish / devenv sync).\n"


@dataclass(frozen=True)
class Artifact:
    service: str
    digest: str  # the packed tree's git id: the artifact's content address
    source: str  # the service's folder it was packed from, relative to the project
    version: str = ""  # a label given at publish (--version), else empty

    @property
    def folder(self) -> str:
        """Where it is unpacked, relative to the project."""
        return f"{ARTIFACTS_DIR}/{self.digest}"

    def to_plain(self) -> dict[str, str]:
        plain = {"digest": self.digest, "source": self.source}
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
                                   "{digest, source, version}")])
    out: dict[str, Artifact] = {}
    for name, entry in services.items():
        at = f"services.{name}"
        if not isinstance(entry, dict):
            problems.append(Problem(shown, None, at, "expected {digest, source, version}"))
            continue
        unknown = set(entry) - {"digest", "source", "version"}
        digest, source = str(entry.get("digest", "")), str(entry.get("source", ""))
        version = str(entry.get("version") or "")
        if unknown:
            problems.append(Problem(shown, None, at, f"unknown key {sorted(unknown)[0]!r}; "
                                    "known: digest, source, version"))
        elif not DIGEST.fullmatch(digest):
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
        lines.append(f"  {name}:")
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
