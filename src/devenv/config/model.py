"""The typed model of devenv.yaml. Pure data: no I/O, no imports from higher layers.

Every key is declared here once, with its type, default and description; loading, validation,
the JSON Schema (`devenv config schema`) and generated docs all come from these declarations.
A data service's own keys (databases, password, …) are declared by its kind, in the kind's
`Settings` (devenv.data), and written flat on the service.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from devenv.config.schema import Duration, Names, Variants, key

Command = str | list[str]
CURRENT_VERSION = 2  # older files are read through config/migrate.py
MAX_REPLICAS = 100

SERVICE_NAMES = Names(
    r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
    "service names are up to 63 lower-case letters, digits and '-', starting and ending with "
    "a letter or digit (each becomes the host <name>.localhost and names files)",
    max_length=63,
)
ENV_NAMES = Names(
    r"^[A-Za-z_][A-Za-z0-9_]*$",
    "environment variable names are letters, digits and '_', not starting with a digit",
)


@dataclass(frozen=True)
class HealthCheck:
    """How devenv decides a replica is ready to take traffic. Give one of http, tcp, command."""

    http: str | None = key(
        None, doc="Path probed with GET on the replica's port; any 2xx or 3xx answer is healthy."
    )
    tcp: bool = key(False, doc="Healthy when the replica's port accepts a TCP connection.")
    command: Command | None = key(
        None, doc="Command run in the service's environment and folder; exit code 0 is healthy."
    )
    interval: Duration = key(
        Duration(5.0), doc="Time between checks once healthy (starting replicas are probed fast)."
    )
    timeout: Duration = key(Duration(2.0), doc="How long one check may take before it fails.")
    retries: int = key(3, minimum=1,
                       doc="Consecutive failed checks that make a healthy replica unhealthy.")
    start_period: Duration = key(
        Duration(60.0),
        doc="How long a new replica may take to pass its first check; failures before then "
        "are expected. After it, the start has failed.",
    )


@dataclass(frozen=True)
class Dependency:
    """What a service waits for before it starts."""

    condition: Literal["started", "healthy", "completed"] = key(
        "healthy",
        doc="started: the dependency's process is running; healthy: it passes its health "
        "check; completed: it ran to exit code 0 (for one-off jobs such as migrations).",
    )

    database: str | None = key(
        None, doc="For a data service with several databases: the one its URL (DATABASE_URL, "
        "<SERVICE>_URL) names; default: its first.",
    )

    restart: bool = key(
        False, doc="Roll this service (new instances, no downtime) once the dependency is "
        "healthy again after it restarted, crashed and came back, or had its data restored, "
        "reset or put back (snapshot restore, data reset/restore/load): connections it "
        "opened to the old process are gone. Transitive, in dependency order.",
    )

    SHORTHAND_SCHEMA = {"enum": ["started", "healthy", "completed"]}

    @classmethod
    def expand(cls, value: Any) -> Any:
        return {"condition": value} if isinstance(value, str) else value


@dataclass(frozen=True)
class Route:
    """How the local ingress reaches this service, besides `<service>.localhost`."""

    host: str | None = key(None, doc="Extra host name routed to this service, e.g. shop.localhost.")
    path: str | None = key(None, doc="Path prefix routed to this service on any host, e.g. /api.")
    strip_prefix: bool = key(False, doc="Remove the path prefix before forwarding.")

    SHORTHAND_SCHEMA = {"type": "boolean"}

    @classmethod
    def expand(cls, value: Any) -> Any:
        return {} if value is True else value


@dataclass(frozen=True)
class Watch:
    """Which files reload the service when they change (`watch: false` turns it off)."""

    enabled: bool | None = key(
        None, doc="Reload the service when its files change. Default: on, except for one-shot "
        "jobs (restart: no, no port), which rerun on a change only when on.",
    )
    paths: list[str] = key(
        factory=list, doc="Paths watched, relative to the project; default: the service's path."
    )
    ignore: list[str] = key(
        factory=list, doc="Glob patterns ignored, on top of .gitignore and the usual junk."
    )
    action: Literal["auto", "replace", "restart", "rebuild", "none"] = key(
        "auto",
        doc="replace: start a new instance, switch when healthy, drain the old one; restart: "
        "stop then start; rebuild: run `build` first, then replace; none: the service reloads "
        "itself; auto: none for a dev server known to reload itself (vite, next dev, nodemon, "
        "uvicorn --reload, ...), else replace.",
    )
    build: Command | None = key(None, doc="Build command run before a rebuild.")

    SHORTHAND_SCHEMA = {"type": "boolean"}

    @classmethod
    def expand(cls, value: Any) -> Any:
        return {"enabled": value} if isinstance(value, bool) else value


@dataclass(frozen=True)
class Debug:
    """How `devenv debug` runs the service under its language's debugger."""

    language: Literal["python", "node"] | None = key(
        None, doc="python (debugpy) or node (its inspector). Default: told from the command "
        "(python, uvicorn, gunicorn, flask, fastapi, node, npm/npx running node); declare it "
        "when the command runs a script or program devenv cannot tell.")
    port: int | None = key(
        None, minimum=1, maximum=65535,
        doc="Where the debugger listens, on 127.0.0.1. Default: a port picked once per "
        "service from 9230-9729 and kept in .devenv/debug-ports.json.")


