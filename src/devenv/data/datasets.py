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

from devenv.core import faults
from devenv.data import open_load
from devenv.data.base import DataService, DatasetError, DatasetLoad

__all__ = ["DatasetError", "Target", "atomic", "load_files", "open_loads", "run_loads"]


@dataclass(frozen=True)
class Target:
    data: DataService[Any]
    target: str | None = None  # e.g. a database of the service; None: its default


async def open_loads(root: Path, files: dict[str, list[str]],
                     targets: dict[str, Target]) -> list[tuple[str, DatasetLoad]]:
    """Read every file of every target (nothing runs yet): (key, its load)."""
    return [(key, await open_load(targets[key].data, targets[key].target,
                                  [(name, root / name) for name in names]))
            for key, names in files.items()]


def atomic(loads: list[tuple[str, DatasetLoad]]) -> bool:
    """Whether the loads are all or nothing by themselves, even if the engine is killed: one
    transaction. (Several commits, or one that does the work at commit, are not.)"""
    return len(loads) <= 1 and all(load.prepared for _, load in loads)


async def run_loads(opened: list[tuple[str, DatasetLoad]]) -> dict[str, int]:
    """Stage every load, then commit them all; any error aborts them all. Returns how many
    statements/commands per target."""
    loads: list[DatasetLoad] = []
    counts: dict[str, int] = {}
    try:
        for key, load in opened:
            loads.append(load)
            counts[key] = await load.stage()
        faults.point("load:staged")
        # loads whose commit may still fail go first, while the others can still roll back
        for i, load in enumerate(sorted(loads, key=lambda load: load.prepared)):
            if i:
                faults.point("load:between-commits")
            await load.commit()
    finally:
        for load in loads:
            with contextlib.suppress(Exception):
                await load.abort()  # nothing left to undo after a commit
    return counts


async def load_files(root: Path, files: dict[str, list[str]],
                     targets: dict[str, Target]) -> dict[str, int]:
    """Load every file; all or nothing (see `atomic` for a crash meanwhile)."""
    return await run_loads(await open_loads(root, files, targets))
