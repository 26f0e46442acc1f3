"""Where an environment keeps its state: everything under <project>/.devenv/."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from devenv.core.errors import UsageError

CONFIG_NAMES = ("devenv.yaml", "devenv.yml")
PRIVATE_DIR = 0o700  # everything under .devenv/ is the owner's only: data, logs, secrets
PRIVATE_FILE = 0o600
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes with its NUL; keep a margin


def private_opener(path: str, flags: int) -> int:
    """`open(path, mode, opener=private_opener)`: a file it creates is owner-only (0600)."""
    return os.open(path, flags, PRIVATE_FILE)


def private_dir(folder: Path) -> Path:
    """`folder` (and any missing parent) created owner-only; an existing one made so."""
    if not folder.parent.is_dir():
        private_dir(folder.parent)
    folder.mkdir(mode=PRIVATE_DIR, exist_ok=True)
    if folder.stat().st_mode & 0o777 != PRIVATE_DIR:
        os.chmod(folder, PRIVATE_DIR)
    return folder


@contextlib.contextmanager
def socket_address(path: Path) -> Iterator[str]:
    """An address for the Unix socket at `path` that fits the kernel's 108 bytes: the path
    itself, or, for a project that lies deep, the same file reached through an open
    descriptor of its folder (/proc/self/fd/N/engine.sock), valid while the block runs."""
    text = str(path)
    if len(text.encode()) < SOCKET_PATH_MAX:
        yield text
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def find_project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` holding a devenv.yaml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if any((folder / name).is_file() for name in CONFIG_NAMES):
            return folder
    raise UsageError(
        f"no devenv.yaml in {here} or any folder above it",
        hint="run `devenv init` to create one, or cd into your project",
    )


def config_file(root: Path) -> Path:
    for name in CONFIG_NAMES:
        if (root / name).is_file():
            return root / name
    return root / CONFIG_NAMES[0]


@dataclass(frozen=True)
class StateDir:
    root: Path

    @property
    def base(self) -> Path:
        return self.root / ".devenv"

    @property
    def run(self) -> Path:
        return self.base / "run"

    @property
    def socket(self) -> Path:
        return self.run / "engine.sock"

    @property
    def lock(self) -> Path:
        return self.run / "engine.lock"

    @property
    def pidfile(self) -> Path:
        return self.run / "engine.pid"

    @property
    def procs(self) -> Path:
        return self.run / "procs.json"

    @property
    def engine_log(self) -> Path:
        return self.logs / "engine.log"

    @property
    def logs(self) -> Path:
        return self.base / "logs"

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def snapshots(self) -> Path:
        return self.base / "snapshots"

    @property
    def jobs(self) -> Path:
        return self.base / "jobs.json"

    @property
    def local_overrides(self) -> Path:
        return self.base / "local.yaml"

    def ensure(self) -> None:
        """Create the state folders, all owner-only (0700; files in them 0600): they hold
        the control socket, data, logs, secrets and personal overrides. Folders an older
        devenv made open to others are closed; so are the lock and the engine's log, made
        here so that whoever opens them next finds them owner-only."""
        for folder in (self.base, self.run, self.logs, self.data, self.snapshots):
            private_dir(folder)
        for file, text in ((self.base / ".gitignore", "*\n"), (self.lock, ""),
                           (self.engine_log, "")):
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
            try:
                if os.fstat(fd).st_mode & 0o077:
                    os.fchmod(fd, PRIVATE_FILE)
                if text and not os.fstat(fd).st_size:
                    os.write(fd, text.encode())
            finally:
                os.close(fd)
