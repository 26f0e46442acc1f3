"""Everything the CLI prints goes through here: consoles, colours, tables, errors."""

from __future__ import annotations

import sys
import zlib
from typing import Any

from rich.console import Console
from rich.markup import escape

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


def print_rolled(rolled: Rolled | None, failures: bool = True) -> None:
    """`rolled api, worker (depend on db with restart: true)`, and any it could not roll."""
    if rolled is None:
        return
    if rolled.services:
        out.print(escape(rolled.text()))
    for name, reason in rolled.failed.items() if failures else ():
        warn(f"{name}: {reason}")
