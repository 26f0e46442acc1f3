"""Kubernetes manifests from the plan (devenv.kube.render), the config keys they read, and the
deprecated-API report. No cluster here: every manifest is validated against the pinned
Kubernetes version's OpenAPI schemas (kubernetes-validate), which is all these tests claim."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from devenv.cli.main import main
from devenv.config.edit import edit
from devenv.config.load import load
from devenv.core.errors import ConfigError
from devenv.kube.deprecations import check
from devenv.kube.render import Rendered, render, to_yaml
from devenv.kube.validate import validate
from devenv.plan import make_plan

SHOP = Path(__file__).parent.parent / "examples" / "shop"

EVERY_KIND = """\
version: 1
name: Every Kind
runtime: kubernetes
cluster: {provider: k3d, name: dev}
kubernetes: "1.31"
services:
  db:
    kind: postgres
    port: 5433
    databases: [app, audit]
    user: app
    password: pg-secret-1
    users: {reporter: rep-secret-2}
  cache:
    kind: redis
    port: 6380
    password: ""
  api:
    image: ghcr.io/acme/api:1.2
    command: [serve, --port, "${PORT}"]
    port: 8000
    replicas: 3
    env: {API_TOKEN: tok-secret-3, GREETING: hello}
    depends_on: [db, cache]
    health: {http: /healthz, interval: 2s, timeout: 1s, retries: 4, start_period: 30s}
    ingress: {host: api.example.test, path: /v1}
  web:
    build: {context: web, dockerfile: Dockerfile.dev}
    port: 3000
    health: {command: "curl -fs localhost:3000"}
    ingress: {path: /app, strip_prefix: true}
    depends_on: [api]
  worker:
    command: python worker.py
    replicas: 0
    kubernetes: {manifests: [k8s/extra.yaml]}
  migrate:
    command: python migrate.py
    restart: "no"
    depends_on: {db: {condition: healthy, database: audit}}
