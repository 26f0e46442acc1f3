"""Loading datasets all-or-nothing, with errors that name the file and line.

Each target (a data service, or one of its databases) reads its files with its kind's loader;
every target stages its part inside its own transaction, and nothing is committed until every
file of every target has run. Any error aborts them all.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devenv.data import open_load
from devenv.data.base import DataService, DatasetError, DatasetLoad

__all__ = ["DatasetError", "Target", "load_files"]


@dataclass(frozen=True)
class Target:
    data: DataService[Any]
    target: str | None = None  # e.g. a database of the service; None: its default


async def load_files(root: Path, files: dict[str, list[str]],
                     targets: dict[str, Target]) -> dict[str, int]:
    """Load every file; all or nothing. Returns how many statements/commands per target."""
    loads: list[DatasetLoad] = []
    counts: dict[str, int] = {}
    try:
        opened = []
        for key, names in files.items():  # every file is read before anything runs
            target = targets[key]
            opened.append((key, await open_load(target.data, target.target,
                                                [(name, root / name) for name in names])))
        for key, load in opened:
            loads.append(load)
            counts[key] = await load.stage()
        # loads whose commit may still fail go first, while the others can still roll back
        for load in sorted(loads, key=lambda load: load.prepared):
            await load.commit()
    finally:
        for load in loads:
            with contextlib.suppress(Exception):
                await load.abort()  # nothing left to undo after a commit
    return counts
