"""The runtime interface: what the engine needs from any place that runs instances.

No PIDs and no host paths here: an instance is an opaque handle with an address, its output,
its exit and its resource use, so a container or Kubernetes runtime can implement it too.
An instance also lets a tool attach to its processes (`targets`, `attach`: profilers),
each named by an opaque id. Besides instances, a runtime realises a service's stable address
(`address`), runs one-off commands attached to the caller's terminal (`exec`), and cleans up
after a dead engine (`recover`).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Container:
    """What a container runtime runs a service's instances from: an image, or one it builds
    (a context and Dockerfile relative to the project), and the port the service listens on
    inside (its $PORT), where others on the project's network reach it by `alias`. A data
    service's also names the user its server runs as and its named volumes (volume, path).
    `copy_in`: the files of the service's folder changed since its first instance are
    copied into each new container's working folder before it starts (hot reload)."""

    image: str | None
    alias: str
    port: int | None = None
    build_context: str | None = None
    dockerfile: str | None = None
    user: str | None = None
    volumes: tuple[tuple[str, str], ...] = ()
    copy_in: bool = False  # watched, from an image: changed files copied into new ones


@dataclass(frozen=True)
class InstanceSpec:
    """One instance (replica) to run: a process is a value, run by a runtime.

    `${PORT}` in an argument of `command` (or of a command run for it) is replaced by the
    port the instance listens on, so a recipe needs no shell to learn it.
    """

    service: str
    replica: int
    command: tuple[str, ...]
    env: Mapping[str, str]
    workdir: str  # relative to the project
    wants_port: bool
    stop_signal: str = "TERM"
    stop_timeout: float = 10.0
    container: Container | None = None  # set for a service run as a container

    @property
    def name(self) -> str:
        return f"{self.service}-{self.replica}"


PORT_REF = "${PORT}"
CHILD_LIMIT_VAR = "DEVENV_CHILD_NOFILE"  # instances' open-files limit (the engine raises its own)


# A shell line that is one plain command: no operators, redirections or substitutions
_ONE_COMMAND = re.compile(r"[^;&|()<>`\n\\{}]*")
_PROGRAM = re.compile(r"[A-Za-z0-9_./+-]+")  # (a name or path; not `FOO=1`, not `$CMD`)
_NOT_A_PROGRAM = frozenset({  # the shell's own words and builtins (`exec read` is no program)
    "!", ".", ":", "alias", "bg", "break", "case", "cd", "command", "continue", "do", "done",
    "elif", "else", "esac", "eval", "exec", "exit", "export", "fg", "fi", "for", "getopts",
    "hash", "if", "in", "jobs", "let", "local", "read", "readonly", "return", "set", "shift",
    "source", "then", "time", "times", "trap", "type", "ulimit", "umask", "unalias", "unset",
    "until", "wait", "while"})


def exec_one_program(command: list[str]) -> list[str]:
    """For a container: a shell line that runs one program, run with `exec`, so the
    program, not the shell, is what is signalled on stop (under an init, the shell would
    die of the signal at once and the container end with it, the program cut off before
    it could finish; as a pod's PID 1, the shell ignores it and the grace runs out).
    Anything else stays as given."""
    if len(command) != 3 or command[:2] != ["/bin/sh", "-c"]:
        return command
    line = command[2].strip()
    first = line.split(None, 1)[0] if line else ""
    if not _ONE_COMMAND.fullmatch(line) or not _PROGRAM.fullmatch(first) \
            or first in _NOT_A_PROGRAM:
        return command
    return ["/bin/sh", "-c", f"exec {line}"]


def with_port(argv: tuple[str, ...], port: int | None) -> tuple[str, ...]:
    """`argv` with `${PORT}` replaced by the instance's port."""
    if port is None:
        return argv
    return tuple(a.replace(PORT_REF, str(port)) for a in argv)


@dataclass(frozen=True)
class Resources:
    cpu_percent: float
    rss_bytes: int
    cpu_seconds: float = 0.0  # CPU time of the whole group so far (user + system)


