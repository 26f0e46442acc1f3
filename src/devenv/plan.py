"""Desired state: what each service should be, computed from the model before anything runs.

A ServicePlan carries everything needed to run a service on any runtime, and a config hash
over the parts that require new instances when they change (replicas can change live).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from devenv import data as kinds
from devenv.config import injected
from devenv.config.graph import select
from devenv.config.injected import HOST, var_prefix
from devenv.config.load import Loaded
from devenv.config.model import HealthCheck, MonitoringConfig, Route, Service, Watch
from devenv.core.secrets import looks_secret
from devenv.data.base import DataService
from devenv.devservers import reloads_itself
from devenv.runtime import DEFAULT as DEFAULT_RUNTIME
from devenv.runtime.base import Container, InstanceSpec


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
    drain_timeout: float = 2.0
    run_timeout: float = 300.0
    watch_note: str = ""  # why watching is what it is: "vite reloads itself"
    job: bool = False  # a one-shot (Service.job): running, then completed or failed
    metrics_path: str | None = None  # where its instances serve Prometheus metrics
    restart_with: tuple[str, ...] = ()  # of depends_on, those with `restart: true`
    runtime: str = DEFAULT_RUNTIME
    container: Container | None = None  # run as a container (runtime docker)
    config_hash: str = field(default="", compare=False)

    @property
    def watch_mode(self) -> str:
        """How file changes reload it, as `status` shows it."""
        if not self.watch.enabled:
            return "off" + (f" ({self.watch_note})" if self.watch_note else "")
        return self.watch.action + (f" ({self.watch_note})" if self.watch_note else "")

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
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)


def url_var(name: str) -> str:
    """The variable a dependent gets a service's URL in: `order-db` → ORDER_DB_URL."""
    return var_prefix(name) + "_URL"


def command_argv(command: str | list[str]) -> tuple[str, ...]:
    return ("/bin/sh", "-c", command) if isinstance(command, str) else tuple(command)


def data_service(loaded: Loaded, name: str) -> DataService[Any]:
    return injected.data_service(loaded.project, loaded.root, name)


def service_plan(loaded: Loaded, name: str) -> ServicePlan:
    """The service's environment: its env files, then its `env`, then (only where neither
    set a variable: the user's value wins) what devenv injects for its dependencies."""
    svc: Service = loaded.project.services[name]
    env = {k: v.value for k, v in loaded.env_files.get(name, {}).items()}
    env.update(svc.env)
    env["DEVENV_SERVICE"] = name
    for var, given in injected.dependency_env(loaded.project, loaded.root, name).items():
        env.setdefault(var, given.value)
    data = None
    box: dict[str, Any] = {}
    command = command_argv(svc.command) if svc.command is not None else ()
    health, watch = svc.health, svc.watch
    stop_signal: str = svc.stop_signal
    if svc.is_data:
        data = data_service(loaded, name)
        if loaded.project.runtime == "kubernetes":  # its one server: the cluster's StatefulSet
            data = replace(data, cluster=True, project=str(loaded.root))
            box = {"runtime": "kubernetes"}
        server = kinds.server(data)
        command, health, stop_signal = server.command, server.health, server.stop_signal
        env.update(server.env)
        watch = Watch(enabled=False)
        if data.in_container:  # on the docker runtime: its image, user and data volume
            assert data.volume is not None and server.mount is not None
            box = {"runtime": loaded.project.runtime, "container": Container(
                image=server.image, alias=name, port=svc.port, user=server.user,
                volumes=((data.volume, server.mount),))}
    watch, watch_note = _resolve_watch(watch, svc, loaded.root, env)
    if not box:
        box = _container(loaded, name)
        # (asked for: `auto` never copies project files into an image it knows nothing of)
        copy_in = watch.enabled and svc.watch.action in ("restart", "replace")
        if box and box["container"].build_context is None and copy_in:
            box["container"] = replace(box["container"], copy_in=True)
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
        drain_timeout=svc.drain_timeout,
        run_timeout=svc.run_timeout,
        watch_note=watch_note,
        job=svc.job,
        metrics_path=svc.metrics.path if svc.metrics else None,
        **box,
    )
    fingerprint = asdict(plan)
    for live in LIVE_FIELDS:  # changed on running instances, no new ones needed
        fingerprint.pop(live)
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode())
    return replace(plan, config_hash=digest.hexdigest()[:16])


def _container(loaded: Loaded, name: str) -> dict[str, Any]:
    """A service run as a container: its runtime and what it runs from."""
    if not loaded.project.in_container(name):
        return {}
    svc = loaded.project.services[name]
    build = svc.build
    return {"runtime": loaded.project.runtime, "container": Container(
        image=svc.image, alias=name, port=svc.port,
        build_context=build.context if build else None,
        dockerfile=build.dockerfile if build else None)}


LIVE_FIELDS = ("replicas", "watch", "watch_note", "drain_timeout", "run_timeout",
               "restart_with", "metrics_path")


def _resolve_watch(watch: Watch, svc: Service, root: Path,
                   env: dict[str, str]) -> tuple[Watch, str]:
    """Watch settings made concrete: on unless turned off (one-shot jobs: off unless turned
    on); `auto` is none for a dev server that reloads itself, else replace."""
    note = ""
    enabled = watch.enabled
    if enabled is None:
        enabled = not svc.job and not svc.is_data
        note = "one-shot job" if svc.job else ""
    action = watch.action
    if action == "auto":
        tool = reloads_itself(svc.command, root / svc.path, env) if enabled else None
        action = "none" if tool else "replace"
        note = f"{tool} reloads itself" if tool else note
    return replace(watch, enabled=enabled, action=action), note


def exec_spec(plan: ServicePlan) -> InstanceSpec:
    """How `devenv exec SERVICE` runs: the service's environment and folder, plus
    SERVICE_URL, its own stable address (a data service's: its clients' URL and variables,
    e.g. postgresql://… and PGHOST…)."""
    env = dict(plan.env)
    if plan.data:  # its clients' variables (psql with no arguments), its real URL
        env.update(kinds.client_env(plan.data))
        env["SERVICE_URL"] = kinds.url(plan.data)
    elif plan.port:
        env["SERVICE_URL"] = f"http://{HOST}:{plan.port}"
    return InstanceSpec(service=plan.name, replica=0, command=(), env=env,
                        workdir=plan.workdir, wants_port=False, container=plan.container)


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
        monitoring=loaded.project.monitoring,
    )
