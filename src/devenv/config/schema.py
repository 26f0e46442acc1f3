"""Typed config keys: declared once with type, default and description.

`key()` declares a field; `convert()` turns raw YAML data into the dataclasses, collecting every
problem with its key path; `json_schema()` derives an editor schema from the same declarations.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field
from typing import Any, Literal, NewType, Union, get_args, get_origin, get_type_hints

Duration = NewType("Duration", float)
"""Seconds; written as a number or as `500ms`, `5s`, `2m`."""

Path = tuple[str | int, ...]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def key(
    default: Any = MISSING,
    *,
    doc: str,
    aliases: tuple[str, ...] = (),
    factory: Callable[[], Any] | None = None,
    secret: bool = False,
) -> Any:
    """Declare a config key. Without a default or factory the key is required; a secret
    key's value is never shown (`config show/get` print it masked)."""
    meta = {"doc": doc, "aliases": aliases, "secret": secret}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Issue:
    path: Path
    message: str


def dotted(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def parse_duration(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError
    return float(match.group(1)) * _UNITS[match.group(2)]


def _describe(tp: Any) -> str:
    if tp is Duration:
        return "a duration like 5s or 500ms"
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp) if a is not type(None))
    if get_origin(tp) is list:
        return "a list"
    if get_origin(tp) is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        tp, str(tp)
    )


class _Invalid(Exception):
    pass


