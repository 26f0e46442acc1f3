"""`devenv migrate`'s plan: what upgrading the environment would change, computed without
changing anything (the dry run prints it; the engine computes it again and applies it).

- devenv.yaml's schema version (config/migrate.py), and the personal overrides with it;
- each data service whose data on disk is from another major version than its binaries
  (data.version_move: PostgreSQL by dump and restore);
- Kubernetes: deprecated or removed apiVersions in the services' own manifests rewritten
  where the replacement is another apiVersion for the same kind (else listed), and the
  k3d cluster at another version than `kubernetes.version`: recreated at the pinned one, its
  data services' data carried over in a snapshot (devenv.runtime.kube_recreate; `Plan.cluster`).
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
from devenv.runtime.kube_recreate import Change

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
    cluster: Change | None = None  # the k3d cluster to recreate at the pinned version
    cluster_snapshot: str | None = None  # the snapshot its recreate takes first

    @property
    def changed(self) -> bool:
        return bool(self.files or self.data or self.cluster)

    @property
    def blocked(self) -> list[str]:
        """Reasons the plan cannot be applied."""
        return [f"{m.service}: {m.how}" for m in self.data if not m.possible]

    def steps(self) -> list[str]:
        out = [f"{c.shown}: {note}" for c in self.files for note in c.notes]
        out += [f"{m.service}: {m.product} {m.old} → {m.new}: {m.how}" for m in self.data]
        if self.cluster is not None:
            out.append(cluster_step(self.cluster, self.cluster_snapshot or ""))
        return out + self.kube

    def to_json(self) -> dict[str, Any]:
        return {"changed": self.changed, "steps": self.steps(), "blocked": self.blocked,
                "files": [{"file": c.shown, "notes": c.notes, "diff": c.diff()}
                          for c in self.files],
                "data": [{"service": m.service, "product": m.product, "from": m.old,
                          "to": m.new, "how": m.how, "from_binaries": m.old_bin,
                          "to_binaries": m.new_bin} for m in self.data],
                "cluster": None if self.cluster is None else {
                    "name": self.cluster.cluster, "from_image": self.cluster.found_image,
                    "to_image": self.cluster.image, "from": minor(self.cluster.found_image),
                    "to": minor(self.cluster.image), "snapshot": self.cluster_snapshot,
                    "resumed": self.cluster.resumed},
                "kubernetes": self.kube}


def minor(image: str) -> str:
    from devenv.kube.k3d import minor as of

    return of(image)


def cluster_step(change: Change, snapshot: str) -> str:
    """The plan's line for the cluster's recreate."""
    if change.resumed:
        return (f"cluster {change.cluster}: carry on the recreate at "
                f"{minor(change.image)} that a crash cut short (its data in snapshot "
                f"{snapshot})")
    return (f"cluster {change.cluster}: Kubernetes {minor(change.found_image)} → "
            f"{minor(change.image)} ({change.found_image} → {change.image}): snapshot "
            f"{snapshot} of its data services taken, the cluster deleted (`k3d cluster "
            f"delete {change.cluster}`) and made again (`k3d cluster create "
            f"{change.cluster} --image {change.image}`), the data restored into it")


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
        _cluster(plan, loaded)


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


def _cluster(plan: Plan, loaded: Any) -> None:
    """The k3d cluster against `kubernetes.version` (devenv.runtime.kube_recreate.pending):
    at another version, `plan.cluster`; nothing when k3d is missing or the cluster is not
    there yet (`up` makes it at the version); a note when k3d cannot list its clusters."""
    from devenv.core.errors import DevenvError
    from devenv.kube import k3d
    from devenv.runtime import kube_recreate

    if shutil.which("k3d") is None and not kube_recreate.journal_file(plan.root).exists():
        return
    try:
        change = kube_recreate.pending(loaded)
    except (DevenvError, ValueError) as exc:  # (a note, not the plan's failure)
        name = k3d.cluster_name(loaded.name, loaded.project.cluster.name)
        said = exc.message if isinstance(exc, DevenvError) else str(exc)
        plan.kube.append(f"cluster {name}: cannot list k3d clusters: {said}")
        return
    if change is not None:
        plan.cluster = change
        plan.cluster_snapshot = kube_recreate.snapshot_name(plan.root, change)
