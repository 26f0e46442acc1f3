"""One-shot jobs that completed: not rerun by `up` while nothing they depend on changed.

Like Compose, a job that exited 0 is left completed. Across engines (`stop`, then `up`) that
is remembered in `.devenv/jobs.json`: per job, its config hash and a fingerprint of its files
(the paths it would watch, minus what watching ignores) taken when its successful run ended
(what the job wrote itself is no change).
A job whose record matches is shown completed without running; `up --rerun NAME` runs it.

The fingerprint also holds the data generation of each data service the job depends on: a
token renewed whenever that service's data is fresh (first start, after `stop` discarded it,
`data reset`) or restored, so a migration runs again on data it has not seen.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from pathlib import Path

from devenv.core.atomic import write_atomic
from devenv.core.paths import PRIVATE_FILE, StateDir
from devenv.engine.watch import JUNK_DIRS, is_junk, make_spec
from devenv.plan import ServicePlan

MAX_FILES = 50_000  # a bigger tree is not fingerprinted: the job just runs
MAX_SECONDS = 2.0


def fingerprint(plan: ServicePlan, root: Path) -> str | None:
    """The job's config hash and the size and mtime of each of its files; None when its tree
    is too big to look at quickly (then it runs)."""
    spec = make_spec(plan.name, root, plan.workdir, plan.watch.paths, plan.watch.ignore)
    digest = hashlib.sha256(plan.config_hash.encode())
    for dep in sorted(plan.depends_on):
        digest.update(f"{dep}\0{data_generation(root, dep)}\n".encode())
    deadline, count = time.monotonic() + MAX_SECONDS, 0
    for top in spec.roots:
        for folder, dirs, files in os.walk(top):
            here = Path(folder)
            dirs[:] = sorted(d for d in dirs if d not in JUNK_DIRS and spec.matches(here / d))
            for name in sorted(files):
                path = here / name
                if is_junk(str(path)) or not spec.matches(path):
                    continue
                count += 1
                if count > MAX_FILES or time.monotonic() > deadline:
                    return None
                try:
                    st = path.stat()
                except OSError:
                    continue
                digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _generation_file(root: Path, service: str) -> Path:
    return StateDir(root).data / f".{service}.generation"  # beside the data, not in it


def data_generation(root: Path, service: str) -> str:
    """The token of the data service's current data ("" for none, or not a data service)."""
    try:
        return _generation_file(root, service).read_text().strip()
    except OSError:
        return ""


def new_data_generation(root: Path, service: str) -> None:
    """The data service's data is new (fresh, or restored): jobs that depend on it run."""
    file = _generation_file(root, service)
    if file.parent.is_dir():
        write_atomic(file, secrets.token_hex(8), PRIVATE_FILE)


class JobRecords:
    def __init__(self, root: Path):
        self.root = root
        self.file = StateDir(root).jobs

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.file.read_text())
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, str)} \
            if isinstance(data, dict) else {}

    def recorded(self, name: str) -> str | None:
        return self._read().get(name)

    def unchanged(self, plan: ServicePlan, print_: str | None) -> bool:
        """Whether the job completed before with this very configuration and files."""
        return print_ is not None and self._read().get(plan.name) == print_

    def completed(self, name: str, print_: str | None) -> None:
        """It completed; `print_`: its fingerprint now (None: unknown, so it will run)."""
        self._write(name, print_)

    def forget(self, name: str) -> None:
        self._write(name, None)

    def _write(self, name: str, print_: str | None) -> None:
        records = self._read()
        if records.get(name) == print_:
            return
        if print_ is None:
            records.pop(name, None)
        else:
            records[name] = print_
        if self.file.parent.is_dir():
            write_atomic(self.file, json.dumps(records, indent=1, sort_keys=True), PRIVATE_FILE)
