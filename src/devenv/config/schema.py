"""Typed config keys: declared once with type, default and description.

`key()` declares a field; `convert()` turns raw YAML data into the dataclasses, collecting every
problem with its key path; `json_schema()` derives an editor schema from the same declarations.
`Variants` lets a dataclass take extra keys declared by another class, chosen by one of its
fields (a service's `kind` brings that kind's keys).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass, field
from typing import Any, Literal, NewType, Union, get_args, get_origin, get_type_hints

Duration = NewType("Duration", float)
"""Seconds, more than 0; written as a number or as `500ms`, `5s`, `2m`."""

Path = tuple[str | int, ...]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
# the JSON Schema's pattern of a duration written as text: as _DURATION, not all zeros
_DURATION_TEXT = r"^\s*(?=[0-9.]*[1-9])\d+(?:\.\d+)?\s*(ms|s|m|h)?\s*$"


@dataclass(frozen=True)
class Names:
    """What the names of a mapping key's entries may be (service names, environment
    variables): a pattern (for the JSON Schema too) and the rule as a message states it."""

    pattern: str  # anchored (^…$): JSON Schema patterns match anywhere
    rule: str
    max_length: int | None = None

    def problem(self, name: str) -> str | None:
        if self.max_length is not None and len(name) > self.max_length:
            return f"is {len(name)} characters long; {self.rule}"
        if not re.fullmatch(self.pattern, name):
            return f"is not a valid name; {self.rule}"
        return None


def key(
    default: Any = MISSING,
    *,
    doc: str,
    aliases: tuple[str, ...] = (),
    factory: Callable[[], Any] | None = None,
    secret: bool = False,
    minimum: int | None = None,
    maximum: int | None = None,
    names: Names | None = None,
) -> Any:
    """Declare a config key. Without a default or factory the key is required; a secret
    key's value is never shown (`config show/get` print it masked). `minimum`/`maximum`
    bound a number (inclusive); `names` rules the names of a mapping's entries. Both are
    checked as the file is read and shown in the JSON Schema."""
    meta = {"doc": doc, "aliases": aliases, "secret": secret, "minimum": minimum,
            "maximum": maximum, "names": names}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def bounds(f: dataclasses.Field[Any]) -> tuple[int | None, int | None]:
    """A key's declared (minimum, maximum)."""
    return f.metadata.get("minimum"), f.metadata.get("maximum")


def bound_problem(f: dataclasses.Field[Any], value: Any) -> str | None:
    low, high = bounds(f)
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    if low is not None and high is not None and not low <= value <= high:
        return f"{value} is out of range: give {low} to {high}"
    if low is not None and value < low:
        return f"{value} is too small: give at least {low}"
    if high is not None and value > high:
        return f"{value} is too large: give at most {high}"
    return None


@dataclass(frozen=True)
class Variants:
    """Extra keys of a dataclass, declared by a variant class that a discriminator field picks.

    Set as the class attribute `VARIANTS` of the dataclass. Keys it does not declare itself are
    converted with the variant class of the discriminator's value, into the field `field`; they
    are written flat beside its own keys, and errors keep their paths (`services.db.databases`).
    """

    discriminator: str  # the field whose value picks the variant, e.g. "kind"
    field: str  # the field that receives the variant's object (not a key of its own)
    names: Callable[[], list[str]]  # every valid value of the discriminator
    resolve: Callable[[str], type | None]  # a value's variant class; None: no extra keys
    owner: str = "this object"  # how a message names the object: "this service is kind redis"

    def classes(self) -> dict[str, type]:
        """Every value that brings extra keys, with its class."""
        found = {name: self.resolve(name) for name in self.names()}
        return {name: cls for name, cls in found.items() if cls is not None}


def variants_of(tp: Any) -> Variants | None:
    found = getattr(tp, "VARIANTS", None)
    return found if isinstance(found, Variants) else None


def _key_names(tp: Any) -> dict[str, dataclasses.Field[Any]]:
    """A dataclass's keys, aliases included (a variant field is not a key)."""
    variants = variants_of(tp)
    names: dict[str, dataclasses.Field[Any]] = {}
    for f in dataclasses.fields(tp):
        if variants is not None and f.name == variants.field:
            continue
        names[f.name] = f
        for alias in f.metadata.get("aliases", ()):
            names[alias] = f
    return names


def _fields(tp: Any) -> list[str]:
    """A dataclass's key names (no aliases), as unknown keys are matched against."""
    return list(dict.fromkeys(f.name for f in _key_names(tp).values()))


