"""Markdown text that says what it holds: code spans that survive backticks, table cells
that survive pipes, prose that is not taken for HTML."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence


def code(text: str) -> str:
    """`text` as a code span, whatever backticks it holds."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def prose(text: str) -> str:
    """Words from the configuration (a description, a doc): `<SERVICE>` is not HTML."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def cell(text: str) -> str:
    """One table cell: one line, pipes escaped (also inside code spans, as GFM wants)."""
    return " ".join(text.split("\n")).replace("|", "\\|")


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return lines


def names(items: Iterable[str]) -> str:
    """Names as code, comma-separated; a dash for none."""
    shown = [code(i) for i in items]
    return ", ".join(shown) if shown else "-"
