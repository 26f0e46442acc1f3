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
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pathspec
import watchfiles

from devenv.core.paths import CONFIG_NAMES

QUIET_MS = 50  # a batch ends after this long without events
READY_MS = 100  # the watcher thread wakes this often when idle (and first says "watching")
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
    """Runs the native watcher in its own thread (setting up watches on a large tree takes a
    while and must not stall the engine) and hands batches to the event loop."""

    def __init__(self, on_change: OnChange, clock: Callable[[], float]):
        self.on_change = on_change
        self.clock = clock
        self.specs: list[WatchSpec] = []
        self._stop: threading.Event | None = None
        self._roots: tuple[Path, ...] = ()
        self._ready: asyncio.Future[None] | None = None

    def update(self, specs: list[WatchSpec]) -> asyncio.Future[None]:
        """Watch these; the native watcher restarts only when the set of roots changes. The
        future completes once every root is being watched."""
        loop = asyncio.get_running_loop()
        self.specs = specs
        roots = tuple(sorted({r for s in specs for r in s.roots if r.exists()}))
        if roots == self._roots and self._ready is not None:
            return self._ready
        self.stop()
        self._roots = roots
        self._ready = loop.create_future()
        if not roots:
            self._ready.set_result(None)
            return self._ready
        self._stop = threading.Event()
        threading.Thread(target=self._run, args=(roots, self._stop, loop, self._ready),
                         name="watcher", daemon=True).start()
        return self._ready

    def stop(self) -> None:
        if self._stop:
            self._stop.set()
        self._stop = self._ready = None
        self._roots = ()

    def _run(self, roots: tuple[Path, ...], stop: threading.Event,
             loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        def mark_ready() -> None:
            if not ready.done():
                ready.set_result(None)

        told = False

        def tell() -> None:  # once: the first event or idle timeout means we are watching
            nonlocal told
            if not told:
                told = True
                loop.call_soon_threadsafe(mark_ready)

        def keep(_change: watchfiles.Change, path: str) -> bool:
            tell()
            return not is_junk(path)

        try:
            for batch in watchfiles.watch(
                    *roots, watch_filter=keep, step=QUIET_MS, debounce=1600, stop_event=stop,
                    rust_timeout=READY_MS, yield_on_timeout=True, raise_interrupt=False):
                tell()
                if batch:
                    loop.call_soon_threadsafe(self._deliver, batch)
        except Exception:  # a vanished root, a closed loop: stop watching, never crash
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(mark_ready)

    def _deliver(self, batch: set[tuple[watchfiles.Change, str]]) -> None:
        seen = self.clock()
        for service, files in affected(self.specs, net_changes(batch)).items():
            with contextlib.suppress(Exception):
                self.on_change(service, sorted(files), seen)