def declared_items(obj: Any) -> Iterator[tuple[dataclasses.Field[Any], Any]]:
    """(field, value) of every key of a dataclass object, its variant's keys flat after its own."""
    variants = variants_of(type(obj))
    for f in dataclasses.fields(obj):
        if variants is not None and f.name == variants.field:
            continue
        yield f, getattr(obj, f.name)
    extra = getattr(obj, variants.field) if variants is not None else None
    if extra is not None:
        yield from declared_items(extra)


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
            seconds = parse_duration(value)
        except ValueError:
            return _fail(issues, path, f"expected {_describe(tp)}, got {value!r}")
        if not math.isfinite(seconds) or seconds <= 0:
            return _fail(issues, path, f"must be more than 0 (a duration like 5s or 500ms), "
                         f"got {value!r}")
        return seconds
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
    names = _key_names(tp)
    variants = variants_of(tp)
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    failed = False
    for raw_key, raw_value in value.items():
        name = str(raw_key)
        if name not in names:
            if variants is not None:
                extra[name] = raw_value  # the variant's keys, sorted out below
                continue
            issues.append(Issue(path + (name,), f"unknown key{did_you_mean(name, _fields(tp))}"))
            failed = True
            continue
        f = names[name]
        if f.name in kwargs:
            issues.append(Issue(path + (name,), f"'{name}' repeats key '{f.name}'"))
            failed = True
            continue
        found = _names_issues(f, raw_value, path + (name,))
        try:
            kwargs[f.name] = convert(hints[f.name], raw_value, path + (name,), issues)
            found += _bounds_issues(f, kwargs[f.name], path + (name,))
        except _Invalid:
            failed = True
        if found:
            issues.extend(found)
            failed = True
    if variants is not None:
        try:
            given = any(names[str(k)].name == variants.discriminator
                        for k in value if str(k) in names)
            kwargs[variants.field] = _convert_variant(tp, variants, kwargs, extra, given, path,
                                                      issues)
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


def _bounds_issues(f: dataclasses.Field[Any], value: Any, path: Path) -> list[Issue]:
    """A converted key's declared bounds."""
    problem = bound_problem(f, value)
    return [Issue(path, problem)] if problem else []


def _names_issues(f: dataclasses.Field[Any], raw: Any, path: Path) -> list[Issue]:
    """The declared rule for the names of a mapping key's entries, checked on what was
    written (so a bad name is reported even when an entry is broken too)."""
    names: Names | None = f.metadata.get("names")
    if names is None or not isinstance(raw, dict):
        return []
    return [Issue(path + (str(entry),), problem) for entry in raw
            if (problem := names.problem(str(entry)))]


def _convert_variant(tp: Any, variants: Variants, kwargs: dict[str, Any], extra: dict[str, Any],
                     given: bool, path: Path, issues: list[Issue]) -> Any:
    """The variant object, from the keys that `tp` does not declare (None: no variant).
    `given`: the discriminator was written (when it is not in `kwargs`, it failed to read)."""
    disc = variants.discriminator
    default = next(f.default for f in dataclasses.fields(tp) if f.name == disc)
    chosen = kwargs.get(disc, None if given or default is MISSING else default)
    names = variants.names()
    valid = chosen in names
    if disc in kwargs and not valid:
        choices = ", ".join(repr(n) for n in names)
        issues.append(Issue(path + (disc,), f"expected one of {choices}, got {chosen!r}"
                            f"{did_you_mean(str(chosen), names)}"))
    cls = variants.resolve(str(chosen)) if valid else None
    own = _key_names(cls) if cls is not None else {}
    others: dict[str, list[str]] = {}  # keys of the other variants, with whose they are
    if any(name not in own for name in extra):  # (only then every variant is looked up)
        for name, other in variants.classes().items():
            if other is not cls:
                for key_name in _key_names(other):
                    others.setdefault(key_name, []).append(name)
    failed = False
    mine: dict[str, Any] = {}
    for name, raw in extra.items():
        if name in own:
            mine[name] = raw
        elif name in others and valid:
            owners = "/".join(others[name])
            issues.append(Issue(path + (name,), f"'{name}' is a {owners} key; "
                                f"{variants.owner} is {disc} {chosen}"))
            failed = True
        elif valid or name not in others:  # (an invalid discriminator is reported already)
            mine_too = [cls] if cls is not None else [] if valid else variants.classes().values()
            options = _fields(tp) + [k for c in mine_too for k in _fields(c)]
            issues.append(Issue(path + (name,), f"unknown key{did_you_mean(name, options)}"))
            failed = True
    result = _convert_dataclass(cls, mine, path, issues) if cls is not None else None
    if failed:
        raise _Invalid
    return result


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
        return {"anyOf": [{"type": "number", "exclusiveMinimum": 0},
                          {"type": "string", "pattern": _DURATION_TEXT}]}
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


