"""The local runtime: each instance is a process group on this machine.

Instances run in their own process groups (a stop reaches every process a service started),
stop escalates from the spec's signal to KILL after its timeout, and a guardian process plus
a registry on disk make sure that no process outlives a dead engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import psutil

from devenv.core.atomic import write_atomic
from devenv.core.children import Child, spawn
from devenv.core.errors import DevenvError
from devenv.core.paths import StateDir
from devenv.runtime.balancer import Balancer
from devenv.runtime.base import (
    CHILD_LIMIT_VAR,
    PID_REF,
    Attached,
    Backends,
    Instance,
    InstanceSpec,
    OutputLine,
    Resources,
    RunResult,
    Target,
    with_port,
)
from devenv.runtime.guardian import (
    ENGINE_VAR,
    INSTANCE_VAR,
    PROJECT_VAR,
    kill_carrying,
    stop_groups,
)

LINE_LIMIT = 256 * 1024
HOST = "127.0.0.1"
MEMBERS_FOR = 10.0  # seconds an instance's list of processes is reused for resource samples
PIDFD_VAR = "DEVENV_PIDFD"  # (devenv.profiling.inspector reads it)
GRACE_POLL = 0.05  # while a stopped leader's children finish
ATTACH_GRACE = 3.0  # seconds a tool has to finish after SIGINT before it is killed
OUTPUT_GRACE = 0.5  # a one-off's output closes this soon after it exits, unless a child holds it


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _running(proc: psutil.Process, pgid: int) -> bool:
    """Still at work in the group `pgid` (one that left it for a session of its own was not
    signalled, so it is not waited for: the KILL after the grace finds it by its mark)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE \
            and os.getpgid(proc.pid) == pgid
    except (psutil.Error, OSError):
        return False