"""

EXTRA = """\
# the worker's own objects, some on APIs long gone
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: worker}
spec: {maxUnavailable: 1, selector: {matchLabels: {app: worker}}}
---
apiVersion: batch/v1beta1
kind: CronJob
metadata: {name: nightly}
spec: {schedule: "0 3 * * *", jobTemplate: {spec: {template: {spec: {containers: []}}}}}
---
apiVersion: flowcontrol.apiserver.k8s.io/v1beta3
kind: FlowSchema
metadata: {name: flows}
---
apiVersion: extensions/v1beta1
kind: Ingress
metadata: {name: legacy}
"""


@pytest.fixture
def every_kind(tmp_path: Path) -> Path:
    (tmp_path / "devenv.yaml").write_text(EVERY_KIND)
    (tmp_path / "k8s").mkdir()
    (tmp_path / "k8s" / "extra.yaml").write_text(EXTRA)
    return tmp_path


def _rendered(root: Path) -> list[Rendered]:
    loaded = load(root)
    return render(loaded, make_plan(loaded))


def _by(rendered: list[Rendered], service: str, kind: str, name: str | None = None) -> Any:
    item = next(r for r in rendered if r.service == service)
    return next(m for m in item.manifests
                if m["kind"] == kind and (name is None or m["metadata"]["name"] == name))


# ---- config


def test_unit_kube_config_set_kubernetes_version_pins_it(tmp_path: Path) -> None:
    (tmp_path / "devenv.yaml").write_text("version: 1\nservices: {a: {command: x}}\n")
    assert load(tmp_path).project.kubernetes.version == "1.31"  # the default
    edit(tmp_path, "kubernetes.version", 1.28, project=False)  # as `config set` parses 1.28
    assert load(tmp_path).project.kubernetes.version == "1.28"
    edit(tmp_path, "kubernetes.version", 1.30, project=False)  # YAML's 1.30 is the number 1.3
    assert load(tmp_path).project.kubernetes.version == "1.30"
    with pytest.raises(ConfigError) as caught:
        edit(tmp_path, "kubernetes.version", "1.12", project=False)
    problem = caught.value.problems[0]
    assert problem.path == "kubernetes.version" and "1.25" in problem.message
    assert load(tmp_path).project.kubernetes.version == "1.30"  # a bad set wrote nothing


def test_unit_kube_config_cluster_and_runtime_keys(every_kind: Path) -> None:
    project = load(every_kind).project
    assert project.runtime == "kubernetes"
    assert (project.cluster.provider, project.cluster.name) == ("k3d", "dev")
    assert project.services["worker"].kubernetes.manifests == ["k8s/extra.yaml"]
    (every_kind / "devenv.yaml").write_text(EVERY_KIND.replace("provider: k3d", "provider: kind"))
    with pytest.raises(ConfigError) as caught:
        load(every_kind)
    problem = caught.value.problems[0]
    assert (problem.line, problem.path) == (4, "cluster.provider")
    assert "'k3d', 'existing'" in problem.message


# ---- the renderer


def test_unit_kube_every_manifest_fits_the_pinned_versions_schemas(every_kind: Path) -> None:
    for root in (SHOP, every_kind):
        loaded = load(root)
        version = loaded.project.kubernetes.version
        checked = 0
        for item in render(loaded, make_plan(loaded)):
            for manifest in item.manifests:
                found = validate(manifest, version)
                if found is not None and found.unchecked:
                    assert manifest["kind"] == "Middleware"  # Traefik's CRD: no schema
                    continue
                assert found is None, (item.service, found)
                checked += 1
        assert checked > 20


def test_unit_kube_render_is_deterministic(every_kind: Path) -> None:
    first = [to_yaml(r.all()) for r in _rendered(every_kind)]
    assert first == [to_yaml(r.all()) for r in _rendered(every_kind)]
    assert "&id" not in "".join(first)  # no YAML anchors
    assert "- 'yes'" in "".join(first) or "yes" not in "".join(first)  # YAML 1.1 safe


def test_unit_kube_secret_values_only_in_secrets(every_kind: Path) -> None:
    rendered = _rendered(every_kind)
    text = "".join(to_yaml([m for m in r.manifests if m["kind"] != "Secret"])
                   for r in rendered)
    for secret in ("pg-secret-1", "rep-secret-2", "tok-secret-3"):
        assert secret not in text
    secret = _by(rendered, "api", "Secret")["stringData"]
    assert secret["API_TOKEN"] == "tok-secret-3"
    assert secret["DATABASE_URL"] == "postgresql://app:pg-secret-1@db:5433/app"  # in-cluster
    config = _by(rendered, "api", "ConfigMap")["data"]
    assert config["GREETING"] == "hello" and config["DB_HOST"] == "db"
    assert config["PGHOST"] == "db" and config["CACHE_URL"] == "redis://cache:6380/0"
    assert config["PORT"] == "8000"
    container = _by(rendered, "api", "Deployment")["spec"]["template"]["spec"]["containers"][0]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert refs["API_TOKEN"] == {"name": "api-env", "key": "API_TOKEN"}
    assert container["envFrom"] == [{"configMapRef": {"name": "api-env"}}]
    migrate = _by(rendered, "migrate", "Secret")["stringData"]
    assert migrate["DATABASE_URL"].endswith("@db:5433/audit")


def test_unit_kube_process_services(every_kind: Path) -> None:
    rendered = _rendered(every_kind)
    api = _by(rendered, "api", "Deployment")
    assert api["spec"]["replicas"] == 3
    pod = api["spec"]["template"]["spec"]["containers"][0]
    assert pod["image"] == "ghcr.io/acme/api:1.2"
    assert pod["command"] == ["serve", "--port", "8000"]
    assert pod["readinessProbe"] == {"httpGet": {"path": "/healthz", "port": 8000},
                                     "periodSeconds": 2, "timeoutSeconds": 1,
                                     "failureThreshold": 4}
    assert pod["livenessProbe"] == pod["readinessProbe"]
    assert pod["startupProbe"]["failureThreshold"] == 30
    web = _by(rendered, "web", "Deployment")
    wpod = web["spec"]["template"]["spec"]["containers"][0]
    assert wpod["image"] == "devenv.local/every-kind-web:dev"
    assert wpod["imagePullPolicy"] == "Never" and "command" not in wpod  # the image's own
    assert wpod["readinessProbe"]["exec"]["command"] == ["/bin/sh", "-c",
                                                         "curl -fs localhost:3000"]
    worker = _by(rendered, "worker", "Deployment")
    assert worker["spec"]["replicas"] == 0
    # a shell line running one program: exec'd, so the program gets the pod's TERM
    assert worker["spec"]["template"]["spec"]["containers"][0]["command"] == \
        ["/bin/sh", "-c", "exec python worker.py"]
    assert "readinessProbe" not in worker["spec"]["template"]["spec"]["containers"][0]
    assert [m["kind"] for m in next(r for r in rendered if r.service == "worker").manifests] \
        == ["ConfigMap", "Deployment"]  # no port: no Service, no Ingress
    job = _by(rendered, "migrate", "Job")
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 300
    service = _by(rendered, "api", "Service")
    assert service["spec"]["ports"][0]["port"] == 8000
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "api",
                                           "app.kubernetes.io/instance": "every-kind"}


def test_unit_kube_data_services(every_kind: Path) -> None:
    rendered = _rendered(every_kind)
    db = _by(rendered, "db", "StatefulSet")
    pod = db["spec"]["template"]["spec"]["containers"][0]
    assert pod["image"] == "postgres:16"
    assert db["spec"]["volumeClaimTemplates"][0]["spec"]["resources"] == {
        "requests": {"storage": "1Gi"}}
    assert db["spec"]["serviceName"] == "db-headless"
    assert _by(rendered, "db", "Service", "db-headless")["spec"]["clusterIP"] == "None"
    port = _by(rendered, "db", "Service", "db")["spec"]["ports"][0]
    assert (port["port"], port["targetPort"]) == (5433, 5432)
    assert _by(rendered, "db", "ConfigMap", "db-env")["data"]["POSTGRES_USER"] == "app"
    assert _by(rendered, "db", "Secret", "db-env")["stringData"] == {
        "POSTGRES_PASSWORD": "pg-secret-1"}
    init = _by(rendered, "db", "Secret", "db-init")["stringData"]["init.sql"]  # passwords
    assert 'CREATE DATABASE "audit" OWNER "app";' in init
    assert "CREATE ROLE \"reporter\" LOGIN PASSWORD 'rep-secret-2';" in init
    cache = _by(rendered, "cache", "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    assert cache["image"] == "redis:7" and cache["args"] == ["--appendonly", "yes"]
    assert not any(m["kind"] == "Secret" for r in rendered if r.service == "cache"
                   for m in r.manifests)  # no password: no Secret


def test_unit_kube_ingress_routes_for_traefik(every_kind: Path) -> None:
    rendered = _rendered(every_kind)
    api = _by(rendered, "api", "Ingress")
    assert api["spec"]["ingressClassName"] == "traefik"
    rules = [(r.get("host"), [p["path"] for p in r["http"]["paths"]])
             for r in api["spec"]["rules"]]
    assert rules == [("api.localhost", ["/"]), ("api.example.test", ["/v1"])]
    web = _by(rendered, "web", "Ingress")
    assert [(r.get("host"), r["http"]["paths"][0]["path"]) for r in web["spec"]["rules"]] == [
        ("web.localhost", "/"), (None, "/app")]  # a path on any host
    strip = _by(rendered, "web", "Middleware")
    assert strip["spec"] == {"stripPrefix": {"prefixes": ["/app"]}}
    assert web["metadata"]["annotations"] == {
        "traefik.ingress.kubernetes.io/router.middlewares": "every-kind-web-strip@kubernetescrd"}


# ---- deprecated APIs


def test_unit_kube_deprecations_table() -> None:
    def status(api: str, kind: str, target: str) -> str | None:
        found = check({"apiVersion": api, "kind": kind, "metadata": {"name": "x"}}, target, "f")
        return f"{found.status} {found.since} {found.replacement}" if found else None

    assert status("extensions/v1beta1", "Ingress", "1.21") == \
        "deprecated 1.14 networking.k8s.io/v1"
    assert status("extensions/v1beta1", "Ingress", "1.22") == "removed 1.22 networking.k8s.io/v1"
    assert status("batch/v1beta1", "CronJob", "1.25") == "removed 1.25 batch/v1"
    assert status("autoscaling/v2beta2", "HorizontalPodAutoscaler", "1.26") == \
        "removed 1.26 autoscaling/v2"
    assert status("flowcontrol.apiserver.k8s.io/v1beta2", "FlowSchema", "1.29") == \
        "removed 1.29 flowcontrol.apiserver.k8s.io/v1"
    assert status("flowcontrol.apiserver.k8s.io/v1beta3", "FlowSchema", "1.31") == \
        "deprecated 1.29 flowcontrol.apiserver.k8s.io/v1"
    assert status("flowcontrol.apiserver.k8s.io/v1beta3", "FlowSchema", "1.32.1").startswith(
        "removed 1.32")
    assert (status("policy/v1beta1", "PodSecurityPolicy", "1.25") or "").startswith(
        "removed 1.25 no replacement API")
    assert status("apps/v1", "Deployment", "1.37") is None
    assert status("batch/v1beta1", "CronJob", "1.20") is None  # not yet deprecated


def test_unit_kube_render_check_deprecations_cli(every_kind: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["-C", str(every_kind), "render", "-o", str(out), "--check-deprecations",
                 "--kubernetes", "1.32"])
    err = capsys.readouterr().err
    assert code == 1  # an API the target removed
    assert ("removed: k8s/extra.yaml:7: CronJob nightly uses batch/v1beta1, removed in 1.25 "
            "(target 1.32); use batch/v1") in err
    assert "k8s/extra.yaml:12: FlowSchema flows uses flowcontrol.apiserver.k8s.io/v1beta3, " \
        "removed in 1.32" in err
    assert "k8s/extra.yaml:16: Ingress legacy uses extensions/v1beta1" in err
    assert "PodDisruptionBudget" not in err
    assert sorted(p.name for p in out.iterdir()) == [
        "_namespace.yaml", "api.yaml", "cache.yaml", "db.yaml", "migrate.yaml", "web.yaml",
        "worker.yaml"]
    assert "kind: CronJob" in (out / "worker.yaml").read_text()  # the service's own, added
    # the rendered manifests alone are clean for the newest version there is
    code = main(["-C", str(every_kind), "render", "--services", "api,db", "--validate",
                 "--check-deprecations", "--kubernetes", "1.37"])
    err = capsys.readouterr().err
    assert code == 0 and "no removed or deprecated APIs for Kubernetes 1.37" in err
    assert "fit Kubernetes 1.37's schemas" in err


def test_unit_kube_render_prints_yaml_documents(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-C", str(SHOP), "render", "--services", "gateway"]) == 0
    text = capsys.readouterr().out
    import yaml

    docs = [d for d in yaml.safe_load_all(text) if d]
    assert [d["kind"] for d in docs] == ["Namespace", "ConfigMap", "Deployment", "Service",
                                         "Ingress"]


def test_unit_kube_bad_manifest_file_is_named(every_kind: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    (every_kind / "k8s" / "extra.yaml").write_text(textwrap.dedent("""\
        apiVersion: v1
        kind: ConfigMap
        ---
        just: text
        """))
    assert main(["-C", str(every_kind), "render"]) == 1
    assert "k8s/extra.yaml:4: not a Kubernetes manifest" in capsys.readouterr().err