@dataclass(frozen=True)
class RunResult:
    code: int
    output: str  # the end of what it wrote, stdout and stderr merged


@dataclass(frozen=True)
class Target:
    """One process of an instance that a tool (a sampling profiler) can attach to: an
    opaque id, the program it runs (its executable's name: python3.11, node) and its
    parent's id when that is the instance's too. Listed parents first."""

    id: str
    program: str
    parent: str | None = None


@dataclass(frozen=True)
class Attached:
    code: int  # negative: killed by that signal; -9 also when it was stopped at its deadline
    stdout: bytes  # all of it (a profile)
    stderr: str  # its end


PID_REF = "${PID}"


@dataclass(frozen=True)
class OutputLine:
    stream: str  # "out" or "err"
    text: str


class Instance(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def endpoint(self) -> tuple[str, int] | None:
        """Where the instance listens (host, port), when the spec wants a port."""

    def output(self) -> AsyncIterator[OutputLine]:
        """Lines the instance writes, until it exits."""

    async def wait(self) -> int:
        """Wait for the instance to exit; its exit code (negative: killed by a signal)."""

    async def stop(self) -> int:
        """Ask it to stop, escalate to a kill after the spec's stop_timeout; exit code."""

    def resources(self) -> Resources | None:
        """Memory now, and CPU since the previous call (since start on the first)."""

    def targets(self) -> list[Target]:
        """The instance's processes now (what `attach` can reach), parents first."""

    async def attach(self, target: str, argv: tuple[str, ...], timeout: float) -> Attached:
        """Run a tool against one of the instance's processes (`${PID}` in `argv`: that
        process as the tool sees it), e.g. a sampling profiler. Stopped at `timeout`, or
        when cancelled: SIGINT first (a profiler then writes what it has), KILL soon after."""


class Endpoint(Protocol):
    """One ready instance, as an address sees it."""

    id: str
    host: str
    port: int

    def working(self, delta: int) -> None:
        """Count a connection as waiting for an answer (+1) or answered (-1): a draining
        instance waits longer for busy connections than for idle ones."""


class Backends(Protocol):
    """The ready instances an address sends callers to (the engine's pool of a service)."""

    def use(self, exclude: set[str] | None = None) -> AbstractAsyncContextManager[Endpoint]:
        """The next ready instance, counted as in use while the block runs; waits a while for
        one when none is ready, then raises LookupError."""


class Address(Protocol):
    """A service's stable address (locally a TCP balancer on its port; in a container
    runtime a published port; on Kubernetes a Service)."""

    async def open(self) -> None:
        """Start taking callers; AddressInUse when the address is taken."""

    async def close(self) -> None: ...


class AddressInUse(Exception):
    def __init__(self, service: str, port: int, reason: str, holder: str = ""):
        super().__init__(f"{service}: port {port} is already in use{holder} ({reason})")
        self.service, self.port, self.holder = service, port, holder


class Runtime(Protocol):
    name: str

    async def start(self, spec: InstanceSpec) -> Instance: ...

    async def run(self, spec: InstanceSpec, argv: tuple[str, ...], timeout: float,
                  instance: Instance | None = None) -> RunResult:
        """Run a one-off command in an instance's environment and folder (health checks,
        builds, dataset scripts). With `instance`, the command sees that instance's $PORT."""

    def exec(self, spec: InstanceSpec, argv: tuple[str, ...], *, tty: bool) -> int:
        """Run a command with the spec's environment and folder attached to the caller's
        terminal (stdin included), from the caller's process; its exit code (128+N for
        signal N). Needs no engine."""

    def address(self, service: str, port: int, backends: Backends) -> Address:
        """How the service's stable address `port` is realised on this runtime."""

    def recover(self) -> int:
        """Stop what a dead engine left running on this runtime; how many it stopped."""

    async def close(self) -> None:
        """Stop everything this runtime still runs."""