@dataclass(frozen=True)
class ServiceMetrics:
    """Where a service serves Prometheus metrics."""

    path: str = key("/metrics", doc="HTTP path on each instance's port.")


RUNTIME_NAMES = ("local", "docker", "kubernetes")  # runtime.RUNTIMES' names (config is below)
RuntimeName = Literal["local", "docker", "kubernetes"]
KUBERNETES_VERSION = "1.31"  # the default `kubernetes.version`


def kubernetes_versions() -> list[str]:
    """The Kubernetes versions (major.minor) whose OpenAPI schemas kubernetes-validate ships:
    the versions a manifest can be checked against, so the ones `kubernetes.version` may
    name. Read from the package's folder without importing it (config is read at every
    start); empty when it is not installed."""
    import importlib.util
    import re
    from pathlib import Path

    spec = importlib.util.find_spec("kubernetes_validate")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(next(iter(spec.submodule_search_locations))) / "kubernetes-json-schema"
    found = {m.group(1) for d in folder.glob("v*") if (m := re.match(r"v(\d+\.\d+)", d.name))}
    return sorted(found, key=lambda v: tuple(int(x) for x in v.split(".")))


def _version_text(value: Any, known: list[str]) -> Any:
    """A version as written: YAML reads 1.28 as a number, and 1.30 as 1.3 (no Kubernetes
    1.3 has schemas, so it is read as 1.30)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        text = str(value)
        return text + "0" if text not in known and text + "0" in known else text
    return value


@dataclass(frozen=True)
class Kubernetes:
    """The Kubernetes version the project targets (`kubernetes: "1.31"` for short)."""

    version: str = key(
        KUBERNETES_VERSION,
        doc="major.minor, e.g. \"1.31\": what `devenv render` validates manifests against, "
        "the version a k3d cluster runs (changing it recreates the cluster on the next `up`), "
        "and the default target of `devenv render --check-deprecations`. One of the versions "
        "kubernetes-validate ships schemas for (1.25 and later).")

    SHORTHAND_SCHEMA = {"type": ["string", "number"]}

    @classmethod
    def expand(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            value = {"version": value}
        if "version" in value:
            value = {**value, "version": _version_text(value["version"], kubernetes_versions())}
        return value

    def problems(self) -> list[tuple[tuple[str, ...], str]]:
        known = kubernetes_versions()
        if known and self.minor not in known:
            return [(("version",), f"Kubernetes {self.version!r} has no schemas to check "
                     f"manifests against; give one of {', '.join(known)} (quoted: \"1.30\"; "
                     "a patch release such as \"1.31.4\" is allowed too)")]
        return []

    @property
    def minor(self) -> str:
        """major.minor of the version ("1.31" of "1.31.4" or "v1.31")."""
        return ".".join(self.version.removeprefix("v").split(".")[:2])


@dataclass(frozen=True)
class Cluster:
    """The Kubernetes cluster of `runtime: kubernetes`: one devenv makes with k3d, or one
    that exists (a kubeconfig context)."""

    provider: Literal["k3d", "existing"] = key(
        "k3d", doc="k3d: devenv creates (or reuses) a local k3s cluster through the k3d CLI, "
        "at `kubernetes.version`; existing: a cluster your kubeconfig reaches (`context`).")
    name: str | None = key(
        None, doc="k3d: the cluster's name; default: devenv-<project>.")
    context: str | None = key(
        None, doc="existing: the kubeconfig context to use; default: the current one.")
    namespace: str | None = key(
        None, doc="The namespace the project's objects go in; default: the project's name.")


@dataclass(frozen=True)
class ServiceKubernetes:
    """A service's own Kubernetes manifests, applied (and checked) with the rendered ones."""

    manifests: list[str] = key(
        factory=list, doc="YAML files (several documents each allowed), relative to the "
        "project, e.g. [k8s/hpa.yaml]; `devenv render` adds them to the service's file and "
        "`--check-deprecations` checks them too.")


