"""One worker process: an event loop (uvloop when installed) driving its share of the
connections through the stages, recording into histograms by the second and by step, and
sending finished seconds to the parent as it goes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from devenv.core import eventloop
from devenv.loadtest.data import (
    MISSING,
    Draw,
    TemplateError,
    extract,
    in_header,
    in_path,
    render,
    render_text,
)
from devenv.loadtest.histogram import Histogram
from devenv.loadtest.http import NO_BODY, Connection, ProtocolError, encode, head
from devenv.loadtest.pattern import Pattern, Scenario, Stage, Step
from devenv.loadtest.results import StepKey
from devenv.loadtest.schedule import Schedule

Clock = Callable[[], float]
KINDS = ("connect", "timeout", "status", "check")
INTERRUPT_GRACE = 2.0  # after a Ctrl-C: how long the requests in flight get to finish
LAG_TOLERANCE = 0.01  # an arrival a free connection started later than this is counted late
BUSY_TOLERANCE = 0.001  # one a connection took later than this, having been busy, is `busy`
STOP_CHECK = 0.5  # an open-model wait for an arrival's time looks at the stop flag this often
# (a Ctrl-C is seen within it; more often costs a busy generator its CPU: 1,000 slots at
# 2,000/s wait 0.5 s each)


@dataclass(frozen=True)
class Target:
    host: str  # where to connect
    port: int
    host_header: str  # the Host header (the ingress routes on it)
    prefix: str = ""  # prepended to every path (a URL's own path)
    label: str = ""  # how the user named it


@dataclass(frozen=True)
class Job:
    pattern: Pattern
    target: Target
    part: int = 0
    parts: int = 1
    start_at: float = 0.0  # time.time() at which every worker starts


@dataclass
class StepStats:
    hist: Histogram = field(default_factory=Histogram)
    errors: Counter[str] = field(default_factory=Counter)
    requests: int = 0  # answered or failed (a connect error has no latency)
    codes: Counter[int] = field(default_factory=Counter)  # the statuses of `status` errors
    failed: Counter[str] = field(default_factory=Counter)  # why `check` errors failed

    def wire(self) -> dict[str, Any]:
        return {"buckets": self.hist.sparse(), "max_us": self.hist.max_us,
                "requests": self.requests, "errors": dict(self.errors),
                "codes": dict(self.codes), "failed": dict(self.failed)}


class Recorder:
    """Latencies and errors of one process, by step and by second of the run."""

    def __init__(self, start: float, clock: Clock = time.perf_counter):
        self.start, self.clock = start, clock
        self.steps: dict[StepKey, StepStats] = {}
        self.seconds: dict[int, StepStats] = {}
        self.arrivals = 0  # open model: arrivals a connection took (sent)
        self.not_sent = 0  # open model: arrivals due but never measured (the run ended first)
        self.lag_max_s = 0.0  # open model: most a free connection started late
        self.lagged = 0  # open model: arrivals a free connection started over LAG_TOLERANCE late
        self.busy = 0  # open model: arrivals taken late because every connection was busy
        self.stopped_at: float | None = None  # when the Ctrl-C was seen (the clock's time)
        self.cut_off = 0  # closed model: requests in flight cut off after a Ctrl-C
        self.last_s = 0.0  # when the last answer came, from the start
        self.cpu_share = 0.0  # open model: the share of a core the process used, at most

    def second(self, now: float) -> StepStats:
        sec = int(now - self.start) if now > self.start else 0
        stats = self.seconds.get(sec)
        if stats is None:
            stats = self.seconds[sec] = StepStats()
        return stats

    def record(self, key: StepKey, sent: float, now: float, error: str | None = None, *,
               timed: bool = True, code: int = 0, why: str = "") -> None:
        """A request answered or failed; its latency unless it failed to connect or was
        never sent (`timed` False); a `status` error's `code`, a `check` error's `why`."""
        stats = self.steps.get(key)
        if stats is None:
            stats = self.steps[key] = StepStats()
        sec = self.second(now)
        stats.requests += 1
        if (error is None or error == "status") and now - self.start > self.last_s:
            self.last_s = now - self.start  # (answered: a timeout's end is not a rate's)
        if timed and error != "connect":
            us = int((now - sent) * 1_000_000)
            stats.hist.record(us)
            sec.hist.record(us)
        sec.requests += 1
        if error:
            stats.errors[error] += 1
            sec.errors[error] += 1
            if error == "status":
                stats.codes[code] += 1
            elif error == "check" and why:
                stats.failed[why] += 1

    def lag(self, late_s: float) -> None:
        """An arrival a free connection started `late_s` after its time (the loop was busy:
        this process, or the machine)."""
        if late_s > self.lag_max_s:
            self.lag_max_s = late_s
        if late_s > LAG_TOLERANCE:
            self.lagged += 1

    def done(self) -> dict[str, Any]:
        """What the parent merges at the end (`Results.add_done`): per step, and the open
        model's accounting."""
        return {"steps": [(sc, step, v.wire()) for (sc, step), v in self.steps.items()],
                "arrivals": self.arrivals, "not_sent": self.not_sent,
                "lag_max_s": self.lag_max_s, "lagged": self.lagged, "busy": self.busy,
                "last_s": self.last_s, "cut_off": self.cut_off,
                "cpu_share": self.cpu_share}

    def take_seconds(self, before: int) -> list[tuple[int, dict[str, Any]]]:
        done = sorted(s for s in self.seconds if s < before)
        return [(s, self.seconds.pop(s).wire()) for s in done]


