"""`devenv profile`: sample a running service's instance without restarting it.

The runtime lists an instance's processes (`Instance.targets`) and runs a tool against one
(`Instance.attach`, `${PID}` in its argv); this module picks the tool by the program:
Python through py-spy (children included), Node through its inspector's CPU profiler
(`devenv.profiling.inspector`), memory through memray (Python) and RSS samples (any).
The samples become a speedscope file and an SVG flame graph under `.devenv/profiles/`, and
the top functions by self and total time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devenv.core.atomic import write_atomic
from devenv.core.errors import DevenvError, UsageError
from devenv.core.paths import StateDir, private_dir
from devenv.engine.service import ServiceRunner
from devenv.profiling import flame, permissions, speedscope, top
from devenv.runtime.base import PID_REF, Attached, Instance, Target
from devenv.wire import (
    AllocationSite,
    FunctionTime,
    MemoryWindow,
    ProfileResult,
    ProfileTick,
    State,
)

FORMATS = ("speedscope", "flamegraph")
MIN_SECONDS, MAX_SECONDS = 1.0, 3600.0
TOOL_SLACK = 30.0  # seconds a sampler may take past the window (attaching, writing)
RSS_EVERY = 0.25
TOP = 15
RATE = 100  # py-spy's samples a second
NOT_ALLOWED = ("Permission denied", "Operation not permitted", "EPERM")


class TrackerLeft(DevenvError):
    """memray's tracker could not be detached: it stays in the service."""


@dataclass(frozen=True)
class Choice:
    language: str  # python | node
    target: Target


def choose(targets: list[Target]) -> Choice | None:
    """The process to sample: the topmost Python process (py-spy follows its children),
    else a Node process that runs no Node process itself (`npm run` → node: the server)."""
    for t in targets:
        if t.program.startswith("python") or t.program.startswith("pypy"):
            return Choice("python", t)
    parent = {t.id: t.parent for t in targets}
    nodes = [t for t in targets if t.program in ("node", "nodejs")]
    above: set[str] = set()  # node processes with a node process somewhere below them
    for t in nodes:
        at = parent.get(t.id)
        while at is not None and at not in above:
            above.add(at)
            at = parent.get(at)
    leaves = [t for t in nodes if t.id not in above]
    return Choice("node", leaves[0]) if leaves else None


def tool(name: str, folder: Path | None = None) -> str:
    """A tool installed beside devenv's Python (py-spy, memray: project dependencies)."""
    path = (folder or Path(sys.executable).parent) / name
    if not path.exists():
        raise DevenvError(f"{name} is not installed beside devenv's Python ({path})",
                          hint=f"{Path(sys.executable).parent / 'pip'} install {name}")
    return str(path)


def json_in(output: bytes) -> Any:
    """The JSON document in a tool's output (py-spy writes its own lines around it)."""
    text = output.decode(errors="replace")
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON in the output")
    return json.JSONDecoder().raw_decode(text, start)[0]


def inspector_left_open(stderr: str) -> list[int]:
    """The ports the inspector tool said it opened and did not say it closed."""
    opened = re.findall(r"^inspector: opened 127\.0\.0\.1:(\d+)$", stderr, re.M)
    closed = set(re.findall(r"^inspector: closed 127\.0\.0\.1:(\d+)$", stderr, re.M))
    return sorted({int(p) for p in opened if p not in closed})


def to_rows(ranked: list[top.Ranked]) -> list[FunctionTime]:
    return [FunctionTime(r.frame.name, r.frame.file, r.frame.line, round(r.self_s, 4),
                         round(r.total_s, 4), round(r.self_pct, 2), round(r.total_pct, 2))
            for r in ranked]