@dataclass(frozen=True)
class Build:
    """How the docker runtime builds the service's image (`build: ./api` for the defaults)."""

    context: str = key(".", doc="The build context, relative to the project.")
    dockerfile: str | None = key(
        None, doc="The Dockerfile, relative to the context; default: its Dockerfile.")

    SHORTHAND_SCHEMA = {"type": "string"}

    @classmethod
    def expand(cls, value: Any) -> Any:
        return {"context": value} if isinstance(value, str) else value


def _kind_names() -> list[str]:
    # config sits below data in the layers: looking up the registry's kind names and a kind's
    # pure-data Settings class here, lazily, is the one accepted exception.
    from devenv.data import kind_names

    return ["process", *kind_names()]


def _kind_settings(kind: str) -> type | None:
    if kind == "process":
        return None
    from devenv.data import settings_class  # (see _kind_names)

    return settings_class(kind)


@dataclass(frozen=True)
class Service:
    """One service of the project, run as supervised processes (or pods on a cluster)."""

    kind: str = key(
        "process",
        doc="process: run `command`; any other kind is a real data server run by devenv, with "
        "its data under .devenv/data/<service> and its own keys written beside these.",
    )
    command: Command | None = key(
        None,
        doc="What to run (required for kind process). A string runs through /bin/sh; a list "
        "runs as-is. It must listen on $PORT when the service has a port.",
    )
    path: str = key(
        ".", doc="Working folder, relative to the project (`cwd` before version 2).")
    image: str | None = key(
        None, doc="On the docker runtime: the image its containers run (`command`, when given, "
        "replaces the image's own). On the local runtime `command` runs instead. A data "
        "service's (postgres, redis) default is the official image (postgres:16, redis:7); "
        "another must follow its conventions (the same binaries on the PATH, the same "
        "users and data folder).")
    build: Build | None = key(
        None, doc="On the docker runtime: build the image from a Dockerfile (context, "
        "dockerfile) instead of using `image`. (Not `watch.build`, a command run before a "
        "rebuild.)")
    port: int | None = key(
        None, minimum=1, maximum=65535,
        doc="The service's stable address on 127.0.0.1. Replicas listen on their own $PORT "
        "behind it; callers and the ingress always dial this one.",
    )
    env: dict[str, str] = key(factory=dict, names=ENV_NAMES,
                              doc="Environment variables; ${VAR} is interpolated.")
    env_file: list[str] = key(factory=list, doc="Files of KEY=VALUE lines loaded before `env`.")
    depends_on: dict[str, Dependency] = key(
        factory=dict,
        doc="Services started first. A list means condition healthy for each; a mapping gives "
        "each its condition.",
    )
    health: HealthCheck | None = key(
        None, doc="Readiness check. Default: TCP on the port when there is one, else started."
    )
    replicas: int = key(1, minimum=0, maximum=MAX_REPLICAS,
                        doc="How many instances run behind the service's address (0: none "
                        "for now).")
    ingress: Route | None = key(
        None, doc="Extra ingress routes (host or path prefix); `true` for the defaults."
    )
    restart: Literal["always", "on-failure", "no"] = key(
        "always", doc="Restart policy when the process exits; restarts back off exponentially."
    )
    watch: Watch = key(factory=Watch, doc="Hot reload settings; `false` turns watching off.")
    stop_signal: Literal["TERM", "INT", "QUIT", "HUP"] = key(
        "TERM", doc="Signal that asks the service to stop; KILL follows after stop_timeout."
    )
    stop_timeout: Duration = key(
        Duration(10.0), doc="Grace time before the stop escalates to KILL."
    )
    drain_timeout: Duration = key(
        Duration(2.0), minimum=0, maximum=600,
        doc="How long a replaced or scaled-away instance keeps connections that are open but "
        "idle (keep-alive, websockets such as a dev server's HMR socket) before it is stopped. "
        "A request still being answered gets up to 10s.",
    )
    run_timeout: Duration = key(
        Duration(300.0), minimum=1,
        doc="For a one-shot job (restart: no, no port): how long one run may take "
        "before it is stopped and counts as failed; `up` and its dependents wait at most this.",
    )
    metrics: ServiceMetrics | None = key(
        None, doc="Prometheus metrics the service serves itself: the engine scrapes each "
        "instance and re-exposes its series with `service` and `instance` labels.",
    )
    debug: Debug = key(factory=Debug, doc="How `devenv debug` runs it under a debugger.")
    kubernetes: ServiceKubernetes = key(
        factory=ServiceKubernetes, doc="On Kubernetes: the service's own manifests.")
    description: str = key("", doc="What the service is for; shown in generated docs.")
    test: Command | None = key(
        None, doc="The service's contract or smoke tests: a command run in its environment "
        "and folder (as `devenv exec` runs, with SERVICE_URL) by `devenv validate`; exit code "
        "0 passes. Bounded by run_timeout.")
    settings: Any = key(
        None, doc="The kind's own keys, read with its Settings (not a key: they sit flat on "
        "the service).",
    )

    FIELD_SHORTHANDS = {"depends_on": {"type": "array", "items": {"type": "string"}}}
    VARIANTS = Variants("kind", "settings", names=_kind_names, resolve=_kind_settings,
                        owner="this service")

    @property
    def is_data(self) -> bool:
        return self.kind != "process"

    @property
    def containerized(self) -> bool:
        """It can run as a container (it has an `image:` or a `build:`)."""
        return self.image is not None or self.build is not None

    @property
    def job(self) -> bool:
        """A one-shot job (a migration, a build): `restart: "no"` and nothing to serve. It is
        running, then completed or failed, never healthy; `on-failure` services stay servers."""
        return self.restart == "no" and self.port is None and not self.is_data

    def targets(self, name: str) -> list[str]:
        """What a dependency's `database` or a dataset's `service/target` may name (a data
        service's databases; the first is its default). Empty: nothing to choose."""
        return list(self.settings.targets(name)) if self.settings is not None else []

    def problems(self) -> list[tuple[tuple[str, ...], str]]:
        """Rules between keys of one service, checked as it is read."""
        if self.kind == "process":
            if self.command is None and not self.containerized:
                return [((), "missing required key 'command'")]
            return []
        found: list[tuple[tuple[str, ...], str]] = []
        for which in ("build",):
            if getattr(self, which) is not None:
                found.append(((which,), f"a {self.kind} service is run by devenv; remove "
                              f"`{which}`"))
        if self.command is not None:
            found.append((("command",), f"a {self.kind} service is run by devenv; remove "
                          "`command` (or use kind: process)"))
        if self.replicas != 1:
            found.append((("replicas",), f"a {self.kind} service runs exactly one replica"))
        if self.port is None:
            found.append(((), f"a {self.kind} service needs a `port:` (its stable address)"))
        return found

    @classmethod
    def expand(cls, value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("depends_on"), list):
            value = {**value, "depends_on": {str(d): {} for d in value["depends_on"]}}
        return value


