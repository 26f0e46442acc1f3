from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from devenv.checks import Check, machine_checks, project_checks
from devenv.cli.output import out, print_json
from devenv.client import Client
from devenv.core.errors import UsageError
from devenv.core.paths import find_project_root

MARK = {"ok": "[green]ok  [/]", "warn": "[yellow]warn[/]", "fail": "[red]fail[/]"}


def run(args: argparse.Namespace) -> int:
    start = Path(args.project_dir) if args.project_dir else None
    try:
        root: Path | None = find_project_root(start)
    except UsageError:
        root = None
    checks = machine_checks(root or Path.cwd())
    if root is None:
        checks.append(Check("project", "warn", "no devenv.yaml here or above",
                            "run `devenv init` to create one"))
    else:
        checks += project_checks(root, Client(root).running())
    if args.json:
        print_json({"ok": not any(c.status == "fail" for c in checks),
                    "checks": [c.to_json() for c in checks]})
    else:
        show_checks(checks)
    return 1 if any(c.status == "fail" for c in checks) else 0


def show_checks(checks: list[Check]) -> None:
    for check in checks:
        out.print(f"{MARK[check.status]} {check.name}: {escape(check.message)}")
        if check.fix and check.status != "ok":
            out.print(f"       [dim]fix: {escape(check.fix)}[/]")
