"""The generator: worker processes (one per core at most), each with its own event loop,
their finished seconds merged as they come; Ctrl-C stops them and keeps what they did."""

from __future__ import annotations

import math
import multiprocessing
import os
import queue as queues
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from devenv.core.errors import DevenvError, UsageError
from devenv.loadtest.pattern import Pattern
from devenv.loadtest.results import Results
from devenv.loadtest.worker import INTERRUPT_GRACE, Job, Target, main

Progress = Callable[[Results, float], None]  # (results so far, seconds elapsed)
Notice = Callable[[str], None]  # what the run says as it goes (a Ctrl-C's effect)


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


MAX_WORKERS = 64
FILES_SPARE = 64  # descriptors a worker needs besides its connections (imports, queue, logs)


def workers_for(pattern: Pattern, cores: int | None = None) -> int:
    """As many processes as the load needs, at most one per core."""
    cores = cores or os.cpu_count() or 1
    users = max((s.users for s in pattern.stages if not s.open), default=0)
    rate = max((max(s.rate, s.to) for s in pattern.stages if s.open), default=0.0)
    need = max(math.ceil(users / 16), math.ceil(rate / 5000), 1)
    return max(1, min(cores, need))


def connections_of(pattern: Pattern) -> int:
    """The most connections the pattern holds open at once (all workers together)."""
    users = max((s.users for s in pattern.stages if not s.open), default=0)
    rates = [max(s.rate, s.to) for s in pattern.stages if s.open]
    opened = (pattern.connections or max(8, min(1000, int(max(rates) * 0.5)))) if rates else 0
    return users + opened  # (a closed stage and the open model's connections may overlap)


def files_needed(pattern: Pattern, workers: int) -> int:
    """Open files one worker process needs: its share of the connections, and some."""
    return math.ceil(connections_of(pattern) / workers) + FILES_SPARE


Limits = tuple[int, int]


def check_open_files(need: int, get: Callable[[], Limits] | None = None,
                     put: Callable[[Limits], None] | None = None) -> None:
    """Make room for `need` open files in this process (and so its workers): raise the soft
    limit up to the hard one if it must; refuse (exit 2) past the hard limit."""
    import resource

    get = get or (lambda: resource.getrlimit(resource.RLIMIT_NOFILE))
    put = put or (lambda limits: resource.setrlimit(resource.RLIMIT_NOFILE, limits))
    soft, hard = get()
    if soft == resource.RLIM_INFINITY or need <= soft:
        return
    if hard == resource.RLIM_INFINITY or need <= hard:
        try:
            put((need, hard))
            return
        except (OSError, ValueError):
            pass
    limit = soft if hard != resource.RLIM_INFINITY and soft >= hard else hard
    raise UsageError(
        f"these connections need {need:,} open files a worker process, over this shell's "
        f"limit of {limit:,} (ulimit -n)",
        hint=f"lower --connections (or the pattern's users/connections), or raise the limit: "
        f"`ulimit -n {need}` in this shell (past the hard limit, `ulimit -Hn`, as root, or "
        "nofile in /etc/security/limits.conf)")


