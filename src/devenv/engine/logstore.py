"""Service output: one writer, persisted per service with rotation, fanned out to followers.

Each line is stored as `<ISO time> <replica> <stream> <text>`; stream is out, err, or devenv
for the engine's own events about the service. Known secret values are masked before a line
is stored or shown anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Protocol

from devenv.core.paths import private_opener
from devenv.core.secrets import MASK
from devenv.wire import LogLine, to_json

MAX_BYTES = 5 * 1024 * 1024
KEEP_FILES = 3
RING = 2000


def to_file(line: LogLine) -> str:
    return f"{line.time} {line.replica} {line.stream} {line.text}\n"


def json_line(line: LogLine) -> bytes:
    """One line of a streamed answer."""
    return (json.dumps(to_json(line)) + "\n").encode()


def parse_file_line(service: str, raw: str) -> LogLine | None:
    parts = raw.rstrip("\n").split(" ", 3)
    if len(parts) < 3:
        return None
    try:
        ts = datetime.strptime(parts[0], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None
    return LogLine(ts, service, parts[1], parts[2], parts[3] if len(parts) > 3 else "")


class Sink(Protocol):
    def __call__(self, line: LogLine) -> None: ...


class LogStore:
    def __init__(self, folder: Path, sink: Sink | None = None):
        """`sink` sees every stored line (the engine's event stream)."""
        self.folder = folder
        self.sink = sink
        self._files: dict[str, IO[str]] = {}
        self._ring: dict[str, deque[LogLine]] = {}
        self._secrets: re.Pattern[str] | None = None
        self._flush_pending = False

    def set_secrets(self, values: Iterable[str]) -> None:
        escaped = sorted({re.escape(v) for v in values if v}, key=len, reverse=True)
        self._secrets = re.compile("|".join(escaped)) if escaped else None

    def mask(self, text: str) -> str:
        return self._secrets.sub(MASK, text) if self._secrets else text

    def add(self, service: str, replica: str, stream: str, text: str, ts: float | None = None
            ) -> LogLine:
        line = LogLine(ts or datetime.now(UTC).timestamp(), service, replica, stream,
                       self.mask(text))
        self._ring.setdefault(service, deque(maxlen=RING)).append(line)
        self._write(line)
        if self.sink:
            self.sink(line)
        return line

    def recent(self, service: str, count: int) -> list[LogLine]:
        ring = self._ring.get(service)
        return list(ring)[-count:] if ring else []

    def flush(self) -> None:
        self._flush_pending = False
        for fh in self._files.values():
            with contextlib.suppress(OSError):
                fh.flush()

    def close(self) -> None:
        self.flush()
        for fh in self._files.values():
            fh.close()
        self._files.clear()

    def _write(self, line: LogLine) -> None:
        """Persist a line; a folder that is gone (the project was deleted) or a full disk
        loses the line on disk only, never the engine."""
        fh = self._files.get(line.service)
        try:
            if fh is None:
                self.folder.mkdir(mode=0o700, exist_ok=True)
                fh = self._files[line.service] = open(  # noqa: SIM115
                    self.path(line.service), "a", opener=private_opener)
            fh.write(to_file(line))
        except OSError:
            return
        if not self._flush_pending:  # flush soon after a burst, never on a timer when idle
            self._flush_pending = True
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().call_later(0.2, self.flush)
        if fh.tell() > MAX_BYTES:
            fh.close()
            self._rotate(line.service)
            del self._files[line.service]

    def path(self, service: str) -> Path:
        return self.folder / f"{service}.log"

    def _rotate(self, service: str) -> None:
        base = self.path(service)
        for n in range(KEEP_FILES - 1, 0, -1):
            older = base.with_name(f"{base.name}.{n}")
            if older.exists():
                older.replace(base.with_name(f"{base.name}.{n + 1}"))
        base.replace(base.with_name(f"{base.name}.1"))


def read_files(folder: Path, services: Iterable[str]) -> Iterator[LogLine]:
    """Persisted lines of the given services, oldest first, merged by time."""
    lines: list[LogLine] = []
    for service in services:
        base = folder / f"{service}.log"
        for n in range(KEEP_FILES, -1, -1):
            path = base if n == 0 else base.with_name(f"{base.name}.{n}")
            if not path.exists():
                continue
            with open(path, errors="replace") as fh:
                lines.extend(ln for raw in fh if (ln := parse_file_line(service, raw)))
    lines.sort(key=lambda ln: ln.ts)
    return iter(lines)


def logged_services(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.log") if p.name != "engine.log")


def query(folder: Path, services: Iterable[str], *, since: float | None = None,
          tail: int | None = None, startup: bool = False, verbose: bool = False,
          starts: Starts | None = None) -> list[LogLine]:
    """Persisted lines, filtered as `devenv logs` asks; `tail`: only the last N (0: none);
    `startup`: only start-ups, those `starts` asks for (default: the latest of each replica
    that was still running at the end of the log)."""
    if tail is not None and tail < 0:
        raise ValueError(f"tail must be 0 or more, not {tail}")
    lines = list(read_files(folder, services))
    if startup:
        lines = startup_lines(lines, starts or Starts())
    if since is not None:
        lines = [ln for ln in lines if ln.ts >= since]
    if not verbose:
        lines = [ln for ln in lines if ln.stream != "devenv"]
    return lines if tail is None else lines[max(len(lines) - tail, 0):]


# ---- start-ups
#
# An instance's start-up runs from its `started <instance id>` event until the first of:
# - it is healthy: a service with a health check or a port, HEALTHY_SETTLE after its check
#   passed (the lines a server prints as its port opens reach devenv just after); one with
#   neither, healthy as soon as it starts, once it has run STARTUP_GRACE;
# - it exits (an exit event, below); a one-shot's start-up is its whole run;
# - its first connection: what it prints after that may be answers to requests;
# - the next start of the same replica.
# The events are the engine's own lines (stream `devenv`) about the replica.

FIRST_CALLER = "first connection"  # the engine's event when a caller first reaches it
STARTUP_GRACE = 5.0
HEALTHY_SETTLE = 0.2
STOP_SPAN = 30.0  # replicas stopped within this of a service's last stop stopped with it
EXITED = re.compile(r"\bexit(ed)? (with )?code\b|; restart[: #]")  # exited, or gave up
FINISHED = re.compile(r"^completed\b|; restart: no\b")  # exited, and is not restarted


@dataclass(frozen=True)
class Starts:
    """Which start-ups `--startup` shows, and what the configuration tells that the log
    does not.

    `current`: the (service, instance id) of the instances running now (None: judged from
    the log: the latest start of each replica still running when its service last stopped);
    `past`: also earlier start-ups (restarted, replaced, scaled away); `one_shots`: services
    whose whole run is their start-up (restart: no; an instance the log shows ran to its end
    and was not restarted counts as one too); `unchecked`: services with no health check and
    no port (None: not known, each gets the longer of the two windows)."""

    current: frozenset[tuple[str, str]] | None = None
    past: bool = False
    one_shots: frozenset[str] = frozenset()
    unchecked: frozenset[str] | None = None


@dataclass
class _Run:
    service: str
    replica: str
    instance: str
    start: float
    healthy: float | None = None
    first_caller: float | None = None
    exited: float | None = None
    finished: bool = False
    end: float = float("inf")  # the next start of the replica

    def window_end(self, starts: Starts) -> float:
        settled = float("inf")
        if self.healthy is not None and not (self.service in starts.one_shots or self.finished):
            settled = self.healthy + HEALTHY_SETTLE
            if starts.unchecked is None or self.service in starts.unchecked:
                settled = max(settled, self.start + STARTUP_GRACE)
        return min(settled, self.exited if self.exited is not None else float("inf"),
                   self.first_caller if self.first_caller is not None else float("inf"),
                   self.end)


def runs(lines: Iterable[LogLine]) -> list[_Run]:
    """Every start of an instance in the log, with what the engine said about it."""
    found: list[_Run] = []
    latest: dict[tuple[str, str], _Run] = {}
    for ln in lines:
        if ln.stream != "devenv":
            continue
        key = (ln.service, ln.replica)
        run = latest.get(key)
        if ln.text.startswith("started "):
            if run:
                run.end = ln.ts
            latest[key] = _Run(ln.service, ln.replica, ln.text[len("started "):], ln.ts)
            found.append(latest[key])
        elif run is None or run.exited is not None:
            continue
        elif ln.text == "healthy" and run.healthy is None:
            run.healthy = ln.ts
        elif ln.text == FIRST_CALLER and run.first_caller is None:
            run.first_caller = ln.ts
        elif EXITED.search(ln.text):
            run.exited, run.finished = ln.ts, bool(FINISHED.search(ln.text))
    return found


def running_at_end(lines: list[LogLine]) -> frozenset[tuple[str, str]]:
    """The instances the log shows as current: the latest start of each replica that was
    not stopped, or was stopped with the rest of its service (the environment stopped),
    not before it (scaled away, replaced)."""
    stops: dict[tuple[str, str], float] = {}
    last_stop: dict[str, float] = {}
    for ln in lines:
        if ln.stream == "devenv" and ln.text == "stopped":
            stops[(ln.service, ln.replica)] = ln.ts
            last_stop[ln.service] = ln.ts
        elif ln.stream == "devenv" and ln.text.startswith("started "):
            stops.pop((ln.service, ln.replica), None)
    latest = {(r.service, r.replica): r for r in runs(lines)}
    return frozenset(
        (r.service, r.instance) for key, r in latest.items()
        if key not in stops or stops[key] >= last_stop[r.service] - STOP_SPAN)


def startup_lines(lines: list[LogLine], starts: Starts) -> list[LogLine]:
    """The lines of the start-ups `starts` asks for, in order."""
    current = starts.current if starts.current is not None else running_at_end(lines)
    windows: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for run in runs(lines):
        if starts.past or (run.service, run.instance) in current:
            end = run.window_end(starts)
            windows.setdefault((run.service, run.replica), []).append((run.start, end))
    return [ln for ln in lines
            if any(start <= ln.ts <= end for start, end in windows.get(
                (ln.service, ln.replica), ()))]
