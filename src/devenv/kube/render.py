"""The project as Kubernetes manifests: pure, deterministic (same plan, same bytes).

Each service becomes plain manifest dicts:
- a process service: a Deployment (or a Job for a one-shot job), a Service for its port, a
  ConfigMap of its environment and, only when it has secret values, a Secret that the
  container reads by `secretKeyRef`; an Ingress for Traefik (k3s' ingress controller) with
  the routes the local ingress has (`<svc>.localhost`, declared hosts, path prefixes; a
  stripped prefix through a Traefik Middleware);
- a data service (postgres, redis): a StatefulSet of the public image (`postgres:16`,
  `redis:7`) with a PersistentVolumeClaim, a headless Service for it and a Service on the
  declared port; its users, passwords and databases from its keys (passwords in a Secret).

In the cluster a dependency is reached by its Service's name, so the variables devenv injects
for dependencies (DATABASE_URL, FOO_URL, FOO_HOST, PGHOST, ...) name it instead of 127.0.0.1.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devenv.config.injected import HOST, dependency_env
from devenv.config.load import Loaded
from devenv.config.model import HealthCheck, Service
from devenv.core.errors import DevenvError, UsageError
from devenv.core.secrets import looks_secret
from devenv.plan import Plan, ServicePlan
from devenv.runtime.base import exec_one_program

Manifest = dict[str, Any]
MANAGED_BY = "devenv"
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"  # the project
PART_OF_LABEL = "app.kubernetes.io/part-of"
MANAGED_LABEL = "app.kubernetes.io/managed-by"
COMPONENT_LABEL = "app.kubernetes.io/component"
INGRESS_CLASS = "traefik"
DATA_IMAGES = {"postgres": "postgres:16", "redis": "redis:7"}
DATA_PORTS = {"postgres": 5432, "redis": 6379}
STORAGE = "1Gi"
NAMESPACE_FILE = "_namespace"  # not a service name (those never start with '_')


@dataclass(frozen=True)
class Supplied:
    """A manifest a service brings itself (`kubernetes.manifests`), and where it was written."""

    file: str  # relative to the project
    line: int  # 1-based line of the document's first key
    manifest: Manifest


@dataclass
class Rendered:
    """The manifests of one service: rendered, then the service's own."""

    service: str
    manifests: list[Manifest]
    supplied: list[Supplied] = field(default_factory=list)

    def all(self) -> list[Manifest]:
        return self.manifests + [s.manifest for s in self.supplied]


def slug(text: str) -> str:
    """A DNS label from any name: lower-case letters, digits and '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:63].strip("-") or "project"


def namespace(loaded: Loaded) -> str:
    return loaded.project.cluster.namespace or slug(loaded.name)


def built_image(project: str, service: str) -> str:
    """The tag devenv builds a service's image under (and imports into the k3d cluster)."""
    return f"devenv.local/{slug(project)}-{service}:dev"


def image_of(project: str, name: str, svc: Service) -> tuple[str, str | None]:
    """The image a process service runs, and the build context when devenv builds it: its
    `image:`, else built from `build:`, else from its folder (it must hold a Dockerfile)."""
    if svc.image is not None and svc.build is None:
        return svc.image, None
    context = svc.build.context if svc.build is not None else svc.path
    return built_image(project, name), context


# ---- images devenv builds, pushed to a registry (`cluster.provider: existing`)

TAG_HEX = 16  # hex digits of the content digest in a pushed image's tag


def pushes(loaded: Loaded) -> bool:
    """Whether images devenv builds reach the cluster through `registry:` (a cluster that
    exists), not `k3d image import`."""
    return loaded.project.cluster.provider != "k3d"


def unpushable(loaded: Loaded) -> list[str]:
    """The services devenv would build for a cluster that exists while no registry is set."""
    if not pushes(loaded) or loaded.project.registry.url is not None:
        return []
    return [n for n, svc in loaded.project.services.items()
            if not svc.is_data and svc.build is not None]


def check_registry(loaded: Loaded, services: list[str]) -> None:
    """`up` on a cluster that exists: refused (exit 2) when one of `services` is built by
    devenv and no registry is set to push it to."""
    if loaded.project.runtime == "kubernetes":
        missing = [n for n in unpushable(loaded) if n in services]
        if missing:
            raise no_registry(missing[0])


