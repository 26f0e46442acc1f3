"""The trace store: every span the engine received, in SQLite under `.devenv/traces/`.

`add` (the Hub's span sink) and `add_requests` (its request sink: the ingress's edge spans) only
queue, and past `MAX_QUEUED` spans waiting they drop and count, so a flood never blocks the
engine's event loop. A thread gathers the queue into batches for the writer process
(`telemetry/writer.py`, through `writerproc.py`), which owns the write connection, so the
SQLite work holds no lock the engine's loop needs. Failures are counted, kept in
`counters.errors` and told to `on_error` (the engine logs them). The store is bounded by
size (`monitoring.trace_max_mb`: the oldest traces go first, whole) and by age
(`monitoring.trace_max_age`, pruned on a timer); it survives an engine restart. Readers
(`recent`, `find`, `trace`) open their own connection, so the CLI can read the file while
no engine runs.
"""

from __future__ import annotations

import contextlib
import json
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
from devenv.telemetry.model import RequestSeen, Span
from devenv.telemetry.writer import MAX_SPANS_PER_TRACE, Batch, Done, connect, open_store
from devenv.telemetry.writerproc import ANSWER_TIMEOUT, WriterDown, WriterProcess
from devenv.wire import SpanInfo, SpanLink, Trace, TraceSummary, iso_time

