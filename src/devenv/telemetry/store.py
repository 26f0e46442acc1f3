"""The trace store: every span the engine received, in SQLite under `.devenv/traces/`.

One writer thread owns the write connection, so a flood of spans never blocks the engine's
event loop: `add` (a Hub span sink) only queues, and past `MAX_QUEUED` spans waiting it
drops and counts. The store is bounded by size (`monitoring.trace_max_mb`: the oldest traces
go first, whole) and by age (`monitoring.trace_max_age`, pruned on a timer); it survives an
engine restart. Readers (`recent`, `find`, `trace`) open their own connection, so the CLI can
read the file while no engine runs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from devenv.core.errors import DevenvError, UsageError
from devenv.core.paths import PRIVATE_FILE, private_dir
from devenv.telemetry.model import Span
from devenv.wire import SpanInfo, SpanLink, Trace, TraceSummary, iso_time

DB_NAME = "traces.db"
GATHER = 0.2  # seconds the writer gathers spans for one transaction
MAX_QUEUED = 20_000  # spans waiting for the writer; more are dropped (and counted)
BATCH = 2_000  # spans written in one transaction at most
PRUNE_EVERY = 30.0  # seconds between age prunes
KEEP_FRACTION = 0.8  # a store over its size is pruned down to this share of it
MIN_ID_PREFIX = 8
_HEX_ID = re.compile(r"[0-9a-fA-F]{8,32}")
MAX_SPANS_PER_TRACE = 10_000  # more spans of one trace are dropped (and counted)
MAX_TIME_NS = 2**63 - 1  # SQLite integers are signed 64-bit
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


class AmbiguousId(ValueError):
    pass


@dataclass(frozen=True)
class Query:
    """Which traces `recent` returns: those that crossed every one of `services`, started
    at or after `since` (Unix seconds), lasted at least `min_duration` seconds, had an error
    (`errors`); the newest `limit`, oldest first. `received_after`: only traces whose last
    span arrived after then (for following)."""

    services: tuple[str, ...] = ()
    since: float | None = None
    min_duration: float | None = None
    errors: bool = False
    limit: int = 20
    received_after: float | None = None
    received_before: float | None = None


@dataclass
class Counters:
    """What the store and the receiver count (read by metrics)."""

    received: int = 0  # spans handed to the store
    stored: int = 0  # spans written
    dropped: int = 0  # spans dropped: the writer too far behind, or a trace over its cap
    rejected: int = 0  # OTLP requests refused (malformed, oversized, unauthenticated)
    pruned: int = 0  # traces removed for size or age
    errors: list[str] = field(default_factory=list)  # the last few write failures


class Traces:
    """The store of one project. `open` (on `up`) starts the writer with the plan's bounds;
    `close` (on halt) writes what is queued and stops it."""

    def __init__(self, folder: Path, clock: Callable[[], float] = time.time):
        self.folder = folder
        self.path = folder / DB_NAME
        self.clock = clock
        self.counters = Counters()
        self.max_bytes = 64 * 1024 * 1024
        self.max_age = 24 * 3600.0
        self._queue: queue.SimpleQueue[list[Span] | None] = queue.SimpleQueue()
        self._pending = 0  # spans queued or being written
        self._lock = threading.Condition()
        self._opening = threading.Lock()  # two `up`s at once must not open it twice
        self._thread: threading.Thread | None = None

    # ---- writing

    @property
    def rejected(self) -> int:
        return self.counters.rejected

    def reject(self) -> None:
        self.counters.rejected += 1

    def open(self, max_bytes: int, max_age: float) -> None:
        """Start writing (idempotent: a later `up` only updates the bounds; concurrent `up`s
        open it once)."""
        with self._opening:
            self.max_bytes, self.max_age = max_bytes, max_age
            if self._thread is None:
                self._open(max_bytes)

    def _open(self, max_bytes: int) -> None:
        private_dir(self.folder)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, PRIVATE_FILE))
        with contextlib.closing(sqlite3.connect(self.path)) as new:  # before WAL: a new
            new.execute("PRAGMA auto_vacuum = INCREMENTAL")  # file gives space back
        db = _connect(self.path, check_same_thread=False)
        db.executescript(SCHEMA)
        _migrate(db)
        # the write-ahead log is checkpointed at a tenth of the bound, and cut back after
        pages = max(64, max_bytes // 10 // db.execute("PRAGMA page_size").fetchone()[0])
        db.execute(f"PRAGMA wal_autocheckpoint = {int(pages)}")
        db.execute(f"PRAGMA journal_size_limit = {max_bytes // 10}")
        self._thread = threading.Thread(target=self._run, args=(db,), name="trace-store",
                                        daemon=True)
        self._thread.start()

    def add(self, spans: list[Span]) -> None:
        """Queue spans for writing (a Hub sink: never blocks; drops when far behind)."""
        if not spans:
            return
        with self._lock:
            self.counters.received += len(spans)
            if self._pending + len(spans) > MAX_QUEUED:
                self.counters.dropped += len(spans)
                return
            self._pending += len(spans)
        self._queue.put(spans)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until what was queued is written (False: not within `timeout`)."""
        with self._lock:
            return self._lock.wait_for(lambda: self._pending == 0 or self._thread is None,
                                       timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued and stop the writer (blocking: run it off the loop)."""
        thread = self._thread
        if thread is None:
            return
        self._queue.put(None)
        thread.join(timeout)
        self._thread = None

    def _run(self, db: sqlite3.Connection) -> None:
        last_prune = 0.0
        try:
            while True:
                try:
                    item = self._queue.get(timeout=PRUNE_EVERY)
                except queue.Empty:
                    item = []
                stopping = item is None
                spans = list(item or [])
                # gather for a moment, then one transaction: a span a request (the ingress)
                # must not mean a transaction a request, which would cost the engine's loop
                # (a plain sleep: waiting on the queue would wake the writer for every span;
                # none when spans pile up: then every batch is full at once)
                stopping = self._drain(spans, stopping)
                if spans and len(spans) < BATCH // 4 and not stopping:
                    time.sleep(GATHER)
                    stopping = self._drain(spans, stopping)
                try:
                    if spans:
                        self._write(db, spans)
                    if self.clock() - last_prune >= PRUNE_EVERY:
                        last_prune = self.clock()
                        self._prune_age(db)
                    self._prune_size(db)
                except Exception as exc:  # one bad batch must not stop the writer
                    self.counters.errors = [*self.counters.errors[-4:],
                                            f"{type(exc).__name__}: {exc}"]
                finally:
                    with self._lock:
                        self._pending -= len(spans)
                        self._lock.notify_all()
                if stopping:
                    break
        finally:
            with contextlib.suppress(sqlite3.Error):
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.close()
            with self._lock:
                self._lock.notify_all()

    def _drain(self, spans: list[Span], stopping: bool) -> bool:
        """Add what waits in the queue to `spans` (up to a batch); True once told to stop."""
        while len(spans) < BATCH and not stopping:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                break
            if more is None:
                stopping = True
            else:
                spans.extend(more)
        return stopping

    def _write(self, db: sqlite3.Connection, spans: list[Span]) -> None:
        """Insert the spans and update their traces' summaries from the new spans alone (a
        span already stored is ignored; past MAX_SPANS_PER_TRACE a trace takes no more)."""
        now = self.clock()
        by_trace: dict[str, list[Span]] = {}
        bad = 0
        for span in spans:
            if 0 <= span.start_ns <= span.end_ns <= MAX_TIME_NS:
                by_trace.setdefault(span.trace_id, []).append(span)
            else:
                bad += 1
        stored = dropped = 0
        with _transaction(db):
            heads: dict[str, _Head] = {}
            for chunk in _chunks(sorted(by_trace), 500):
                marks = ",".join("?" * len(chunk))
                for row in db.execute(f"SELECT {_HEAD} FROM traces WHERE trace_id IN ({marks})",
                                      chunk):
                    heads[row[0]] = _Head.of(row)
            known = self._stored_ids(db, [(t, sp.span_id) for t in by_trace if t in heads
                                          for sp in by_trace[t]])
            rows, inserts = [], []
            for trace_id, new in by_trace.items():
                head = heads.get(trace_id)
                for span in new:
                    if head is not None and head.span_count >= MAX_SPANS_PER_TRACE:
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
            db.executemany(f"INSERT OR REPLACE INTO traces ({_HEAD}, received) "
                           f"VALUES ({','.join('?' * (_HEAD.count(',') + 2))})", rows)
        self.counters.stored += stored
        self.counters.dropped += dropped
        if bad:
            self.counters.dropped += bad
            self.counters.errors = [*self.counters.errors[-4:],
                                    f"{bad} spans with times out of range left out"]

    @staticmethod
    def _stored_ids(db: sqlite3.Connection, pairs: list[tuple[str, str]]
                    ) -> set[tuple[str, str]]:
        """Which of these (trace, span) ids are stored already (looked up by primary key)."""
        found: set[tuple[str, str]] = set()
        for start in range(0, len(pairs), 400):
            chunk = pairs[start:start + 400]
            marks = ",".join(["(?,?)"] * len(chunk))
            found.update(db.execute(f"SELECT trace_id, span_id FROM spans WHERE (trace_id, "
                                    f"span_id) IN (VALUES {marks})",
                                    [v for pair in chunk for v in pair]))
        return found

    def _prune_age(self, db: sqlite3.Connection) -> None:
        cutoff = self.clock() - self.max_age
        ids = [r[0] for r in db.execute("SELECT trace_id FROM traces WHERE received < ?",
                                        (cutoff,))]
        self._delete(db, ids)

    def _prune_size(self, db: sqlite3.Connection) -> None:
        """Over the size bound: drop the oldest traces, whole, down to KEEP_FRACTION of it."""
        if _used_bytes(db) <= self.max_bytes:
            return
        while _used_bytes(db) > self.max_bytes * KEEP_FRACTION:
            count = db.execute("SELECT count(*) FROM traces").fetchone()[0]
            if not count:
                break
            ids = [r[0] for r in db.execute(
                "SELECT trace_id FROM traces ORDER BY received, start_ns LIMIT ?",
                (max(1, count // 10),))]
            self._delete(db, ids)
        db.executescript("PRAGMA incremental_vacuum;")  # (stepped to its end)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _delete(self, db: sqlite3.Connection, ids: list[str]) -> None:
        if not ids:
            return
        with _transaction(db):
            for chunk in _chunks(ids, 500):
                marks = ",".join("?" * len(chunk))
                db.execute(f"DELETE FROM spans WHERE trace_id IN ({marks})", chunk)
                db.execute(f"DELETE FROM traces WHERE trace_id IN ({marks})", chunk)
        self.counters.pruned += len(ids)

    def size_bytes(self) -> int:
        """The store's files on disk (the database and its write-ahead log)."""
        return sum(p.stat().st_size for p in self.folder.glob(DB_NAME + "*") if p.is_file())