def rss_window(name: str, values: list[int]) -> MemoryWindow:
    if not values:
        return MemoryWindow(name, 0, 0, 0, 0)
    return MemoryWindow(name, len(values), min(values), sum(values) // len(values), max(values))


class Profiler:
    def __init__(self, root: Path, facts: Callable[[], permissions.Facts] = permissions.facts,
                 tools: Path | None = None):
        self.folder = StateDir(root).base / "profiles"
        self.facts = facts
        self.tools = tools

    async def profile(self, runner: ServiceRunner, replica: int | None, seconds: float,
                      formats: list[str], memory: bool,
                      tick: Callable[[ProfileTick], None], allow_root: bool = False
                      ) -> ProfileResult:
        if not MIN_SECONDS <= seconds <= MAX_SECONDS:
            raise UsageError(f"--duration {seconds:g}s: give {MIN_SECONDS:g}s to "
                             f"{MAX_SECONDS:g}s")
        unknown = [f for f in formats if f not in FORMATS]
        if unknown:
            raise UsageError(f"--format {unknown[0]}: not a format",
                             hint="formats: " + ", ".join(FORMATS))
        chosen = _instances(runner, replica)
        name, instance = chosen[0]
        choice = choose(instance.targets())
        if choice is None:
            programs = ", ".join(sorted({t.program for t in instance.targets()})) or "none"
            raise DevenvError(f"cannot profile {name}: it runs no Python or Node process "
                              f"(its processes: {programs})",
                              hint="devenv profiles Python (py-spy) and Node (its inspector)")
        if memory:
            return await self._memory(runner.name, chosen, choice, seconds, tick)
        if choice.language == "node" and self.facts().euid == 0 and not allow_root:
            raise UsageError(
                f"profiling {name} opens its Node inspector for the window, and devenv runs "
                "as root (so does the service): while it is open, any process on this "
                "machine that reaches 127.0.0.1 can run code in it as root, without a "
                "password", hint="run devenv as a normal user, or pass --allow-root if "
                "nothing else runs on this machine (e.g. a container of your own)")
        return await self._cpu(runner.name, name, instance, choice, seconds, formats, tick)

    # ---- CPU

    async def _cpu(self, service: str, name: str, instance: Instance, choice: Choice,
                   seconds: float, formats: list[str], tick: Callable[[ProfileTick], None]
                   ) -> ProfileResult:
        if choice.language == "python":
            self._check_attach(name)
            sampler = "py-spy"
            argv: tuple[str, ...] = (
                tool("py-spy", self.tools), "record", "--pid", PID_REF, "--duration",
                str(math.ceil(seconds)), "--rate", str(RATE), "--format", "speedscope",
                "--function", "--subprocesses", "--nonblocking", "--output", "/dev/stdout")
        else:
            sampler = "node-inspector"
            argv = (sys.executable, "-m", "devenv.profiling.inspector", PID_REF, f"{seconds:g}")
        done = await self._timed(name, sampler, seconds, tick, instance.attach(
            choice.target.id, argv, seconds + TOOL_SLACK))
        if choice.language == "python" and done.code not in (0, -9) \
                and not any(word in done.stderr for word in NOT_ALLOWED):
            # py-spy can fail to read a busy interpreter's state as it attaches: once more
            done = await self._timed(name, sampler, seconds, tick, instance.attach(
                choice.target.id, argv, seconds + TOOL_SLACK))
        if choice.language == "node":
            await self._closed(service, name, instance, choice.target.id, done)
        self._check_ran(name, sampler, done)
        try:
            doc = json_in(done.stdout)
            samples = speedscope.from_speedscope(doc) if choice.language == "python" \
                else speedscope.from_cpuprofile(doc)
        except (ValueError, KeyError, TypeError) as exc:
            raise DevenvError(f"{sampler} wrote no profile this devenv can read: {exc}",
                              details=done.stderr.strip().splitlines()[-5:]) from exc
        title = f"{name} ({sampler}, {seconds:g}s)"
        files = await asyncio.to_thread(self._write, service, samples, title, formats,
                                        doc if choice.language == "node" else None)
        notes = [] if samples.stacks else [f"no samples: {name} was idle (put it under load "
                                           "while it is profiled)"]
        return ProfileResult(
            service=service, instance=name, sampler=sampler, seconds=seconds,
            samples=len(samples.stacks), sampled_s=round(samples.seconds, 3), files=files,
            top_self=to_rows(top.top_self(samples, TOP)),
            top_total=to_rows(top.top_total(samples, TOP)), notes=notes)

    def _write(self, service: str, samples: speedscope.Samples, title: str,
               formats: list[str], cpuprofile: Any) -> list[str]:
        base = self._base(service)
        files = []
        if "speedscope" in formats:
            path = base.with_name(base.name + ".speedscope.json")
            write_atomic(path, json.dumps(speedscope.to_speedscope(samples, title)),
                         mode=0o600)
            files.append(str(path))
            if cpuprofile is not None:  # (Chrome DevTools opens it too)
                path = base.with_name(base.name + ".cpuprofile")
                write_atomic(path, json.dumps(cpuprofile), mode=0o600)
                files.append(str(path))
        if "flamegraph" in formats:
            path = base.with_name(base.name + ".svg")
            write_atomic(path, flame.render(samples, title), mode=0o600)
            files.append(str(path))
        return files

    def _base(self, service: str) -> Path:
        """`.devenv/profiles/<service>-<time>`, not yet taken."""
        private_dir(self.folder)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = self.folder / f"{service}-{stamp}"
        n = 1
        while any(self.folder.glob(base.name + ".*")):
            n += 1
            base = self.folder / f"{service}-{stamp}-{n}"
        return base

    async def _closed(self, service: str, name: str, instance: Instance, target: str,
                      done: Attached) -> None:
        """Make sure the inspector the tool opened is closed: the tool says what it opened
        and closed on stderr; one it did not close (killed at its deadline, or Node's close
        failed) is closed again, and if it still listens that is an error, loudly."""
        left = inspector_left_open(done.stderr)
        for port in left:
            again = await asyncio.shield(instance.attach(target, (
                sys.executable, "-m", "devenv.profiling.inspector", "--close", PID_REF,
                str(port)), TOOL_SLACK))
            if again.code != 0:
                raise DevenvError(
                    f"SECURITY: {name}'s Node inspector is still open on 127.0.0.1:{port} "
                    "after profiling: anyone on this machine can run code in it as its user",
                    hint=f"restart it now: devenv restart {service}",
                    details=(again.stderr.strip() or done.stderr.strip()).splitlines()[-5:])

    # ---- memory

    async def _memory(self, service: str, chosen: list[tuple[str, Instance]], choice: Choice,
                      seconds: float, tick: Callable[[ProfileTick], None]) -> ProfileResult:
        name, instance = chosen[0]
        notes: list[str] = []
        sites: list[AllocationSite] = []
        files: list[str] = []
        rss = asyncio.ensure_future(_sample_rss(chosen, seconds))
        try:
            if choice.language == "python":
                sampler = "memray"
                try:
                    self._check_attach(name)
                    sites, capture = await self._memray(name, instance, choice, seconds, tick,
                                                        self._base(service))
                    files.append(str(capture))
                except TrackerLeft:
                    raise
                except DevenvError as exc:
                    notes.append(f"allocation sites: not available ({exc.message}"
                                 f"{'; ' + exc.hint if exc.hint else ''}); RSS only")
            else:
                sampler = "rss"
                notes.append(f"allocation sites: not available for {choice.target.program} "
                             "(devenv traces allocations of Python only, with memray); RSS "
                             "only")
            if not rss.done():
                await self._timed(name, sampler, seconds, tick, asyncio.shield(rss))
            windows = await rss
        finally:
            rss.cancel()
        return ProfileResult(service=service, instance=name, sampler=sampler, seconds=seconds,
                             files=files, memory=windows, allocations=sites, notes=notes)

    async def _memray(self, name: str, instance: Instance, choice: Choice, seconds: float,
                      tick: Callable[[ProfileTick], None], base: Path
                      ) -> tuple[list[AllocationSite], Path]:
        memray = tool("memray", self.tools)
        capture = base.with_name(base.name + ".memray.bin")
        # made 0600 first: the service writes it (--force keeps the file, and its mode)
        os.close(os.open(capture, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        target = choice.target.id
        started = await instance.attach(target, (
            memray, "attach", PID_REF, "--output", str(capture), "--no-compress", "--force",
            "--aggregate"), TOOL_SLACK)
        self._check_ran(name, "memray attach", started)
        try:
            await self._timed(name, "memray", seconds, tick, asyncio.sleep(seconds))
        finally:
            await self._detach(name, instance, target, memray)
            with contextlib.suppress(OSError):
                os.chmod(capture, 0o600)
        return await asyncio.to_thread(_read_sites, capture), capture

    async def _detach(self, name: str, instance: Instance, target: str, memray: str) -> None:
        """`memray detach`, to its end even when the caller goes away (else the tracker
        stays in the service, slowing it down); tried twice; DevenvError if it fails."""
        cancelled = False
        stopped: Attached | BaseException | None = None
        for _ in range(2):
            task = asyncio.ensure_future(instance.attach(target, (memray, "detach", PID_REF),
                                                         TOOL_SLACK))
            while not task.done():
                try:
                    await asyncio.shield(task)
                except asyncio.CancelledError:
                    cancelled = cancelled or not task.done()  # (finish the detach first)
                except Exception:
                    break
            if task.cancelled():
                stopped = asyncio.CancelledError()
            else:
                stopped = task.exception() or task.result()
            if isinstance(stopped, Attached) and stopped.code == 0:
                break
        if cancelled:
            raise asyncio.CancelledError
        if isinstance(stopped, Attached):
            if stopped.code != 0:
                raise TrackerLeft(
                    f"memray detach failed on {name} twice (exit code {stopped.code}): its "
                    "allocation tracker stays in the service, slowing it down",
                    hint="restart the service to remove it", details=stopped.stderr.strip()
                    .splitlines()[-5:])
            return
        raise TrackerLeft(f"memray detach could not run on {name}: {stopped}: its allocation "
                          "tracker stays in the service, slowing it down",
                          hint="restart the service to remove it")

    # ---- shared

    async def _timed(self, name: str, sampler: str, seconds: float,
                     tick: Callable[[ProfileTick], None], work: Any) -> Any:
        """Await `work`, telling the caller every second how far the window is."""
        task = asyncio.ensure_future(work)
        started = time.monotonic()
        try:
            while True:
                tick(ProfileTick(name, sampler, round(time.monotonic() - started, 1), seconds))
                done, _ = await asyncio.wait([task], timeout=1.0)
                if done:
                    return task.result()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _check_attach(self, name: str) -> None:
        verdict = permissions.decide(self.facts())
        if not verdict.allowed:
            raise DevenvError(f"cannot attach a profiler to {name}: {verdict.reason}",
                              hint=verdict.fix)

    def _check_ran(self, name: str, sampler: str, done: Attached) -> None:
        if done.code == 0:
            return
        said = done.stderr.strip().split("Stack backtrace:")[0].strip().splitlines()
        lines = said[:5] or done.stderr.strip().splitlines()[-5:]  # its error, not its stack
        if any(word in done.stderr for word in NOT_ALLOWED):
            verdict = permissions.decide(self.facts())
            raise DevenvError(f"{sampler} was not allowed to attach to {name}",
                              details=lines, hint=verdict.fix or "run devenv as the user "
                              "the service runs as (or as root)")
        raise DevenvError(f"{sampler} failed on {name} (exit code {done.code})", details=lines)


def _instances(runner: ServiceRunner, replica: int | None) -> list[tuple[str, Instance]]:
    """The instances to sample: replica `replica`, else every running one (the first is
    the one a CPU profile samples)."""
    running = [(f"{runner.name}-{r.index}", r.instance, r) for r in runner.replicas
               if r.instance is not None and r.state not in (State.STOPPED, State.CRASHED)]
    if replica is not None:
        picked = [(n, i) for n, i, r in running if r.index == replica]
        if not picked:
            have = ", ".join(str(r.index) for _, _, r in running) or "none"
            raise UsageError(f"--replica {replica}: {runner.name} has no running replica "
                             f"{replica}", hint=f"running replicas: {have}")
        return picked
    if not running:
        raise DevenvError(f"{runner.name} has no running instance to profile",
                          hint=f"see `devenv status`; `devenv up --services {runner.name}`")
    running.sort(key=lambda item: (item[2].state != State.HEALTHY, item[2].index))
    return [(n, i) for n, i, _ in running]


async def _sample_rss(chosen: list[tuple[str, Instance]], seconds: float
                      ) -> list[MemoryWindow]:
    values: dict[str, list[int]] = {n: [] for n, _ in chosen}
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while True:
        for name, instance in chosen:
            res = instance.resources()
            if res is not None:
                values[name].append(res.rss_bytes)
        if loop.time() >= end:
            break
        await asyncio.sleep(min(RSS_EVERY, max(end - loop.time(), 0.0)))
    return [rss_window(n, v) for n, v in values.items()]


def _read_sites(capture: Path, n: int = TOP) -> list[AllocationSite]:
    """The allocation sites holding the most memory at the window's peak (memray's
    high-water mark), by their innermost Python frame."""
    import memray

    by_site: dict[tuple[str, str, int], list[int]] = {}
    reader = memray.FileReader(str(capture))
    for record in reader.get_high_watermark_allocation_records(merge_threads=True):
        try:
            stack = record.stack_trace(max_stacks=1)
        except NotImplementedError:
            continue
        key = stack[0] if stack else ("(native)", "", 0)
        entry = by_site.setdefault((str(key[0]), str(key[1]), int(key[2])), [0, 0])
        entry[0] += record.size
        entry[1] += record.n_allocations
    ranked = sorted(by_site.items(), key=lambda kv: -kv[1][0])[:n]
    return [AllocationSite(f, file, line, size, count) for (f, file, line), (size, count)
            in ranked]
