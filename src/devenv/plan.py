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

from devenv.config.graph import closure, start_order
from devenv.config.load import Loaded, read_dotenv
from devenv.config.model import HealthCheck, Route, Service, Watch
from devenv.core.errors import UsageError

SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE|CREDENTIAL)", re.I)
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
    config_hash: str = field(default="", compare=False)

    @property
    def url(self) -> str | None:
        return f"http://{HOST}:{self.port}" if self.port else None

    def secrets(self) -> list[str]:
        """Values of secret-looking variables, to be masked in logs and output."""
        return [v for k, v in self.env.items() if SECRET_NAME.search(k) and len(v) >= 4]


@dataclass(frozen=True)
class Plan:
    project: str
    services: dict[str, ServicePlan]  # in start order
    selected: tuple[str, ...]
    ingress_port: int | None
    hold_timeout: float


def url_var(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", name.upper()) + "_URL"


def command_argv(command: str | list[str]) -> tuple[str, ...]:
    return ("/bin/sh", "-c", command) if isinstance(command, str) else tuple(command)


def service_plan(loaded: Loaded, name: str) -> ServicePlan:
    svc: Service = loaded.project.services[name]
    env: dict[str, str] = {}
    for env_file in svc.env_file:
        env.update(read_dotenv(loaded.root / env_file))
    env.update(svc.env)
    env["DEVENV_SERVICE"] = name
    for dep in svc.depends_on:
        dep_port = loaded.project.services[dep].port
        if dep_port:
            env.setdefault(url_var(dep), f"http://{HOST}:{dep_port}")
    plan = ServicePlan(
        name=name,
        command=command_argv(svc.command),
        workdir=str(Path(svc.path)),
        env=env,
        port=svc.port,
        replicas=svc.replicas,
        health=svc.health,
        restart=svc.restart,
        depends_on={d: dep.condition for d, dep in svc.depends_on.items()},
        route=svc.ingress,
        watch=svc.watch,
        stop_signal=svc.stop_signal,
        stop_timeout=svc.stop_timeout,
    )
    fingerprint = asdict(plan)
    fingerprint.pop("replicas")
    fingerprint.pop("watch")
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode())
    return replace(plan, config_hash=digest.hexdigest()[:16])


def select(loaded: Loaded, services: Iterable[str] = ()) -> tuple[str, ...]:
    """Services asked for (or the profile's, or all), plus their dependencies, in start order."""
    project = loaded.project
    asked = list(services)
    if not asked and loaded.profile:
        asked = list(project.profiles[loaded.profile].services)
    for name in asked:
        if name not in project.services:
            from devenv.config.schema import did_you_mean

            raise UsageError(
                f"no service '{name}'{did_you_mean(name, project.services)}",
                hint="services: " + ", ".join(project.services),
            )
    deps = {n: list(s.depends_on) for n, s in project.services.items()}
    chosen = closure(deps, asked) if asked else set(project.services)
    return tuple(start_order(deps, chosen))


def make_plan(loaded: Loaded, services: Iterable[str] = ()) -> Plan:
    selected = select(loaded, services)
    ingress = loaded.project.ingress
    return Plan(
        project=loaded.name,
        services={n: service_plan(loaded, n) for n in loaded.project.services},
        selected=selected,
        ingress_port=ingress.port if ingress.enabled else None,
        hold_timeout=ingress.hold_timeout,
    )
