"""Which configuration keys and values are secrets, shared by everything that shows or
shares configuration (the audit trail, config branches and `sync`'s diff, generated docs):
keys the model declares secret, names that look like secrets, and a project's known secret
values."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args, get_type_hints

from devenv.core.secrets import MASK, looks_secret

if TYPE_CHECKING:
    from devenv.config.load import Loaded

# the user-info of a URL (`https://user:TOKEN@host`, `https://TOKEN@host`)
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s?#]+@")
_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:?[-?][^}]*)?\}")


@cache
def secret_keys() -> frozenset[str]:
    """The names of the keys the config model declares secret, in any object of it (a data
    kind's keys included): walked from the declarations, not listed here."""
    from devenv.config.model import Project
    from devenv.config.schema import variants_of

    found: set[str] = set()
    seen: set[type] = set()

    def classes(tp: Any) -> Iterator[type]:
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            yield tp
        for arg in get_args(tp):
            yield from classes(arg)

    def walk(cls: type) -> None:
        if cls in seen:
            return
        seen.add(cls)
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("secret"):
                found.add(f.name)
            for sub in classes(hints[f.name]):
                walk(sub)
        variants = variants_of(cls)
        if variants is not None:
            for sub in variants.classes().values():
                walk(sub)

    walk(Project)
    return frozenset(found)


def secret_name(name: str) -> bool:
    """A key path or option name that holds a secret: one of its parts is a key declared
    secret (`services.db.password`, `…users.alice`), or its last part is named like one."""
    parts = [p for p in name.lstrip("-").replace("-", "_").split(".") if p]
    return bool(parts) and (any(p in secret_keys() for p in parts) or looks_secret(parts[-1]))


def strip_credentials(text: str) -> str:
    """`text` with the credentials of every URL in it masked (`https://********@host`)."""
    return _USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", text) if "@" in text else text


def env_key(name: str) -> bool:
    """A key path to a variable (`services.api.env.X`, `profiles.p.env.X`): its value is
    the service's, which devenv cannot tell is not a secret."""
    parts = name.split(".")
    return "env" in parts[:-1]


def only_references(value: Any) -> bool:
    """A value that holds no secret itself: empty, or only `${VAR}` references."""
    if isinstance(value, list):
        return all(only_references(v) for v in value)
    if isinstance(value, dict):
        return all(only_references(v) for v in value.values())
    return value is None or (isinstance(value, str) and not _REFERENCE.sub("", value).strip())


def secret_values(flat: Mapping[str, Any]) -> list[str]:
    """The dotted keys of a flattened layer that hold a secret value (not a reference)."""
    return sorted(k for k, v in flat.items() if secret_name(k) and not only_references(v))


def known_secrets(root: Path) -> list[str]:
    """The project's secret values (see `secrets_of`) and those of variables named like a
    secret in the caller's environment. A configuration that does not load gives what the
    environment has."""
    found = {v for k, v in os.environ.items() if looks_secret(k) and v}
    try:
        from devenv.config.load import load

        loaded = load(root)
    except Exception:  # a broken configuration: the command says so
        return sorted(found)
    return sorted(found | set(secrets_of(loaded)))


def secrets_of(loaded: Loaded) -> list[str]:
    """A loaded configuration's secret values: its data services' secret keys, and variables
    named like a secret in `env`, env files and profiles."""
    from devenv import data as kinds
    from devenv.config.injected import data_service

    project = loaded.project
    found: set[str] = set()
    for name, svc in project.services.items():
        found.update(v for k, v in svc.env.items() if looks_secret(k))
        found.update(v.value for k, v in loaded.env_files.get(name, {}).items()
                     if looks_secret(k))
        if svc.is_data:
            found.update(kinds.secrets(data_service(project, loaded.root, name)))
    for profile in project.profiles.values():
        found.update(v for k, v in profile.env.items() if looks_secret(k))
    return sorted(v for v in found if v)
