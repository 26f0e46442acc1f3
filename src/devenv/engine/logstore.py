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
          tail: int | None = None, startup: bool = False, verbose: bool = False
          ) -> list[LogLine]:
    """Persisted lines, filtered as `devenv logs` asks; `tail`: only the last N (0: none)."""
    if tail is not None and tail < 0:
        raise ValueError(f"tail must be 0 or more, not {tail}")
    lines = list(read_files(folder, services))
    if startup:
        lines = _startup_only(lines)
    if since is not None:
        lines = [ln for ln in lines if ln.ts >= since]
    if not verbose:
        lines = [ln for ln in lines if ln.stream != "devenv"]
    return lines if tail is None else lines[max(len(lines) - tail, 0):]


def _startup_only(lines: list[LogLine]) -> list[LogLine]:
    """For each replica, the lines from its latest start until it first became healthy."""
    starts: dict[tuple[str, str], float] = {}
    ends: dict[tuple[str, str], float] = {}
    for ln in lines:
        if ln.stream == "devenv" and ln.text.startswith("started "):
            starts[(ln.service, ln.replica)] = ln.ts
            ends.pop((ln.service, ln.replica), None)
        elif ln.stream == "devenv" and ln.text == "healthy":
            ends.setdefault((ln.service, ln.replica), ln.ts)
    out = []
    for ln in lines:
        key = (ln.service, ln.replica)
        if key in starts and ln.ts >= starts[key] and ln.ts <= ends.get(key, float("inf")):
            out.append(ln)
    return out
