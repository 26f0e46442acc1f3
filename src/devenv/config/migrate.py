"""Schema migrations of devenv.yaml: version N → N+1, as steps on the YAML document.

Each migration is data (`MIGRATIONS`): renames of keys (a `*` matches any name, such as a
service's) and pinned defaults (a key whose default changed gets the old default written
where it was not set, so the file keeps meaning what it meant). The same steps run two ways:

- in memory, when a file of an older version is read (`upgrade_source`: the loader keeps
  reading old files, and each key keeps the line it was written on), and
- on the file itself (`upgrade_text`, for `devenv migrate`): a ruamel round trip, so
  comments, order and layout stay; `version:` is set last.

Version 2 retires the alias `cwd` of a service's `path` (and in profiles' overrides and the
personal overrides): one key, one name, in the docs, the JSON Schema and `config get`.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from devenv.config.model import CURRENT_VERSION

Pattern = tuple[str, ...]


@dataclass(frozen=True)
class Rename:
    """`old` (a pattern; `*` any name) is now called `new` (its last part only)."""

    old: Pattern
    new: str
    why: str


@dataclass(frozen=True)
class Pin:
    """The default of `path` changed: write the old one, `value`, where the key is absent
    (under every match of the parent pattern that exists)."""

    path: Pattern
    value: Any
    why: str


Step = Rename | Pin


@dataclass(frozen=True)
class Migration:
    version: int  # from this version to the next
    steps: tuple[Step, ...]


_CWD = "`cwd` was an alias of `path`; version 2 keeps one name per key"
MIGRATIONS: dict[int, Migration] = {
    1: Migration(1, (
        Rename(("services", "*", "cwd"), "path", _CWD),
        Rename(("profiles", "*", "overrides", "*", "cwd"), "path", _CWD),
    )),
}


@dataclass(frozen=True)
class Change:
    """One change a step made, at a concrete key path."""

    version: int  # the migration's source version
    path: tuple[str, ...]
    what: str  # "renamed to X" / "set to V"
    why: str

    def __str__(self) -> str:
        return f"{'.'.join(self.path)}: {self.what} ({self.why})"


def chain(start: int, registry: dict[int, Migration] | None = None,
          target: int = CURRENT_VERSION) -> list[Migration]:
    """The migrations from version `start` to `target`, in order."""
    registry = MIGRATIONS if registry is None else registry
    out = []
    for version in range(start, target):
        if version not in registry:
            raise KeyError(version)
        out.append(registry[version])
    return out


def _matches(node: Any, pattern: Pattern, path: tuple[str, ...] = ()
             ) -> Iterator[tuple[Any, str, tuple[str, ...]]]:
    """(the mapping, the key, its full path) for every mapping entry the pattern reaches
    (the last part may be absent from the mapping)."""
    if not isinstance(node, dict) or not pattern:
        return
    head, rest = pattern[0], pattern[1:]
    if not rest:
        yield node, head, path + (head,)
        return
    for key in list(node) if head == "*" else [head]:
        if key in node:
            yield from _matches(node[key], rest, path + (str(key),))


def apply(doc: dict[str, Any], migrations: list[Migration],
          moved: Any = None) -> list[Change]:
    """Run the steps on `doc` (a plain or round-trip mapping) in place; the changes made.
    `moved(old_path, new_path)` is told of each rename (to carry line numbers along)."""
    changes: list[Change] = []
    for migration in migrations:
        for step in migration.steps:
            if isinstance(step, Rename):
                for mapping, key, path in list(_matches(doc, step.old)):
                    if key not in mapping:
                        continue
                    new_path = path[:-1] + (step.new,)
                    if step.new in mapping:
                        changes.append(Change(migration.version, path, f"removed: `{step.new}` "
                                              "is set too and wins", step.why))
                        _delete(mapping, key)
                        continue
                    _rename(mapping, key, step.new)
                    if moved is not None:
                        moved(path, new_path)
                    changes.append(Change(migration.version, path,
                                          f"renamed to {'.'.join(new_path)}", step.why))
            else:
                for mapping, key, path in list(_matches(doc, step.path)):
                    if key not in mapping:
                        mapping[key] = step.value
                        changes.append(Change(migration.version, path,
                                              f"set to {step.value!r}", step.why))
    return changes


def _rename(mapping: Any, old: str, new: str) -> None:
    """Rename a key where it stands (a round-trip mapping keeps its comments)."""
    keys = list(mapping)
    position = keys.index(old)
    value = mapping[old]
    ca = getattr(mapping, "ca", None)
    comment = ca.items.pop(old, None) if ca is not None else None
    if hasattr(mapping, "insert"):
        del mapping[old]
        mapping.insert(position, new, value)
        if comment is not None and ca is not None:
            ca.items[new] = comment
    else:  # a plain dict: rebuild in order
        items = [(new if k == old else k, value if k == old else mapping[k]) for k in keys]
        mapping.clear()
        mapping.update(items)


def _delete(mapping: Any, key: str) -> None:
    del mapping[key]


def file_version(data: dict[str, Any]) -> int | None:
    value = data.get("version")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def upgrade_data(data: dict[str, Any], version: int, where: dict[Any, Any] | None = None,
                 *, mark: bool = True) -> list[Change]:
    """A document of `version` (older than the current) brought up to date in place, in
    memory; `where` (key path → line) follows the renames. Unknown versions: no change."""
    try:
        migrations = chain(version)
    except KeyError:
        return []

    def moved(old: tuple[str, ...], new: tuple[str, ...]) -> None:
        if where is None:
            return
        for path in [p for p in where if p[:len(old)] == old]:
            where[new + path[len(old):]] = where.pop(path)

    changes = apply(data, migrations, moved)
    if mark:  # (an overrides layer has no version of its own)
        data["version"] = CURRENT_VERSION
    return changes


@dataclass(frozen=True)
class Upgraded:
    old_version: int
    new_version: int
    text: str
    changes: list[Change]

    @property
    def changed(self) -> bool:
        return self.old_version != self.new_version or bool(self.changes)


def upgrade_text(text: str, shown: str = "devenv.yaml",
                 registry: dict[int, Migration] | None = None,
                 target: int = CURRENT_VERSION) -> Upgraded:
    """devenv.yaml's text at the `target` version, with its comments and layout; a
    ConfigError for a file that is not YAML, or a version this devenv cannot migrate."""
    from devenv.config.edit import _roundtrip
    from devenv.config.load import parse_yaml
    from devenv.core.errors import ConfigError, Problem

    yaml = _roundtrip()
    doc = parse_yaml(text, shown, yaml)
    version = file_version(doc)
    if version is None or version < 1 or version > target:
        line = doc.lc.key("version")[0] + 1 if "version" in doc and hasattr(doc, "lc") else 1
        said = "no version" if version is None else f"version {version}"
        raise ConfigError([Problem(shown, line, "version", f"{said}: this devenv migrates "
                                   f"versions 1 to {target}" + ("; upgrade devenv" if version
                                                                and version > target else ""))])
    changes = apply(doc, chain(version, registry, target))
    if version != target:
        doc["version"] = target
    if version == target and not changes:
        return Upgraded(version, target, text, [])
    buf = io.StringIO()
    yaml.dump(doc, buf)
    return Upgraded(version, target, buf.getvalue(), changes)


def upgrade_overrides(text: str, version: int, shown: str) -> Upgraded:
    """A layer with no `version:` of its own (.devenv/local.yaml, a config branch's
    overrides) migrated from the version of the devenv.yaml it goes with."""
    from devenv.config.edit import _roundtrip
    from devenv.config.load import parse_yaml

    yaml = _roundtrip()
    doc = parse_yaml(text, shown, yaml)
    changes = apply(doc, chain(version)) if doc else []
    if not changes:
        return Upgraded(version, CURRENT_VERSION, text, [])
    buf = io.StringIO()
    yaml.dump(doc, buf)
    return Upgraded(version, CURRENT_VERSION, buf.getvalue(), changes)