def run(pattern: Pattern, target: Target, *, workers: int | None = None,
        progress: Progress | None = None, asked: str = "", notice: Notice | None = None
        ) -> Results:
    """Run the pattern. Ctrl-C once: the workers stop and hand in what they did (a partial
    result); Ctrl-C again: they are stopped at once. A worker that dies: DevenvError."""
    count = workers or workers_for(pattern)
    if not 1 <= count <= MAX_WORKERS:
        raise UsageError(f"--workers {count}: give 1 to {MAX_WORKERS}")
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
    blocked = _start(procs)
    done: set[int] = set()
    failed: dict[int, str] = {}  # worker: why it died
    started = time.monotonic() + max(0.0, start_at - time.time())
    deadline = None  # after Ctrl-C: how long the workers get to hand in what they did
    cut = None  # when the first Ctrl-C came (the run's figures are up to then)
    hurry = False  # a second Ctrl-C: stop them now
    last = 0.0
    try:
        while len(done) < count and not failed and not hurry:
            try:
                if blocked:  # (a Ctrl-C pressed while they started comes now: the first)
                    blocked = False
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
                try:
                    message = inbox.get(timeout=0.2)
                except queues.Empty:
                    message = None
                    for i, proc in enumerate(procs):
                        if i not in done and proc.exitcode not in (None, 0):
                            failed.setdefault(i, _died(proc.exitcode))
                    if not any(p.is_alive() for p in procs) and inbox.empty():
                        break
                if message is not None:
                    kind, part, body = message
                    if kind == "seconds":
                        results.add_seconds(body)
                    elif kind == "done":
                        results.add_done(body)
                        done.add(part)
                    elif kind == "failed":
                        failed[part] = str(body)
                now = time.monotonic()
                if progress and now - last >= 0.5 and not results.interrupted:
                    last = now
                    progress(results, max(0.0, now - started))
                if deadline is not None and now > deadline:
                    break
            except KeyboardInterrupt:
                if results.interrupted:
                    hurry = True
                elif notice is not None:
                    grace = min(INTERRUPT_GRACE, pattern.timeout_s + 1)
                    notice(f"stopping: the requests in flight get up to {grace:g}s to finish "
                           "(Ctrl-C again to stop at once)")
                results.interrupted = True
                cut = cut or time.monotonic()
                stop.set()
                deadline = time.monotonic() + 5 + INTERRUPT_GRACE  # (their grace, and some)
    finally:
        stop.set()
        ended = time.monotonic()
        _end(procs, at_once=hurry or bool(failed))
    results.steps_lost = results.interrupted and len(done) < count
    results.hurried = hurry
    results.duration_s = run_time(pattern.duration_s, results.last_s, ended - started,
                                  None if cut is None else cut - started)
    if cut is not None:
        results.cut_s = max(0.0, cut - started)
    if results.steps_lost and results.timeline:  # (only whole seconds came: rates over them)
        results.duration_s = min(results.duration_s, max(results.timeline) + 1.0)
    if results.timeline:
        results.duration_s = max(results.duration_s, 1e-3)
    if not results.interrupted:
        for i, proc in enumerate(procs):
            if i not in done and i not in failed:
                failed[i] = _died(proc.exitcode) if proc.exitcode else \
                    "it ended without handing in its figures"
    if failed:
        part, why = min(failed.items())
        raise DevenvError(f"load generator worker {part} of {count} failed: {why}",
                          hint="its figures are lost, so none are shown; run it again, and "
                          "report this if it happens again")
    return results


def run_time(stages_s: float, last_s: float, elapsed_s: float, cut_s: float | None
             ) -> float:
    """The seconds rates are over: the stages, or longer when answers came after them (a
    generator or service behind the asked rate); after a Ctrl-C (at `cut_s`), up to it or to
    the last answer counted after it. Never past what elapsed."""
    if cut_s is not None:
        return max(0.0, cut_s, min(last_s, elapsed_s))
    return max(0.0, min(max(stages_s, last_s), elapsed_s))


def _start(procs: list[Any]) -> bool:
    """Start the workers with Ctrl-C blocked, as they inherit it (then ignore it): a Ctrl-C
    is the parent's to handle, even one that comes before a worker could say so itself.
    Whether it is still blocked here (the caller unblocks it where it takes a Ctrl-C: one
    pressed meanwhile is not lost)."""
    if threading.current_thread() is not threading.main_thread():
        for proc in procs:
            proc.start()
        return False
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        for proc in procs:
            proc.start()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        raise
    return True


def _died(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"it was killed ({name})"
    return f"it exited with code {code}"


def _end(procs: list[Any], at_once: bool) -> None:
    """Wait for the workers (2 s each), then terminate what is left; `at_once`: now."""
    try:
        for proc in procs:
            if not at_once:
                proc.join(timeout=2)
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(timeout=2)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=1)
    except KeyboardInterrupt:  # (yet another Ctrl-C: no more waiting)
        for proc in procs:
            if proc.is_alive():
                proc.kill()