def no_registry(service: str) -> UsageError:
    return UsageError(
        f"{service}: devenv builds its image, and a cluster that exists (cluster.provider: "
        "existing) pulls it only from a registry: none is set",
        hint="set one your cluster pulls from: `registry: {url: \"registry.example.com:5000\"}` "
        "in devenv.yaml (a login: `docker login` first), or give services."
        f"{service} an `image:` your cluster can pull, or use cluster.provider: k3d (the "
        "image is imported into it)")


def repository(loaded: Loaded, service: str) -> str:
    """`<registry.url>/<registry.namespace>/<project>-<service>`, where a built image is
    pushed; a UsageError when no registry is set (a ConfigError naming the key when it is
    not usable)."""
    from devenv.teams import images

    if loaded.project.registry.url is None:
        raise no_registry(service)
    return images.repository(loaded, f"{slug(loaded.name)}-{service}")


def content_tag(context: Path, dockerfile: str | None = None) -> str:
    """An immutable tag for what a build is made of: a digest of every file's path (relative
    to the context) and bytes, and the Dockerfile's name; the same files, the same tag."""
    import hashlib
    import os

    from devenv.runtime.docker import build_files

    digest = hashlib.sha256(f"dockerfile={dockerfile or 'Dockerfile'}\n".encode())
    for path in build_files(context):
        try:
            with open(path, "rb") as handle:
                body = hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError:
            continue
        digest.update(f"{os.path.relpath(path, context)}\0{body}\n".encode())
    return digest.hexdigest()[:TAG_HEX]


def pushed_image(loaded: Loaded, service: str, context: str,
                 dockerfile: str | None = None) -> str:
    """The reference a built image is pushed under: `<repository>:<content digest>`."""
    return f"{repository(loaded, service)}:{content_tag(loaded.root / context, dockerfile)}"


def labels(project: str, service: str) -> dict[str, str]:
    return {NAME_LABEL: service, INSTANCE_LABEL: slug(project), PART_OF_LABEL: slug(project),
            MANAGED_LABEL: MANAGED_BY}


def selector(project: str, service: str) -> dict[str, str]:
    return {NAME_LABEL: service, INSTANCE_LABEL: slug(project)}


def project_selector(project: str) -> str:
    """The label selector of everything devenv made for the project."""
    return f"{INSTANCE_LABEL}={slug(project)},{MANAGED_LABEL}={MANAGED_BY}"