DB_NAME = "traces.db"
GATHER = 0.2  # seconds the writer gathers spans for one transaction
MAX_QUEUED = 20_000  # spans waiting for the writer; more are dropped (and counted)
BATCH = 2_000  # spans written in one transaction at most
PRUNE_EVERY = 30.0  # seconds between age prunes
MIN_ID_PREFIX = 8
_HEX_ID = re.compile(r"[0-9a-fA-F]{8,32}")


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
    shed: int = 0  # spans refused at the queue: the writer too far behind
    lost: int = 0  # spans the writer left out: a trace over its cap, a batch that failed
    rejected: int = 0  # OTLP requests refused (malformed, oversized, unauthenticated)
    pruned: int = 0  # traces removed for size or age
    errors: list[str] = field(default_factory=list)  # the last few write failures

    @property
    def dropped(self) -> int:
        return self.shed + self.lost


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
        self._queue: queue.SimpleQueue[list[Span] | RequestSeen | None] = queue.SimpleQueue()
        # spans admitted (counted by the one thread that adds: the engine's loop), and spans
        # the writer is done with (counted by the writer's thread): no lock on the hot path
        self._queued = 0
        self._written = 0
        self._lock = threading.Condition(threading.Lock())
        self._hurry = threading.Event()  # set: write what is queued without gathering more
        self._opening = threading.Lock()  # two `up`s at once must not open it twice
        self._thread: threading.Thread | None = None
        self._writer: WriterProcess | None = None
        self.max_spans = MAX_SPANS_PER_TRACE  # per trace; more are dropped (and counted)
        self.answer_timeout = ANSWER_TIMEOUT  # for a batch, before the writer is stopped
        self.on_error: Callable[[str], None] | None = None  # told each failure (any thread)

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
                self._prepare()
                writer = WriterProcess(self.path, self.answer_timeout)
                self._writer = writer
                self._thread = threading.Thread(target=self._run, args=(writer,),
                                                name="trace-store", daemon=True)
                self._thread.start()

    def _prepare(self) -> None:
        """Make the store (or bring it up to date) before `open` returns, so that it can be
        read at once. One that cannot be read is moved aside, kept, and a new one started."""
        private_dir(self.folder)
        for attempt in (1, 2):
            if not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, PRIVATE_FILE))
            try:
                open_store(self.path).close()
                return
            except sqlite3.DatabaseError as exc:
                if attempt == 2:
                    raise
                kept = self.path.with_name(
                    f"{DB_NAME}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
                for suffix in ("", "-wal", "-shm"):
                    old = Path(f"{self.path}{suffix}")
                    if old.exists():
                        old.rename(Path(f"{kept}{suffix}"))
                self._error(f"the trace store {self.path} could not be read ({exc}); it was "
                            f"moved to {kept.name} and a new one started")

    def add(self, spans: list[Span]) -> None:
        """Queue spans for writing (a Hub sink: never blocks; drops when far behind). The
        sinks are called from one thread (the engine's loop)."""
        if spans and self._admit(len(spans)):
            self._queue.put(spans)

    def add_requests(self, batch: list[RequestSeen]) -> None:
        """Queue the edge spans of the requests whose trace is recorded (a Hub request sink:
        the spans are made by the writer)."""
        for seen in batch:
            if seen.trace_id is not None and self._admit(1):
                self._queue.put(seen)

    def _admit(self, count: int) -> bool:
        counters = self.counters
        counters.received += count
        if self._queued - self._written + count > MAX_QUEUED:
            counters.shed += count
            return False
        self._queued += count
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until what was queued is written (False: not within `timeout`)."""
        self._hurry.set()  # no gathering for more: someone waits
        queued = self._queued
        with self._lock:
            return self._lock.wait_for(lambda: self._written >= queued or self._thread is None,
                                       timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued and stop the writer (blocking: run it off the loop). A
        `stop` racing an `up` waits for the store it is opening, then closes it."""
        with self._opening:
            self._close(timeout)

    def _close(self, timeout: float) -> None:
        thread = self._thread
        if thread is None:
            return
        self._queue.put(None)
        self._hurry.set()
        thread.join(timeout)
        writer = self._writer
        if thread.is_alive() and writer is not None:  # stuck: end the writer, freeing it
            writer.closed = True  # (and it starts no other)
            writer.kill()
            thread.join(1.0)
        self._thread = None

    def _run(self, writer: WriterProcess) -> None:
        last_prune = 0.0
        try:
            while True:
                try:
                    item = self._queue.get(timeout=PRUNE_EVERY)
                except queue.Empty:
                    item = []
                spans: list[Span] = []
                requests: list[RequestSeen] = []
                # gather for a moment, then one transaction: a span a request (the ingress)
                # must not mean a batch a request (a plain wait, not on the queue, which would
                # wake for every span; none when spans pile up: every batch is full at once)
                stopping = _take(item, spans, requests)
                stopping = self._drain(spans, requests, stopping)
                count = len(spans) + len(requests)
                if count and count < BATCH // 4 and not stopping:
                    self._hurry.wait(GATHER)
                    stopping = self._drain(spans, requests, stopping)
                    count = len(spans) + len(requests)
                self._hurry.clear()
                now = self.clock()
                prune = now - self.max_age if now - last_prune >= PRUNE_EVERY else None
                try:
                    if count or prune is not None:
                        self._count(writer.apply(
                            Batch(now, self.max_bytes, spans, requests, prune, self.max_spans)))
                        last_prune = now if prune is not None else last_prune
                except WriterDown as exc:  # this batch is lost, and counted
                    self._count(Done(dropped=count, errors=[f"{exc} ({count} spans lost)"]))
                finally:
                    with self._lock:
                        self._written += count
                        self._lock.notify_all()
                if stopping:
                    break
        finally:
            writer.close()
            with self._lock:
                self._lock.notify_all()

    def _drain(self, spans: list[Span], requests: list[RequestSeen], stopping: bool) -> bool:
        """Add what waits in the queue (up to a batch); True once told to stop."""
        while len(spans) + len(requests) < BATCH and not stopping:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            stopping = _take(item, spans, requests)
        return stopping

    def _count(self, done: Done) -> None:
        with self._lock:
            self.counters.stored += done.stored
            self.counters.lost += done.dropped
            self.counters.pruned += done.pruned
        for error in done.errors:
            self._error(error)

    def _error(self, text: str) -> None:
        with self._lock:
            self.counters.errors = [*self.counters.errors, text][-5:]
        if self.on_error is not None:
            with contextlib.suppress(Exception):
                self.on_error(text)

    def size_bytes(self) -> int:
        """The store's files on disk (the database and its write-ahead log)."""
        return sum(p.stat().st_size for p in self.folder.glob(DB_NAME + "*") if p.is_file())


def _take(item: list[Span] | RequestSeen | None, spans: list[Span],
          requests: list[RequestSeen]) -> bool:
    """Sort one queued item into its list; True: it is the order to stop."""
    if item is None:
        return True
    if isinstance(item, list):
        spans.extend(item)
    else:
        requests.append(item)
    return False


# ---- reading (any thread, any process)


@contextlib.contextmanager
def reading(path: Path) -> Iterator[sqlite3.Connection | None]:
    """A connection to the store at `path` (None: there is none yet)."""
    if not path.exists():
        yield None
        return
    db = connect(path)
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
