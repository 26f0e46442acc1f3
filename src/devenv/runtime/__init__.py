"""Runtimes: one module per place instances run, behind the interface in `base`.

RUNTIMES is the one literal registry; a runtime is imported only when it is used.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from devenv.core.errors import UsageError
from devenv.runtime.base import (
    Address,
    AddressInUse,
    Backends,
    Instance,
    InstanceSpec,
    OutputLine,
    Resources,
    RunResult,
    Runtime,
)

RUNTIMES: dict[str, str] = {
    "local": "devenv.runtime.local:LocalRuntime",
    "docker": "devenv.runtime.docker:DockerRuntime",
    "kubernetes": "devenv.runtime.kubernetes:KubernetesRuntime",
}
DEFAULT = "local"


def get_runtime(name: str, root: Path) -> Runtime:
    if name not in RUNTIMES:
        raise UsageError(f"no runtime '{name}'", hint="runtimes: " + ", ".join(RUNTIMES))
    module, _, cls = RUNTIMES[name].partition(":")
    factory = getattr(importlib.import_module(module), cls)
    runtime: Runtime = factory(root)
    return runtime


class Runtimes:
    """The engine's runtimes, each made on first use; a service's plan names its own."""

    def __init__(self, root: Path):
        self.root = root
        self._made: dict[str, Runtime] = {}

    def __call__(self, name: str) -> Runtime:
        if name not in self._made:
            self._made[name] = get_runtime(name, self.root)
        return self._made[name]

    def recover(self) -> dict[str, int]:
        """What dead engines left on every runtime, stopped: {runtime: how many}."""
        found = {name: self(name).recover() for name in RUNTIMES}
        return {name: n for name, n in found.items() if n}

    async def close(self) -> None:
        for runtime in self._made.values():
            await runtime.close()


__all__ = ["DEFAULT", "RUNTIMES", "Address", "AddressInUse", "Backends", "Instance",
           "InstanceSpec", "OutputLine", "Resources", "RunResult", "Runtime", "Runtimes",
           "get_runtime"]
