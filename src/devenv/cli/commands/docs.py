"""`devenv docs generate [-o FILE] [--check]`: the environment as Markdown for the team."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from devenv.cli.commands._common import project_root
from devenv.cli.output import err, out
from devenv.core.atomic import write_atomic
from devenv.core.errors import DevenvError, UsageError

DEFAULT_OUTPUT = Path("docs/environment.md")  # under the project


def run(args: argparse.Namespace) -> int:
    from devenv.docsgen import render  # (not at import: other commands stay fast)

    if args.output == "-" and args.check:
        raise UsageError("--check compares a file with what the configuration gives now",
                         hint="give -o FILE (or no -o for docs/environment.md), not -o -")
    from devenv.config.load import load

    # devenv.yaml alone: the page is the same on every machine (no personal overrides, no
    # artifacts, ${VAR} not read from the environment: a token never reaches the page)
    loaded = load(project_root(args), shared=True)
    text = render(loaded)
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    target = Path(args.output) if args.output else loaded.root / DEFAULT_OUTPUT
    shown = _shown(target)
    if args.check:
        try:
            current: str | None = target.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            current = None
        if current != text:
            refresh = "devenv docs generate" + (f" -o {args.output}" if args.output else "")
            what = ("does not exist" if current is None else
                    "is stale: it differs from what the configuration gives now")
            raise DevenvError(f"{shown} {what}", hint=f"run `{refresh}` and commit it")
        err.print(f"[green]ok[/]: {shown} is up to date", markup=True)
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, text, mode=0o644)
    out.print(f"wrote {shown}", markup=False)
    return 0


def _shown(path: Path) -> str:
    """The file as the user would type it: relative to where they are, when it is below."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