async def open_loop(schedule: Schedule, start: float, slots: int, clock: Clock,
                    run_one: Callable[[float], Awaitable[None]], stopping: Callable[[], bool],
                    recorder: Recorder, last: float) -> None:
    """Open model: `slots` connections take the intended arrivals in turn; each waits for
    its arrival's time, never for the server. Every latency counts from the intended time.
    An arrival a connection takes late, having been busy at that time, counts as `busy`
    (every connection was); one a free connection starts late counts as lag (the loop was
    late to it). When the loop stops (Ctrl-C) or is cancelled (the run's end), the arrivals
    that were due by then (by the Ctrl-C, at most `last`) and that no connection sent are
    counted as not sent, the cancelled ones too."""

    def due() -> float:
        cut = recorder.stopped_at
        return min(clock() if cut is None else cut, last)

    async def slot() -> None:
        free = start  # since when this connection is free (from the start: all are)
        while not stopping():
            at = schedule.next()
            if at is None:
                return
            intended = start + at
            if intended > last:
                recorder.not_sent += 1
                continue
            late = False
            delay = intended - clock()
            if delay > 0:
                try:
                    while delay > 0 and not stopping():  # (a Ctrl-C is not slept through)
                        await asyncio.sleep(min(delay, STOP_CHECK))
                        delay = intended - clock()
                except asyncio.CancelledError:
                    if intended <= due():
                        recorder.not_sent += 1
                    raise
                if stopping():  # (Ctrl-C: an arrival due by then counts as not sent)
                    recorder.not_sent += intended <= due()
                    return
                recorder.lag(-delay)
            elif free > intended + BUSY_TOLERANCE:
                late = True
                recorder.busy += 1
            else:
                recorder.lag(-delay)
            recorder.arrivals += 1
            try:
                await run_one(intended)
            except asyncio.CancelledError:  # cut off at the run's end: never measured
                recorder.arrivals -= 1
                recorder.busy -= late
                recorder.not_sent += 1
                raise
            free = clock()

    try:
        await asyncio.gather(*(slot() for _ in range(slots)))
    finally:
        cut = due()
        while (at := schedule.next()) is not None and start + at <= cut:
            recorder.not_sent += 1


class FastConnection(asyncio.Protocol):
    """The hot loop of a one-request closed-model run: the answer's last byte sends the next
    request from inside the protocol callback (no task, no future)."""

    def __init__(self, worker: Worker, raw: bytes, key: StepKey, head_only: bool):
        self.w, self.raw, self.key, self.head_only = worker, raw, key, head_only
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.sent = 0.0
        self.waiting = False
        self.running = True
        self.gone = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send()

    def send(self) -> None:
        if not self.running or self.w.stop_now or self.transport is None:
            self.waiting = False
            if self.transport is not None:
                self.transport.close()
            return
        self.waiting = True
        self.sent = time.perf_counter()
        self.transport.write(self.raw)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        rec = self.w.rec
        while self.waiting:
            try:
                parsed = head(buf, self.head_only)
            except (ProtocolError, ValueError):
                self.fail("connect")
                return
            if parsed is None:
                break
            status, start, length, close = parsed
            if length == NO_BODY:
                end = start
            elif length >= 0:
                end = start + length
                if len(buf) < end:
                    break
            else:  # chunked or until close: the general client frames those (this answer,
                self.w.slow_framing = True  # a good one, is not counted: it sends it again)
                self.waiting = False
                if self.transport is not None:
                    self.transport.abort()
                return
            now = time.perf_counter()
            buf = buf[end:]
            late = now - self.sent > self.w.timeout_s  # (timeouts are looked for every
            # 0.1 s: an answer later than its limit is no success)
            rec.record(self.key, self.sent, now, "timeout" if late else
                       None if status < 400 else "status", code=status)
            if close:
                self.buf = b""
                self.waiting = False
                if self.transport is not None:
                    self.transport.close()
                return
            self.send()
        self.buf = buf

    def fail(self, kind: str | None) -> None:
        """The request in flight failed (`kind`), or was cut off (None: not counted)."""
        if self.waiting:
            if kind is not None:
                self.w.rec.record(self.key, self.sent, time.perf_counter(), kind)
            else:
                self.w.rec.cut_off += 1
        self.waiting = False
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiting:
            self.w.rec.record(self.key, self.sent, time.perf_counter(), "connect")
            self.waiting = False
        if not self.gone.done():
            self.gone.set_result(None)


