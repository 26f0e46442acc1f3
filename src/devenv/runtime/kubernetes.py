"""The kubernetes runtime's cluster operations, through the official client (`kubernetes`).

What is here: server-side apply of rendered manifests (field manager "devenv", forced, as
`kubectl apply --server-side` does), waiting for a Deployment's rollout from its status, a
pod's log stream, scaling through the scale subresource, and stopping by the project's label
selector (PersistentVolumeClaims kept with `persist_data`).

Also what the runtime (`kube_runtime.py`) reads of a pod (`pod_state`: running, ready, its
restarts, why it cannot start) and its events.

Verified only against tests/fake_kube_api.py, a fake API server: no Kubernetes API server
can run where this was written. The client is imported when used, so an engine that never
touches a cluster never loads it.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from devenv.core.errors import DevenvError

FIELD_MANAGER = "devenv"
REQUEST_TIMEOUT = (10.0, 60.0)  # connect, read: one API call (streams have no read limit)
# a container waiting for one of these will not start by waiting longer
FATAL_WAITING = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                 "CreateContainerConfigError", "CreateContainerError", "CrashLoopBackOff",
                 "RunContainerError"}
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
PLURALS = {"Ingress": "ingresses", "NetworkPolicy": "networkpolicies",
           "PodSecurityPolicy": "podsecuritypolicies", "Endpoints": "endpoints"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass",
                  "StorageClass", "CustomResourceDefinition", "PersistentVolume"}
# what `stop` deletes, by the project's labels (PVCs last, and only without persist_data)
OWNED = [("apps/v1", "Deployment"), ("apps/v1", "StatefulSet"), ("batch/v1", "Job"),
         ("networking.k8s.io/v1", "Ingress"), ("traefik.io/v1alpha1", "Middleware"),
         ("v1", "ConfigMap"), ("v1", "Secret")]


def collection_path(api_version: str, kind: str, namespace: str | None) -> str:
    """/api/v1/namespaces/NS/configmaps, /apis/apps/v1/namespaces/NS/deployments, ..."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    plural = PLURALS.get(kind, kind.lower() + "s")
    if namespace is None or kind in CLUSTER_SCOPED:
        return f"{base}/{plural}"
    return f"{base}/namespaces/{quote(namespace)}/{plural}"


def object_path(manifest: dict[str, Any]) -> str:
    meta = manifest.get("metadata") or {}
    return (collection_path(str(manifest["apiVersion"]), str(manifest["kind"]),
                            meta.get("namespace")) + "/" + quote(str(meta["name"])))


@dataclass(frozen=True)
class Rollout:
    ready: bool
    said: str  # "2/3 updated, 1 available" — for messages


def rollout_state(deployment: dict[str, Any]) -> Rollout:
    """Done as `kubectl rollout status` says: the controller saw this generation, and every
    wanted replica is updated and available, none of the old ones left."""
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    meta = deployment.get("metadata") or {}
    want = int(spec.get("replicas", 1))
    updated = int(status.get("updatedReplicas", 0))
    available = int(status.get("availableReplicas", 0))
    total = int(status.get("replicas", 0))
    seen = int(status.get("observedGeneration", 0)) >= int(meta.get("generation", 1))
    ready = seen and updated >= want and available >= want and total <= want
    return Rollout(ready, f"{updated}/{want} updated, {available} available")


@dataclass(frozen=True)
class PodState:
    """What the runtime needs to know of one pod (for its container named like the service)."""

    running: bool  # the container runs
    ready: bool  # and the pod passes its readiness probe
    restarts: int  # how often the kubelet restarted the container
    last_exit: int | None  # the exit code of its previous run (a restart), or of its end
    ended: bool  # the pod is over (Succeeded or Failed): it runs no more
    deleting: bool  # being deleted (a rollout or scale-down replaces it)
    problem: str | None  # why it cannot start, as the cluster says it