# ---- reading (any thread, any process)


@contextlib.contextmanager
def reading(path: Path) -> Iterator[sqlite3.Connection | None]:
    """A connection to the store at `path` (None: there is none yet)."""
    if not path.exists():
        yield None
        return
    db = _connect(path)
    try:
        yield db
    finally:
        db.close()


def recent(path: Path, query: Query) -> list[TraceSummary]:
    where: list[str] = ["1"]
    args: list[str | int | float] = []
    if query.since is not None:
        where.append("start_ns >= ?")
        args.append(int(query.since * 1e9))
    if query.min_duration is not None:
        where.append("end_ns - start_ns >= ?")
        args.append(int(query.min_duration * 1e9))
    if query.errors:
        where.append("errors > 0")
    for service in query.services:
        where.append("instr(',' || services || ',', ?) > 0")
        args.append(f",{service},")
    if query.received_after is not None:
        where.append("received > ?")
        args.append(query.received_after)
    if query.received_before is not None:
        where.append("received <= ?")
        args.append(query.received_before)
    with reading(path) as db:
        if db is None:
            return []
        rows = db.execute(
            f"SELECT {_SUMMARY} FROM traces WHERE {' AND '.join(where)} "
            "ORDER BY start_ns DESC LIMIT ?", [*args, query.limit]).fetchall()
    return [_summary(row) for row in reversed(rows)]


