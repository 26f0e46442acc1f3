"""The docker runtime's pure parts: names, labels and a container's settings from a spec.

Every container and network the runtime makes carries the project's labels, so what a dead
engine left is found by label (`recover`), never by name.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devenv.runtime.base import (
    Container,
    InstanceSpec,
    Resources,
    exec_one_program,
    with_port,
)

HOST = "127.0.0.1"
PROJECT_LABEL = "devenv.project"  # the project folder
ENGINE_LABEL = "devenv.engine"  # the engine that made it (its token)
SERVICE_LABEL = "devenv.service"
REPLICA_LABEL = "devenv.replica"
LINE_LIMIT = 256 * 1024


def project_prefix(root: Path) -> str:
    """The project's names on the Docker Engine: `devenv-<folder>-<8 hex of its path>`, so two
    projects in folders of the same name never share a network or containers."""
    slug = re.sub(r"[^a-z0-9]+", "-", root.name.lower()).strip("-")[:30] or "project"
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:8]
    return f"devenv-{slug}-{digest}"


def network_name(root: Path) -> str:
    return project_prefix(root)


def container_name(root: Path, spec: InstanceSpec, token: str, serial: int) -> str:
    """Unique per instance: a replaced replica's successor runs beside it for a while."""
    return f"{project_prefix(root)}-{spec.service}-{spec.replica}-{token[:6]}{serial}"


def built_tag(root: Path, service: str) -> str:
    return f"{project_prefix(root)}-{service}:latest"


def project_labels(root: Path, token: str) -> dict[str, str]:
    return {PROJECT_LABEL: str(root), ENGINE_LABEL: token}


def labels(root: Path, token: str, spec: InstanceSpec) -> dict[str, str]:
    return {**project_labels(root, token), SERVICE_LABEL: spec.service,
            REPLICA_LABEL: str(spec.replica)}


def environment(spec: InstanceSpec) -> dict[str, str]:
    """What the container's process gets: the service's own environment (never the engine's:
    the container is another machine), its replica and its $PORT."""
    env = {**spec.env, "DEVENV_REPLICA": str(spec.replica)}
    env.setdefault("PYTHONUNBUFFERED", "1")
    port = inner_port(spec)
    if port is not None:
        env["PORT"] = str(port)
    return env


def inner_port(spec: InstanceSpec) -> int | None:
    """The port the service listens on inside its container (the service's declared port)."""
    if not spec.wants_port or spec.container is None:
        return None
    return spec.container.port


@dataclass(frozen=True)
class CreateArgs:
    """The arguments of the Engine API's container create, as docker-py's `create_container`
    takes them (`host_config` and `networking_config` are made by the client)."""

    image: str
    name: str
    command: list[str] | None
    environment: dict[str, str]
    labels: dict[str, str]
    stop_signal: str
    ports: list[int]
    publish: dict[int, tuple[str, None]]  # container port -> (127.0.0.1, any host port)
    network: str
    aliases: list[str]
    user: str | None = None
    volumes: dict[str, str] | None = None  # named volume -> path in the container

    def create_kwargs(self) -> dict[str, Any]:
        made = {"image": self.image, "name": self.name, "command": self.command,
                "environment": self.environment, "labels": self.labels,
                "stop_signal": self.stop_signal, "ports": self.ports, "detach": True}
        if self.user:
            made["user"] = self.user
        if self.volumes:
            made["volumes"] = list(self.volumes.values())
        return made

    def binds(self) -> dict[str, dict[str, str]]:
        """docker-py's `binds` of the host config: each named volume, read-write."""
        return {vol: {"bind": path, "mode": "rw"} for vol, path in (self.volumes or {}).items()}


def create_args(root: Path, spec: InstanceSpec, image: str, token: str,
                serial: int) -> CreateArgs:
    """How one instance runs as a container: the image's own command unless the service
    gives one (`${PORT}` in it is the inner port), published on 127.0.0.1 only, on the
    project's network under the service's alias."""
    container: Container | None = spec.container
    assert container is not None, "not a container service"
    port = inner_port(spec)
    command = exec_one_program(list(with_port(spec.command, port))) if spec.command else None
    return CreateArgs(
        image=image, name=container_name(root, spec, token, serial), command=command,
        environment=environment(spec), labels=labels(root, token, spec),
        stop_signal=f"SIG{spec.stop_signal}", ports=[port] if port else [],
        publish={port: (HOST, None)} if port else {}, network=network_name(root),
        aliases=[container.alias], user=container.user,
        volumes=dict(container.volumes) or None)


def exit_code(status: int) -> int:
    """An exit status as the engine reads it: 128+N (the shell's and Docker's way of saying
    "killed by signal N") is -N, as for a local process."""
    return -(status - 128) if 128 < status <= 128 + 64 else status


class LineSplitter:
    """Bytes as they come from a stream, cut into lines (a longer line is cut at LINE_LIMIT)."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[str]:
        self._buf += chunk
        lines = []
        while True:
            cut = self._buf.find(b"\n")
            if cut < 0:
                if len(self._buf) < LINE_LIMIT:
                    break
                cut = LINE_LIMIT
                line, self._buf = self._buf[:cut], self._buf[cut:]
            else:
                line, self._buf = self._buf[:cut], self._buf[cut + 1:]
            lines.append(line.decode(errors="replace").rstrip("\r"))
        return lines

    def end(self) -> list[str]:
        rest, self._buf = self._buf, b""
        return [rest.decode(errors="replace").rstrip("\r")] if rest else []


def changed_since(baseline: dict[str, tuple[int, int]],
                  now: dict[str, tuple[int, int]]) -> list[str]:
    """The files (relative paths) new or changed (size, mtime) since `baseline`."""
    return sorted(path for path, seen in now.items() if baseline.get(path) != seen)


def resources_from(stats: dict[str, Any], now: float,
                   last: tuple[float, float]) -> tuple[Resources, tuple[float, float]]:
    """A container's resource use from one sample of the Engine's stats (`one_shot`) and the
    previous (time, CPU seconds): CPU% since then (100 = one core, as locally) and its
    memory without the page cache (cgroup v2's inactive_file, v1's cache); and the sample
    to keep for the next."""
    cpu = float(stats.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage") or 0) / 1e9
    cpu = max(cpu, last[1])
    percent = 100.0 * (cpu - last[1]) / max(now - last[0], 1e-3)
    memory = stats.get("memory_stats") or {}
    detail = memory.get("stats") or {}
    cache = detail.get("inactive_file", detail.get("total_inactive_file", detail.get("cache", 0)))
    rss = max(int(memory.get("usage") or 0) - int(cache or 0), 0)
    return (Resources(cpu_percent=round(max(percent, 0.0), 1), rss_bytes=rss, cpu_seconds=cpu),
            (now, cpu))
