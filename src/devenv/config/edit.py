"""`config get/set/unset`: read the effective value; edit YAML keeping comments and order.

An edit is validated together with the rest of the configuration before it is written, and
written atomically, so a bad `set` changes nothing.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from devenv.config.load import load, parse_yaml, read_text
from devenv.config.schema import declared_items
from devenv.core.atomic import write_atomic
from devenv.core.errors import UsageError
from devenv.core.paths import StateDir, config_file
from devenv.core.secrets import MASK, looks_secret

LOCAL_HEADER = "# Personal overrides of devenv.yaml for this checkout (not committed).\n"


def to_plain(value: Any) -> Any:
    """The model as plain data; keys declared secret, or named like one, are masked. A data
    service's kind keys show flat on it, as they are written."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _masked(v) if f.metadata.get("secret") else to_plain(v)
                for f, v in declared_items(value)}
    if isinstance(value, dict):
        return {k: MASK if isinstance(v, str) and looks_secret(k) else to_plain(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: MASK for k in value}
    return MASK if value else value


def split_key(key: str) -> list[str]:
    parts = [p for p in key.split(".")]
    if not key or any(not p for p in parts):
        raise UsageError(f"'{key}' is not a key path", hint="e.g. services.api.port")
    return parts


def get_value(plain: Any, key: str) -> Any:
    node = plain
    walked: list[str] = []
    for part in split_key(key):
        if not isinstance(node, dict) or part not in node:
            from devenv.config.schema import did_you_mean

            options = node.keys() if isinstance(node, dict) else []
            where = ".".join(walked) or "the top level"
            raise UsageError(f"no key '{part}' under {where}{did_you_mean(part, options)}")
        node = node[part]
        walked.append(part)
    return node


def parse_value(text: str) -> Any:
    """A value written on the command line, read as YAML: 3, true, [a, b], {x: 1}, text."""
    try:
        return YAML(typ="safe").load(text)
    except Exception:
        return text


def _roundtrip() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def edit(root: Path, key: str, value: Any, *, project: bool, remove: bool = False) -> Path:
    """Set (or remove) `key` in devenv.yaml or .devenv/local.yaml; returns the file written."""
    parts = split_key(key)
    state = StateDir(root)
    target = config_file(root) if project else state.local_overrides
    yaml = _roundtrip()
    shown = _shown(root, target)
    text = read_text(target, shown) if target.exists() else LOCAL_HEADER
    doc = parse_yaml(text, shown, yaml) or CommentedMap()  # a broken file: fix it first
    node = doc
    for part in parts[:-1]:
        child = node.get(part)
        if child is None and not remove:
            child = node[part] = CommentedMap()
        if not isinstance(child, dict):
            raise UsageError(f"'{key}' is not set in {target.name}" if remove
                             else f"'{part}' in {target.name} is not a mapping")
        node = child
    if remove:
        if parts[-1] not in node:
            raise UsageError(f"'{key}' is not set in {_shown(root, target)}",
                             hint="use --project for devenv.yaml" if not project else None)
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    buf = io.StringIO()
    yaml.dump(doc, buf)
    if not project and text == LOCAL_HEADER:
        new_text = LOCAL_HEADER + buf.getvalue()
    else:
        new_text = buf.getvalue()
    load(root, texts={target: new_text})  # raises ConfigError, and nothing is written
    if not project:
        state.ensure()
    write_atomic(target, new_text, mode=0o644 if project else 0o600)  # local.yaml: personal
    return target


def _shown(root: Path, path: Path) -> str:
    return str(path.relative_to(root))
