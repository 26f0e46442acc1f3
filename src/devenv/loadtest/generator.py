"""The generator: worker processes (one per core at most), each with its own event loop,
their finished seconds merged as they come; Ctrl-C stops them and keeps what they did."""

from __future__ import annotations

import math
import multiprocessing
import os
import queue as queues
import socket
import time
from collections.abc import Callable

from devenv.core.errors import DevenvError
from devenv.loadtest.pattern import Pattern
from devenv.loadtest.results import Results
from devenv.loadtest.worker import Job, Target, main

Progress = Callable[[Results, float], None]  # (results so far, seconds elapsed)


def reachable(target: Target, timeout: float = 3.0) -> None:
    """Refuse to start against an address nothing answers on (exit 1, naming it)."""
    address = f"{target.host}:{target.port}"
    try:
        with socket.create_connection((target.host, target.port), timeout=timeout):
            return
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise DevenvError(f"cannot reach {target.label or address} at {address}: {reason}",
                          hint="start it first (`devenv up`), or check the address") from exc


def workers_for(pattern: Pattern, cores: int | None = None) -> int:
    """As many processes as the load needs, at most one per core."""
    cores = cores or os.cpu_count() or 1
    users = max((s.users for s in pattern.stages if not s.open), default=0)
    rate = max((max(s.rate, s.to) for s in pattern.stages if s.open), default=0.0)
    need = max(math.ceil(users / 16), math.ceil(rate / 5000), 1)
    return max(1, min(cores, need))


def run(pattern: Pattern, target: Target, *, workers: int | None = None,
        progress: Progress | None = None, asked: str = "") -> Results:
    count = workers or workers_for(pattern)
    rates = [max(s.rate, s.to) for s in pattern.stages if s.open]
    results = Results(target.label, asked, workers=count,
                      rate_asked=max(rates) if rates else None)
    ctx = multiprocessing.get_context("spawn")
    inbox = ctx.Queue()
    stop = ctx.Event()
    start_at = time.time() + 0.3 + 0.15 * count  # every worker up and its imports done
    procs = [ctx.Process(target=main, daemon=True, name=f"devenv-load-{i}",
                         args=(Job(pattern, target, i, count, start_at), inbox, stop))
             for i in range(count)]
    for proc in procs:
        proc.start()
    done = 0
    started = time.monotonic() + max(0.0, start_at - time.time())
    deadline = None  # after Ctrl-C: how long the workers get to hand in what they did
    last = 0.0
    try:
        while done < count:
            try:
                try:
                    message = inbox.get(timeout=0.2)
                except queues.Empty:
                    message = None
                    if not any(p.is_alive() for p in procs) and inbox.empty():
                        break
                if message is not None:
                    kind, _, body = message
                    if kind == "seconds":
                        results.add_seconds(body)
                    elif kind == "done":
                        results.add_done(body)
                        done += 1
                now = time.monotonic()
                if progress and now - last >= 0.5 and not results.interrupted:
                    last = now
                    progress(results, max(0.0, now - started))
                if deadline is not None and now > deadline:
                    break
            except KeyboardInterrupt:
                results.interrupted = True
                stop.set()
                deadline = time.monotonic() + 3 + pattern.timeout_s
    finally:
        stop.set()
        results.duration_s = min(max(0.0, time.monotonic() - started), max(
            pattern.duration_s, 0.001)) if not results.interrupted else max(
            0.0, time.monotonic() - started)
        for proc in procs:
            proc.join(timeout=2)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2)
    if results.timeline:
        results.duration_s = max(results.duration_s, 1e-3)
    return results
