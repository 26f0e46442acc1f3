from __future__ import annotations

import argparse

from devenv.cli.commands._common import project_root
from devenv.cli.output import err, out
from devenv.client import Client
from devenv.core.errors import UsageError


def parse_counts(items: list[str]) -> dict[str, int]:
    counts = {}
    for item in items:
        name, sep, number = item.partition("=")
        if not sep or not number.isdigit() or not name:
            raise UsageError(f"cannot read '{item}'", hint="write SERVICE=N, e.g. api=3")
        counts[name] = int(number)
    return counts


def run(args: argparse.Namespace) -> int:
    counts = parse_counts(args.counts)
    result = Client(project_root(args)).scale(counts)
    for name, reason in result.failed.items():
        err.print(f"[red]{name}[/]: {reason}")
    out.print(", ".join(f"{n}={c}" for n, c in counts.items()))
    return 0 if result.ok else 1
