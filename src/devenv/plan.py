"""Desired state: what each service should be, computed from the model before anything runs.

A ServicePlan carries everything needed to run a service on any runtime, and a config hash
over the parts that require new instances when they change (replicas can change live).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from devenv import data as kinds
from devenv.config.graph import select
from devenv.config.load import Loaded, read_dotenv
from devenv.config.model import HealthCheck, Route, Service, Watch
from devenv.core.paths import StateDir
from devenv.core.secrets import looks_secret
from devenv.data.base import DataService
from devenv.runtime import DEFAULT as DEFAULT_RUNTIME
from devenv.runtime.base import InstanceSpec

HOST = "127.0.0.1"


@dataclass(frozen=True)
class ServicePlan:
    name: str
    command: tuple[str, ...]
    workdir: str
    env: dict[str, str]
    port: int | None
    replicas: int
    health: HealthCheck | None
    restart: str
    depends_on: dict[str, str]
    route: Route | None
    watch: Watch
    stop_signal: str
    stop_timeout: float
    data: DataService[Any] | None = None
    restart_with: tuple[str, ...] = ()  # of depends_on, those with `restart: true`
    runtime: str = DEFAULT_RUNTIME
    config_hash: str = field(default="", compare=False)

    @property
    def url(self) -> str | None:
        """Where to reach the service, as shown to people (data passwords masked)."""
        if self.data:
            shown = kinds.url(self.data)
            for secret in kinds.secrets(self.data):
                shown = shown.replace(f":{secret}@", ":***@")
            return shown
        return f"http://{HOST}:{self.port}" if self.port else None

    def secrets(self) -> list[str]:
        """Values of secret-looking variables, to be masked in logs and output."""
        found = [v for k, v in self.env.items() if looks_secret(k) and len(v) >= 4]
        if self.data:
            found += kinds.secrets(self.data)
        return found


@dataclass(frozen=True)
class Plan:
    project: str
    services: dict[str, ServicePlan]  # in start order
    selected: tuple[str, ...]
    ingress_port: int | None
    hold_timeout: float
    keep_automatic: int = 3
    runtime: str = DEFAULT_RUNTIME


def url_var(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", name.upper()) + "_URL"


def command_argv(command: str | list[str]) -> tuple[str, ...]:
    return ("/bin/sh", "-c", command) if isinstance(command, str) else tuple(command)


def data_service(loaded: Loaded, name: str) -> DataService[Any]:
    svc = loaded.project.services[name]
    assert svc.port is not None
    return DataService(name, svc.kind, svc.settings, StateDir(loaded.root).data / name, svc.port)


def service_plan(loaded: Loaded, name: str) -> ServicePlan:
    svc: Service = loaded.project.services[name]
    env: dict[str, str] = {}
    for env_file in svc.env_file:
        env.update(read_dotenv(loaded.root / env_file, env_file))
    env.update(svc.env)
    env["DEVENV_SERVICE"] = name
    for dep, how in svc.depends_on.items():
        target = loaded.project.services[dep]
        if target.is_data:
            url = kinds.url(data_service(loaded, dep), how.database)
            env.setdefault(kinds.url_var(target.kind), url)
            env.setdefault(url_var(dep), url)
        elif target.port:
            env.setdefault(url_var(dep), f"http://{HOST}:{target.port}")
    data = None
    command = command_argv(svc.command) if svc.command is not None else ()
    health, watch = svc.health, svc.watch
    stop_signal: str = svc.stop_signal
    if svc.is_data:
        data = data_service(loaded, name)
        server = kinds.server(data)
        command, health, stop_signal = server.command, server.health, server.stop_signal
        env.update(server.env)
        watch = Watch(enabled=False)
    plan = ServicePlan(
        name=name,
        command=command,
        workdir=str(Path(svc.path)),
        env=env,
        port=svc.port,
        replicas=svc.replicas,
        health=health,
        restart=svc.restart,
        depends_on={d: dep.condition for d, dep in svc.depends_on.items()},
        restart_with=tuple(d for d, dep in svc.depends_on.items() if dep.restart),
        route=svc.ingress,
        watch=watch,
        stop_signal=stop_signal,
        stop_timeout=svc.stop_timeout,
        data=data,
    )
    fingerprint = asdict(plan)
    fingerprint.pop("replicas")
    fingerprint.pop("watch")
    if not plan.restart_with:  # (hashes from before the key stay as they were)
        fingerprint.pop("restart_with")
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode())
    return replace(plan, config_hash=digest.hexdigest()[:16])


def exec_spec(plan: ServicePlan) -> InstanceSpec:
    """How `devenv exec SERVICE` runs: the service's environment and folder, plus
    SERVICE_URL, its own stable address."""
    env = dict(plan.env)
    if plan.port:
        env["SERVICE_URL"] = f"http://{HOST}:{plan.port}"
    return InstanceSpec(service=plan.name, replica=0, command=(), env=env,
                        workdir=plan.workdir, wants_port=False)


def make_plan(loaded: Loaded, services: Iterable[str] = ()) -> Plan:
    selected = select(loaded, services)
    ingress = loaded.project.ingress
    return Plan(
        project=loaded.name,
        services={n: service_plan(loaded, n) for n in loaded.project.services},
        selected=selected,
        ingress_port=ingress.port if ingress.enabled else None,
        hold_timeout=ingress.hold_timeout,
        keep_automatic=loaded.project.snapshots.keep_automatic,
    )