class LocalInstance:
    def __init__(self, spec: InstanceSpec, proc: Child, port: int | None,
                 runtime: LocalRuntime, mark: str):
        self.spec = spec
        self.mark = mark  # $DEVENV_INSTANCE of everything it starts
        self._proc = proc
        self._port = port
        self._runtime = runtime
        self._pgid = proc.pid
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reaper = asyncio.create_task(self._reap())
        self._cpu_sample: tuple[float, float] | None = None
        self._members_cache: tuple[float, psutil.Process, list[psutil.Process]] | None = None
        self._stopping: float | None = None  # a stop's deadline (loop time), once asked
        self._started: list[psutil.Process] = []  # what the leader had started then

    @property
    def id(self) -> str:
        return f"{self.spec.name}#{self._proc.pid}"

    @property
    def endpoint(self) -> tuple[str, int] | None:
        return (HOST, self._port) if self._port else None

    async def output(self) -> AsyncIterator[OutputLine]:
        queue: asyncio.Queue[OutputLine | None] = asyncio.Queue()
        streams = [("out", self._proc.stdout), ("err", self._proc.stderr)]
        readers = [asyncio.create_task(_pump(name, s, queue)) for name, s in streams if s]
        open_streams = len(readers)
        try:
            while open_streams:
                item = await queue.get()
                if item is None:
                    open_streams -= 1
                else:
                    yield item
        finally:
            for reader in readers:
                reader.cancel()

    async def _reap(self) -> None:
        code = await self._proc.exited
        if self._stopping is not None:
            # A stop: what the leader started has the rest of the grace to finish as asked
            # (`/bin/sh -c "python app.py"`: the shell dies of the signal at once; the app
            # flushes, closes its connections, and exits).
            loop = asyncio.get_running_loop()
            while loop.time() < self._stopping and any(
                    _running(p, self._pgid) for p in self._started):
                await asyncio.sleep(GRACE_POLL)
        # The leader is gone; anything it left goes with it: its group, and what escaped the
        # group (a `setsid` child) but still carries the instance's mark.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._pgid, signal.SIGKILL)
        await asyncio.to_thread(kill_carrying, INSTANCE_VAR, self.mark)
        self._runtime._forget(self._pgid)
        self._exit.set_result(code)



    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

    async def stop(self) -> int:
        if self._exit.done():
            return self._exit.result()
        loop = asyncio.get_running_loop()
        if self._stopping is None:  # (a second stop waits for the first's deadline)
            sig = getattr(signal, f"SIG{self.spec.stop_signal}")
            self._stopping = loop.time() + self.spec.stop_timeout
            self._started = await asyncio.to_thread(_descendants, self._proc.pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._pgid, sig)
        try:
            return await asyncio.wait_for(asyncio.shield(self._exit),
                                          max(0.0, self._stopping - loop.time()))
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._pgid, signal.SIGKILL)
            return await asyncio.shield(self._exit)

    def _members(self) -> tuple[psutil.Process, list[psutil.Process]]:
        """The group's processes: finding the children scans every process on the machine,
        so the list is kept for MEMBERS_FOR seconds (metrics and the dashboard sample often)."""
        now = time.monotonic()
        if self._members_cache is None or now - self._members_cache[0] > MEMBERS_FOR:
            leader = psutil.Process(self._proc.pid)
            self._members_cache = (now, leader, [leader, *leader.children(recursive=True)])
        return self._members_cache[1], self._members_cache[2]

    def resources(self) -> Resources | None:
        """CPU since the last sample (since start on the first), and RSS, of the whole group.
        Its CPU seconds never go down (a counter): children that exited and were waited for
        count through the leader's, and one that exited unwaited keeps what it was seen at."""
        try:
            leader, procs = self._members()
            cpu = rss = 0.0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    times = p.cpu_times()
                    cpu += times.user + times.system
                    if p is leader:
                        cpu += times.children_user + times.children_system
                    rss += p.memory_info().rss
            cpu = max(cpu, self._cpu_sample[1] if self._cpu_sample else 0.0)
            now = time.time()
            last_at, last_cpu = self._cpu_sample or (leader.create_time(), 0.0)
            self._cpu_sample = (now, cpu)
            percent = 100.0 * (cpu - last_cpu) / max(now - last_at, 1e-3)
            return Resources(cpu_percent=round(max(percent, 0.0), 1), rss_bytes=int(rss),
                             cpu_seconds=cpu)
        except psutil.Error:
            return None

    def targets(self) -> list[Target]:
        try:
            leader = psutil.Process(self._proc.pid)
            procs = [leader, *leader.children(recursive=True)]
        except psutil.Error:
            return []
        pids = {p.pid for p in procs}
        out = []
        for p in procs:
            try:
                program = os.path.basename(p.exe()) or p.name()
                parent = p.ppid()
            except psutil.Error:
                continue
            out.append(Target(str(p.pid), program, str(parent) if parent in pids else None))
        return out

    async def attach(self, target: str, argv: tuple[str, ...], timeout: float) -> Attached:
        # the process as checked below, whatever later takes its number
        pidfd = _pidfd(int(target)) if target.isdigit() else None
        try:
            if target not in {t.id for t in self.targets()}:
                raise DevenvError(f"{self.spec.name}: process {target} is no longer running",
                                  hint="it may have restarted; try again")
            env = None if pidfd is None else {**os.environ, PIDFD_VAR: str(pidfd)}
            proc = await spawn(
                [target if a == PID_REF else a for a in argv], start_new_session=True,
                env=env, pass_fds=() if pidfd is None else (pidfd,))
        finally:
            if pidfd is not None:
                os.close(pidfd)
        talk = asyncio.ensure_future(proc.communicate())
        try:
            out, err = await asyncio.wait_for(asyncio.shield(talk), timeout)
        except asyncio.CancelledError:
            await asyncio.shield(_interrupt(proc, talk))
            raise
        except TimeoutError:  # its deadline: stopped, and said so by code -9 (base.Attached)
            await asyncio.shield(_interrupt(proc, talk))
            out, err = talk.result()
            return Attached(-9, out, err[-4096:].decode(errors="replace"))
        return Attached(proc.returncode or 0, out, err[-4096:].decode(errors="replace"))


def _pidfd(pid: int) -> int | None:
    """A pidfd of `pid` (Linux 5.3+), handed to the tool as $DEVENV_PIDFD: a tool that
    signals the process (the Node inspector's SIGUSR1) then reaches that very process."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


async def _interrupt(proc: Child,
                     talk: asyncio.Future[tuple[bytes, bytes]]) -> None:
    """SIGINT (a profiler writes what it has and exits), then KILL after ATTACH_GRACE."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(asyncio.shield(talk), ATTACH_GRACE)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await talk


