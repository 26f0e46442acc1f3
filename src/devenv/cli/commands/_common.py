from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from devenv.cli.output import warn
from devenv.core.paths import find_project_root

if TYPE_CHECKING:
    from devenv.config.load import Loaded


def project_root(args: argparse.Namespace) -> Path:
    start = Path(args.project_dir) if getattr(args, "project_dir", None) else None
    return find_project_root(start)


def load_project(args: argparse.Namespace, profile: str | None = None, *,
                 quiet: bool = False) -> Loaded:
    """The project's configuration, its warnings printed (`quiet`: the caller prints the
    engine's, which include them)."""
    from devenv.config.load import load  # not at import: read-only commands stay fast

    loaded = load(project_root(args), profile)
    for message in [] if quiet else loaded.warnings:
        warn(message)
    return loaded


def ask(question: str) -> bool:
    """A y/N question, asked only on a terminal (stdin and stderr); anything else is no."""
    import sys

    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return False
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        answer = ""
    return answer.strip().lower() in ("y", "yes")