def find(path: Path, prefix: str) -> str | None:
    """The full id of the one trace whose id starts with `prefix` (None: no such trace;
    AmbiguousId: several)."""
    prefix = prefix.lower()
    with reading(path) as db:
        if db is None:
            return None
        ids = [r[0] for r in db.execute(
            "SELECT trace_id FROM traces WHERE trace_id >= ? AND trace_id < ? LIMIT 2",
            (prefix, prefix + "g"))]
    if len(ids) > 1:
        raise AmbiguousId(prefix)
    return ids[0] if ids else None


def lookup(path: Path, given: str, max_age: float, max_bytes: int) -> Trace:
    """The trace `given` names (its id, or at least 8 of its first digits), or a clear error
    (exit 2: not an id, or several match; exit 1: none)."""
    if not _HEX_ID.fullmatch(given):
        raise UsageError(f"{given!r} is not a trace id: give its hex digits (at least "
                         f"{MIN_ID_PREFIX})", hint="`devenv trace` lists recent traces")
    try:
        full = find(path, given)
    except AmbiguousId:
        raise UsageError(f"several traces start with {given}",
                         hint="give more of its digits") from None
    found = trace(path, full) if full else None
    if found is None:
        raise DevenvError(f"no trace {given} (traces are kept {_age(max_age)} / "
                          f"{max_bytes // (1024 * 1024)} MiB)",
                          hint="`devenv trace` lists recent traces")
    return found


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= max(size, 2 * 86400 if unit == "d" else 0) and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def trace(path: Path, trace_id: str) -> Trace | None:
    with reading(path) as db:
        if db is None:
            return None
        head = db.execute(f"SELECT {_SUMMARY} FROM traces WHERE trace_id = ?",
                          (trace_id,)).fetchone()
        if head is None:
            return None
        rows = db.execute("SELECT span_id, parent_id, service, instance, name, kind, start_ns,"
                          " end_ns, status, status_message, attributes, links FROM spans "
                          "WHERE trace_id = ? ORDER BY start_ns, span_id",
                          (trace_id,)).fetchall()
    summary = _summary(head)
    spans = [SpanInfo(span_id=r[0], parent_id=r[1], service=r[2], instance=r[3], name=r[4],
                      kind=r[5], start=iso_time(r[6] / 1e9), start_ns=r[6],
                      offset=(r[6] - summary.start_ns) / 1e9,
                      duration=max(r[7] - r[6], 0) / 1e9, status=r[8], status_message=r[9],
                      attributes=json.loads(r[10]),
                      links=[SpanLink(t, s) for t, s in json.loads(r[11])]) for r in rows]
    return Trace(**{**summary.__dict__, "spans": spans})


_SUMMARY = ("trace_id, start_ns, end_ns, span_count, errors, services, root_service, "
            "root_name")


def _summary(row: tuple[str, int, int, int, int, str, str, str]) -> TraceSummary:
    trace_id, start_ns, end_ns, count, errors, services, root_service, root_name = row
    return TraceSummary(trace_id=trace_id, start=iso_time(start_ns / 1e9), start_ns=start_ns,
                        duration=max(end_ns - start_ns, 0) / 1e9, root_service=root_service,
                        root_name=root_name, services=services.split(",") if services else [],
                        span_count=count, errors=errors, status="error" if errors else "ok")


_HEAD = ("trace_id, start_ns, end_ns, span_count, errors, services, root_service, "
         "root_name, rooted, dropped")
_INSERT_SPAN = "INSERT OR IGNORE INTO spans VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"


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
    with _transaction(db):
        for name in missing:
            kind, fill = ADDED_COLUMNS[name]
            db.execute(f"ALTER TABLE traces ADD COLUMN {name} {kind}")
            if fill:
                db.execute(fill)


def _connect(path: Path, check_same_thread: bool = True) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=5.0, check_same_thread=check_same_thread,
                         isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    return db


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
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
