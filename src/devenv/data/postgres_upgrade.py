"""A PostgreSQL major-version move (`devenv migrate`): dump and restore, offline.

With the service stopped: the old data is started once more, on its own binaries and a
private port, for a base backup (the migration's snapshot, restorable with the old
binaries) and a `pg_dumpall` by the new version's client (newer pg_dump reads older
servers); the old data folder is set aside (`pgdata.pre-migrate`), a new one is made with
the new binaries, started on a private port, and the dump is restored into it. Roles,
passwords, databases, extensions and rows come across; the admin role keeps the old data's
secret (the dump carries its password).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

from devenv.core import faults
from devenv.core.errors import DevenvError
from devenv.data.base import (
    HOST,
    Confinement,
    VersionMove,
    data_identity,
    read_secret,
    run_tool,
)
from devenv.data.postgres import (
    ADMIN,
    MIGRATION_SERVER,
    PG,
    Postgres,
    _admin_secret,
    _bin,
    _pg_version_on_disk,
    _pgdata,
    _server_tool,
    _version,
    _write_pgpass,
    bin_dir,
    binaries_for,
    record_server,
    stop_left_server,
)

READY_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
ASIDE = "pgdata.pre-migrate"
# what restoring a dump into a fresh cluster always says: its admin role is there already
EXPECTED = (f'role "{ADMIN}" already exists',)


def version_move(ds: PG) -> VersionMove | None:
    if ds.in_container:  # (its image names the version; its data is in a volume)
        return None
    on_disk = _pg_version_on_disk(_pgdata(ds))
    if on_disk is None:
        return None
    new = _version(ds).split(".")[0]
    if on_disk == new:
        return None
    new_bin = str(Path(_bin(ds, "postgres")).parent)
    old_bin = binaries_for(on_disk)
    how = (f"snapshot the PostgreSQL {on_disk} data (pg_basebackup), dump it with "
           f"pg_dumpall {new}, restore it into a new PostgreSQL {new} data folder")
    if old_bin is None:
        how = (f"no PostgreSQL {on_disk} binaries here to read the data with; install them "
               f"(Debian: apt install postgresql-{on_disk}) or set bin_dir")
    elif int(on_disk) > int(new):
        how = f"a downgrade (PostgreSQL {on_disk} → {new}): " + how
    return VersionMove(ds.name, "PostgreSQL", on_disk, new, old_bin, new_bin, how)


def old_service(ds: PG, move: VersionMove) -> PG:
    """The service as it was: on the data's own binaries."""
    return Postgres().on_version(ds, move.old, move.old_bin)


def _private(path: str, flags: int) -> int:
    import os

    return os.open(path, flags, 0o600)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


@contextlib.asynccontextmanager
async def running(ds: PG, pgdata: Path, log: Path) -> AsyncIterator[int]:
    """The server of `ds`'s binaries on `pgdata`, on a private port, until the block ends
    (then a fast shutdown; killed if it does not stop)."""
    port = _free_port()
    jail = Confinement(pgdata)
    argv = jail.argv([_server_tool(jail, ds, "postgres"), "-D", jail.data, "-p", str(port),
                      "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                      "-c", "max_wal_senders=10", "-c", "wal_level=replica"])
    with open(log, "ab", opener=_private) as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
            start_new_session=True)
    try:
        record_server(ds.folder, proc.pid)  # (an engine killed now: the next stops it)
        await _ready(ds, port, proc, log)
        yield port
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        (ds.folder / MIGRATION_SERVER).unlink(missing_ok=True)


async def _ready(ds: PG, port: int, proc: asyncio.subprocess.Process, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            break
        check = await asyncio.create_subprocess_exec(
            _bin(ds, "pg_isready"), "-q", "-h", HOST, "-p", str(port), "-d", "postgres",
            "-U", ADMIN, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        if await check.wait() == 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 0.2)
    tail = log.read_text(errors="replace").splitlines()[-10:] if log.exists() else []
    raise DevenvError(f"{ds.name}: PostgreSQL did not start for the migration", details=tail)


def _secret(ds: PG, move: VersionMove) -> str:
    if move.old_bin is None:
        raise DevenvError(f"{ds.name}: {move.how}")
    secret = read_secret(_admin_secret(ds))
    if secret is None:
        raise DevenvError(f"{ds.name}: no admin secret ({_admin_secret(ds)})",
                          hint=f"start it once on PostgreSQL {move.old} to finish migrating "
                          "its data from an older devenv")
    return secret


async def save(ds: PG, move: VersionMove, snapshot: Path, work: Path) -> str:
    """With the service stopped: the old data, started on its own binaries, copied into
    `snapshot` (a base backup, restorable with those binaries: the rollback) and dumped
    into `work`; the old server's version."""
    old = old_service(ds, move)
    secret = _secret(ds, move)
    work.mkdir(mode=0o700, parents=True, exist_ok=True)
    async with running(old, _pgdata(ds), work / f"{ds.name}.log") as port:
        version = await Postgres().snapshot(dataclasses.replace(old, port=port), snapshot)
        await run_tool([_bin(ds, "pg_dumpall"), "-h", HOST, "-p", str(port), "-U", ADMIN,
                        "-f", str(work / f"{ds.name}.sql")], env={"PGPASSWORD": secret},
                       what=f"{ds.name}: pg_dumpall")
    return version


async def apply(ds: PG, move: VersionMove, work: Path) -> None:
    """The old data folder set aside (`pgdata.pre-migrate`), a new one made by the new
    binaries with the same admin secret, and the dump restored into it."""
    secret = _secret(ds, move)
    aside = ds.folder / ASIDE
    shutil.rmtree(aside, ignore_errors=True)
    _pgdata(ds).rename(aside)
    faults.point("migrate:aside")
    Postgres()._initdb(ds, data_identity(), secret)  # the same secret: the dump sets it
    async with running(ds, _pgdata(ds), work / f"{ds.name}.log") as port:
        faults.point("migrate:new-server")
        out = await run_tool([_bin(ds, "psql"), "-X", "-q", "-h", HOST, "-p", str(port),
                              "-U", ADMIN, "-d", "postgres", "-v", "ON_ERROR_STOP=0",
                              "-f", str(work / f"{ds.name}.sql")],
                             env={"PGPASSWORD": secret},
                             what=f"{ds.name}: psql (restoring the dump)", timeout=3600)
        errors = [line for line in out.splitlines() if "ERROR:" in line
                  and not any(e in line for e in EXPECTED)]
        if errors:
            raise DevenvError(f"{ds.name}: the dump did not restore into PostgreSQL "
                              f"{move.new}", details=errors[-10:])
    _write_pgpass(ds)


def stop_left(base: Path) -> list[str]:
    """The migrations' servers a dead engine left running (under `base`, the project's
    `.devenv`), stopped; what was stopped, to tell the user."""
    said = []
    for record in sorted(base.glob(f"data/*/{MIGRATION_SERVER}")):
        pid = stop_left_server(record.parent)
        if pid is not None:
            said.append(f"{record.parent.name}: stopped the PostgreSQL server (pid {pid}) "
                        "a migration cut short left running")
    return said


def finish(ds: PG) -> None:
    """The move held: the old folder set aside is removed."""
    shutil.rmtree(ds.folder / ASIDE, ignore_errors=True)


__all__ = ["apply", "bin_dir", "finish", "old_service", "save", "stop_left",
           "version_move"]