def _field_schema(f: dataclasses.Field[Any], hint: Any) -> dict[str, Any]:
    sub = json_schema(hint)
    sub["description"] = f.metadata.get("doc", "")
    low, high = bounds(f)
    if low is not None:
        sub["minimum"] = low
    if high is not None:
        sub["maximum"] = high
    names: Names | None = f.metadata.get("names")
    if names is not None:
        rule: dict[str, Any] = {"pattern": names.pattern}
        if names.max_length is not None:
            rule["maxLength"] = names.max_length
        sub["propertyNames"] = rule
    if f.default is not MISSING and isinstance(f.default, str | int | float | bool):
        sub["default"] = f.default
    return sub


def _dataclass_schema(tp: Any, partial: bool) -> dict[str, Any]:
    hints = get_type_hints(tp)
    variants = variants_of(tp)
    props: dict[str, Any] = {}
    required = []
    for f in dataclasses.fields(tp):
        if variants is not None and f.name == variants.field:
            continue
        sub = _field_schema(f, hints[f.name])
        if variants is not None and f.name == variants.discriminator:
            sub = {"enum": variants.names(), **{k: v for k, v in sub.items() if k != "type"}}
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
    if variants is not None:
        owners = _variant_properties(variants, props)
        rules = _variant_rules(tp, variants, owners)
        if rules and not partial:  # (a partial mapping, e.g. a profile's override, lacks `kind`)
            schema["allOf"] = rules
    for name, alternative in getattr(tp, "FIELD_SHORTHANDS", {}).items():
        sub = props[name]
        props[name] = {"anyOf": [{k: v for k, v in sub.items() if k != "description"},
                                 alternative], "description": sub["description"]}
    short = getattr(tp, "SHORTHAND_SCHEMA", None)
    if short is not None:
        return {"anyOf": [schema, short], "description": schema.get("description", "")}
    return schema


def _variant_properties(variants: Variants, props: dict[str, Any]) -> dict[str, list[str]]:
    """Add every variant's keys to `props`, each described with the variants it belongs to
    ("<variant>: …"); returns which variants declare each key."""
    found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for name, cls in variants.classes().items():
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            sub = _field_schema(f, hints[f.name])
            found.setdefault(f.name, []).append((name, sub))
            for alias in f.metadata.get("aliases", ()):
                found.setdefault(alias, []).append(
                    (name, {**sub, "description": f"Alias of `{f.name}`."}))
    for key_name, entries in found.items():
        docs: dict[str, list[str]] = {}
        bodies: list[dict[str, Any]] = []
        for name, sub in entries:
            docs.setdefault(sub["description"], []).append(name)
            body = {k: v for k, v in sub.items() if k not in ("description", "default")}
            if body not in bodies:
                bodies.append(body)
        merged: dict[str, Any] = bodies[0] if len(bodies) == 1 else {"anyOf": bodies}
        merged["description"] = " ".join(f"{'/'.join(names)}: {doc}"
                                         for doc, names in docs.items())
        defaults = [sub.get("default", MISSING) for _, sub in entries]
        if defaults[0] is not MISSING and all(d == defaults[0] for d in defaults):
            merged["default"] = defaults[0]
        props[key_name] = merged
    return {key_name: [name for name, _ in entries] for key_name, entries in found.items()}


def _variant_rules(tp: Any, variants: Variants, owners: dict[str, list[str]]
                   ) -> list[dict[str, Any]]:
    """For each discriminator value, the other variants' keys are not allowed."""
    default = next(f.default for f in dataclasses.fields(tp) if f.name == variants.discriminator)
    rules = []
    for name in variants.names():
        banned = sorted(k for k, names in owners.items() if name not in names)
        if not banned:
            continue
        when: dict[str, Any] = {"properties": {variants.discriminator: {"const": name}}}
        if name != default:  # the default also applies when the discriminator is not written
            when["required"] = [variants.discriminator]
        rules.append({"if": when, "then": {"properties": dict.fromkeys(banned, False)}})
    return rules
