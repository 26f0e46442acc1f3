from __future__ import annotations

import argparse
from pathlib import Path

from devenv.cli.output import warn
from devenv.config.load import Loaded, load
from devenv.core.paths import find_project_root


def project_root(args: argparse.Namespace) -> Path:
    start = Path(args.project_dir) if getattr(args, "project_dir", None) else None
    return find_project_root(start)


def load_project(args: argparse.Namespace, profile: str | None = None) -> Loaded:
    loaded = load(project_root(args), profile)
    for message in loaded.warnings:
        warn(message)
    return loaded
