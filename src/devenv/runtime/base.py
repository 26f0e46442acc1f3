"""The runtime interface: what the engine needs from any place that runs instances.

No PIDs and no host paths here: an instance is an opaque handle with an address, its output,
its exit and its resource use, so a container or Kubernetes runtime can implement it too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol


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

    @property
    def name(self) -> str:
        return f"{self.service}-{self.replica}"


PORT_REF = "${PORT}"


def with_port(argv: tuple[str, ...], port: int | None) -> tuple[str, ...]:
    """`argv` with `${PORT}` replaced by the instance's port."""
    if port is None:
        return argv
    return tuple(a.replace(PORT_REF, str(port)) for a in argv)


@dataclass(frozen=True)
class Resources:
    cpu_percent: float
    rss_bytes: int


@dataclass(frozen=True)
class RunResult:
    code: int
    output: str  # the end of what it wrote, stdout and stderr merged


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


class Runtime(Protocol):
    name: str

    async def start(self, spec: InstanceSpec) -> Instance: ...

    async def run(self, spec: InstanceSpec, argv: tuple[str, ...], timeout: float,
                  instance: Instance | None = None) -> RunResult:
        """Run a one-off command in an instance's environment and folder (health checks,
        builds). With `instance`, the command sees that instance's $PORT."""

    async def close(self) -> None:
        """Stop everything this runtime still runs."""
