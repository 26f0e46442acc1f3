"""The CLI's audit hook: `main` records every state-changing command here, once, around its
run (see `devenv.audit` for the log and its hash chain).

What is recorded is redacted first: the value after a key path the model declares secret
(`config set services.db.password …`), `KEY=VALUE` and `--option VALUE` whose name is a
secret one, and any occurrence of the project's known secret values (a data kind's secret
keys, variables named like secrets in `env`, env files, profiles and the caller's
environment). Recording never changes a command's outcome: a failure to write is a warning.
"""

from __future__ import annotations

import argparse
import os
import pwd
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devenv.config.secrets import (
    env_key,
    known_secrets,
    secret_keys,
    secret_name,
    strip_credentials,
)
from devenv.core.errors import DevenvError
from devenv.core.secrets import MASK

__all__ = ["known_secrets", "mask", "redact", "secret_keys", "secret_name", "start"]

# The commands that change state, as `command` or `command action` (`config branch` only
# with a NAME: without one it lists). The log's hash chain has no key: it finds accidental
# edits and lost lines, not someone who can rewrite .devenv/ (see devenv.audit).
AUDITED = frozenset({
    "up", "stop", "scale", "restart", "debug", "sync", "publish", "migrate",
    "config set", "config unset", "config branch",
    "data load", "data reset", "data restore",
    "snapshot save", "snapshot restore", "snapshot delete", "snapshot import",
})
MIN_SECRET = 4  # shorter known values are masked only as a whole argument


def command_name(args: argparse.Namespace) -> str:
    action = getattr(args, "action", None)
    return f"{args.command} {action}" if isinstance(action, str) and action else args.command


@dataclass
class Recording:
    root: Path
    command: str
    argv: list[str]
    started: float  # monotonic

    def finish(self, code: int, error: str | None) -> None:
        """Append the record; a failure is only a warning (the command's result stands)."""
        log = self.root / ".devenv" / "audit.log"
        try:
            from devenv import audit
            from devenv.core.paths import StateDir, private_dir

            secrets = known_secrets(self.root)
            args = redact(self.argv, secrets)
            record: dict[str, Any] = {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
                **user(), "command": self.command, "args": args, "exit": code,
                "error": mask(error, secrets + _masked_values(self.argv, args))
                if error else None,
                "duration": round(time.monotonic() - self.started, 3),
            }
            state = StateDir(self.root)
            if state.base.is_dir():
                private_dir(state.base)
            else:
                state.ensure()  # (with its .gitignore: the log is never committed)
            audit.append(log, record)
        except Exception as exc:  # never turn a result into a failure
            from devenv.cli.output import warn

            warn(f"could not write the audit log {log}: {exc}; the command's result stands")

    def raised(self, exc: BaseException) -> None:
        """Finish for a command that ended by an exception (`sys.exit` keeps its code)."""
        if isinstance(exc, SystemExit):
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
            self.finish(code, None if code == 0 else str(exc.code))
        else:
            self.finish(1, f"{type(exc).__name__}: {exc}")


def start(args: argparse.Namespace, argv: Sequence[str]) -> Recording | None:
    """A recording of this command if it is one that changes state (else None)."""
    name = command_name(args)
    if name not in AUDITED and args.command not in AUDITED:
        return None
    if name == "config branch" and not getattr(args, "name", None):
        return None  # without a NAME it only lists the branches
    from devenv.cli.commands._common import project_root

    try:
        root = project_root(args)
    except DevenvError:
        return None  # no project: the command fails, and there is no .devenv to write to
    return Recording(root, name, list(argv), time.monotonic())


def user() -> dict[str, str]:
    """The OS user, and the one who ran sudo."""
    try:
        name = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        name = str(os.getuid())
    found = {"user": name}
    if os.environ.get("SUDO_USER"):
        found["sudo_user"] = os.environ["SUDO_USER"]
    return found


# ---- redaction


def redact(argv: Sequence[str], secrets: Sequence[str]) -> list[str]:
    """`argv` with secrets masked: the value after a secret key path or an `env.` one
    (`config set services.api.env.X VALUE`), or a secret `--option`; `KEY=VALUE` and
    `--opt=KEY=VALUE` with a secret KEY; URLs' credentials; known secret values."""
    out: list[str] = []
    hide_next = False
    for token in argv:
        if hide_next:
            out.append(MASK)
            hide_next = False
            continue
        if token in secrets:
            out.append(MASK)
            continue
        parts = token.split("=")
        cut = next((i for i, name in enumerate(parts[:-1], 1)
                    if name and (secret_name(name) or env_key(name))), None)
        if cut is not None:  # KEY=VALUE, --password=VALUE, --set=API_KEY=VALUE
            out.append("=".join(parts[:cut]) + f"={MASK}")
            continue
        # `config set services.db.password VALUE`, `… services.api.env.X VALUE`, `--token V`
        hide_next = ("." in token or token.startswith("--")) and \
            (secret_name(token) or env_key(token))
        out.append(mask(strip_credentials(token), secrets))
    return out


def mask(text: str, secrets: Sequence[str]) -> str:
    text = strip_credentials(text)
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_SECRET:
            text = text.replace(secret, MASK)
    return text


def _masked_values(argv: Sequence[str], redacted: Sequence[str]) -> list[str]:
    """The values redaction hid (so an error message that repeats one hides it too)."""
    hidden = []
    for given, shown in zip(argv, redacted, strict=True):
        if given != shown:
            keyed = shown.endswith(f"={MASK}") and given.startswith(shown[:-len(MASK)])
            hidden.append(given[len(shown) - len(MASK):] if keyed else given)
    return [h for h in hidden if h]
