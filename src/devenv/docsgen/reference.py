"""The configuration reference: every key of devenv.yaml, its type, default and doc.

Walked from the JSON Schema that `config.schema.json_schema` derives from the model's one
declaration of every key (a data kind's keys included, as written flat on a service), so a
key declared there is documented here with nothing listed by hand.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from devenv.config.model import Project
from devenv.config.schema import json_schema
from devenv.docsgen.markdown import code, prose, table

Row = tuple[str, str, str, str]  # key, type, default, description


def rows() -> list[Row]:
    """One row per key, in declaration order, nested keys after their parent."""
    return list(_walk(json_schema(Project), ""))


def render() -> list[str]:
    return table(["key", "type", "default", "description"],
                 [(code(k), t, d, prose(doc)) for k, t, d, doc in rows()])


def _walk(schema: dict[str, Any], prefix: str) -> Iterator[Row]:
    required = set(schema.get("required", ()))
    for name, sub in schema.get("properties", {}).items():
        path = f"{prefix}{name}"
        default = ("required" if name in required else
                   code(json.dumps(sub["default"])) if "default" in sub else "")
        kind = type_text(sub)
        if kind.startswith("duration") and isinstance(sub.get("default"), int | float):
            default = code(f"{sub['default']:g}s")
        yield path, kind, default, sub.get("description", "")
        inner, suffix = _inner_object(sub)
        if inner is not None:
            yield from _walk(inner, f"{path}{suffix}.")


def _inner_object(schema: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The object whose keys sit under this key (with what the path adds: `.<name>` for a
    mapping's entries, `[]` for a list's items), if there is one."""
    if "properties" in schema:
        return schema, ""
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict) and extra:
        inner, suffix = _inner_object(extra)
        return inner, ".<name>" + suffix
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        inner, suffix = _inner_object(schema["items"])
        return inner, "[]" + suffix
    for option in schema.get("anyOf", ()):
        inner, suffix = _inner_object(option)
        if inner is not None:
            return inner, suffix
    return None, ""


def _is_duration(options: list[dict[str, Any]]) -> bool:
    kinds = sorted(str(o.get("type", "")) for o in options)
    return kinds == ["number", "string"] and any("pattern" in o for o in options)


def type_text(schema: dict[str, Any]) -> str:
    """A schema's type in words: `string`, `list of string`, `duration`, `"a" | "b"`, with
    its declared bounds: `integer (1 to 65535)`."""
    kind = _type(schema)
    return kind + _bounds(schema, "s" if kind.startswith("duration") else "")


def _type(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return " | ".join(code(json.dumps(v)) for v in schema["enum"])
    if "const" in schema:
        return code(json.dumps(schema["const"]))
    options = [o for o in schema.get("anyOf", ()) if o.get("type") != "null"]
    if options:
        if _is_duration(options):
            return "duration (`5s`, `500ms`)"
        if (len(options) == 2 and options[0].get("type") == "array"
                and options[0].get("items") == options[1]):
            return f"list of {type_text(options[1])}"
        shown = list(dict.fromkeys(type_text(o) for o in options))
        return " or ".join(shown)
    kind = schema.get("type")
    if kind == "object":
        extra = schema.get("additionalProperties")
        if "properties" in schema or not isinstance(extra, dict):
            return "mapping"
        return f"mapping of {type_text(extra) if extra else 'any'}"
    if kind == "array":
        return f"list of {type_text(schema.get('items', {}))}"
    if isinstance(kind, str):
        return kind
    if isinstance(kind, list):  # several types: `string or number`
        return " or ".join(str(k) for k in kind)
    return "any"


def _bounds(schema: dict[str, Any], unit: str) -> str:
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        return f" ({low}{unit} to {high}{unit})"
    if low is not None:
        return f" (at least {low}{unit})"
    if high is not None:
        return f" (at most {high}{unit})"
    return ""
