"""Data services (PostgreSQL, Redis), datasets and snapshots.

KINDS is the one literal registry of data kinds; each is a module behind `DataKind`.
"""

from __future__ import annotations

import importlib

from devenv.data.base import DataKind

KINDS: dict[str, str] = {
    "postgres": "devenv.data.postgres:Postgres",
    "redis": "devenv.data.redis:Redis",
}


def kind_of(name: str) -> DataKind:
    module, _, cls = KINDS[name].partition(":")
    kind: DataKind = getattr(importlib.import_module(module), cls)()
    return kind


__all__ = ["KINDS", "DataKind", "kind_of"]
