"""Runtimes: one module per place instances run, behind the interface in `base`.

RUNTIMES is the one literal registry; a runtime is imported only when it is used.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from devenv.runtime.base import Instance, InstanceSpec, OutputLine, Resources, RunResult, Runtime

RUNTIMES: dict[str, str] = {
    "local": "devenv.runtime.local:LocalRuntime",
}


def get_runtime(name: str, root: Path) -> Runtime:
    module, _, cls = RUNTIMES[name].partition(":")
    factory = getattr(importlib.import_module(module), cls)
    runtime: Runtime = factory(root)
    return runtime


__all__ = ["RUNTIMES", "Instance", "InstanceSpec", "OutputLine", "Resources", "RunResult",
           "Runtime", "get_runtime"]
