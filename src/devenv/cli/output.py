"""Everything the CLI prints goes through here: consoles, colours, tables, errors."""

from __future__ import annotations

import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from devenv.core.errors import DevenvError
from devenv.wire import Rolled

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

STATE_STYLE = {
    "healthy": "green", "completed": "green", "starting": "yellow", "waiting": "yellow",
    "unhealthy": "red", "crashed": "red", "failed": "red", "blocked": "red",
    "stopped": "dim", "removing": "dim",
}
PALETTE = ["cyan", "magenta", "blue", "green", "yellow", "bright_cyan", "bright_magenta",
           "bright_blue", "bright_green", "bright_yellow"]


def service_color(name: str) -> str:
    return PALETTE[zlib.crc32(name.encode()) % len(PALETTE)]


def state_text(state: str) -> str:
    return f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"


def print_error(exc: DevenvError) -> None:
    err.print(f"[bold red]error:[/] {escape(exc.message)}")
    for line in exc.details:
        err.print(f"  {escape(line)}")
    if exc.hint:
        err.print(f"[dim]hint: {escape(exc.hint)}[/]")


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}")


def print_json(data: Any) -> None:
    import json

    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


# ---- tables

GAP = 2  # spaces between columns
MIN_WRAP = 20  # the narrowest a wrapping column is worth; narrower, it goes under its row
INDENT = 4  # of the continuation lines under a row


@dataclass(frozen=True)
class Column:
    """A table column. A `wrap` column (free text: a note, a list) wraps at a narrow
    terminal, or goes onto continuation lines under its row; other columns are never cut."""

    header: str
    wrap: bool = False


def print_table(columns: Sequence[Column], rows: Sequence[Sequence[str]],
                console: Console | None = None) -> None:
    """Print rows of rich-markup cells. On a terminal the table fits its width as far as
    the columns that do not wrap allow; piped (not a terminal), nothing is ever cut or
    wrapped: one line a row."""
    console = console or out
    width = console.width if console.is_terminal else None
    for line in table_lines(columns, rows, width, console):
        console.print(line, soft_wrap=True, crop=False)


def table_lines(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int | None,
                console: Console) -> list[Text]:
    """The lines of a table at `width` columns (None: no limit). Headers and the cells of
    columns that do not wrap are always whole. Wrapping columns share the room left; when
    it is less than `MIN_WRAP` each, the rightmost go under their row, indented."""
    cells = [[Text.from_markup(c) for c in row] for row in rows]
    heads = [Text(c.header, style="bold") for c in columns]
    natural = [max([heads[i].cell_len, *(r[i].cell_len for r in cells)])
               for i in range(len(columns))]
    shown = [i for i in range(len(columns)) if natural[i]]
    widths = list(natural)
    below: list[int] = []  # wrapping columns moved under their row
    wrapping = [i for i in shown if columns[i].wrap]
    while width is not None and wrapping and _span(widths, shown) > width:
        room = width - _span(widths, [i for i in shown if not columns[i].wrap]) \
            - GAP * len(wrapping)
        floors = {i: max(heads[i].cell_len, min(natural[i], MIN_WRAP)) for i in wrapping}
        if room >= sum(floors.values()):
            _share(widths, floors, room)
            break
        last = wrapping.pop()
        shown.remove(last)
        below.insert(0, last)
    lines = [_line([heads[i] for i in shown], [widths[i] for i in shown], console)]
    for row in cells:
        lines.append(_line([row[i] for i in shown], [widths[i] for i in shown], console))
        for i in below:
            if row[i].plain in ("", "-"):  # nothing to say
                continue
            text = (Text(f"{columns[i].header}: ", style="dim") if columns[i].header
                    else Text()) + row[i]
            for part in text.wrap(console, max((width or 0) - INDENT, MIN_WRAP),
                                  overflow="fold"):
                part.rstrip()
                lines.append(Text(" " * INDENT) + part)
    return lines


def _span(widths: list[int], columns: list[int]) -> int:
    """Cells wide the given columns take, with the gaps between them."""
    return sum(widths[i] for i in columns) + GAP * max(len(columns) - 1, 0)


def _share(widths: list[int], floors: dict[int, int], room: int) -> None:
    """Give the wrapping columns `room` between them: each its floor, then the rest
    to each in turn, up to its natural width."""
    left = room - sum(floors.values())
    for i, floor in floors.items():
        extra = min(widths[i] - floor, left)
        widths[i] = floor + extra
        left -= extra


def _line(cells: list[Text], widths: list[int], console: Console) -> Text:
    """One row: cells padded to their columns; a wrapping cell taller than one line
    continues on the next lines, in its column."""
    wrapped = [c.wrap(console, w, overflow="fold") if c.cell_len > w else [c]
               for c, w in zip(cells, widths, strict=True)]
    lines = []
    for n in range(max(len(w) for w in wrapped)):
        line = Text()
        for k, (parts, w) in enumerate(zip(wrapped, widths, strict=True)):
            part = parts[n].copy() if n < len(parts) else Text()
            part.rstrip()
            part.pad_right(w - part.cell_len)
            line.append_text(part)
            if k < len(widths) - 1:
                line.append(" " * GAP)
        line.rstrip()
        lines.append(line)
    return Text("\n").join(lines)


def print_rolled(rolled: Rolled | None, failures: bool = True) -> None:
    """`rolled api, worker (depend on db with restart: true)`, and any it could not roll."""
    if rolled is None:
        return
    if rolled.services:
        out.print(escape(rolled.text()))
    for name, reason in rolled.failed.items() if failures else ():
        warn(f"{name}: {reason}")