class Worker:
    def __init__(self, job: Job, report: Callable[[tuple[Any, ...]], None],
                 stop: Callable[[], bool], clock: Clock = time.perf_counter):
        self.job, self.report, self.stop_requested = job, report, stop
        self.pattern = job.pattern
        self.clock = clock
        self.timeout_s = self.pattern.timeout_s  # (read for every answer of the hot loop)
        self.start = clock() + max(0.0, job.start_at - time.time())
        self.rec = Recorder(self.start, clock)
        self.stop_now = False
        self.slow_framing = False
        self.raw_cache: dict[int, bytes] = {}
        weights = [s.weight for s in self.pattern.scenarios]
        self.weights = weights
        self.random = random.Random(job.part)
        self.draws = {s.name: Draw(s.data, offset=job.part, seed=job.part)
                      for s in self.pattern.scenarios}
        self.fast: list[FastConnection] = []  # the hot loop's connections
        self._idle: list[list[Connection | None]] = []  # open model: connections to reuse

    def share(self, n: int) -> int:
        """This worker's part of n connections or users."""
        return n // self.job.parts + (1 if self.job.part < n % self.job.parts else 0)

    # -- the run ----------------------------------------------------------------------
    async def run(self) -> None:
        ticker = asyncio.ensure_future(self._tick())
        try:
            delay = self.start - self.clock()
            while delay > 0 and not self.stop_now:  # (a Ctrl-C before the start: no request)
                await asyncio.sleep(min(delay, 0.1))
                self._check_stop()
                delay = self.start - self.clock()
            self._check_stop()
            if not self.stop_now:
                await self._stages()
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        end = len(self.rec.seconds) + max(self.rec.seconds, default=0) + 1
        self.report(("seconds", self.job.part, self.rec.take_seconds(end)))
        self.report(("done", self.job.part, self.rec.done()))

    async def _tick(self) -> None:
        since, cpu = self.clock(), time.process_time()
        while True:
            await asyncio.sleep(0.1)
            if self.clock() - since >= 1.0:  # the share of a core this process used
                now, used = self.clock(), time.process_time()
                share = (used - cpu) / (now - since)
                self.rec.cpu_share = max(self.rec.cpu_share, share)
                since, cpu = now, used
            self._check_stop()
            now_sec = int(self.clock() - self.start)
            ready = self.rec.take_seconds(now_sec)
            if ready:
                self.report(("seconds", self.job.part, ready))
            self._timeouts()

    def _check_stop(self) -> None:
        if self.stop_requested() and not self.stop_now:
            self.rec.stopped_at = self.clock()
            self.stop_now = True

    def _timeouts(self) -> None:
        limit = self.clock() - self.pattern.timeout_s
        for conn in list(self.fast):
            if conn.waiting and conn.sent < limit:
                conn.fail("timeout")

    def _fast_step(self) -> Step | None:
        p = self.pattern
        if (len(p.scenarios) == 1 and len(p.scenarios[0].steps) == 1
                and all(not s.open for s in p.stages) and p.scenarios[0].think_s == (0, 0)):
            step = p.scenarios[0].steps[0]
            if step.static and not step.check.body and not step.check.json \
                    and not step.check.status and not step.extract and not self.slow_framing:
                return step
        return None

    async def _stages(self) -> None:
        at = self.start
        open_run: asyncio.Future[None] | None = None
        schedule = Schedule(self.pattern.stages, self.job.part, self.job.parts)
        if schedule.pieces:
            most = max(max(s.rate, s.to) for s in self.pattern.stages if s.open)
            conns = self.pattern.connections or max(8, min(1000, int(most * 0.5)))
            last = self.start + self.pattern.duration_s
            open_run = asyncio.ensure_future(open_loop(
                schedule, self.start, max(1, self.share(conns)), self.clock,
                self._open_iteration, lambda: self.stop_now, self.rec, last))
        busy: list[asyncio.Future[None]] = []
        for stage in self.pattern.stages:
            end = at + stage.duration_s
            if not stage.open:
                busy.append(asyncio.ensure_future(self._closed(stage, end)))
            await self._until(end)
            at = end
            if self.stop_now:
                break
        tasks = busy + ([open_run] if open_run else [])
        if tasks:
            pending = await self._finish(tasks)
            self.stop_now = True
            for task in pending:
                task.cancel()
            for conn in self.fast:  # (after a Ctrl-C: cut off, not timed out)
                conn.fail("timeout" if self.rec.stopped_at is None else None)
            if pending:
                await asyncio.wait(pending, timeout=1)
            for task in tasks:  # a bug in one: the worker fails, saying why (not lost)
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]

    async def _finish(self, tasks: list[asyncio.Future[None]]) -> set[asyncio.Future[None]]:
        """Wait for the requests in flight: up to the timeout, or, after a Ctrl-C, up to
        INTERRUPT_GRACE past it; what is still pending then."""
        limit = self.clock() + self.pattern.timeout_s + 1
        pending = set(tasks)
        while pending:
            if self.rec.stopped_at is not None:  # (a Ctrl-C, now or meanwhile)
                limit = min(limit, self.rec.stopped_at + INTERRUPT_GRACE)
            left = limit - self.clock()
            if left <= 0:
                break
            _, pending = await asyncio.wait(pending, timeout=min(left, 0.1))
        return pending

    async def _until(self, end: float) -> None:
        while not self.stop_now:
            left = end - self.clock()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.05))

    # -- closed model -----------------------------------------------------------------
    async def _closed(self, stage: Stage, end: float) -> None:
        users = self.share(stage.users)
        if not users:
            return
        step = self._fast_step()
        if step is not None:
            await self._closed_fast(step, users, end)
            return

        async def user() -> None:
            conn: list[Connection | None] = [None]
            while not self.stop_now and self.clock() < end:
                await self._iteration(self._pick(), conn, None)
            if conn[0] is not None:
                conn[0].abort()

        await asyncio.gather(*(user() for _ in range(users)))

    async def _closed_fast(self, step: Step, users: int, end: float) -> None:
        loop = asyncio.get_running_loop()
        raw = self._raw(step, {})
        key = (self.pattern.scenarios[0].name, step.name)

        async def user() -> None:
            while not self.stop_now and self.clock() < end:
                t0 = self.clock()
                try:
                    _, conn = await asyncio.wait_for(loop.create_connection(
                        lambda: FastConnection(self, raw, key, step.method == "HEAD"),
                        self.job.target.host, self.job.target.port), self.pattern.timeout_s)
                except (TimeoutError, OSError) as exc:
                    kind = "timeout" if isinstance(exc, asyncio.TimeoutError) else "connect"
                    self.rec.record(key, t0, self.clock(), kind)
                    await asyncio.sleep(0.05)
                    continue
                self.fast.append(conn)
                watch = asyncio.ensure_future(self._stop_at(conn, end))
                await conn.gone
                watch.cancel()
                self.fast.remove(conn)
                if self.slow_framing:
                    break
            if self.slow_framing and not self.stop_now and self.clock() < end:
                conn_box: list[Connection | None] = [None]
                while not self.stop_now and self.clock() < end:
                    await self._iteration(self.pattern.scenarios[0], conn_box, None)

        await asyncio.gather(*(user() for _ in range(users)))

    async def _stop_at(self, conn: FastConnection, end: float) -> None:
        await self._until(end)
        conn.running = False
        if not conn.waiting and conn.transport is not None:
            conn.transport.close()

    # -- scenarios --------------------------------------------------------------------
    def _pick(self) -> Scenario:
        scenarios = self.pattern.scenarios
        if len(scenarios) == 1:
            return scenarios[0]
        return self.random.choices(scenarios, self.weights)[0]

    async def _open_iteration(self, intended: float) -> None:
        conn: list[Connection | None] = self._idle.pop() if self._idle else [None]
        try:
            await self._iteration(self._pick(), conn, intended)
        finally:
            self._idle.append(conn)

    def _raw(self, step: Step, values: dict[str, Any]) -> bytes:
        static = step.static
        if static and id(step) in self.raw_cache:
            return self.raw_cache[id(step)]
        t = self.job.target
        headers = {k: render_text(v, values, in_header) for k, v in step.headers}
        body = b""
        if step.json is not None:
            body = json.dumps(render(step.json, values)).encode()
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "application/json"
        elif step.body is not None:
            body = render_text(step.body, values).encode()
        raw = encode(step.method, t.prefix + render_text(step.path, values, in_path),
                     t.host_header, headers, body)
        if static:
            self.raw_cache[id(step)] = raw
        return raw

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(Connection, self.job.target.host,
                                               self.job.target.port)
        return conn

    async def _iteration(self, sc: Scenario, box: list[Connection | None],
                         intended: float | None) -> None:
        values = self.draws[sc.name].next()
        for i, step in enumerate(sc.steps):
            key = (sc.name, step.name)
            if self.stop_now:
                return
            try:
                raw = self._raw(step, values)
            except TemplateError as exc:  # (a value missing, or one a header cannot carry)
                now = self.clock()
                self.rec.record(key, now, now, "check", timed=False, why=f"not sent: {exc}")
                if intended is None:
                    await asyncio.sleep(0.05)  # never sent: a closed loop must not spin
                return
            sent = intended if (i == 0 and intended is not None) else self.clock()
            try:
                conn = box[0]
                if conn is None or conn.closed:
                    conn = await asyncio.wait_for(self._connect(), self.pattern.timeout_s)
                    box[0] = conn
                left = self.pattern.timeout_s - (self.clock() - sent)
                try:
                    resp = await asyncio.wait_for(conn.request(raw, step.method == "HEAD"),
                                                  max(left, 0.001))
                except asyncio.CancelledError:  # (a Ctrl-C's grace over: cut off)
                    if intended is None and self.rec.stopped_at is not None:
                        self.rec.cut_off += 1
                    raise
            except TimeoutError:
                self.rec.record(key, sent, self.clock(), "timeout")
                self._drop(box)
                return
            except (OSError, ProtocolError):
                now = self.clock()
                self.rec.record(key, sent, now, "connect")
                self._drop(box)
                if intended is None:
                    await asyncio.sleep(0.05)  # a refused connection must not spin
                return
            now = self.clock()
            error, why = None, ""
            if not step.check.status_ok(resp.status):
                error = "status"
            elif (why := self._checked(step, resp.body, values)):
                error = "check"
            self.rec.record(key, sent, now, error, code=resp.status, why=why)
            if error:
                return
            lo, hi = sc.think_s
            if hi > 0 and i < len(sc.steps) - 1:
                await asyncio.sleep(lo if lo == hi else self.random.uniform(lo, hi))

    @staticmethod
    def _drop(box: list[Connection | None]) -> None:
        if box[0] is not None:
            box[0].abort()
            box[0] = None

    @staticmethod
    def _checked(step: Step, body: bytes, values: dict[str, Any]) -> str:
        """What of the step's checks failed ("" when none did); extracted values go into
        `values`."""
        check = step.check
        if check.body is not None and check.body.encode() not in body:
            return f"body: no {check.body!r}"
        if not check.json and not step.extract:
            return ""
        try:
            doc = json.loads(body)
        except ValueError:
            return "the body is not JSON"
        for path, parts, expected in check.json:
            got = extract(doc, parts)
            if got is MISSING:
                return f"{path}: missing"
            if expected != "exists" and not _same(got, expected):
                return f"{path}: not {json.dumps(expected)}"
        for var, parts in step.extract:
            got = extract(doc, parts)
            if got is MISSING:
                return f"extract {var}: nothing at its path"
            values[var] = got
        return ""


def _same(got: Any, expected: Any) -> bool:
    """A JSON value as a check expects it, at every depth: true is not 1, nor 1 true (1 and
    1.0 are one)."""
    if isinstance(got, bool) or isinstance(expected, bool):
        return type(got) is type(expected) and got == expected
    if isinstance(got, dict) and isinstance(expected, dict):
        return got.keys() == expected.keys() and all(_same(got[k], expected[k]) for k in got)
    if isinstance(got, list) and isinstance(expected, list):
        return len(got) == len(expected) and all(map(_same, got, expected))
    return bool(got == expected)


def main(job: Job, queue: Any, stop: Any) -> None:
    """The worker process's entry: Ctrl-C is the parent's to handle (it sets `stop`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker = Worker(job, queue.put, stop.is_set)
    try:
        eventloop.run(worker.run())
    except BaseException as exc:  # the parent says why, and that the figures are partial
        queue.put(("failed", job.part, f"{type(exc).__name__}: {exc}"))
        queue.close()
        queue.join_thread()
        raise SystemExit(1) from exc
