"""Where an environment keeps its state: everything under <project>/.devenv/."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from devenv.core.errors import UsageError

CONFIG_NAMES = ("devenv.yaml", "devenv.yml")


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
    def local_overrides(self) -> Path:
        return self.base / "local.yaml"

    def ensure(self) -> None:
        """Create the state folders; `run/` is owner-only, it holds the control socket."""
        self.base.mkdir(exist_ok=True)
        gitignore = self.base / ".gitignore"
        if not gitignore.exists():
            gitignore.write_text("*\n")
        self.run.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.run, 0o700)
        self.logs.mkdir(exist_ok=True)
