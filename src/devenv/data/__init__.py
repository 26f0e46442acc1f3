"""Data services (real database servers run by devenv), datasets and snapshots.

KINDS is the one literal registry of data kinds; each is a module behind `DataKind`
(devenv.data.base), imported only when used. Everything else calls the generic functions
below, which know no kind by name.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from pathlib import Path
from typing import Any
from urllib.parse import quote

from devenv.core.errors import DevenvError
from devenv.data.base import DataKind, DataService, DatasetLoad, Server, VersionMove

KINDS: dict[str, str] = {
    "postgres": "devenv.data.postgres:Postgres",
    "redis": "devenv.data.redis:Redis",
}


def kind_names() -> list[str]:
    return list(KINDS)


@functools.cache
def kind_of(name: str) -> DataKind:
    if name not in KINDS:
        from devenv.config.schema import did_you_mean

        raise DevenvError(f"no data kind '{name}'{did_you_mean(name, KINDS)}",
                          hint="kinds: " + ", ".join(KINDS))
    module, _, cls = KINDS[name].partition(":")
    kind: DataKind = getattr(importlib.import_module(module), cls)()
    return kind


def settings_class(kind: str) -> type[Any]:
    """The kind's typed keys: a frozen dataclass (pure data)."""
    return kind_of(kind).Settings


def url_var(kind: str) -> str:
    """The variable a dependent gets the URL in: DATABASE_URL, REDIS_URL."""
    return kind_of(kind).url_var


def server(ds: DataService[Any]) -> Server:
    """How a runtime runs the service's server."""
    return kind_of(ds.kind).server(ds)


def url(ds: DataService[Any], target: str | None = None) -> str:
    return kind_of(ds.kind).url(ds, target)


def client_env(ds: DataService[Any], target: str | None = None) -> dict[str, str]:
    """The kind's own variables for a client of the service (PGHOST…, REDIS_HOST…), so its
    standard tools work with no arguments; `target`: e.g. a database."""
    return kind_of(ds.kind).client_env(ds, target)


def explain(text: str) -> str | None:
    """What to do about a known data-server problem shown in a line of output, or None."""
    return next((hint for name in KINDS if (hint := kind_of(name).explain(text))), None)


def binaries(ds: DataService[Any]) -> str:
    """The server's binaries: where and which version (`devenv doctor`); nothing started."""
    return kind_of(ds.kind).binaries(ds)


def prepare(ds: DataService[Any]) -> None:
    """Before a start (sync): binaries checked, a data folder there."""
    kind_of(ds.kind).prepare(ds)


async def provision(ds: DataService[Any], port: int) -> None:
    """The first healthy start on fresh data (the instance listens on `port`)."""
    await kind_of(ds.kind).provision(ds, port)
    ds.mark("provisioned")


async def snapshot(ds: DataService[Any], dest: Path) -> str:
    """A consistent copy of the running server's data into `dest`; the server's version."""
    return await kind_of(ds.kind).snapshot(ds, dest)


def stage_restore(ds: DataService[Any], src: Path) -> None:
    """A copy made ready beside the (stopped) server's live data; nothing live touched."""
    kind_of(ds.kind).stage_restore(ds, src)


def swap_restore(ds: DataService[Any]) -> bool:
    """The staged copy put in place (idempotent); it counts as provisioned."""
    swapped = kind_of(ds.kind).swap_restore(ds)
    if swapped:
        ds.mark("restored")
    return swapped


def drop_restore(ds: DataService[Any]) -> None:
    """What restores left beside the live data, removed."""
    kind_of(ds.kind).drop_restore(ds)


def discard_volume(ds: DataService[Any]) -> None:
    """On the docker runtime: the service's data volume removed (its server stopped), as
    its data folder is when the data is discarded (`stop` without --persist-data, reset)."""
    if ds.in_container and ds.volume is not None:
        from devenv.data import container

        container.remove_volume(ds.name, ds.volume)


async def empty_in_place(ds: DataService[Any]) -> None:
    """`data reset` on the kubernetes runtime: the cluster's server keeps running on its
    volume, its data emptied (its databases made again, empty); elsewhere nothing (the
    folder or volume goes instead)."""
    if ds.in_cluster:
        from devenv.data import cluster

        await cluster.wipe(ds)


def extensions(ds: DataService[Any]) -> list[str] | None:
    """The extensions the service's binaries ship (PostgreSQL: the bundled build's, or
    bin_dir's), sorted; None when its kind has none or the binaries cannot be found. For
    `devenv doctor` and `config validate` to list."""
    return kind_of(ds.kind).extensions(ds)


def version_move(ds: DataService[Any]) -> VersionMove | None:
    """When the data on disk is from another major version than the service's binaries:
    what `devenv migrate` would do (None: nothing to move, or a kind that has no versions)."""
    found = getattr(kind_of(ds.kind), "version_move", None)
    move: VersionMove | None = found(ds) if found is not None else None
    return move


async def upgrade_save(ds: DataService[Any], move: VersionMove, snapshot: Path,
                       work: Path) -> str:
    """With the server stopped: a copy of the old data into `snapshot` (restorable with the
    old binaries), and what the move needs into `work`; the old server's version."""
    version: str = await kind_of(ds.kind).upgrade_save(  # type: ignore[attr-defined]
        ds, move, snapshot, work)
    return version


async def upgrade_apply(ds: DataService[Any], move: VersionMove, work: Path) -> None:
    """The data moved to the binaries' version (the old folder kept aside)."""
    await kind_of(ds.kind).upgrade_apply(ds, move, work)  # type: ignore[attr-defined]


def on_version(ds: DataService[Any], version: str, bin_dir: str | None) -> DataService[Any]:
    """The service as it was before a move: on `version`'s binaries (in `bin_dir`)."""
    moved: DataService[Any] = kind_of(ds.kind).on_version(  # type: ignore[attr-defined]
        ds, version, bin_dir)
    return moved


def upgrade_finish(ds: DataService[Any]) -> None:
    """The move held: what it kept aside is removed."""
    kind_of(ds.kind).upgrade_finish(ds)  # type: ignore[attr-defined]


async def open_load(ds: DataService[Any], target: str | None,
                    files: list[tuple[str, Path]]) -> DatasetLoad:
    return await kind_of(ds.kind).open_load(ds, target, files)


def secrets(ds: DataService[Any]) -> list[str]:
    """Values of the keys the kind declares secret (masked in logs and output)."""
    found: list[str] = []
    for f in dataclasses.fields(ds.settings):
        if not f.metadata.get("secret"):
            continue
        value = getattr(ds.settings, f.name)
        if isinstance(value, dict):
            value = list(value.values())
        found += [str(v) for v in (value if isinstance(value, list | tuple) else [value])
                  if v not in (None, "")]
    # as they appear in a URL too (DATABASE_URL, REDIS_URL): percent-encoded
    return found + [q for v in found if (q := quote(v, safe="")) != v]


__all__ = [
    "KINDS",
    "DataKind",
    "DataService",
    "DatasetLoad",
    "Server",
    "binaries",
    "client_env",
    "discard_volume",
    "drop_restore",
    "empty_in_place",
    "explain",
    "extensions",
    "kind_names",
    "kind_of",
    "on_version",
    "open_load",
    "prepare",
    "provision",
    "secrets",
    "server",
    "settings_class",
    "snapshot",
    "stage_restore",
    "swap_restore",
    "upgrade_apply",
    "upgrade_finish",
    "upgrade_save",
    "url",
    "url_var",
    "version_move",
]