def convert(tp: Any, value: Any, path: Path, issues: list[Issue]) -> Any:
    """Convert `value` to `tp`, appending problems to `issues`; raises _Invalid on failure."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if tp is Duration:
        try:
            return parse_duration(value)
        except ValueError:
            return _fail(issues, path, f"expected {_describe(tp)}, got {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        hint = did_you_mean(str(value), [str(a) for a in get_args(tp)])
        return _fail(issues, path, f"expected {_describe(tp)}, got {value!r}{hint}")
    if origin in (Union, types.UnionType):
        return _convert_union(tp, value, path, issues)
    if origin is list:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            value = [value]  # a single item where a list is expected
        if not isinstance(value, list):
            return _fail(issues, path, f"expected {_describe(tp)}, got {_kind(value)}")
        (item_tp,) = get_args(tp)
        return _collect([(path + (i,), item_tp, v) for i, v in enumerate(value)], issues, list)
    if origin is dict:
        if not isinstance(value, dict):
            return _fail(issues, path, f"expected a mapping, got {_kind(value)}")
        _, val_tp = get_args(tp)
        items = [(path + (str(k),), val_tp, v) for k, v in value.items()]
        converted = _collect(items, issues, list)
        return dict(zip((str(k) for k in value), converted, strict=True))
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, path, issues)
    return _convert_scalar(tp, value, path, issues)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: f"{value!r}", bool: f"{value}"}.get(
        type(value), repr(value)
    )


def _fail(issues: list[Issue], path: Path, message: str) -> Any:
    issues.append(Issue(path, message))
    raise _Invalid


def _collect(items: list[tuple[Path, Any, Any]], issues: list[Issue], into: Any) -> Any:
    out, failed = [], False
    for path, tp, value in items:
        try:
            out.append(convert(tp, value, path, issues))
        except _Invalid:
            failed = True
    if failed:
        raise _Invalid
    return into(out)


def _convert_union(tp: Any, value: Any, path: Path, issues: list[Issue]) -> Any:
    options = get_args(tp)
    if value is None and type(None) in options:
        return None
    # Try each option quietly; report against the most specific (first structured) one.
    for option in options:
        if option is type(None):
            continue
        trial: list[Issue] = []
        try:
            return convert(option, value, path, trial)
        except _Invalid:
            continue
    structured = [o for o in options if dataclasses.is_dataclass(o) or get_origin(o) is list]
    if structured and isinstance(value, dict | list):
        return convert(structured[0], value, path, issues)
    return _fail(issues, path, f"expected {_describe(tp)}, got {_kind(value)}")


def _convert_scalar(tp: Any, value: Any, path: Path, issues: list[Issue]) -> Any:
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    if tp is str and isinstance(value, bool):
        return "true" if value else "false"
    return _fail(issues, path, f"expected {_describe(tp)}, got {_kind(value)}")


def _convert_dataclass(tp: Any, value: Any, path: Path, issues: list[Issue]) -> Any:
    expand = getattr(tp, "expand", None)  # a classmethod turning a shorthand into a mapping
    if expand is not None:
        value = expand(value)
    if value is None:
        value = {}
    if not isinstance(value, dict):
        return _fail(issues, path, f"expected a mapping, got {_kind(value)}")
    hints = get_type_hints(tp)
    names: dict[str, dataclasses.Field[Any]] = {}
    for f in dataclasses.fields(tp):
        names[f.name] = f
        for alias in f.metadata.get("aliases", ()):
            names[alias] = f
    kwargs: dict[str, Any] = {}
    failed = False
    for raw_key, raw_value in value.items():
        name = str(raw_key)
        if name not in names:
            known = [n.name for n in dataclasses.fields(tp)]
            issues.append(Issue(path + (name,), f"unknown key{did_you_mean(name, known)}"))
            failed = True
            continue
        f = names[name]
        if f.name in kwargs:
            issues.append(Issue(path + (name,), f"'{name}' repeats key '{f.name}'"))
            failed = True
            continue
        try:
            kwargs[f.name] = convert(hints[f.name], raw_value, path + (name,), issues)
        except _Invalid:
            failed = True
    for f in dataclasses.fields(tp):
        required = f.default is MISSING and f.default_factory is MISSING
        if required and f.name not in kwargs and f.init:
            issues.append(Issue(path, f"missing required key '{f.name}'"))
            failed = True
    if failed:
        raise _Invalid
    obj = tp(**kwargs)
    found = [Issue(path + sub, message) for sub, message in getattr(obj, "problems", list)()]
    if found:
        issues.extend(found)
        raise _Invalid
    return obj


def build(tp: Any, value: Any) -> tuple[Any, list[Issue]]:
    """Convert a whole document; returns (object or None, issues)."""
    issues: list[Issue] = []
    try:
        return convert(tp, value, (), issues), issues
    except _Invalid:
        return None, issues


# ---------------------------------------------------------------- JSON Schema


def json_schema(tp: Any, *, partial: bool = False) -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) for `tp`, derived from the same declarations."""
    origin = get_origin(tp)
    if tp is Any:
        return {}
    if tp is Duration:
        return {"anyOf": [{"type": "number"}, {"type": "string", "pattern": _DURATION.pattern}]}
    if origin is Literal:
        return {"enum": list(get_args(tp))}
    if origin in (Union, types.UnionType):
        opts = [json_schema(a) for a in get_args(tp) if a is not type(None)]
        if type(None) in get_args(tp):
            opts.append({"type": "null"})
        return opts[0] if len(opts) == 1 else {"anyOf": opts}
    if origin is list:
        item = json_schema(get_args(tp)[0])
        return {"anyOf": [{"type": "array", "items": item}, item]}
    if origin is dict:
        return {"type": "object", "additionalProperties": json_schema(get_args(tp)[1])}
    if dataclasses.is_dataclass(tp):
        return _dataclass_schema(tp, partial)
    return {"type": {str: "string", int: "integer", float: "number", bool: "boolean"}[tp]}


def _dataclass_schema(tp: Any, partial: bool) -> dict[str, Any]:
    hints = get_type_hints(tp)
    props: dict[str, Any] = {}
    required = []
    for f in dataclasses.fields(tp):
        sub = json_schema(hints[f.name])
        sub["description"] = f.metadata.get("doc", "")
        if f.default is not MISSING and isinstance(f.default, str | int | float | bool):
            sub["default"] = f.default
        props[f.name] = sub
        for alias in f.metadata.get("aliases", ()):
            props[alias] = {**sub, "description": f"Alias of `{f.name}`."}
        if f.default is MISSING and f.default_factory is MISSING and not partial:
            required.append(f.name)
    schema: dict[str, Any] = {
        "type": "object",
        "properties": props,
        "additionalProperties": False,
    }
    if tp.__doc__:
        schema["description"] = " ".join(tp.__doc__.split())
    if required:
        schema["required"] = required
    for name, alternative in getattr(tp, "FIELD_SHORTHANDS", {}).items():
        sub = props[name]
        props[name] = {"anyOf": [{k: v for k, v in sub.items() if k != "description"},
                                 alternative], "description": sub["description"]}
    short = getattr(tp, "SHORTHAND_SCHEMA", None)
    if short is not None:
        return {"anyOf": [schema, short], "description": schema.get("description", "")}
    return schema
