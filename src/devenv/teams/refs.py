"""Where config branches and artifacts live in the repository (pure): ref names, and the
rule a name must follow to be one component of a git ref."""

from __future__ import annotations

import re

from devenv.core.errors import UsageError

CONFIG = "refs/devenv/config/"  # a config branch: a commit of the override layer
INCOMING = "refs/devenv/incoming/"  # a fetched branch, before `sync` accepts it
BACKUP = "refs/devenv/backup/"  # <name>/<UTC time>: a branch's commit `sync --force` replaced
ARTIFACTS = "refs/devenv/artifacts/"  # <service>/<digest>: a commit of the packed folder
DEFAULT_REMOTE = "origin"

NAME_RULE = ("letters, digits, '.', '_' and '-', at most 100, starting with a letter or "
             "digit, with no '..' and not ending in '.' or '.lock'")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a branch (or service) name in a ref; None when it can. Stricter
    than git's check-ref-format: one component, nothing a shell or a URL treats specially."""
    if not _NAME.fullmatch(name):
        return f"'{name}' is not a valid name: use {NAME_RULE}"
    if ".." in name or name.endswith(".") or name.endswith(".lock"):
        return f"'{name}' is not a valid name: use {NAME_RULE}"
    return None


def check_name(name: str, what: str = "branch") -> str:
    if (problem := name_problem(name)) is not None:
        raise UsageError(f"{what} {problem}", hint="e.g. feature-x")
    return name


def check_remote(remote: str) -> str:
    """A remote's name or URL, never something git would read as an option."""
    if not remote or remote.startswith("-") or any(c in remote for c in "\0\n"):
        raise UsageError(f"'{remote}' is not a remote", hint="a remote's name, e.g. origin")
    return remote


def config_ref(name: str) -> str:
    return CONFIG + check_name(name)


def incoming_ref(name: str) -> str:
    return INCOMING + check_name(name)


def backup_ref(name: str, stamp: str) -> str:
    return f"{BACKUP}{check_name(name)}/{check_name(stamp, 'time')}"


def artifact_ref(service: str, digest: str) -> str:
    return f"{ARTIFACTS}{check_name(service, 'service')}/{digest}"


def branch_of(ref: str) -> str | None:
    """The branch a config ref names; None for any other ref."""
    if not ref.startswith(CONFIG):
        return None
    name = ref[len(CONFIG):]
    return name if name_problem(name) is None else None


def same(ref: str) -> str:
    """The refspec that publishes or fetches `ref` under its own name (no force: a remote
    that moved on is refused, not overwritten)."""
    return f"{ref}:{ref}"
