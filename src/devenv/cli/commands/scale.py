from __future__ import annotations

import argparse
import re

from devenv.cli.commands._common import project_root
from devenv.cli.output import err, out
from devenv.client import Client
from devenv.core.errors import ConfigError, UsageError

_COUNT = re.compile(r"[0-9]{1,9}")  # ASCII digits: `str.isdigit` also takes '²'


def parse_counts(items: list[str]) -> dict[str, int]:
    counts = {}
    for item in items:
        name, sep, number = item.partition("=")
        if not sep or not name or not _COUNT.fullmatch(number):
            raise UsageError(f"cannot read '{item}'", hint="write SERVICE=N, e.g. api=3")
        counts[name] = int(number)
    return counts


def check_counts(args: argparse.Namespace, counts: dict[str, int]) -> None:
    """Refuse what devenv.yaml would refuse as `replicas:` (a data service runs one replica;
    at most MAX_REPLICAS), and services it does not declare, before asking the engine. A
    configuration that does not load now leaves the judgement to the engine."""
    from devenv.config.load import load
    from devenv.config.schema import did_you_mean
    from devenv.config.validate import replicas_problem

    try:
        project = load(project_root(args)).project
    except ConfigError:
        return
    for name, count in counts.items():
        if name not in project.services:
            raise UsageError(f"no service '{name}'{did_you_mean(name, project.services)}",
                             hint="services: " + ", ".join(project.services))
        problem = replicas_problem(project, name, count)
        if problem is not None:
            data = project.services[name].is_data
            raise UsageError(f"cannot scale {name} to {count}: {problem}",
                             hint="`devenv scale` sets the replicas of process services"
                             if data else None)


def run(args: argparse.Namespace) -> int:
    counts = parse_counts(args.counts)
    check_counts(args, counts)
    result = Client(project_root(args)).scale(counts)
    for name, reason in result.failed.items():
        err.print(f"[red]{name}[/]: {reason}")
    out.print(", ".join(f"{n}={c}" for n, c in counts.items()))
    for name, note in (result.deferred or {}).items():
        out.print(f"{name}: {note}")
    return 0 if result.ok else 1
