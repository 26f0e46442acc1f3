"""File watching: one native watcher (inotify via watchfiles) for every watched path.

A burst of events (a save that writes three files, a `git checkout`) arrives as one batch:
the watcher waits for a short quiet window before it reports. Each batch is mapped to the
services whose paths it touches, minus what they ignore: `watch.ignore`, the project's and
the service's .gitignore, and the usual junk (.git, __pycache__, node_modules, swap files).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pathspec
import watchfiles

from devenv.core.paths import CONFIG_NAMES

QUIET_MS = 50  # a batch ends after this long without events
JUNK_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", "venv",
                       ".devenv", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".tox",
                       ".idea", ".vscode"})
JUNK_FILES = re.compile(r"(\.py[cod]$|\.sw.$|~$|^\.#|^#.*#$|^\.DS_Store$|^4913$|"
                        r"\.tmp$|___jb_...___$)")

OnChange = Callable[[str, list[str], float], None]


@dataclass(frozen=True)
class WatchSpec:
    service: str
    roots: tuple[Path, ...]
    ignore: pathspec.GitIgnoreSpec
    base: Path  # ignore patterns are relative to this (the project)

    def matches(self, path: Path) -> bool:
        if not any(path == r or r in path.parents for r in self.roots):
            return False
        try:
            rel = path.relative_to(self.base).as_posix()
        except ValueError:
            return True
        if path.is_dir():
            rel += "/"  # so that directory patterns (`build/`) match the folder itself
        return not self.ignore.match_file(rel)


def is_junk(path: str) -> bool:
    parts = Path(path).parts
    return bool(JUNK_FILES.search(parts[-1])) or any(p in JUNK_DIRS for p in parts)


def _gitignore_lines(folder: Path, base: Path) -> list[str]:
    """A .gitignore's patterns, re-rooted at `base` so one spec can check project paths."""
    path = folder / ".gitignore"
    if not path.is_file():
        return []
    prefix = folder.relative_to(base).as_posix()
    prefix = "" if prefix == "." else prefix + "/"
    out = []
    for raw in path.read_text(errors="replace").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        body = line[1:] if negate else line
        anchored = "/" in body.rstrip("/")
        body = body.lstrip("/")
        pattern = f"{prefix}{body}" if anchored or not prefix else f"{prefix}**/{body}"
        out.append(("!" if negate else "") + pattern)
    return out


def make_spec(service: str, root: Path, workdir: str, paths: Iterable[str],
              ignore: Iterable[str]) -> WatchSpec:
    folder = (root / workdir).resolve()
    roots = tuple((root / p).resolve() for p in paths) or (folder,)
    lines = _gitignore_lines(root, root)
    if folder != root.resolve() and folder.is_relative_to(root.resolve()):
        lines += _gitignore_lines(folder, root.resolve())
    lines += list(ignore)
    lines += [f"/{name}" for name in CONFIG_NAMES]  # config changes are applied by `up`
    return WatchSpec(service, roots, pathspec.GitIgnoreSpec.from_lines(lines), root.resolve())


def net_changes(batch: Iterable[tuple[watchfiles.Change, str]]) -> set[str]:
    """Paths that changed, minus those created and deleted within the batch (an editor's or
    sed's temporary file)."""
    added = {p for c, p in batch if c == watchfiles.Change.added}
    deleted = {p for c, p in batch if c == watchfiles.Change.deleted}
    return {p for _, p in batch} - (added & deleted)


def affected(specs: Iterable[WatchSpec], changes: Iterable[str]) -> dict[str, list[str]]:
    hits: dict[str, list[str]] = {}
    for raw in changes:
        if is_junk(raw):
            continue
        path = Path(raw)
        for spec in specs:
            if spec.matches(path):
                hits.setdefault(spec.service, []).append(raw)
    return hits


class Watcher:
    def __init__(self, on_change: OnChange, clock: Callable[[], float]):
        self.on_change = on_change
        self.clock = clock
        self.specs: list[WatchSpec] = []
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._roots: tuple[Path, ...] = ()

    def update(self, specs: list[WatchSpec]) -> None:
        """Watch these; the native watcher restarts only when the set of roots changes."""
        self.specs = specs
        roots = tuple(sorted({r for s in specs for r in s.roots if r.exists()}))
        if roots == self._roots and self._task and not self._task.done():
            return
        self.stop()
        self._roots = roots
        if roots:
            self._stop = asyncio.Event()
            self._task = asyncio.create_task(self._run(roots, self._stop), name="watcher")

    def stop(self) -> None:
        if self._stop:
            self._stop.set()
        if self._task:
            self._task.cancel()
        self._task = self._stop = None
        self._roots = ()

    async def _run(self, roots: tuple[Path, ...], stop: asyncio.Event) -> None:
        async for batch in watchfiles.awatch(
                *roots, watch_filter=lambda _c, p: not is_junk(p), step=QUIET_MS,
                debounce=1600, stop_event=stop, rust_timeout=1000, yield_on_timeout=False):
            seen = self.clock()
            for service, files in affected(self.specs, net_changes(batch)).items():
                with contextlib.suppress(Exception):
                    self.on_change(service, sorted(files), seen)