def pod_state(pod: dict[str, Any], container: str) -> PodState:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    mine = next((c for c in statuses if c.get("name") == container),
                statuses[0] if statuses else {})
    state, last = mine.get("state") or {}, mine.get("lastState") or {}
    problem = None
    waiting = state.get("waiting") or {}
    if waiting.get("reason") in FATAL_WAITING:
        problem = f"{waiting['reason']}: {waiting.get('message') or 'no message'}"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and \
                cond.get("reason") == "Unschedulable":
            problem = f"Unschedulable: {cond.get('message') or 'no node fits'}"
    ended = status.get("phase") in ("Succeeded", "Failed")
    exit_of = (state.get("terminated") if ended else None) or last.get("terminated") or {}
    code = exit_of.get("exitCode")
    return PodState(running="running" in state, ready=bool(mine.get("ready")),
                    restarts=int(mine.get("restartCount", 0)),
                    last_exit=int(code) if code is not None else None, ended=ended,
                    deleting=bool(meta.get("deletionTimestamp")), problem=problem)


class KubeApi:
    """The cluster, through the official client's ApiClient (its configuration, auth and
    TLS), with the few raw calls devenv needs."""

    def __init__(self, client: Any):
        self.client = client

    @classmethod
    def connect(cls, context: str | None = None, host: str | None = None) -> KubeApi:
        """From the kubeconfig (its `context`, default the current one), or a bare `host`."""
        try:
            from kubernetes import client, config
        except ImportError as exc:
            raise DevenvError("the kubernetes runtime needs the kubernetes client",
                              hint="pip install kubernetes") from exc
        if host is not None:
            conf = client.Configuration()
            conf.host = host
            return cls(client.ApiClient(conf))
        try:
            return cls(config.new_client_from_config(context=context))  # type: ignore[no-untyped-call]
        except Exception as exc:
            which = f" context {context}" if context else ""
            raise DevenvError(f"cannot read the kubeconfig{which}: {exc}",
                              hint="check $KUBECONFIG, or cluster.context") from exc

    def request(self, method: str, path: str, *, query: list[tuple[str, str]] | None = None,
                body: Any = None, content_type: str = "application/json",
                stream: bool = False) -> Any:
        method, url, headers, body, _ = self.client.param_serialize(
            method, path, query_params=query or [], body=body, auth_settings=["BearerToken"],
            header_params={"Content-Type": content_type, "Accept": "application/json"})
        try:
            response = self.client.call_api(method, url, headers, body,
                                            _request_timeout=None if stream else REQUEST_TIMEOUT)
        except Exception as exc:
            status = getattr(exc, "status", None)
            if status == 404:
                raise LookupError(path) from exc
            reason = getattr(exc, "body", None) or exc
            raise DevenvError(f"the Kubernetes API refused {method} {path}: {reason}") from exc
        if response.status == 404:
            raise LookupError(path)
        if response.status >= 400:
            raise DevenvError(f"the Kubernetes API refused {method} {path}: "
                              f"{response.status} {response.read()!r}")
        if stream:
            return response.response
        data = response.read()
        return json.loads(data) if data else {}

    # ---- operations

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply: devenv owns the fields it sets, and takes them back (force)."""
        found: dict[str, Any] = self.request(
            "PATCH", object_path(manifest), body=manifest,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml")
        return found

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.request(
            "GET", collection_path(api_version, kind, namespace) + "/" + quote(name))
        return found

    def wait_rollout(self, namespace: str, name: str, timeout: float,
                     clock: Callable[[], float] = time.monotonic,
                     pause: Callable[[float], None] = time.sleep) -> Rollout:
        """Until the Deployment's rollout is done; a clear error at `timeout`."""
        deadline = clock() + timeout
        while True:
            state = rollout_state(self.get("apps/v1", "Deployment", namespace, name))
            if state.ready:
                return state
            if clock() >= deadline:
                raise DevenvError(f"{name}: its rollout did not finish in {timeout:g}s "
                                  f"({state.said})",
                                  hint=f"see its pods: devenv logs {name}")
            pause(0.5)

    def scale(self, namespace: str, name: str, replicas: int,
              kind: str = "Deployment") -> int:
        path = collection_path("apps/v1", kind, namespace) + f"/{quote(name)}/scale"
        found = self.request("PATCH", path, body={"spec": {"replicas": replicas}},
                             query=[("fieldManager", FIELD_MANAGER)],
                             content_type="application/merge-patch+json")
        return int((found.get("spec") or {}).get("replicas", replicas))

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        found = self.request("GET", collection_path("v1", "Pod", namespace),
                             query=[("labelSelector", selector)])
        return list(found.get("items") or [])

    def pod(self, namespace: str, name: str) -> dict[str, Any]:
        return self.get("v1", "Pod", namespace, name)

    def mark_for_deletion(self, namespace: str, pod: str) -> None:
        """The pod its ReplicaSet removes first when scaled down (the deletion cost)."""
        self.request("PATCH", collection_path("v1", "Pod", namespace) + "/" + quote(pod),
                     body={"metadata": {"annotations": {DELETION_COST: "-1000000"}}},
                     query=[("fieldManager", FIELD_MANAGER)],
                     content_type="application/merge-patch+json")

    def delete_pod(self, namespace: str, pod: str, grace: float) -> None:
        with contextlib.suppress(LookupError):
            self.request("DELETE", collection_path("v1", "Pod", namespace) + "/" + quote(pod),
                         query=[("gracePeriodSeconds", str(max(0, round(grace))))])

    def events(self, namespace: str, name: str, last: int = 5) -> list[str]:
        """What the cluster said about object `name`, latest last: `Reason: message`."""
        try:
            found = self.request("GET", collection_path("v1", "Event", namespace),
                                 query=[("fieldSelector", f"involvedObject.name={name}")])
        except (LookupError, DevenvError):
            return []
        items = sorted(found.get("items") or [], key=lambda e: str(
            e.get("lastTimestamp") or e.get("eventTime") or ""))
        return [f"{e.get('reason', '')}: {e.get('message', '')}".strip()
                for e in items[-last:]]

    def log_lines(self, namespace: str, pod: str, follow: bool = True,
                  tail: int | None = None, container: str | None = None,
                  previous: bool = False) -> Iterator[str]:
        """A pod's log, line by line, as the API streams it (until the pod's end)."""
        query = [("follow", "true" if follow else "false")]
        if tail is not None:
            query.append(("tailLines", str(tail)))
        if container is not None:
            query.append(("container", container))
        if previous:
            query.append(("previous", "true"))
        path = collection_path("v1", "Pod", namespace) + f"/{quote(pod)}/log"
        raw = self.request("GET", path, query=query, stream=True)
        rest = b""
        try:
            for chunk in raw.stream(4096, decode_content=True):
                rest += chunk
                *lines, rest = rest.split(b"\n")
                for line in lines:
                    yield line.decode(errors="replace")
            if rest:
                yield rest.decode(errors="replace")
        finally:
            raw.release_conn()

    def delete_namespace(self, namespace: str) -> None:
        """The Namespace (what is left in it goes with it); gone already is fine."""
        with contextlib.suppress(LookupError):
            self.request("DELETE", f"/api/v1/namespaces/{quote(namespace)}")

    def stop(self, namespace: str, selector: str, persist_data: bool) -> list[str]:
        """Delete what devenv made for the project (by its labels); its data volumes
        (PersistentVolumeClaims) too, unless `persist_data`. What was deleted, by kind."""
        done = []
        owned = OWNED + [("v1", "Service")] + ([] if persist_data else
                                               [("v1", "PersistentVolumeClaim")])
        for api_version, kind in owned:
            path = collection_path(api_version, kind, namespace)
            try:
                if kind == "Service":  # (no delete-collection for Services)
                    for item in self.request("GET", path,
                                             query=[("labelSelector", selector)])["items"]:
                        self.request("DELETE", f"{path}/{quote(item['metadata']['name'])}")
                else:
                    self.request("DELETE", path, query=[("labelSelector", selector)])
            except LookupError:
                continue  # (that API is not served: a cluster without Traefik's CRDs)
            done.append(kind)
        return done


__all__ = ["KubeApi", "PodState", "Rollout", "pod_state", "rollout_state"]
