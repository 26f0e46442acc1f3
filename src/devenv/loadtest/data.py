"""Where a scenario's values come from: inline lists and CSV files (one row an iteration),
values taken from earlier responses by JSON path, and `${name}` templates that use them."""

from __future__ import annotations

import csv
import json
import random
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)((?:\.[A-Za-z0-9_]+)*)\}")
_JSON_PART = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]|\[\"([^\"]*)\"\]|\['([^']*)'\]")
MISSING = object()


class TemplateError(Exception):
    """A template names a value this iteration does not have."""


def names_in(text: str) -> set[str]:
    return {m.group(1) for m in _VAR.finditer(text)}


def fields_in(text: str) -> set[tuple[str, str]]:
    """The (name, first field) of each `${name.field...}` in `text`."""
    return {(m.group(1), m.group(2).split(".")[1]) for m in _VAR.finditer(text) if m.group(2)}


def _lookup(values: Mapping[str, Any], name: str, fields: str) -> Any:
    if name not in values:
        raise TemplateError(f"no value named '{name}'")
    value = values[name]
    for field in fields.split(".")[1:]:
        if isinstance(value, Mapping) and field in value:
            value = value[field]
        elif isinstance(value, list) and field.isdigit() and int(field) < len(value):
            value = value[int(field)]
        else:
            raise TemplateError(f"'{name}{fields}': no field '{field}'")
    return value


def render_text(text: str, values: Mapping[str, Any],
                escape: Callable[[str], str] | None = None) -> str:
    """`text` with its `${...}` filled, each value passed through `escape` if given."""
    if "${" not in text:
        return text

    def one(match: re.Match[str]) -> str:
        value = _lookup(values, match.group(1), match.group(2))
        shown = value if isinstance(value, str) else json.dumps(value)
        return escape(shown) if escape else shown

    return _VAR.sub(one, text)


def in_path(value: str) -> str:
    """A value put in a URL path or query: percent-encoded (`/`, `?`, `&`, spaces too)."""
    return urllib.parse.quote(value, safe="")


def in_header(value: str) -> str:
    """A value put in a header: a line break would end the header (request smuggling)."""
    if any(c in value for c in "\r\n\0"):
        raise TemplateError("a header value cannot hold a line break")  # (no value: it
        # would be a key of the run's failure counts, one a data row)
    return value


def render(node: Any, values: Mapping[str, Any]) -> Any:
    """A JSON body with its `${...}` filled: a string that is one reference alone keeps the
    value's type (a number stays a number)."""
    if isinstance(node, str):
        whole = _VAR.fullmatch(node)
        if whole:
            return _lookup(values, whole.group(1), whole.group(2))
        return render_text(node, values)
    if isinstance(node, dict):
        return {k: render(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [render(v, values) for v in node]
    return node


def json_path(text: str) -> tuple[str | int, ...]:
    """`$.order.id`, `$[0].id`, `$.items[2]["sku"]` as parts; ValueError when not one."""
    if not text.startswith("$"):
        raise ValueError("a JSON path starts with $, e.g. $.order_id or $[0].id")
    parts: list[str | int] = []
    at = 1
    while at < len(text):
        match = _JSON_PART.match(text, at)
        if not match:
            raise ValueError(f"cannot read the JSON path at {text[at:]!r}")
        key, index, quoted, single = match.groups()
        parts.append(int(index) if index is not None else (key or quoted or single or ""))
        at = match.end()
    return tuple(parts)


def extract(doc: Any, parts: tuple[str | int, ...]) -> Any:
    """The value at `parts` in a decoded JSON document, or MISSING."""
    for part in parts:
        if isinstance(part, int) and isinstance(doc, list) and -len(doc) <= part < len(doc):
            doc = doc[part]
            continue
        if isinstance(part, str) and isinstance(doc, dict) and part in doc:
            doc = doc[part]
            continue
        return MISSING
    return doc


def _scalar(text: str) -> Any:
    """A cell as a number when the number is written back the same (`42`, `-1.5`); as text
    otherwise, so `007`, `1_000`, `1e3`, `1.50` or `-0` (an id, a code) go as written."""
    for kind in (int, float):
        try:
            number = kind(text)
        except ValueError:
            continue
        return number if repr(number) == text and text[-1:].isdigit() else text
    return text  # (`nan`, `inf`: text too)


def read_csv(path: Path) -> list[dict[str, Any]]:
    """The rows of a CSV file with a header line, numbers as numbers; OSError/ValueError."""
    with path.open(newline="", encoding="utf-8-sig") as fh:  # (a BOM is not a column's)
        reader = csv.DictReader(fh)
        if not reader.fieldnames:
            raise ValueError("no header line")
        rows = [{k: _scalar(v or "") for k, v in row.items() if k is not None} for row in reader]
    if not rows:
        raise ValueError("no rows under the header")
    return rows


@dataclass(frozen=True)
class DataSource:
    """Values a scenario draws from, one per iteration: in order (cycling) or at random."""

    name: str
    rows: tuple[Any, ...]
    order: str = "cycle"  # or "random"


class Draw:
    """One process's cursor over its scenario's data sources."""

    def __init__(self, sources: tuple[DataSource, ...], offset: int = 0, seed: int = 0):
        self.sources = sources
        self.at = {s.name: offset for s in sources}
        self.random = random.Random(seed)

    def next(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for s in self.sources:
            if s.order == "random":
                values[s.name] = self.random.choice(s.rows)
            else:
                values[s.name] = s.rows[self.at[s.name] % len(s.rows)]
                self.at[s.name] += 1
        return values