def _meta(name: str, ns: str, project: str, service: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": ns, "labels": labels(project, service), **extra}


# ---- the environment


def cluster_env(loaded: Loaded, plan: ServicePlan) -> dict[str, str]:
    """The service's environment as it runs in the cluster: a variable devenv injected for a
    dependency (and the user did not replace) names the dependency's Service, not 127.0.0.1;
    devenv's own bookkeeping variables are left out; PORT is the declared port."""
    env = dict(plan.env)
    for var, given in dependency_env(loaded.project, loaded.root, plan.name).items():
        if env.get(var) == given.value:
            env[var] = given.value.replace(HOST, given.dependency)
    if plan.port is not None and plan.data is None:
        env["PORT"] = str(plan.port)
    return dict(sorted(env.items()))


def split_secrets(env: dict[str, str], secrets: list[str]) -> tuple[dict[str, str],
                                                                       dict[str, str]]:
    """(plain, secret): a variable is secret when its name says so or its value holds a
    secret value of the plan (a data service's password inside a URL)."""
    plain: dict[str, str] = {}
    hidden: dict[str, str] = {}
    for k, v in env.items():
        secret = looks_secret(k) or any(s and s in v for s in secrets)
        (hidden if secret and v else plain)[k] = v
    return plain, hidden


def _env_refs(name: str, plain: dict[str, str], hidden: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if plain:
        out["envFrom"] = [{"configMapRef": {"name": f"{name}-env"}}]
    if hidden:
        out["env"] = [{"name": k, "valueFrom": {"secretKeyRef": {"name": f"{name}-env",
                                                                  "key": k}}}
                      for k in sorted(hidden)]
    return out


def _env_objects(name: str, ns: str, project: str, plain: dict[str, str],
                 hidden: dict[str, str]) -> list[Manifest]:
    found: list[Manifest] = []
    if plain:
        found.append({"apiVersion": "v1", "kind": "ConfigMap",
                      "metadata": _meta(f"{name}-env", ns, project, name),
                      "data": dict(sorted(plain.items()))})
    if hidden:
        found.append({"apiVersion": "v1", "kind": "Secret",
                      "metadata": _meta(f"{name}-env", ns, project, name),
                      "type": "Opaque", "stringData": dict(sorted(hidden.items()))})
    return found


# ---- probes


def _seconds(value: float) -> int:
    return max(1, math.ceil(value))


def probes(health: HealthCheck | None, port: int | None) -> dict[str, Any]:
    """Readiness and liveness from the health check (default: TCP on the port), and a
    startup probe that allows `start_period` for the first success."""
    health = health or (HealthCheck(tcp=True) if port is not None else None)
    if health is None:
        return {}
    if health.http is not None and port is not None:
        how: dict[str, Any] = {"httpGet": {"path": health.http, "port": port}}
    elif health.command is not None:
        argv = (["/bin/sh", "-c", health.command] if isinstance(health.command, str)
                else [str(a) for a in health.command])
        how = {"exec": {"command": argv}}
    elif port is not None:
        how = {"tcpSocket": {"port": port}}
    else:
        return {}
    timing = {"periodSeconds": _seconds(health.interval),
              "timeoutSeconds": _seconds(health.timeout),
              "failureThreshold": health.retries}
    return {
        "startupProbe": {**how, "periodSeconds": 1, "timeoutSeconds": timing["timeoutSeconds"],
                         "failureThreshold": _seconds(health.start_period)},
        "readinessProbe": {**how, **timing},
        "livenessProbe": {**how, **timing},
    }


# ---- services


def _service(name: str, ns: str, project: str, port: int, target: int,
             headless: bool = False) -> Manifest:
    spec: dict[str, Any] = {"selector": selector(project, name),
                            "ports": [{"name": "main", "port": port, "targetPort": target,
                                       "protocol": "TCP"}]}
    if headless:
        spec["clusterIP"] = "None"
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _meta(f"{name}-headless" if headless else name, ns, project, name),
            "spec": spec}


def _process(loaded: Loaded, plan: ServicePlan, ns: str, pushed: str | None
             ) -> list[Manifest]:
    project, name = loaded.name, plan.name
    svc = loaded.project.services[name]
    image, context = image_of(project, name, svc)
    policy = "IfNotPresent" if context is None else "Never"  # (k3d: imported, never pulled)
    if context is not None and pushes(loaded) and loaded.project.registry.url is not None:
        image = pushed or pushed_image(loaded, name, context,
                                       svc.build.dockerfile if svc.build else None)
        policy = "IfNotPresent"  # (its tag is its content's: a new build, a new tag)
    plain, hidden = split_secrets(cluster_env(loaded, plan), plan.secrets())
    container: dict[str, Any] = {"name": name, "image": image, "imagePullPolicy": policy}
    if plan.command and (svc.command is not None):
        container["command"] = exec_one_program(
            [a.replace("${PORT}", str(plan.port or "")) for a in plan.command])
    container.update(_env_refs(name, plain, hidden))
    if plan.port is not None:
        container["ports"] = [{"name": "main", "containerPort": plan.port, "protocol": "TCP"}]
    if not plan.job:
        container.update(probes(plan.health, plan.port))
    pod: dict[str, Any] = {
        "metadata": {"labels": labels(project, name)},
        "spec": {"containers": [container],
                 "terminationGracePeriodSeconds": _seconds(plan.stop_timeout)},
    }
    annotations = {"devenv.dev/build-context": context} if context is not None else {}
    found = _env_objects(name, ns, project, plain, hidden)
    if plan.job:
        pod["spec"]["restartPolicy"] = "OnFailure" if plan.restart == "on-failure" else "Never"
        found.append({"apiVersion": "batch/v1", "kind": "Job",
                      "metadata": _meta(name, ns, project, name, annotations=annotations)
                      if annotations else _meta(name, ns, project, name),
                      "spec": {"backoffLimit": 0 if plan.restart == "no" else 6,
                               "activeDeadlineSeconds": _seconds(plan.run_timeout),
                               "template": pod}})
        return found
    deployment: Manifest = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta(name, ns, project, name, annotations=annotations)
        if annotations else _meta(name, ns, project, name),
        "spec": {"replicas": plan.replicas, "selector": {"matchLabels": selector(project, name)},
                 "strategy": {"type": "RollingUpdate",
                              "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                 "template": pod},
    }
    found.append(deployment)
    if plan.port is not None:
        found.append(_service(name, ns, project, plan.port, plan.port))
        found += ingress(loaded, plan, ns)
    return found


def _data(loaded: Loaded, plan: ServicePlan, ns: str) -> list[Manifest]:
    """A data service: the kind's public image, its keys as the image's variables."""
    assert plan.data is not None and plan.port is not None
    project, name, kind = loaded.name, plan.name, plan.data.kind
    if kind not in DATA_IMAGES:
        raise DevenvError(f"{name}: no Kubernetes recipe for data kind {kind!r}",
                          hint="render it yourself under services.<name>.kubernetes.manifests")
    s = plan.data.settings
    inner = DATA_PORTS[kind]
    container: dict[str, Any] = {"name": name, "image": DATA_IMAGES[kind],
                                 "ports": [{"name": "main", "containerPort": inner,
                                            "protocol": "TCP"}]}
    found: list[Manifest] = []
    mount = "/var/lib/postgresql/data" if kind == "postgres" else "/data"
    volumes: list[dict[str, Any]] = [{"name": "data", "mountPath": mount}]
    pod_volumes: list[dict[str, Any]] = []
    if kind == "postgres":
        databases = s.targets(name)
        plain = {"PGDATA": f"{mount}/pgdata", "POSTGRES_DB": databases[0],
                 "POSTGRES_USER": s.user}
        hidden = {"POSTGRES_PASSWORD": s.password}
        ready = ["pg_isready", "-U", s.user, "-d", databases[0]]
        health: dict[str, Any] = {"exec": {"command": ready}}
        init = _postgres_init(databases[1:], dict(s.users), s.user)
        if init:
            found.append({"apiVersion": "v1", "kind": "Secret",  # (role passwords)
                          "metadata": _meta(f"{name}-init", ns, project, name),
                          "type": "Opaque", "stringData": {"init.sql": init}})
            volumes.append({"name": "init", "mountPath": "/docker-entrypoint-initdb.d",
                            "readOnly": True})
            pod_volumes.append({"name": "init", "secret": {"secretName": f"{name}-init"}})
    else:
        plain, hidden = {}, ({"REDIS_PASSWORD": s.password} if s.password else {})
        container["args"] = ["--appendonly", "yes"] + (
            ["--requirepass", "$(REDIS_PASSWORD)"] if s.password else [])
        health = {"tcpSocket": {"port": inner}}
    found += _env_objects(name, ns, project, plain, hidden)
    container.update(_env_refs(name, plain, hidden))
    container["volumeMounts"] = volumes
    container["readinessProbe"] = {**health, "periodSeconds": 2, "failureThreshold": 3}
    container["livenessProbe"] = {**health, "periodSeconds": 10, "failureThreshold": 6}
    pod_spec: dict[str, Any] = {"containers": [container],
                                "terminationGracePeriodSeconds": _seconds(plan.stop_timeout)}
    if pod_volumes:
        pod_spec["volumes"] = pod_volumes
    found.append({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": _meta(name, ns, project, name),
        "spec": {"serviceName": f"{name}-headless", "replicas": 1,
                 "selector": {"matchLabels": selector(project, name)},
                 "template": {"metadata": {"labels": labels(project, name)}, "spec": pod_spec},
                 "volumeClaimTemplates": [{
                     "metadata": {"name": "data", "labels": labels(project, name)},
                     "spec": {"accessModes": ["ReadWriteOnce"],
                              "resources": {"requests": {"storage": STORAGE}}}}]},
    })
    found.append(_service(name, ns, project, inner, inner, headless=True))
    found.append(_service(name, ns, project, plan.port, inner))
    return found


def _postgres_init(databases: list[str], users: dict[str, str], owner: str) -> str:
    """SQL run by the image on its first start: the other databases and login roles."""
    def ident(text: str) -> str:
        return '"' + text.replace('"', '""') + '"'

    def literal(text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    lines = [f"CREATE DATABASE {ident(db)} OWNER {ident(owner)};" for db in databases]
    lines += [f"CREATE ROLE {ident(u)} LOGIN PASSWORD {literal(p)};" for u, p in
              sorted(users.items())]
    return "\n".join(lines) + ("\n" if lines else "")


# ---- ingress


def ingress(loaded: Loaded, plan: ServicePlan, ns: str) -> list[Manifest]:
    """The routes the local ingress has, for Traefik: `<svc>.localhost`, the declared host
    (with the declared path, else /), a declared path on any host; a stripped prefix by a
    Traefik Middleware (a CRD of k3s' Traefik)."""
    project, name, port = loaded.name, plan.name, plan.port
    route = plan.route
    backend = {"service": {"name": name, "port": {"number": port}}}

    def rule(host: str | None, path: str) -> dict[str, Any]:
        found: dict[str, Any] = {"http": {"paths": [{"path": path, "pathType": "Prefix",
                                                     "backend": backend}]}}
        return {"host": host, **found} if host else found

    rules = [rule(f"{name}.localhost", "/")]
    if route is not None and route.host:
        rules.append(rule(route.host, route.path or "/"))
    elif route is not None and route.path:
        rules.append(rule(None, route.path))
    metadata = _meta(name, ns, project, name)
    found: list[Manifest] = []
    if route is not None and route.path and route.strip_prefix:
        middleware = f"{name}-strip"
        found.append({"apiVersion": "traefik.io/v1alpha1", "kind": "Middleware",
                      "metadata": _meta(middleware, ns, project, name),
                      "spec": {"stripPrefix": {"prefixes": [route.path]}}})
        metadata["annotations"] = {"traefik.ingress.kubernetes.io/router.middlewares":
                                   f"{ns}-{middleware}@kubernetescrd"}
    found.insert(0, {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                     "metadata": metadata,
                     "spec": {"ingressClassName": INGRESS_CLASS, "rules": rules}})
    return found


# ---- the project


def render_service(loaded: Loaded, plan: ServicePlan, pushed: str | None = None) -> Rendered:
    """The service's manifests and its own; `pushed`: the reference its built image was
    pushed under (else it is worked out from the build's files)."""
    ns = namespace(loaded)
    made = _data(loaded, plan, ns) if plan.data is not None \
        else _process(loaded, plan, ns, pushed)
    supplied = [s for path in loaded.project.services[plan.name].kubernetes.manifests
                for s in read_manifests(loaded.root, path, plan.name)]
    return Rendered(plan.name, made, supplied)


def render(loaded: Loaded, plan: Plan, services: list[str] | None = None) -> list[Rendered]:
    """Every service's manifests (in start order), the project's Namespace first."""
    ns = namespace(loaded)
    first = Rendered(NAMESPACE_FILE, [{"apiVersion": "v1", "kind": "Namespace",
                                       "metadata": {"name": ns,
                                                    "labels": labels(loaded.name, ns)}}])
    chosen = [n for n in plan.services if not services or n in services]
    return [first] + [render_service(loaded, plan.services[n]) for n in chosen]


def read_manifests(root: Path, path: str, service: str) -> list[Supplied]:
    """A service's own manifest file: each YAML document, with the line it starts at."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    file = root / path
    where = f"services.{service}.kubernetes.manifests"
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise DevenvError(f"{where}: cannot read {path}: {exc.strerror or exc}",
                          hint="give a path relative to the project") from exc
    try:
        docs = list(YAML(typ="rt").load_all(text))
    except YAMLError as exc:
        raise DevenvError(f"{path}: not valid YAML: {exc}", hint=f"check {where}") from exc
    found = []
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
            line = _line(doc)
            raise DevenvError(f"{path}:{line}: not a Kubernetes manifest (no apiVersion and "
                              "kind)", hint=f"check {where}")
        found.append(Supplied(path, _line(doc), _plain(doc)))
    return found


def _line(node: Any) -> int:
    """Where ruamel read a node (its `lc`), 1-based."""
    lc = getattr(node, "lc", None)
    return int(lc.line) + 1 if lc is not None else 1


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    for plain in (bool, int, float, str):  # ruamel's scalars (ScalarInt, …) as Python's
        if isinstance(node, plain):
            return plain(node)
    return node


def to_yaml(manifests: list[Manifest]) -> str:
    """Manifests as YAML documents, `---` between them; the same manifests, the same text.
    PyYAML writes YAML 1.1, as Kubernetes reads it (`"yes"` stays a string), no anchors."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return "---\n".join(yaml.dump(_plain(m), Dumper=Dumper, sort_keys=False, width=4096,
                                  default_flow_style=False, allow_unicode=True)
                        for m in manifests)
