"""The kubernetes runtime's cluster operations (runtime/kubernetes.py) through the official
client, against a FAKE API server (tests/fake_kube_api.py): what this proves is the requests
devenv sends and how it reads the answers, not how a real cluster behaves."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv.config.load import load
from devenv.core.errors import DevenvError
from devenv.kube.render import project_selector, render
from devenv.plan import make_plan
from devenv.runtime.kubernetes import KubeApi, pod_state, rollout_state
from fake_kube_api import FakeKubeApi

SHOP = Path(__file__).parent.parent / "examples" / "shop"
DEPLOYMENTS = "/apis/apps/v1/namespaces/shop/deployments"


@pytest.fixture
def fake() -> Iterator[FakeKubeApi]:
    server = FakeKubeApi().start()
    try:
        yield server
    finally:
        server.stop()


def _apply_shop(api: KubeApi) -> int:
    loaded = load(SHOP)
    count = 0
    for item in render(loaded, make_plan(loaded)):
        for manifest in item.all():
            api.apply(manifest)
            count += 1
    return count


def test_fake_api_server_side_apply_of_the_shop(fake: FakeKubeApi) -> None:
    api = KubeApi.connect(host=fake.url)
    count = _apply_shop(api)
    patches = [(p, q) for m, p, q in fake.requests if m == "PATCH"]
    assert len(patches) == count
    assert all(q == {"fieldManager": "devenv", "force": "true"} for _, q in patches)
    paths = {p for p, _ in patches}
    assert "/api/v1/namespaces/shop" in paths  # the Namespace: cluster-scoped
    assert f"{DEPLOYMENTS}/gateway" in paths
    assert "/apis/apps/v1/namespaces/shop/statefulsets/db" in paths
    assert "/apis/networking.k8s.io/v1/namespaces/shop/ingresses/order" in paths
    assert "/apis/traefik.io/v1alpha1/namespaces/shop/middlewares/order-strip" in paths
    assert fake.objects[f"{DEPLOYMENTS}/order"]["metadata"]["managedFields"][0]["manager"] \
        == "devenv"


def test_fake_api_rollout_waits_for_the_status(fake: FakeKubeApi) -> None:
    api = KubeApi.connect(host=fake.url)
    _apply_shop(api)
    path = f"{DEPLOYMENTS}/gateway"
    fake.set_status(path, observedGeneration=1, replicas=1, updatedReplicas=0,
                    availableReplicas=0)
    polls: list[int] = []

    def pause(_: float) -> None:  # the "controller" finishes after the third look
        polls.append(1)
        if len(polls) == 3:
            fake.set_status(path, observedGeneration=1, replicas=1, updatedReplicas=1,
                            availableReplicas=1)

    state = api.wait_rollout("shop", "gateway", timeout=30, pause=pause)
    assert state.ready and state.said == "1/1 updated, 1 available" and len(polls) == 3
    # a rollout that never finishes: a clear error at the deadline
    fake.set_status(path, observedGeneration=1, replicas=2, updatedReplicas=1,
                    availableReplicas=1)
    ticks = iter(range(100))
    with pytest.raises(DevenvError) as caught:
        api.wait_rollout("shop", "gateway", timeout=5, clock=lambda: float(next(ticks)),
                         pause=lambda _: None)
    assert "gateway: its rollout did not finish in 5s (1/1 updated, 1 available)" in \
        caught.value.message


def test_fake_api_rollout_state_rules() -> None:
    def deploy(generation: int, **status: int) -> dict[str, object]:
        return {"metadata": {"generation": generation}, "spec": {"replicas": 2},
                "status": status}

    assert rollout_state(deploy(2, observedGeneration=2, replicas=2, updatedReplicas=2,
                                availableReplicas=2)).ready
    assert not rollout_state(deploy(3, observedGeneration=2, replicas=2, updatedReplicas=2,
                                    availableReplicas=2)).ready  # not seen yet
    assert not rollout_state(deploy(2, observedGeneration=2, replicas=3, updatedReplicas=2,
                                    availableReplicas=2)).ready  # an old pod left


def test_fake_api_scale_patches_replicas(fake: FakeKubeApi) -> None:
    api = KubeApi.connect(host=fake.url)
    _apply_shop(api)
    assert api.scale("shop", "catalog", 3) == 3
    assert fake.objects[f"{DEPLOYMENTS}/catalog"]["spec"]["replicas"] == 3
    with pytest.raises(LookupError):
        api.scale("shop", "nothing", 1)


def test_fake_api_pod_logs_stream_by_line(fake: FakeKubeApi) -> None:
    api = KubeApi.connect(host=fake.url)
    fake.add_pod("shop", "gateway-abc", {"app.kubernetes.io/name": "gateway",
                                         "app.kubernetes.io/instance": "shop"})
    pods = api.pods("shop", "app.kubernetes.io/name=gateway")
    assert [p["metadata"]["name"] for p in pods] == ["gateway-abc"]
    seen: list[str] = []
    got_first = threading.Event()

    def read() -> None:
        for line in api.log_lines("shop", "gateway-abc"):
            seen.append(line)
            got_first.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    fake.say("gateway-abc", "listening on 8200")
    assert got_first.wait(10)  # streamed as written, before the pod ends
    fake.say("gateway-abc", "GET /healthz 200")
    fake.say("gateway-abc", None)
    reader.join(10)
    assert seen == ["listening on 8200", "GET /healthz 200"]


def test_fake_api_stop_keeps_volumes_with_persist_data(fake: FakeKubeApi) -> None:
    api = KubeApi.connect(host=fake.url)
    _apply_shop(api)
    pvc = "/api/v1/namespaces/shop/persistentvolumeclaims/data-db-0"
    fake.objects[pvc] = {"metadata": {"name": "data-db-0", "labels": {
        "app.kubernetes.io/instance": "shop", "app.kubernetes.io/managed-by": "devenv"}}}
    selector = project_selector("shop")
    api.stop("shop", selector, persist_data=True)
    left = sorted(fake.objects)
    assert left == ["/api/v1/namespaces/shop", pvc]  # the namespace, and the data
    api.stop("shop", selector, persist_data=False)
    assert sorted(fake.objects) == ["/api/v1/namespaces/shop"]


def test_fake_api_refusal_is_a_clear_error(fake: FakeKubeApi) -> None:
    api = KubeApi.connect(host=fake.url)
    with pytest.raises(DevenvError) as caught:  # (the fake refuses a non-apply PATCH)
        api.request("PATCH", f"{DEPLOYMENTS}/x", body={}, content_type="application/json")
    assert "the Kubernetes API refused PATCH" in caught.value.message


def test_fake_api_pod_state_reads_what_a_kubelet_reports() -> None:
    def pod(**status: object) -> dict[str, object]:
        return {"metadata": {"name": "api-1"}, "status": status}

    running = pod_state(pod(phase="Running", containerStatuses=[{
        "name": "api", "ready": True, "restartCount": 0, "state": {"running": {}}}]), "api")
    assert running.running and running.ready and running.problem is None
    pulling = pod_state(pod(phase="Pending", containerStatuses=[{
        "name": "api", "restartCount": 0, "state": {"waiting": {
            "reason": "ImagePullBackOff", "message": "no such image"}}}]), "api")
    assert pulling.problem == "ImagePullBackOff: no such image" and not pulling.running
    restarted = pod_state(pod(phase="Running", containerStatuses=[{
        "name": "api", "restartCount": 2, "state": {"running": {}},
        "lastState": {"terminated": {"exitCode": 3}}}]), "api")
    assert restarted.restarts == 2 and restarted.last_exit == 3
    unschedulable = pod_state(pod(phase="Pending", conditions=[{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/1 nodes: insufficient memory"}]), "api")
    assert unschedulable.problem == "Unschedulable: 0/1 nodes: insufficient memory"
    creating = pod_state(pod(phase="Pending", containerStatuses=[{
        "name": "api", "state": {"waiting": {"reason": "ContainerCreating"}}}]), "api")
    assert creating.problem is None and not creating.running  # (waited for, not failed)