async def _pump(name: str, stream: asyncio.StreamReader, queue: asyncio.Queue[OutputLine | None]
                ) -> None:
    try:
        while True:
            try:
                chunk = await stream.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    await queue.put(OutputLine(name, exc.partial.decode(errors="replace")))
                break
            except asyncio.LimitOverrunError as exc:
                chunk = await stream.readexactly(exc.consumed)
            await queue.put(OutputLine(name, chunk.decode(errors="replace").rstrip("\r\n")))
    finally:
        await queue.put(None)


class LocalRuntime:
    name = "local"

    def __init__(self, root: Path, environ: Mapping[str, str] | None = None):
        self.root = root
        self.state = StateDir(root)
        self.environ = dict(os.environ if environ is None else environ)
        limit = self.environ.pop(CHILD_LIMIT_VAR, "")
        self._child_nofile = int(limit) if limit.isdigit() else None
        self._prlimit = shutil.which("prlimit")
        self.token = secrets.token_hex(8)  # $DEVENV_ENGINE of everything this engine starts
        self._started = 0
        self._groups: dict[int, float] = {}
        self._guardian: subprocess.Popen[bytes] | None = None

    def _env(self, spec: InstanceSpec, port: int | None) -> dict[str, str]:
        env = {**self.environ, **spec.env, "DEVENV_REPLICA": str(spec.replica)}
        env["PYTHONUNBUFFERED"] = env.get("PYTHONUNBUFFERED", "1")
        if port:
            env["PORT"] = str(port)
        return env

    async def start(self, spec: InstanceSpec) -> LocalInstance:
        self._ensure_guardian()
        port = free_port() if spec.wants_port else None
        workdir = self.root / spec.workdir
        self._started += 1
        mark = f"{self.token}-{self._started}"
        env = self._env(spec, port)
        # (a relative PATH entry counts from the service's folder, as for the child itself)
        path = os.pathsep.join(str(workdir / p) for p in env.get("PATH", "").split(os.pathsep))
        if spec.command and not shutil.which(spec.command[0], path=path) and \
                not (workdir / spec.command[0]).is_file():
            raise DevenvError(f"{spec.service}: cannot run {spec.command[0]!r}: not found",
                              hint=f"check services.{spec.service}.command (and PATH)")
        try:
            proc = await spawn(
                self._limited(with_port(spec.command, port)), limit=LINE_LIMIT, cwd=workdir,
                env={**env, ENGINE_VAR: self.token, INSTANCE_VAR: mark,
                     PROJECT_VAR: str(self.root)},
                start_new_session=True,
            )
        except OSError as exc:
            raise DevenvError(f"{spec.service}: cannot run {spec.command[0]!r}: {exc.strerror}",
                              hint=f"check services.{spec.service}.command") from exc
        self._remember(proc.pid)
        return LocalInstance(spec, proc, port, self, mark)

    async def run(self, spec: InstanceSpec, argv: tuple[str, ...], timeout: float,
                  instance: Instance | None = None) -> RunResult:
        """A one-off command; whatever it leaves running when it exits (or times out) is
        killed, so it never holds its output open or outlives its purpose."""
        port = instance.endpoint[1] if instance and instance.endpoint else None
        self._started += 1
        mark = f"{self.token}-run-{self._started}"
        try:
            proc = await spawn(
                with_port(argv, port), merge_stderr=True, limit=LINE_LIMIT,
                cwd=self.root / spec.workdir,
                env={**self._env(spec, port), ENGINE_VAR: self.token, INSTANCE_VAR: mark,
                     PROJECT_VAR: str(self.root)},
                start_new_session=True,
            )
        except OSError as exc:
            return RunResult(127, f"cannot run {argv[0]!r}: {exc.strerror}")
        assert proc.stdout is not None
        reader = asyncio.ensure_future(proc.stdout.read())
        try:
            code: int | None = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            code = None
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # what it left in its group
        try:
            out = await asyncio.wait_for(asyncio.shield(reader), OUTPUT_GRACE)
        except TimeoutError:  # something outside its group holds its output: find it by mark
            await asyncio.to_thread(kill_carrying, INSTANCE_VAR, mark)
            try:
                out = await asyncio.wait_for(reader, 5.0)
            except TimeoutError:
                out = b""
        await proc.wait()
        if code is None:
            return RunResult(-9, f"timed out after {timeout:g}s")
        return RunResult(code, out[-65536:].decode(errors="replace"))

    def _limited(self, argv: tuple[str, ...]) -> tuple[str, ...]:
        """`argv` run with the open-files limit the engine had before it raised its own (a
        program that walks every descriptor up to the limit would crawl): through
        util-linux's `prlimit`, which sets it before the program starts."""
        if self._child_nofile is None or self._prlimit is None or not argv:
            return argv
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        return (self._prlimit, f"--nofile={min(self._child_nofile, hard)}:{hard}", "--", *argv)

    def exec(self, spec: InstanceSpec, argv: tuple[str, ...], *, tty: bool) -> int:
        """Attached to this terminal (a tty needs nothing more locally)."""
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the command
        try:
            proc = subprocess.run(with_port(argv, None), env=self._env(spec, None),
                                  cwd=self.root / spec.workdir, check=False)
        except FileNotFoundError as exc:
            raise DevenvError(f"command not found: {argv[0]}") from exc
        except PermissionError as exc:
            raise DevenvError(f"cannot run {argv[0]}: {exc.strerror}") from exc
        finally:
            signal.signal(signal.SIGINT, previous)
        return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode

    def address(self, service: str, port: int, backends: Backends) -> Balancer:
        return Balancer(service, port, backends)

    def recover(self) -> int:
        """Stop process groups a previous engine left behind (if even its guardian died).

        A group is only stopped when its leader is gone or is still the very process we
        started (same create time), so a recycled PID is never hit.
        """
        try:
            saved = json.loads(self.state.procs.read_text())
        except (OSError, ValueError):
            return 0
        token = saved.get("token", "") if isinstance(saved, dict) else ""
        groups = saved.get("groups", {}) if "token" in saved else saved
        doomed: set[int] = set()
        for pgid_text, created in groups.items():
            pgid = int(pgid_text)
            try:
                same = abs(psutil.Process(pgid).create_time() - float(created)) < 0.01
            except psutil.NoSuchProcess:
                same = True  # leader gone: only its own group members can still hold the pgid
            except psutil.Error:
                same = False
            if same:
                doomed.add(pgid)
        if doomed:
            stop_groups(doomed, grace=3.0)
        escaped = kill_carrying(ENGINE_VAR, token) if token else 0
        self.state.procs.unlink(missing_ok=True)
        return len(doomed) + escaped

    async def close(self) -> None:
        if self._guardian and self._guardian.stdin:
            self._guardian.stdin.close()
            await asyncio.to_thread(self._guardian.wait)
            self._guardian = None

    # ---- orphan protection

    def _ensure_guardian(self) -> None:
        if self._guardian is not None and self._guardian.poll() is None:
            return
        self._guardian = subprocess.Popen(
            [sys.executable, "-m", "devenv.runtime.guardian"], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, start_new_session=True,
        )
        self._tell(f"={self.token}")
        for pgid in self._groups:
            self._tell(f"+{pgid}")

    def _tell(self, line: str) -> None:
        if self._guardian and self._guardian.stdin:
            with contextlib.suppress(BrokenPipeError):
                self._guardian.stdin.write(f"{line}\n".encode())
                self._guardian.stdin.flush()

    def _remember(self, pgid: int) -> None:
        try:
            created = psutil.Process(pgid).create_time()
        except psutil.Error:
            created = 0.0
        self._groups[pgid] = created
        self._tell(f"+{pgid}")
        self._save()

    def _forget(self, pgid: int) -> None:
        if self._groups.pop(pgid, None) is not None:
            self._tell(f"-{pgid}")
            self._save()

    def _save(self) -> None:
        """The registry a next engine recovers from; the guardian covers a failed write
        (the project folder deleted, a full disk)."""
        with contextlib.suppress(OSError):
            write_atomic(self.state.procs,
                         json.dumps({"token": self.token,
                                     "groups": {str(k): v for k, v in self._groups.items()}}),
                         mode=0o600)
