"""`devenv migrate`'s plan: what upgrading the environment would change, computed without
changing anything (the dry run prints it; the engine computes it again and applies it).

- devenv.yaml's schema version (config/migrate.py), and the personal overrides with it;
- each data service whose data on disk is from another major version than its binaries
  (data.version_move: PostgreSQL by dump and restore);
- Kubernetes: deprecated or removed apiVersions in the services' own manifests rewritten
  where the replacement is another apiVersion for the same kind (else listed), and the
  k3d cluster's version against `kubernetes.version`.
"""

from __future__ import annotations

import difflib
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devenv.core.errors import ConfigError, Problem
from devenv.core.paths import StateDir, config_file
from devenv.data.base import VersionMove

# an apiVersion (group/version or v1): a replacement that is one is applied mechanically
API_VERSION = re.compile(r"^(?:[a-z0-9.-]+/)?v\d+(?:(?:alpha|beta)\d+)?$")


@dataclass(frozen=True)
class FileChange:
    path: Path
    shown: str
    old: str
    new: str
    notes: list[str]

    def diff(self) -> str:
        return "".join(difflib.unified_diff(
            self.old.splitlines(keepends=True), self.new.splitlines(keepends=True),
            f"a/{self.shown}", f"b/{self.shown}"))


@dataclass
class Plan:
    root: Path
    files: list[FileChange] = field(default_factory=list)
    data: list[VersionMove] = field(default_factory=list)
    kube: list[str] = field(default_factory=list)  # what is left to do by hand, and why

    @property
    def changed(self) -> bool:
        return bool(self.files or self.data)

    @property
    def blocked(self) -> list[str]:
        """Reasons the plan cannot be applied."""
        return [f"{m.service}: {m.how}" for m in self.data if not m.possible]

    def steps(self) -> list[str]:
        out = [f"{c.shown}: {note}" for c in self.files for note in c.notes]
        out += [f"{m.service}: {m.product} {m.old} → {m.new}: {m.how}" for m in self.data]
        return out + self.kube

    def to_json(self) -> dict[str, Any]:
        return {"changed": self.changed, "steps": self.steps(), "blocked": self.blocked,
                "files": [{"file": c.shown, "notes": c.notes, "diff": c.diff()}
                          for c in self.files],
                "data": [{"service": m.service, "product": m.product, "from": m.old,
                          "to": m.new, "how": m.how, "from_binaries": m.old_bin,
                          "to_binaries": m.new_bin} for m in self.data],
                "kubernetes": self.kube}


def journal_file(root: Path) -> Path:
    """Written by `migrate --confirm` once its snapshot is taken, removed when the migration
    held or was rolled back: while it exists (the engine died mid-way), `up` refuses to
    start and `migrate --confirm` rolls the migration back."""
    return StateDir(root).base / "migrate" / "journal.json"


def make(root: Path) -> Plan:
    """The plan for the project at `root`; a ConfigError when the upgraded configuration
    does not validate (nothing is applied then)."""
    from devenv.config.load import LOCAL_SHOWN, load, read_text
    from devenv.config.migrate import upgrade_overrides, upgrade_text

    plan = Plan(root)
    file = config_file(root)
    text = read_text(file, file.name)
    upgraded = upgrade_text(text, file.name)
    if upgraded.changed:
        notes = [f"version {upgraded.old_version} → {upgraded.new_version}"] if \
            upgraded.old_version != upgraded.new_version else []
        plan.files.append(FileChange(file, file.name, text, upgraded.text,
                                     notes + [str(c) for c in upgraded.changes]))
    local = StateDir(root).local_overrides
    if local.is_file() and upgraded.old_version != upgraded.new_version:
        local_text = read_text(local, LOCAL_SHOWN)
        over = upgrade_overrides(local_text, upgraded.old_version, LOCAL_SHOWN)
        if over.changes:
            plan.files.append(FileChange(local, LOCAL_SHOWN, local_text, over.text,
                                         [str(c) for c in over.changes]))
    loaded = load(root, texts={c.path: c.new for c in plan.files})
    _data(plan, loaded)
    _kube(plan, loaded)
    return plan


