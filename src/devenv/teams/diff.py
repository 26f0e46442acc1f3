"""What a config branch changes (pure): the override layer flattened to dotted keys, the
keys that differ, grouped by service, as lines to print."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from devenv.config.artifacts import Artifact
from devenv.config.secrets import only_references, secret_name
from devenv.core.secrets import MASK

MISSING = object()  # a key the layer does not set (devenv.yaml's value applies)
PROJECT = ""  # the group of keys outside `services:`
# a key with one of these parts decides what runs on the machine that syncs: a command
# (`command`, `health.command`, `watch.build`, `test`, a dataset's `script`), what a
# container or a docker build is, where a service runs from, the env files it reads
RUNS = frozenset({"command", "build", "test", "script", "image", "dockerfile", "env_file",
                  "path", "cwd", "artifact", "runtime"})


@dataclass(frozen=True)
class Change:
    key: str  # dotted, e.g. services.api.replicas
    old: Any  # MISSING: not overridden before
    new: Any  # MISSING: not overridden after

    @property
    def group(self) -> str:
        """The service it is about ("" for project-wide keys)."""
        parts = self.key.split(".")
        return parts[1] if parts[0] == "services" and len(parts) > 1 else PROJECT

    @property
    def local_key(self) -> str:
        """The key within its service (the whole key for project-wide ones)."""
        parts = self.key.split(".")
        return ".".join(parts[2:]) or "(all)" if self.group else self.key


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of nested mappings as {dotted key: value}; lists and scalars are leaves."""
    if not isinstance(data, dict) or (prefix and not data):
        return {prefix: data} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in data.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def changes(old: Any, new: Any) -> list[Change]:
    """The keys whose override differs between two layers, sorted."""
    a, b = flatten(old or {}), flatten(new or {})
    return [Change(k, a.get(k, MISSING), b.get(k, MISSING))
            for k in sorted(set(a) | set(b)) if a.get(k, MISSING) != b.get(k, MISSING)]


def runs(change: Change) -> bool:
    """Whether the change decides what runs (see RUNS): `sync` asks before applying it."""
    return any(part in RUNS for part in change.key.split("."))


def artifact_changes(old: dict[str, Artifact], new: dict[str, Artifact]) -> list[Change]:
    """Services whose artifact differs, as changes of a `services.S.artifact` key: what it
    is (its digest or image), where it was packed from, and its version label."""
    def shown(art: Artifact | None) -> Any:
        if art is None:
            return MISSING
        what = f"image {art.image}" if art.image else art.digest[:12]
        label = f", version {art.version}" if art.version else ""
        return f"{what} (from {art.source}/{label})"

    return [Change(f"services.{s}.artifact", shown(old.get(s)), shown(new.get(s)))
            for s in sorted(set(old) | set(new)) if old.get(s) != new.get(s)]


def grouped(found: list[Change]) -> dict[str, list[Change]]:
    out: dict[str, list[Change]] = {}
    for change in found:
        out.setdefault(change.group, []).append(change)
    return dict(sorted(out.items()))


def describe(change: Change) -> str:
    """One line: `replicas: 1 → 2`, `+ env.GREETING: "hi"`, `- env.DEBUG (was "1")`."""
    key, raw = change.local_key, change.key.endswith(".artifact")
    old, new = change.old, change.new
    if secret_name(change.key):  # (shown as masked: the diff is printed, and logged)
        old, new = (v if v is MISSING or only_references(v) else MASK for v in (old, new))
        raw = True
    if old is MISSING:
        return f"+ {key}: {_value(new, raw)}"
    if new is MISSING:
        return f"- {key} (was {_value(old, raw)})"
    return f"~ {key}: {_value(old, raw)} → {_value(new, raw)}"


def render(found: list[Change]) -> list[str]:
    """Every change, under the service it is about."""
    lines: list[str] = []
    for group, items in grouped(found).items():
        lines.append(f"{group}:" if group else "project:")
        lines += [f"  {describe(c)}" for c in items]
    return lines


def _value(value: Any, raw: bool = False) -> str:
    return value if raw and isinstance(value, str) else json.dumps(value)
