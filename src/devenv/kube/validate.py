"""Manifests checked against a Kubernetes version's OpenAPI schemas (kubernetes-validate's,
the JSON Schemas made from each release's OpenAPI document): what an API server of that
version would refuse for its shape. Custom resources (Traefik's Middleware) have no schema
there and are passed over, named."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from devenv.core.errors import DevenvError


@dataclass(frozen=True)
class Invalid:
    kind: str
    name: str
    message: str  # "" when it has no schema (a custom resource)
    path: str = ""

    @property
    def unchecked(self) -> bool:
        return not self.message


def validate(manifest: dict[str, Any], version: str) -> Invalid | None:
    """None when `manifest` fits `version`'s schema (strict: no unknown fields)."""
    try:
        import kubernetes_validate
        from kubernetes_validate.utils import SchemaNotFoundError, VersionNotSupportedError
    except ImportError as exc:
        raise DevenvError("checking manifests needs kubernetes-validate",
                          hint="pip install kubernetes-validate") from exc
    kind = str(manifest.get("kind", "?"))
    name = str((manifest.get("metadata") or {}).get("name", "?"))
    try:
        kubernetes_validate.validate(manifest, version, strict=True)
    except SchemaNotFoundError:
        return Invalid(kind, name, "")
    except VersionNotSupportedError as exc:
        raise DevenvError(exc.message) from exc
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.absolute_path)
        return Invalid(kind, name, exc.message, path)
    return None