@dataclass(frozen=True)
class Profile:
    """A named variant of the environment: which services, and what to change in them."""

    description: str = key("", doc="What the profile is for.")
    services: list[str] = key(
        factory=list, doc="Services started by the profile (plus their dependencies); empty: all."
    )
    env: dict[str, str] = key(factory=dict, names=ENV_NAMES,
                              doc="Environment added to every service.")
    overrides: dict[str, Any] = key(
        factory=dict,
        doc="Per-service keys merged over the service's own, e.g. {api: {replicas: 3}}.",
    )
    datasets: list[str] = key(
        factory=list, doc="Datasets loaded when `up` creates the data services' data afresh."
    )
    runtime: RuntimeName | None = key(
        None, doc="The runtime under this profile (see the top-level `runtime`).")


@dataclass(frozen=True)
class Dataset:
    """Named data to load into the data services: files per service, and/or a script."""

    description: str = key("", doc="What the data is for.")
    files: dict[str, list[str]] = key(
        factory=dict,
        doc="Files per data service, in its kind's format: `db: [schema.sql, rows.sql]` (SQL, "
        "into its first database; `db/orders:` names another database), `cache: [keys.redis]` "
        "(one Redis command per line).",
    )
    script: Command | None = key(
        None, doc="A command run after the files, with every data service's URL in its "
        "environment (DATABASE_URL, REDIS_URL, <SERVICE>_URL).",
    )


@dataclass(frozen=True)
class IngressConfig:
    """The one local HTTP entry point, routing by host and path prefix."""

    enabled: bool = key(True, doc="Run the local ingress.")
    port: int = key(7700, minimum=1, maximum=65535, doc="Port of the ingress on 127.0.0.1.")
    hold_timeout: Duration = key(
        Duration(15.0),
        doc="How long a request waits for a restarting service before it is answered 503.",
    )


