"""The one way devenv runs git: argv lists (no shell sees a name or a value), a deadline on
every call, no prompts (no terminal: stdin is /dev/null, askpass off, and ssh in batch
mode unless the user chose an ssh command), and git's own words in the error when it
fails. (A push runs the repository's pre-push hook, as `git push` does.)"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from devenv.config.secrets import strip_credentials
from devenv.core.errors import DevenvError, UsageError

LOCAL_TIMEOUT = 30.0  # plumbing on the local repository
REMOTE_TIMEOUT = 120.0  # fetch and push
MAX_BLOB = 1 << 20  # the largest file of a config branch read (its overrides, its manifest)


class GitError(DevenvError):
    """A git command failed; the message says which and git's reason is in the details."""


class Git:
    def __init__(self, root: Path):
        self.root = root
        self._env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C",
                     "GIT_ASKPASS": "", "SSH_ASKPASS": ""}
        for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
            self._env.pop(name, None)  # ours, never the caller's
        self._git_dir: Path | None = None

    def run(self, *args: str, input: bytes | None = None, timeout: float = LOCAL_TIMEOUT,
            env: Mapping[str, str] | None = None, cwd: Path | None = None,
            check: bool = True) -> subprocess.CompletedProcess[bytes]:
        argv = ["git", *args]
        try:
            done = subprocess.run(argv, cwd=cwd or self.root, input=input,
                                  stdin=subprocess.DEVNULL if input is None else None,
                                  capture_output=True, timeout=timeout,
                                  env={**self._env, **(env or {})}, check=False)
        except FileNotFoundError:
            raise DevenvError("git is not installed", hint="install git, then try again") \
                from None
        except subprocess.TimeoutExpired:
            raise GitError(f"`git {args[0]}` took longer than {timeout:g}s and was stopped",
                           hint="check the remote is reachable") from None
        if check and done.returncode != 0:
            reason = strip_credentials(done.stderr.decode(errors="replace")).strip()
            raise GitError(f"`git {' '.join(_shown(args))}` failed",
                           details=reason.splitlines()[-10:])
        return done

    def text(self, *args: str, **kwargs: object) -> str:
        return self.run(*args, **kwargs).stdout.decode().strip()  # type: ignore[arg-type]

    def ok(self, *args: str) -> bool:
        return self.run(*args, check=False).returncode == 0

    @property
    def git_dir(self) -> Path:
        """The repository's git folder; a UsageError when the project is in none."""
        if self._git_dir is None:
            done = self.run("rev-parse", "--absolute-git-dir", check=False)
            if done.returncode != 0:
                raise UsageError(f"{self.root} is not in a git repository",
                                 hint="config branches and published services live in the "
                                 "project's git repository: `git init`, or clone it")
            self._git_dir = Path(done.stdout.decode().strip())
        return self._git_dir

    # ---- objects

    def write_blob(self, data: bytes) -> str:
        return self.text("hash-object", "-w", "--stdin", input=data)

    def read_blob(self, rev: str, limit: int = MAX_BLOB) -> bytes:
        """A blob's content; a DevenvError when it is larger than `limit` bytes."""
        size = int(self.text("cat-file", "-s", rev))
        if size > limit:
            raise DevenvError(f"{rev} is {size} bytes, more than the {limit} a config "
                              "branch's file may hold; it was not read",
                              hint="a config branch holds small YAML files; ask its author")
        return self.run("cat-file", "blob", rev).stdout

    def make_tree(self, blobs: Mapping[str, str]) -> str:
        """A tree of files (name → blob id) at its top level."""
        lines = "".join(f"100644 blob {oid}\t{name}\n" for name, oid in sorted(blobs.items()))
        return self.text("mktree", input=lines.encode())

    def commit_tree(self, tree: str, message: str, parents: Sequence[str] = ()) -> str:
        args = ["commit-tree", tree]
        for parent in parents:
            args += ["-p", parent]
        return self.text(*args, "-m", message, env=_identity(self))

    def resolve(self, rev: str) -> str | None:
        done = self.run("rev-parse", "--verify", "--quiet", "--end-of-options", rev,
                        check=False)
        return done.stdout.decode().strip() if done.returncode == 0 else None

    def update_ref(self, ref: str, new: str, old: str | None = None) -> None:
        """Set `ref` to `new`; with `old` (an id, or "" for "must not exist") only if it is
        still that (another devenv may have moved it meanwhile)."""
        self.run("update-ref", ref, new, *([] if old is None else [old]))

    def delete_ref(self, ref: str) -> None:
        self.run("update-ref", "-d", ref, check=False)

    def refs(self, prefix: str) -> list[tuple[str, str]]:
        """(ref, id) of every ref under `prefix`, sorted by name."""
        out = self.text("for-each-ref", "--format=%(refname) %(objectname)", prefix)
        return [tuple(line.split(" ", 1)) for line in out.splitlines() if line]  # type: ignore[misc]

    def is_ancestor(self, older: str, newer: str) -> bool:
        return self.ok("merge-base", "--is-ancestor", older, newer)

    # ---- remotes

    def fetch(self, remote: str, refspecs: Sequence[str]) -> None:
        self.run("fetch", "--no-tags", "--quiet", "--", remote, *refspecs,
                 timeout=REMOTE_TIMEOUT, env=self._batch_ssh())

    def push(self, remote: str, refspecs: Sequence[str]) -> None:
        self.run("push", "--quiet", "--atomic", "--", remote, *refspecs, timeout=REMOTE_TIMEOUT,
                 env=self._batch_ssh())

    def _batch_ssh(self) -> dict[str, str]:
        """ssh that fails rather than asks (a passphrase, an unknown host key), unless the
        user set their own ssh command ($GIT_SSH_COMMAND, $GIT_SSH, core.sshCommand)."""
        if self._env.get("GIT_SSH_COMMAND") or self._env.get("GIT_SSH") \
                or self.ok("config", "core.sshCommand"):
            return {}
        return {"GIT_SSH_COMMAND": "ssh -o BatchMode=yes"}


def _identity(git: Git) -> dict[str, str]:
    """A committer for commit-tree when the user configured none (a fresh CI machine)."""
    if git.ok("config", "user.email") and git.ok("config", "user.name"):
        return {}
    return {"GIT_AUTHOR_NAME": "devenv", "GIT_AUTHOR_EMAIL": "devenv@localhost",
            "GIT_COMMITTER_NAME": "devenv", "GIT_COMMITTER_EMAIL": "devenv@localhost"}


def _shown(args: Sequence[str]) -> list[str]:
    """The arguments as an error shows them: a URL's credentials masked, long ones cut."""
    shown = [strip_credentials(a) for a in args]
    return [a if len(a) < 80 else a[:77] + "…" for a in shown]
