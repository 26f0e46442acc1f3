"""The trace store's writer: a process of its own that owns the write connection.

SQLite work is Python work (rows, JSON, summaries) that would hold the engine's GIL: in a
thread it slowed the ingress by a fifth under load. So the engine's `store.Traces` gathers
spans (and the ingress's requests, whose edge spans are made here, not on the hot path) and
hands them over in batches on this process's stdin; each batch is one transaction, and the
answer on stdout says what it stored, dropped and pruned. The engine's clock decides the
times (`now`, the age cutoff), so this process has none of its own.

Frames both ways: a 4-byte big-endian length, then a pickle (the engine and this process are
the same program, and the pipe is theirs alone). End of input: write what came, checkpoint,
exit, so a killed engine leaves no writer behind.

Started by `writerproc.WriterProcess`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import signal
import sqlite3
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from devenv.telemetry.model import RequestSeen, Span, edge_span

MAX_SPANS_PER_TRACE = 10_000  # more spans of one trace are dropped (and counted)
MAX_TIME_NS = 2**63 - 1  # SQLite integers are signed 64-bit
KEEP_FRACTION = 0.8  # a store over its size is pruned down to this share of it
SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
    trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_id TEXT, service TEXT NOT NULL,
    instance TEXT, name TEXT NOT NULL, kind TEXT NOT NULL, start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL, status TEXT NOT NULL, status_message TEXT NOT NULL,
    attributes TEXT NOT NULL, links TEXT NOT NULL,
    PRIMARY KEY (trace_id, span_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS traces (
    trace_id TEXT PRIMARY KEY, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
    span_count INTEGER NOT NULL, errors INTEGER NOT NULL, services TEXT NOT NULL,
    root_service TEXT NOT NULL, root_name TEXT NOT NULL,
    received REAL NOT NULL,  -- when its last span arrived (Unix seconds)
    rooted INTEGER NOT NULL DEFAULT 0,  -- 1: the root is a span without a parent
    dropped INTEGER NOT NULL DEFAULT 0  -- spans left out: over MAX_SPANS_PER_TRACE
);
CREATE INDEX IF NOT EXISTS traces_by_start ON traces (start_ns);
CREATE INDEX IF NOT EXISTS traces_by_received ON traces (received);
"""
# columns added since the first stores (`_migrate` adds them in place), and how to fill them
ADDED_COLUMNS = {
    "rooted": ("INTEGER NOT NULL DEFAULT 0",
               "UPDATE traces SET rooted = EXISTS (SELECT 1 FROM spans WHERE spans.trace_id = "
               "traces.trace_id AND spans.parent_id IS NULL)"),
    "dropped": ("INTEGER NOT NULL DEFAULT 0", ""),
}
HEAD = ("trace_id, start_ns, end_ns, span_count, errors, services, root_service, "
        "root_name, rooted, dropped")
_INSERT_SPAN = "INSERT OR IGNORE INTO spans VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
HEADER = struct.Struct(">I")  # a frame's length


@dataclass(frozen=True)
class Batch:
    """One transaction's work: spans, the ingress's requests (each an edge span), the time
    they count as received, and the bounds to keep (`prune_before`: drop traces last
    received before then; None: not this time)."""

    now: float
    max_bytes: int
    spans: list[Span] = field(default_factory=list)
    requests: list[RequestSeen] = field(default_factory=list)
    prune_before: float | None = None
    max_spans: int = MAX_SPANS_PER_TRACE  # a trace takes no more (the rest are counted)


@dataclass
class Done:
    """What one batch did."""

    stored: int = 0
    dropped: int = 0
    pruned: int = 0
    errors: list[str] = field(default_factory=list)


# ---- frames


def send(stream: IO[bytes], value: object) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(HEADER.pack(len(data)) + data)
    stream.flush()


def receive(stream: IO[bytes]) -> Any:
    """The next frame's value (EOFError at the end of the stream)."""
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        raise EOFError
    size = HEADER.unpack(head)[0]
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


# ---- the process


def main(path: Path, inp: IO[bytes], out: IO[bytes]) -> None:
    try:
        db = open_store(path)
    except sqlite3.Error as exc:
        sys.exit(f"cannot open the trace store {path}: {exc}")
    try:
        while True:
            try:
                batch = receive(inp)
            except EOFError:
                break
            send(out, apply(db, batch))
    finally:
        with contextlib.suppress(sqlite3.Error):
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()


