from __future__ import annotations

import argparse
from pathlib import Path

from devenv.checks import machine_checks
from devenv.cli.commands.doctor import show_checks
from devenv.cli.output import err, out
from devenv.core.atomic import write_atomic
from devenv.core.paths import config_file
from devenv.scaffold import detect, render


def run(args: argparse.Namespace) -> int:
    root = Path(args.project_dir or ".").resolve()
    checks = machine_checks(root)
    show_checks(checks)
    if any(c.status == "fail" for c in checks):
        return 1
    target = config_file(root)
    if target.exists() and not args.force:
        out.print(f"{target.name} already exists; nothing to scaffold "
                  "(use --force to write a new one)")
        return 0
    scan = detect(root)
    write_atomic(target, render(root.name, scan))
    names = scan.names
    out.print(f"wrote {target.name} with {len(names)} service{'s' if len(names) != 1 else ''}"
              + (": " + ", ".join(names) if names else ""))
    err.print("next: review it, then `devenv up`")
    return 0