def _data(plan: Plan, loaded: Any) -> None:
    from devenv import data as kinds
    from devenv.plan import make_plan

    for svc in make_plan(loaded).services.values():
        if svc.data is not None and (move := kinds.version_move(svc.data)) is not None:
            plan.data.append(move)


def _kube(plan: Plan, loaded: Any) -> None:
    project = loaded.project
    target = project.kubernetes.minor
    seen: set[str] = set()
    for svc in project.services.values():
        for name in svc.kubernetes.manifests:
            if name in seen:
                continue
            seen.add(name)
            path = plan.root / name
            try:
                text = path.read_text()
            except OSError as exc:
                raise ConfigError([Problem(name, None, "", f"cannot read: {exc.strerror}")]
                                  ) from exc
            new, rewritten, manual = rewrite_api_versions(text, target, name)
            if rewritten:
                plan.files.append(FileChange(path, name, text, new, rewritten))
            plan.kube += manual
    if project.runtime == "kubernetes" and project.cluster.provider == "k3d":
        plan.kube += cluster_notes(loaded)


def rewrite_api_versions(text: str, target: str, shown: str) -> tuple[str, list[str],
                                                                      list[str]]:
    """Each document of a manifest file whose apiVersion `target` deprecates or removed,
    its `apiVersion:` line rewritten when the replacement is an apiVersion (layout and
    comments kept); (the new text, what was rewritten, what is left by hand). Fields whose
    shape changed between the two versions are the author's to check (`devenv render
    --check` validates them)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    from devenv.kube.deprecations import check

    yaml = YAML(typ="safe", pure=True)
    rewritten: list[str] = []
    manual: list[str] = []
    chunks = re.split(r"(?m)^(---[^\n]*\n)", text)
    line = 1
    out = []
    for chunk in chunks:
        start, line = line, line + chunk.count("\n")
        try:
            doc = yaml.load(chunk) if not chunk.startswith("---") else None
        except YAMLError:
            doc = None
        finding = check(doc, target, f"{shown}:{start}") if isinstance(doc, dict) else None
        if finding is not None:
            old, new = finding.api_version, finding.replacement
            pattern = re.compile(rf"(?m)^(apiVersion:\s*['\"]?){re.escape(old)}(['\"]?\s*(#.*)?)$")
            if API_VERSION.match(new) and pattern.search(chunk):
                chunk = pattern.sub(lambda m, new=new: m.group(1) + new + m.group(2), chunk,
                                    count=1)
                rewritten.append(f"{finding.kind} {finding.name}: apiVersion {old} → {new} "
                                 f"({finding.status} in {finding.since}, target {target})")
            else:
                manual.append(finding.line(target) + " (no mechanical replacement: by hand)")
        out.append(chunk)
    return "".join(out), rewritten, manual


def cluster_notes(loaded: Any, runner: Any = None) -> list[str]:
    """The k3d cluster against `kubernetes.version` (nothing said when k3d is missing or
    the cluster is not there yet: `up` makes it at the version)."""
    import json

    from devenv.kube import k3d

    if runner is None and shutil.which("k3d") is None:
        return []
    project = loaded.project
    name = project.cluster.name or f"devenv-{loaded.name}"
    try:
        clusters = json.loads((runner or k3d.run)(["k3d", "cluster", "list", "-o", "json"])
                              or "[]")
    except Exception as exc:  # (a note, not the plan's failure)
        return [f"cluster {name}: cannot list k3d clusters: {exc}"]
    found = next((c for c in clusters if c.get("name") == name), None)
    if found is None:
        return []
    want = k3d.k3s_image(project.kubernetes.version)
    images = sorted({str(n.get("image")) for n in found.get("nodes", [])
                     if n.get("role") == "server"})
    if images and want not in images:
        return [f"cluster {name}: runs {images[0]}, kubernetes.version wants {want}: "
                f"`devenv snapshot save`, then `k3d cluster delete {name}`; the next `up` "
                "creates it at the new version (devenv does not recreate a cluster itself)"]
    return []
