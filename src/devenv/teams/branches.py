"""Config branches: the override layer (`.devenv/local.yaml`, and the artifacts services run
from) saved as a commit under `refs/devenv/config/<name>`, made with plumbing only, so the
working tree, the index and the code branches are never touched. Which branch this checkout
is on lives in `.devenv/branch` (owner-only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from devenv.config import artifacts as manifest
from devenv.config.artifacts import Artifact
from devenv.config.load import parse_yaml, plain_data, refuse_aliases
from devenv.config.secrets import secret_values
from devenv.core.atomic import write_atomic
from devenv.core.errors import DevenvError, UsageError
from devenv.core.paths import StateDir
from devenv.teams import refs
from devenv.teams.diff import Change, changes, flatten
from devenv.teams.git import Git, GitError

LOCAL_SHOWN = ".devenv/local.yaml"
OVERRIDES = "overrides.yaml"  # the branch's copy of .devenv/local.yaml
MANIFEST = "artifacts.yaml"  # the services it runs from published artifacts


@dataclass(frozen=True)
class Content:
    """What one commit of a config branch holds."""

    commit: str
    overrides: str  # the text of overrides.yaml (comments kept)
    manifest: str  # the text of artifacts.yaml

    def artifacts(self, shown: str) -> dict[str, Artifact]:
        return manifest.parse(plain(self.manifest, shown), shown)


def plain(text: str, shown: str) -> Any:
    """A YAML mapping as plain data (ConfigError naming `shown`:line when it is not one, or
    when its aliases expand to too many values)."""
    if not text.strip():
        return {}
    return plain_data(parse_yaml(text, shown, YAML(typ="safe", pure=True)), shown)


class Branches:
    def __init__(self, root: Path, git: Git | None = None):
        self.root = root
        self.git = git or Git(root)
        self.state = StateDir(root)

    # ---- this checkout

    @property
    def current_file(self) -> Path:
        return self.state.base / "branch"

    def current(self) -> str | None:
        try:
            name = self.current_file.read_text().strip()
        except OSError:
            return None
        return name if refs.name_problem(name) is None else None

    def set_current(self, name: str) -> None:
        self.state.ensure()
        write_atomic(self.current_file, name + "\n", mode=0o600)

    def local_overrides(self) -> str:
        path = self.state.local_overrides
        return path.read_text() if path.is_file() else ""

    def local_manifest(self) -> str:
        path = self.root / manifest.LOCAL_FILE
        return path.read_text() if path.is_file() else ""

    def unsaved(self) -> list[Change]:
        """Local overrides that differ from what the current branch saved (with no current
        branch: every local override)."""
        name = self.current()
        saved = self.read(name) if name and self.exists(name) else None
        ours = plain(self.local_overrides(), ".devenv/local.yaml")
        theirs = plain(saved.overrides, f"{name}:{OVERRIDES}") if saved else {}
        return changes(theirs, ours)

    # ---- the repository

    def names(self) -> list[str]:
        self.git.git_dir  # noqa: B018  (a UsageError outside a repository)
        return [n for ref, _ in self.git.refs(refs.CONFIG) if (n := refs.branch_of(ref))]

    def exists(self, name: str) -> bool:
        return self.git.resolve(refs.config_ref(name)) is not None

    def read(self, rev: str, shown: str | None = None) -> Content:
        """The content of a branch (by name) or of a commit (`shown`: the branch it is, in
        errors). Its files must be plain YAML: no anchors or aliases."""
        commit = self.git.resolve(refs.config_ref(rev) if refs.name_problem(rev) is None
                                  and not _is_id(rev) else rev)
        if commit is None:
            raise UsageError(f"no config branch '{rev}'", hint="list them: devenv config branch")
        files = self._files(commit)
        content = Content(commit, self._text(commit, files, OVERRIDES),
                          self._text(commit, files, MANIFEST))
        shown = shown or (rev if refs.name_problem(rev) is None and not _is_id(rev)
                          else commit[:12])
        refuse_aliases(content.overrides, f"{shown}:{OVERRIDES}")
        refuse_aliases(content.manifest, f"{shown}:{MANIFEST}")
        return content

    def _files(self, commit: str) -> set[str]:
        out = self.git.text("ls-tree", "--name-only", f"{commit}^{{tree}}")
        return set(out.splitlines())

    def _text(self, commit: str, files: set[str], name: str) -> str:
        if name not in files:
            return ""
        data = self.git.read_blob(f"{commit}:{name}")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise DevenvError(f"{name} of {commit[:12]} is not UTF-8 text") from None

    def save(self, name: str, overrides: str, manifest_text: str, message: str) -> str:
        """A new commit on `name` (its previous one the parent) holding this layer. A layer
        with secret values (keys the model declares secret or named like one, e.g.
        env.API_TOKEN) is refused: a branch is shared with whoever can read the remote."""
        secret = secret_values(flatten(plain(overrides, LOCAL_SHOWN)))
        if secret:
            example = secret[0]
            var = example.rsplit(".", 1)[-1].upper()
            raise UsageError(
                f"{LOCAL_SHOWN} holds secret values, which a config branch would share: "
                + ", ".join(secret) + "; nothing saved",
                hint=f"keep the value in .env (never shared: {var}=...) and refer to it, e.g. "
                f"devenv config set {example} '${{{var}}}'; or drop it: devenv config unset "
                f"{example}")
        ref = refs.config_ref(name)
        parent = self.git.resolve(ref)
        tree = self.git.make_tree({OVERRIDES: self.git.write_blob(overrides.encode()),
                                   MANIFEST: self.git.write_blob(manifest_text.encode())})
        if parent and self.git.text("rev-parse", f"{parent}^{{tree}}") == tree:
            return parent  # nothing changed: no empty commit
        commit = self.git.commit_tree(tree, message, [parent] if parent else [])
        self.git.update_ref(ref, commit, parent or "")
        return commit

    def push(self, name: str, remote: str) -> list[str]:
        """Publish the branch and the artifacts it names; the refs pushed."""
        content = self.read(name)
        pushed = [refs.artifact_ref(a.service, a.digest)
                  for a in content.artifacts(f"{name}:{MANIFEST}").values()]
        pushed = [r for r in pushed if self.git.resolve(r)]
        pushed.append(refs.config_ref(name))
        try:
            self.git.push(refs.check_remote(remote), [refs.same(r) for r in pushed])
        except GitError as exc:
            if any("non-fast-forward" in d or "fetch first" in d for d in exc.details):
                raise DevenvError(
                    f"{remote} has changes to '{name}' that you do not have; nothing pushed",
                    details=[d for d in exc.details if not d.startswith("hint:")],
                    hint=f"see them: devenv sync --branch {name} --dry-run --force; take them "
                    "with --force instead of --dry-run (this replaces your overrides), set "
                    f"yours again, then devenv config branch {name} --push") from None
            raise
        return pushed

    def fetch(self, name: str, remote: str) -> str:
        """The remote's branch, fetched into a temporary ref; its commit."""
        incoming = refs.incoming_ref(name)
        try:
            self.git.fetch(refs.check_remote(remote), [f"+{refs.config_ref(name)}:{incoming}"])
        except GitError as exc:
            if any("couldn't find remote ref" in d for d in exc.details):
                raise UsageError(f"no config branch '{name}' on {remote}",
                                 hint="its author publishes it with `devenv config branch "
                                 f"{name} --push`") from None
            raise
        commit = self.git.resolve(incoming)
        assert commit is not None
        return commit


def _is_id(rev: str) -> bool:
    return len(rev) in (40, 64) and all(c in "0123456789abcdef" for c in rev)
