from __future__ import annotations

import argparse

from devenv.cli.commands._common import project_root
from devenv.cli.output import err, out, print_rolled
from devenv.client import Client


def run(args: argparse.Namespace) -> int:
    names = list(dict.fromkeys([n for group in args.services for n in group]
                               + [n for arg in args.names for n in arg.split(",") if n]))
    result = Client(project_root(args)).restart(names)
    for name, reason in result.failed.items():
        err.print(f"[red]{name}[/]: {reason}")
    if result.ok:
        out.print("restarted " + (", ".join(names) if names else "all services"))
    print_rolled(result.rolled, failures=False)  # (among the failed above)
    if result.ok:
        return 0
    return 1
