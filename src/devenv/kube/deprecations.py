"""APIs a Kubernetes version removed or deprecates, and the manifests that still use them.

The table follows the upstream Deprecated API Migration Guide,
https://kubernetes.io/docs/reference/using-api/deprecation-guide/ (each removal with its
replacement), and the deprecation notes of each release's changelog for when an API was
first marked deprecated. An API is *deprecated* in a version from `deprecated` on (the API
server answers with a warning) and *removed* from `removed` on (it refuses the manifest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Api:
    api_version: str
    kinds: tuple[str, ...]
    deprecated: str  # first version that deprecates it
    removed: str | None  # first version that no longer serves it (None: not scheduled)
    replacement: str  # what to use instead (an apiVersion, or what replaces the kind)


def _apis() -> list[Api]:
    workloads = ("Deployment", "DaemonSet", "ReplicaSet", "StatefulSet")
    rbac = ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
    flow = ("FlowSchema", "PriorityLevelConfiguration")
    return [
        # removed in 1.16
        Api("extensions/v1beta1", workloads, "1.9", "1.16", "apps/v1"),
        Api("apps/v1beta1", workloads, "1.9", "1.16", "apps/v1"),
        Api("apps/v1beta2", workloads, "1.9", "1.16", "apps/v1"),
        Api("extensions/v1beta1", ("NetworkPolicy",), "1.9", "1.16", "networking.k8s.io/v1"),
        Api("extensions/v1beta1", ("PodSecurityPolicy",), "1.11", "1.16", "policy/v1beta1"),
        # removed in 1.22
        Api("extensions/v1beta1", ("Ingress",), "1.14", "1.22", "networking.k8s.io/v1"),
        Api("networking.k8s.io/v1beta1", ("Ingress", "IngressClass"), "1.19", "1.22",
            "networking.k8s.io/v1"),
        Api("admissionregistration.k8s.io/v1beta1",
            ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"), "1.16", "1.22",
            "admissionregistration.k8s.io/v1"),
        Api("apiextensions.k8s.io/v1beta1", ("CustomResourceDefinition",), "1.16", "1.22",
            "apiextensions.k8s.io/v1"),
        Api("apiregistration.k8s.io/v1beta1", ("APIService",), "1.19", "1.22",
            "apiregistration.k8s.io/v1"),
        Api("authentication.k8s.io/v1beta1", ("TokenReview",), "1.19", "1.22",
            "authentication.k8s.io/v1"),
        Api("authorization.k8s.io/v1beta1", ("SubjectAccessReview", "LocalSubjectAccessReview",
                                             "SelfSubjectAccessReview"), "1.19", "1.22",
            "authorization.k8s.io/v1"),
        Api("certificates.k8s.io/v1beta1", ("CertificateSigningRequest",), "1.19", "1.22",
            "certificates.k8s.io/v1"),
        Api("coordination.k8s.io/v1beta1", ("Lease",), "1.19", "1.22", "coordination.k8s.io/v1"),
        Api("rbac.authorization.k8s.io/v1beta1", rbac, "1.17", "1.22",
            "rbac.authorization.k8s.io/v1"),
        Api("scheduling.k8s.io/v1beta1", ("PriorityClass",), "1.14", "1.22",
            "scheduling.k8s.io/v1"),
        Api("storage.k8s.io/v1beta1", ("CSIDriver", "CSINode", "StorageClass",
                                       "VolumeAttachment"), "1.19", "1.22", "storage.k8s.io/v1"),
        # removed in 1.25
        Api("batch/v1beta1", ("CronJob",), "1.21", "1.25", "batch/v1"),
        Api("discovery.k8s.io/v1beta1", ("EndpointSlice",), "1.21", "1.25", "discovery.k8s.io/v1"),
        Api("events.k8s.io/v1beta1", ("Event",), "1.19", "1.25", "events.k8s.io/v1"),
        Api("autoscaling/v2beta1", ("HorizontalPodAutoscaler",), "1.22", "1.25", "autoscaling/v2"),
        Api("policy/v1beta1", ("PodDisruptionBudget",), "1.21", "1.25", "policy/v1"),
        Api("policy/v1beta1", ("PodSecurityPolicy",), "1.21", "1.25",
            "no replacement API: Pod Security Admission (namespace labels "
            "pod-security.kubernetes.io/*) or a third-party admission webhook"),
        Api("node.k8s.io/v1beta1", ("RuntimeClass",), "1.20", "1.25", "node.k8s.io/v1"),
        # removed in 1.26
        Api("flowcontrol.apiserver.k8s.io/v1beta1", flow, "1.23", "1.26",
            "flowcontrol.apiserver.k8s.io/v1 (1.29+; v1beta3 before)"),
        Api("autoscaling/v2beta2", ("HorizontalPodAutoscaler",), "1.23", "1.26", "autoscaling/v2"),
        # removed in 1.27
        Api("storage.k8s.io/v1beta1", ("CSIStorageCapacity",), "1.24", "1.27", "storage.k8s.io/v1"),
        # removed in 1.29
        Api("flowcontrol.apiserver.k8s.io/v1beta2", flow, "1.26", "1.29",
            "flowcontrol.apiserver.k8s.io/v1"),
        # removed in 1.32
        Api("flowcontrol.apiserver.k8s.io/v1beta3", flow, "1.29", "1.32",
            "flowcontrol.apiserver.k8s.io/v1"),
        # deprecated, not scheduled for removal
        Api("v1", ("Endpoints",), "1.33", None, "discovery.k8s.io/v1 EndpointSlice"),
    ]


APIS = _apis()


def version_key(version: str) -> tuple[int, int]:
    """(major, minor) of "1.31", "v1.31" or "1.31.4"."""
    major, minor = version.removeprefix("v").split(".")[:2]
    return int(major), int(minor)


@dataclass(frozen=True)
class Finding:
    where: str  # "k8s/hpa.yaml:12" or "rendered: api"
    kind: str
    name: str
    api_version: str
    status: str  # "removed" or "deprecated"
    since: str  # the version that removed (or deprecated) it
    replacement: str

    def line(self, target: str) -> str:
        verb = (f"removed in {self.since}" if self.status == "removed"
                else f"deprecated since {self.since}")
        return (f"{self.where}: {self.kind} {self.name} uses {self.api_version}, {verb} "
                f"(target {target}); use {self.replacement}")


def check(manifest: dict[str, Any], target: str, where: str) -> Finding | None:
    """What is wrong for `target` with the API `manifest` uses (None: nothing)."""
    api_version, kind = str(manifest.get("apiVersion", "")), str(manifest.get("kind", ""))
    name = str((manifest.get("metadata") or {}).get("name", "?"))
    want = version_key(target)
    for api in APIS:
        if api.api_version != api_version or kind not in api.kinds:
            continue
        if api.removed is not None and want >= version_key(api.removed):
            return Finding(where, kind, name, api_version, "removed", api.removed,
                           api.replacement)
        if want >= version_key(api.deprecated):
            return Finding(where, kind, name, api_version, "deprecated", api.deprecated,
                           api.replacement)
    return None
