"""What devenv puts in a service's environment for each of its dependencies, and the
warnings when the user's own value (an env_file, `env:`) takes the place of one of them.

For a dependency FOO (its name upper-cased, anything but letters and digits as `_`):
FOO_URL, FOO_HOST and FOO_PORT; for a data service also the kind's URL variable
(DATABASE_URL, REDIS_URL) and the kind's client variables (PGHOST…, REDIS_HOST…). The first
dependency that gives a variable wins. A value the user sets wins over all of them. Between
two services run as containers (the docker runtime), FOO_URL names FOO's alias on the
project's network and the port it listens on there.

The data kinds are asked through the `data` registry (imported lazily, as for a kind's
settings): this module names no kind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devenv.core.paths import StateDir
from devenv.core.secrets import MASK, looks_secret

if TYPE_CHECKING:
    from devenv.config.load import EnvValue, Source
    from devenv.config.model import Project
    from devenv.data.base import DataService

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Injected:
    value: str
    dependency: str
    secrets: tuple[str, ...] = ()  # parts of `value` never shown

    @property
    def shown(self) -> str:
        value = self.value
        for secret in self.secrets:
            value = value.replace(f":{secret}@", ":***@")
        return value


def var_prefix(name: str) -> str:
    """A service's name as a variable's prefix: `order-db` → ORDER_DB."""
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


def data_service(project: Project, root: Path, name: str) -> DataService[Any]:
    from devenv.data.base import DataService

    svc = project.services[name]
    assert svc.port is not None
    if not project.in_container(name):
        return DataService(name, svc.kind, svc.settings, StateDir(root).data / name, svc.port)
    from devenv.data import kind_of
    from devenv.data.container import volume_name

    return DataService(name, svc.kind, svc.settings, StateDir(root).data / name, svc.port,
                       image=svc.image or kind_of(svc.kind).image,
                       volume=volume_name(root, name), project=str(root))


def dependency_env(project: Project, root: Path, name: str) -> dict[str, Injected]:
    """Every variable devenv injects into service `name` for its dependencies."""
    from devenv import data as kinds

    out: dict[str, Injected] = {}
    for dep, how in project.services[name].depends_on.items():
        target = project.services[dep]
        prefix = var_prefix(dep)
        if target.is_data:
            ds = data_service(project, root, dep)
            if project.in_container(name) and project.in_container(dep):
                ds = replace(ds, host=dep)  # container to container: by its alias
            hidden = tuple(kinds.secrets(ds))
            url = kinds.url(ds, how.database)
            given = {kinds.url_var(target.kind): url, f"{prefix}_URL": url,
                     f"{prefix}_HOST": ds.host, f"{prefix}_PORT": str(target.port),
                     **kinds.client_env(ds, how.database)}
        elif target.port and project.in_container(name) and project.in_container(dep):
            hidden = ()  # container to container: by its alias on the project's network
            given = {f"{prefix}_URL": f"http://{dep}:{target.port}",
                     f"{prefix}_HOST": dep, f"{prefix}_PORT": str(target.port)}
        elif target.port:
            hidden = ()
            given = {f"{prefix}_URL": f"http://{HOST}:{target.port}",
                     f"{prefix}_HOST": HOST, f"{prefix}_PORT": str(target.port)}
        else:
            continue
        for var, value in given.items():
            out.setdefault(var, Injected(value, dep, hidden))
    return out


def override_warnings(project: Project, root: Path, source: Source, shown: str,
                      env_files: dict[str, dict[str, EnvValue]]) -> list[str]:
    """One warning for each injected variable a user's value replaces (the user's value
    wins: it is their choice), naming both; no secret shown."""
    warnings: list[str] = []
    for name, svc in project.services.items():
        files = env_files.get(name, {})
        for var, given in dependency_env(project, root, name).items():
            what = "URL" if var.endswith("_URL") else "value"
            injected = (f"the {what} devenv injects for dependency {given.dependency} "
                        f"({MASK if looks_secret(var) else given.shown})")
            if var in svc.env:
                if svc.env[var] != given.value:
                    file, line = source.locate(("services", name, "env", var), shown)
                    at = f"{file}:{line}" if line else file
                    warnings.append(f"{at} services.{name}.env.{var} overrides {injected}; "
                                    "remove it or rename it")
            elif var in files and files[var].value != given.value:
                file, line = files[var].where
                warnings.append(f"services.{name}.env_file {file} sets {var} (line {line}), "
                                f"overriding {injected}; remove it from {file} or rename it")
    return warnings
