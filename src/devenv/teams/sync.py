"""`devenv sync`'s work below the CLI: fetch a teammate's branch into a temporary ref, refuse
conflicts, fetch and unpack its artifacts, validate the configuration it makes (as `up`
does, every problem at once), then write the override layer. Nothing is written before the
whole branch is accepted."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime

from devenv.config import artifacts as manifest
from devenv.config.artifacts import Artifact
from devenv.config.load import Loaded, load
from devenv.core.atomic import write_atomic
from devenv.core.errors import DevenvError
from devenv.core.paths import StateDir
from devenv.teams import artifacts, refs
from devenv.teams.branches import MANIFEST, OVERRIDES, Branches, Content, plain
from devenv.teams.diff import Change, artifact_changes, changes


class Conflict(DevenvError):
    """Sync refused: applying the branch would lose something of this checkout's."""


@dataclass
class Incoming:
    name: str
    content: Content
    artifacts: dict[str, Artifact]
    loaded: Loaded  # the configuration it makes, validated
    changes: list[Change] = field(default_factory=list)
    previous: str | None = None  # the local branch's commit when it was fetched


@dataclass
class Backups:
    """What `apply` kept of what it replaced (None: nothing was lost)."""

    ref: str | None = None  # the local branch's commit, when the new one does not contain it
    overrides: str | None = None  # .devenv/local.yaml as it was, when it differed


def prepare(branches: Branches, name: str, remote: str, *, force: bool,
            profile: str | None) -> Incoming:
    """Fetch and judge the branch; a ConfigError (every problem, in the branch's files) or a
    Conflict when it cannot be applied. Writes nothing but git objects and unpacked
    artifacts (content-addressed, so harmless)."""
    refs.check_name(name)
    git = branches.git
    commit = branches.fetch(name, remote)
    try:
        content = branches.read(commit, name)
        if not force:
            _refuse_conflicts(branches, name, commit)
        shown = f"{name}:{MANIFEST}"
        found = content.artifacts(shown)
        artifacts.fetch(git, remote, found.values())
        for art in found.values():
            artifacts.unpack(git, branches.root, art)
        root = branches.root
        texts = {StateDir(root).local_overrides: content.overrides,
                 root / manifest.LOCAL_FILE: manifest.render(found)}
        loaded = load(root, profile, texts=texts, local_shown=f"{name}:{OVERRIDES}")
        ours = plain(branches.local_overrides(), ".devenv/local.yaml")
        theirs = plain(content.overrides, f"{name}:{OVERRIDES}")
        mine = manifest.parse(plain(branches.local_manifest(), manifest.LOCAL_FILE),
                              manifest.LOCAL_FILE)
        found_changes = changes(ours, theirs) + artifact_changes(mine, found)
    except BaseException:
        git.delete_ref(refs.incoming_ref(name))
        raise
    return Incoming(name, content, found, loaded, sorted(found_changes, key=lambda c: c.key),
                    git.resolve(refs.config_ref(name)))


def _refuse_conflicts(branches: Branches, name: str, commit: str) -> None:
    unsaved = branches.unsaved()
    if unsaved:
        keys = ", ".join(c.key for c in unsaved)
        current = branches.current()
        save = f"devenv config branch {current}" if current else "devenv config branch NAME"
        raise Conflict(f"local overrides not saved to a config branch: {keys}",
                       hint=f"save them first ({save}), or drop them with --force")
    local = branches.git.resolve(refs.config_ref(name))
    if local and local != commit and not branches.git.is_ancestor(local, commit):
        raise Conflict(f"your branch '{name}' has saved changes the remote's does not",
                       hint=f"see the remote's with `devenv sync --branch {name} --dry-run "
                       "--force`; take it with --force (replacing yours), set yours again, then "
                       f"`devenv config branch {name} --push`")


def apply(branches: Branches, incoming: Incoming) -> Backups:
    """Write the override layer, move the local branch to what was fetched (only from the
    commit it was at when fetched) and make it current. What would be lost is kept first:
    local.yaml, when not saved in the branch, as `local.yaml.bak`; the branch's old commit,
    when the new one does not contain it, as a backup ref. The two files
    change together: if anything fails, the old ones are put back."""
    root = branches.root
    state = StateDir(root)
    state.ensure()
    git = branches.git
    kept = Backups()
    local = state.local_overrides
    new = incoming.content.commit
    old = incoming.previous
    if old and old != new and not git.is_ancestor(old, new):
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        kept.ref = refs.backup_ref(incoming.name, stamp)
        git.update_ref(kept.ref, old, "")
    saved = branches.read(old, incoming.name).overrides if old else None
    if local.is_file() and local.read_text() not in (incoming.content.overrides, saved):
        backup = local.with_name(local.name + ".bak")
        shutil.copy2(local, backup)
        kept.overrides = str(backup.relative_to(root))
    art_file = root / manifest.LOCAL_FILE
    before = {path: path.read_text() if path.is_file() else None for path in (art_file, local)}
    try:
        if incoming.artifacts:
            write_atomic(art_file, manifest.render(incoming.artifacts), mode=0o600)
        else:
            art_file.unlink(missing_ok=True)
        write_atomic(local, incoming.content.overrides, mode=0o600)
        git.update_ref(refs.config_ref(incoming.name), new, old or "")
    except BaseException:
        for path, text in before.items():
            if text is None:
                path.unlink(missing_ok=True)
            else:
                write_atomic(path, text, mode=0o600)
        raise
    git.delete_ref(refs.incoming_ref(incoming.name))
    branches.set_current(incoming.name)
    return kept


def discard(branches: Branches, incoming: Incoming) -> None:
    """A prepared sync not applied (`--dry-run`): forget the fetched ref."""
    branches.git.delete_ref(refs.incoming_ref(incoming.name))


