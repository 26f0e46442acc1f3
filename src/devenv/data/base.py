"""What devenv needs from a kind of data service, and helpers they share."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from devenv.config.model import HealthCheck, Service
from devenv.core.errors import DevenvError

HOST = "127.0.0.1"


@dataclass(frozen=True)
class DataService:
    """A data service as the data layer sees it: its declaration and where its data lives."""

    name: str
    spec: Service
    folder: Path  # .devenv/data/<name>
    port: int  # the stable address

    @property
    def fresh_marker(self) -> Path:
        return self.folder / ".provisioned"


class DataKind(Protocol):
    name: str
    url_var: str  # DATABASE_URL, REDIS_URL

    def command(self, ds: DataService) -> tuple[str, ...]:
        """The server's command line; it must listen on $PORT."""

    def health(self, ds: DataService) -> HealthCheck: ...

    def stop_signal(self) -> str: ...

    def url(self, ds: DataService, database: str | None = None) -> str: ...

    def env(self, ds: DataService) -> dict[str, str]:
        """Environment the server itself and its helper tools need."""

    def prepare(self, ds: DataService) -> None:
        """Before start: create the data folder if there is none (sync)."""

    async def provision(self, ds: DataService, port: int) -> None:
        """After the first healthy start on fresh data (the instance is on `port`; the
        service's address routes only to healthy instances): databases, users."""

    async def snapshot(self, ds: DataService, dest: Path) -> str:
        """Write a consistent copy of the running server's data into `dest`; its version."""

    def restore(self, ds: DataService, src: Path) -> None:
        """Replace the (stopped) server's data with the copy in `src`."""

    def version(self, ds: DataService) -> str: ...


def package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def binary(ds: DataService, name: str, bundled: Path | None, package: str) -> str:
    """A server binary: from bin_dir when declared, else the bundled one, else PATH."""
    if ds.spec.bin_dir:
        path = Path(ds.spec.bin_dir) / name
        if not path.is_file():
            raise DevenvError(f"{ds.name}: no {name} in bin_dir {ds.spec.bin_dir}",
                              hint=f"fix services.{ds.name}.bin_dir")
        return str(path)
    if bundled and (bundled / name).is_file():
        return str(bundled / name)
    found = shutil.which(name)
    if found:
        return found
    raise DevenvError(f"{ds.name}: cannot find {name}",
                      hint=f"pip install {package} (it bundles {name}), or set "
                      f"services.{ds.name}.bin_dir")


def as_non_root(argv: list[str]) -> list[str]:
    """Servers that refuse to run as root (PostgreSQL) run in a user namespace as a normal
    user; their files stay ours. Outside root, nothing changes."""
    if os.geteuid() != 0:
        return argv
    unshare = shutil.which("unshare")
    if unshare is None:
        raise DevenvError("PostgreSQL will not run as root, and `unshare` is missing",
                          hint="run devenv as a normal user, or install util-linux")
    return [unshare, "--user", "--map-user=1000", "--map-group=1000", *argv]


async def run_tool(argv: list[str], env: dict[str, str] | None = None, what: str = "") -> str:
    """Run a helper (initdb, pg_basebackup, …) to completion; its output, or an error."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, **(env or {})},
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise DevenvError(f"{what or argv[0]} failed (exit code {proc.returncode})",
                          details=text.strip().splitlines()[-10:])
    return text


def check_version(ds: DataService, found: str, product: str) -> None:
    wanted = ds.spec.version
    if wanted and found.split(".")[0] != str(wanted).split(".")[0]:
        raise DevenvError(
            f"{ds.name}: wants {product} {wanted}, the binaries are {product} {found}",
            hint=f"set services.{ds.name}.bin_dir to {product} {wanted}'s binaries, or change "
            f"services.{ds.name}.version")
