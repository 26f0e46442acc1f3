"""`runtime: kubernetes` through `devenv up`/`status`/`logs`/`scale`/`exec`/`stop`: the real CLI
and engine, against a FAKE API server (tests/fake_kube_api.py, its controller on: pods made
for Deployments, each "running" a tiny HTTP server in the test process) and a fake k3d that
records its commands. What this proves is devenv's side (what it applies, waits for, reads,
forwards); not how a real cluster behaves: none can run here."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from test_kube_k3d import k3d_against

import conftest
from conftest import Project, free_ports, wait_for
from fake_kube_api import FakeKubeApi

NS = "kshop"
K3S_131 = "rancher/k3s:v1.31.4-k3s1"


@pytest.fixture
def cluster(project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[FakeKubeApi]:
    fake = FakeKubeApi(controller=True).start()
    k3d_against(fake.url, "k3d-devenv-kshop", tmp_path, conftest.ENV, monkeypatch)
    env = conftest.ENV
    monkeypatch.setitem(env, "FAKE_K3D_CLUSTERS", json.dumps([{
        "name": "devenv-kshop", "nodes": [{"role": "server", "image": K3S_131}]}]))
    cache, api, web = free_ports(3)
    project.write(f"""\
        version: 1
        name: kshop
        runtime: kubernetes
        kubernetes: "1.31"
        cluster: {{provider: k3d, namespace: {NS}}}
        ingress: {{port: {project.ingress_port}}}
        services:
          cache: {{kind: redis, port: {cache}}}
          api:
            image: example/api:1
            port: {api}
            replicas: 2
            health: {{http: /healthz}}
            depends_on: [cache]
          web:
            image: example/web:1
            port: {web}
            depends_on: [api]
            ingress: {{path: /web}}
            health: {{command: ["{sys.executable}", "-c", "print('probed in the pod')"]}}
        """)
    try:
        yield fake
    finally:
        if project.engine_pid():
            project.devenv("stop", "--persist-data", timeout=60)
        fake.stop()


def _engine_gone(project: Project, pid: int | None) -> None:
    if pid:
        assert wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status()
                        == psutil.STATUS_ZOMBIE, 30)


def _applied(fake: FakeKubeApi) -> set[str]:
    return {p for m, p, q in fake.requests if m == "PATCH" and q.get("fieldManager") ==
            "devenv" and not p.endswith("/scale") and "/pods/" not in p}


def test_kube_up_status_logs_scale_exec_and_stop_keeping_volumes(
        project: Project, cluster: FakeKubeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = cluster
    project.up()
    deployments = f"/apis/apps/v1/namespaces/{NS}/deployments"
    # every manifest of the cluster's services, the data service's and the Namespace
    assert {f"/api/v1/namespaces/{NS}", f"{deployments}/api", f"{deployments}/web",
            f"/api/v1/namespaces/{NS}/services/api", f"/api/v1/namespaces/{NS}/services/web",
            f"/api/v1/namespaces/{NS}/configmaps/web-env",
            f"/apis/networking.k8s.io/v1/namespaces/{NS}/ingresses/web",
            f"/apis/apps/v1/namespaces/{NS}/statefulsets/cache",
            f"/api/v1/namespaces/{NS}/services/cache"} <= _applied(fake)
    assert fake.objects[f"{deployments}/api"]["spec"]["replicas"] == 2
    # status: the pods are the replicas, healthy through their port-forwards
    api = project.service("api")
    assert api["state"] == "healthy" and api["replicas"] == {"ready": 2, "desired": 2}
    assert project.service("web")["state"] == "healthy"  # its command check ran by exec
    assert any(p.endswith("/exec") for _, p, _ in fake.requests)
    pods = fake.pods("api")
    assert sorted(i["id"].split("#")[1] for i in api["instances"]) == pods
    # the ingress reaches a pod through the engine's address and a port-forward
    status, body = project.ingress("/web/hello", host="localhost")
    assert status == 200 and body["pod"] in fake.pods("web"), body
    # a pod's log lines are in `devenv logs`
    assert wait_for(lambda: f"pod {pods[0]} listening" in project.devenv(
        "logs", "api").stdout, 10)
    # scale patches the Deployment's replicas; a third pod is claimed
    project.devenv("scale", "api=3", check=True)
    assert fake.objects[f"{deployments}/api"]["spec"]["replicas"] == 3
    assert project.service("api")["replicas"] == {"ready": 3, "desired": 3}
    project.devenv("scale", "api=1", check=True)
    assert fake.objects[f"{deployments}/api"]["spec"]["replicas"] == 1
    assert len(fake.pods("api")) == 1
    # its pod evicted: the replica moves to the pod that replaces it, keeping its address
    [gone] = fake.pods("api")
    fake.evict(gone)
    assert wait_for(lambda: "moving to another pod" in project.devenv("logs", "api").stdout)
    [moved] = fake.pods("api")
    assert moved != gone
    assert wait_for(lambda: f"pod {moved} listening" in project.devenv("logs", "api").stdout)
    api = project.service("api")
    assert api["state"] == "healthy" and api["restarts"] == 0
    # exec in a running pod, through the API's exec stream (kubectl, when on PATH, is used
    # instead: not here; tests/test_kube_kubectl.py runs that path)
    monkeypatch.setitem(conftest.ENV, "PATH", str(Path(sys.executable).parent))
    done = project.devenv("exec", "web", "--", sys.executable, "-c", "print('in the pod')")
    assert done.returncode == 0 and "in the pod" in done.stdout, done.stderr
    # stop --persist-data: everything devenv made goes, the data's volume stays
    pid = project.engine_pid()
    project.devenv("stop", "--persist-data", check=True)
    _engine_gone(project, pid)
    left = sorted(fake.objects)
    assert left == [f"/api/v1/namespaces/{NS}",
                    f"/api/v1/namespaces/{NS}/persistentvolumeclaims/data-cache-0"], left


def test_kube_stop_without_persist_data_deletes_the_volumes(
        project: Project, cluster: FakeKubeApi) -> None:
    project.up()
    pid = project.engine_pid()
    project.devenv("stop", check=True)
    _engine_gone(project, pid)
    assert sorted(cluster.objects) == [f"/api/v1/namespaces/{NS}"]


def test_kube_rollout_that_never_runs_fails_up_with_the_pods_reason(
        project: Project, cluster: FakeKubeApi) -> None:
    cluster.failing["api"] = ("ImagePullBackOff",
                              'Back-off pulling image "example/api:1"')
    done = project.devenv("up", "--json")
    assert done.returncode == 1
    text = done.stdout + done.stderr
    assert "cannot start: ImagePullBackOff" in text and "example/api:1" in text, text
    assert "event: Failed: Back-off pulling image" in text  # the pod's events, said
    result: dict[str, Any] = json.loads(done.stdout)
    api = next(s for s in result["services"] if s["name"] == "api")
    assert api["state"] != "healthy"


def test_kube_cluster_at_another_version_is_not_recreated_without_yes(
        project: Project, cluster: FakeKubeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(conftest.ENV, "FAKE_K3D_CLUSTERS", json.dumps([{
        "name": "devenv-kshop", "nodes": [{"role": "server",
                                           "image": "rancher/k3s:v1.28.15-k3s1"}]}]))
    done = project.devenv("up")
    assert done.returncode == 1
    text = done.stdout + done.stderr
    assert "devenv-kshop runs Kubernetes 1.28 (rancher/k3s:v1.28.15-k3s1); the project " \
        "pins 1.31" in text, text
    assert "nothing deleted; `devenv up --yes` recreates the cluster devenv-kshop" in text
    assert not project.engine_pid()  # (refused before any engine started)
    assert not any(m == "PATCH" for m, _, _ in cluster.requests)  # nothing applied


def test_kube_validate_runs_in_a_namespace_of_its_own_beside_the_environment(
        project: Project, cluster: FakeKubeApi) -> None:
    api, web = free_ports(2)
    project.write(f"""\
        version: 1
        name: kshop
        runtime: kubernetes
        kubernetes: "1.31"
        cluster: {{provider: k3d, namespace: {NS}}}
        services:
          api: {{image: example/api:1, port: {api}, health: {{http: /healthz}}}}
          web: {{image: example/web:1, port: {web}, depends_on: [api]}}
        """)
    project.up()
    before = {p for p in cluster.objects if f"/namespaces/{NS}/" in p}
    pods = cluster.pods("api")
    done = project.devenv("validate", "--all-services", "--json", "--ports",
                          ",".join(str(p) for p in free_ports(4)), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    # the copy applied into its own namespace, under its own labels...
    copied = {p for p in _applied(cluster) if f"/namespaces/{NS}-validate-" in p}
    assert any(p.endswith("/deployments/api") for p in copied), sorted(_applied(cluster))
    labels = {o["metadata"]["labels"].get("app.kubernetes.io/instance")
              for p, o in cluster.objects.items() if f"/namespaces/{NS}/" in p}
    assert labels <= {"kshop", None}, labels
    # ...and the running environment kept every object and pod it had, answering
    assert before <= set(cluster.objects), sorted(before - set(cluster.objects))
    assert set(pods) <= set(cluster.pods("api"))
    assert project.service("api")["state"] == "healthy"
    # the copy reused the project's k3d cluster (none created)
    assert "cluster create" not in (Path(conftest.ENV["FAKE_K3D_LOG"]).read_text()
                                    if Path(conftest.ENV["FAKE_K3D_LOG"]).exists() else "")
