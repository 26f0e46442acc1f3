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
    "kubernetes": "devenv.runtime.kube_runtime:KubernetesRuntime",
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
        self.keep_data = True  # `stop` without --persist-data: a runtime's volumes go too
        self.loaded: object = None  # the project of the last `up`

    def configure(self, loaded: object) -> None:
        """The project as `up` loaded it (profile, the caller's ${VAR}s), for a runtime that
        renders it (kubernetes); given to those made now and later."""
        self.loaded = loaded
        for runtime in self._made.values():
            _configure(runtime, loaded)

    def __call__(self, name: str) -> Runtime:
        if name not in self._made:
            self._made[name] = get_runtime(name, self.root)
            if self.loaded is not None:
                _configure(self._made[name], self.loaded)
        return self._made[name]

    def recover(self) -> dict[str, int]:
        """What dead engines left on every runtime, stopped: {runtime: how many}."""
        found = {name: self(name).recover() for name in RUNTIMES}
        return {name: n for name, n in found.items() if n}

    async def close(self) -> None:
        for runtime in self._made.values():
            if hasattr(runtime, "keep_data"):
                runtime.keep_data = self.keep_data
            await runtime.close()


def _configure(runtime: Runtime, loaded: object) -> None:
    configure = getattr(runtime, "configure", None)
    if configure is not None:
        configure(loaded)


__all__ = ["DEFAULT", "RUNTIMES", "Address", "AddressInUse", "Backends", "Instance",
           "InstanceSpec", "OutputLine", "Resources", "RunResult", "Runtime", "Runtimes",
           "get_runtime"]