def open_store(path: Path) -> sqlite3.Connection:
    """A write connection, the schema made or brought up to date (the file exists,
    owner-only, made by the engine)."""
    with contextlib.closing(sqlite3.connect(path)) as new:  # before WAL: a new file
        new.execute("PRAGMA auto_vacuum = INCREMENTAL")  # gives space back
    db = connect(path)
    db.executescript(SCHEMA)
    _migrate(db)
    return db


def apply(db: sqlite3.Connection, batch: Batch) -> Done:
    done = Done()
    # the write-ahead log is checkpointed at a tenth of the bound, and cut back after
    pages = max(64, batch.max_bytes // 10 // db.execute("PRAGMA page_size").fetchone()[0])
    db.execute(f"PRAGMA wal_autocheckpoint = {int(pages)}")
    db.execute(f"PRAGMA journal_size_limit = {batch.max_bytes // 10}")
    spans = batch.spans + [edge_span(seen) for seen in batch.requests]
    # one bad batch must not stop the writer, nor the pruning
    _guarded(done, write, db, spans, batch.now, done, batch.max_spans)
    _guarded(done, _prune_age, db, batch.prune_before, done)
    _guarded(done, _prune_size, db, batch.max_bytes, done)
    return done


def _guarded(done: Done, step: Callable[..., None], *args: Any) -> None:
    try:
        step(*args)
    except Exception as exc:
        done.errors.append(f"{type(exc).__name__}: {exc}")


def write(db: sqlite3.Connection, spans: list[Span], now: float, done: Done,
          max_spans: int = MAX_SPANS_PER_TRACE) -> None:
    """Insert the spans and update their traces' summaries from the new spans alone (a
    span already stored is ignored; past `max_spans` a trace takes no more)."""
    if not spans:
        return
    by_trace: dict[str, list[Span]] = {}
    bad = 0
    for span in spans:
        if 0 <= span.start_ns <= span.end_ns <= MAX_TIME_NS:
            by_trace.setdefault(span.trace_id, []).append(span)
        else:
            bad += 1
    stored = dropped = 0
    with transaction(db):
        heads: dict[str, _Head] = {}
        for chunk in _chunks(sorted(by_trace), 500):
            marks = ",".join("?" * len(chunk))
            for row in db.execute(f"SELECT {HEAD} FROM traces WHERE trace_id IN ({marks})",
                                  chunk):
                heads[row[0]] = _Head.of(row)
        known = _stored_ids(db, [(t, sp.span_id) for t in by_trace if t in heads
                                 for sp in by_trace[t]])
        rows, inserts = [], []
        for trace_id, new in by_trace.items():
            head = heads.get(trace_id)
            for span in new:
                if head is not None and head.span_count >= max_spans:
                    head.dropped += 1
                    dropped += 1
                    continue
                if (trace_id, span.span_id) in known:
                    continue  # sent again (an exporter's retry): stored already
                known.add((trace_id, span.span_id))
                inserts.append(_span_row(span))
                stored += 1
                head = _Head.first(span) if head is None else head.add(span)
            if head is not None:
                rows.append((*head.row(), now))
        db.executemany(_INSERT_SPAN, inserts)  # one statement for the batch
        db.executemany(f"INSERT OR REPLACE INTO traces ({HEAD}, received) "
                       f"VALUES ({','.join('?' * (HEAD.count(',') + 2))})", rows)
    done.stored += stored
    done.dropped += dropped + bad
    if bad:
        done.errors.append(f"{bad} spans with times out of range left out")


def _stored_ids(db: sqlite3.Connection, pairs: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of these (trace, span) ids are stored already (looked up by primary key)."""
    found: set[tuple[str, str]] = set()
    for start in range(0, len(pairs), 400):
        chunk = pairs[start:start + 400]
        marks = ",".join(["(?,?)"] * len(chunk))
        found.update(db.execute(f"SELECT trace_id, span_id FROM spans WHERE (trace_id, "
                                f"span_id) IN (VALUES {marks})",
                                [v for pair in chunk for v in pair]))
    return found


def _prune_age(db: sqlite3.Connection, before: float | None, done: Done) -> None:
    if before is None:
        return
    ids = [r[0] for r in db.execute("SELECT trace_id FROM traces WHERE received < ?",
                                    (before,))]
    _delete(db, ids, done)


def _prune_size(db: sqlite3.Connection, max_bytes: int, done: Done) -> None:
    """Over the size bound: drop the oldest traces, whole, down to KEEP_FRACTION of it."""
    if _used_bytes(db) <= max_bytes:
        return
    while _used_bytes(db) > max_bytes * KEEP_FRACTION:
        count = db.execute("SELECT count(*) FROM traces").fetchone()[0]
        if not count:
            break
        ids = [r[0] for r in db.execute(
            "SELECT trace_id FROM traces ORDER BY received, start_ns LIMIT ?",
            (max(1, count // 10),))]
        _delete(db, ids, done)
    db.executescript("PRAGMA incremental_vacuum;")  # (stepped to its end)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _delete(db: sqlite3.Connection, ids: list[str], done: Done) -> None:
    if not ids:
        return
    with transaction(db):
        for chunk in _chunks(ids, 500):
            marks = ",".join("?" * len(chunk))
            db.execute(f"DELETE FROM spans WHERE trace_id IN ({marks})", chunk)
            db.execute(f"DELETE FROM traces WHERE trace_id IN ({marks})", chunk)
    done.pruned += len(ids)


@dataclass
class _Head:
    """A trace's summary as the writer keeps it up to date, span by span. The root is the
    earliest span without a parent; until one arrives, the earliest span (its parent is
    elsewhere: a caller outside the environment, or a span not sent yet)."""

    trace_id: str
    start_ns: int
    end_ns: int
    span_count: int
    errors: int
    services: set[str]
    root_service: str
    root_name: str
    rooted: bool
    dropped: int

    @classmethod
    def of(cls, row: tuple[str, int, int, int, int, str, str, str, int, int]) -> _Head:
        trace_id, start, end, count, errors, services, root_service, root_name, rooted, \
            dropped = row
        return cls(trace_id, start, end, count, errors,
                   set(services.split(",")) if services else set(), root_service, root_name,
                   bool(rooted), dropped)

    @classmethod
    def first(cls, span: Span) -> _Head:
        return cls(span.trace_id, span.start_ns, span.end_ns, 1, int(span.status == "error"),
                   {span.service}, span.service, span.name, span.parent_id is None, 0)

    def add(self, span: Span) -> _Head:
        orphan_first = not self.rooted and (span.parent_id is None
                                            or span.start_ns < self.start_ns)
        if orphan_first or (span.parent_id is None and span.start_ns < self.start_ns):
            self.root_service, self.root_name = span.service, span.name
            self.rooted = self.rooted or span.parent_id is None
        self.start_ns, self.end_ns = min(self.start_ns, span.start_ns), max(self.end_ns,
                                                                            span.end_ns)
        self.span_count += 1
        self.errors += span.status == "error"
        self.services.add(span.service)
        return self

    def row(self) -> tuple[str, int, int, int, int, str, str, str, int, int]:
        return (self.trace_id, self.start_ns, self.end_ns, self.span_count, self.errors,
                ",".join(sorted(self.services)), self.root_service, self.root_name,
                int(self.rooted), self.dropped)


def _span_row(s: Span) -> tuple[object, ...]:
    return (s.trace_id, s.span_id, s.parent_id, s.service, s.instance, s.name, s.kind,
            s.start_ns, s.end_ns, s.status, s.status_message, _json(s.attributes),
            _json(s.links) if s.links else "[]")


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)  # made once: it is hot


def _json(value: object) -> str:
    """Compact JSON, never the bare NaN/Infinity JSON has no words for (those become the
    strings "NaN", "Infinity", "-Infinity")."""
    try:
        return _ENCODER.encode(value)
    except ValueError:
        return json.dumps(_finite(value), separators=(",", ":"))


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a store written by an earlier devenv to this schema, in place."""
    have = {row[1] for row in db.execute("PRAGMA table_info(traces)")}
    missing = [name for name in ADDED_COLUMNS if name not in have]
    if not missing:
        return
    with transaction(db):
        for name in missing:
            kind, fill = ADDED_COLUMNS[name]
            db.execute(f"ALTER TABLE traces ADD COLUMN {name} {kind}")
            if fill:
                db.execute(fill)


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _used_bytes(db: sqlite3.Connection) -> int:
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    size = db.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def run(path: str, answers: int) -> None:
    """The process's entry (see `writerproc.LAUNCH`): batches on stdin, answers on the
    descriptor `answers`. Interrupts are ignored: the end of its input ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with os.fdopen(answers, "wb") as out:
        main(Path(path), sys.stdin.buffer, out)