@dataclass(frozen=True)
class SnapshotConfig:
    """Where snapshots go and how many automatic ones are kept."""

    keep_automatic: int = key(
        3, minimum=1, doc="Automatic snapshots (taken by `stop` before discarding data) kept; "
        "older ones are deleted. At least 1: `stop` never discards data without one."
    )


@dataclass(frozen=True)
class MonitoringConfig:
    """The engine's telemetry address on 127.0.0.1: an OTLP/HTTP receiver, Prometheus
    metrics and the dashboard."""

    port: int | None = key(
        None, minimum=1, maximum=65535,
        doc="Its port; default: one picked on the first start and kept in .devenv/run.",
    )
    trace_max_mb: int = key(64, minimum=1, maximum=10_000,
                            doc="Traces kept under .devenv/traces, at most this many MiB.")
    trace_max_age: Duration = key(Duration(24 * 3600.0), minimum=60,
                                  doc="Traces older than this are dropped.")
    scrape_interval: Duration = key(Duration(5.0), minimum=1, maximum=3600,
                                    doc="How often services' own /metrics are scraped.")
    trace_rate: int | None = key(
        200, minimum=1, maximum=1_000_000,
        doc="New traces the ingress records a second, at most (head sampling, passed on in "
        "the traceparent so instrumented services follow it); requests over it are counted "
        "in the metrics but not traced, failures always are. null: trace every request.")


@dataclass(frozen=True)
class Registry:
    """The image registry `devenv publish` pushes a container service's image to (the docker
    runtime), and teammates pull it from; on the kubernetes runtime with `cluster.provider:
    existing`, where the images of `build:` services are pushed for the cluster to pull."""

    url: str | None = key(
        None, doc="host[:port] of the registry (no scheme), e.g. 127.0.0.1:5000 or "
        "registry.example.com. The Docker Engine must trust it: HTTPS, or listed in its "
        "insecure-registries (loopback addresses, 127.0.0.0/8, are trusted by default).")
    namespace: str | None = key(
        None, doc="The repository path under the registry; images are "
        "<url>/<namespace>/<service>. Default: the project's name.")


@dataclass(frozen=True)
class Project:
    """devenv.yaml: the services of a project, declared once, run on any runtime."""

    version: int = key(doc="Schema version of this file: 2 (a file of version 1 is still "
                       "read; `devenv migrate --confirm` rewrites it).")
    name: str | None = key(None, doc="Project name; default: the folder's name.")
    services: dict[str, Service] = key(factory=dict, names=SERVICE_NAMES,
                                       doc="The services, by name.")
    profiles: dict[str, Profile] = key(factory=dict, doc="Named variants, for `up --profile`.")
    ingress: IngressConfig = key(factory=IngressConfig, doc="The local ingress.")
    datasets: dict[str, Dataset] = key(
        factory=dict, doc="Named datasets, for `devenv data load --dataset NAME`."
    )
    snapshots: SnapshotConfig = key(factory=lambda: SnapshotConfig(), doc="Snapshot settings.")
    monitoring: MonitoringConfig = key(factory=lambda: MonitoringConfig(),
                                       doc="Traces, metrics and the dashboard.")
    runtime: RuntimeName = key(
        "local", doc="Where services run. local: processes on this machine. docker: services "
        "with `image:` or `build:`, and data services, run as containers on one network for "
        "the project (the others stay local). kubernetes: manifests on a cluster "
        "(`cluster:`; see `devenv render`). `up --runtime` or $DEVENV_RUNTIME chooses for "
        "one `up`.")
    cluster: Cluster = key(factory=lambda: Cluster(),
                           doc="The cluster of the kubernetes runtime.")
    registry: Registry = key(
        factory=lambda: Registry(), doc="Where `devenv publish` pushes images of services "
        "that run as containers on the docker runtime (`registry: {url: 127.0.0.1:5000}`), "
        "and, on an existing Kubernetes cluster, where the images of `build:` services are "
        "pushed for it to pull.")
    kubernetes: Kubernetes = key(
        factory=lambda: Kubernetes(), doc="The Kubernetes version targeted (`kubernetes: "
        "\"1.31\"` for short; `devenv config set kubernetes.version 1.28` pins it).")

    def in_container(self, name: str) -> bool:
        """Whether service `name` runs as a container under this project's runtime."""
        svc = self.services[name]
        if self.runtime == "docker":
            return svc.containerized or svc.is_data
        # (on kubernetes a data service is a StatefulSet in the cluster and, for devenv's data
        # commands, a local server)
        return self.runtime == "kubernetes" and svc.containerized and not svc.is_data
