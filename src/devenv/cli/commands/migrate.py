"""`devenv migrate --dry-run | --confirm`: upgrade what the environment runs on.

--dry-run prints the plan (devenv/migration.py) and the unified diff of every file it would
rewrite, and changes nothing. --confirm asks the engine to apply it (engine/migration.py):
a snapshot first, then the files and the data, then the environment must come up healthy;
on any failure everything is rolled back to the snapshot. --confirm holds the project's
operation lock (core/oplock.py) for its whole run: the commands that change the environment
(and another migrate) refuse meanwhile."""

from __future__ import annotations

import argparse
from pathlib import Path

from devenv.cli.commands._common import project_root
from devenv.cli.output import err, out, print_json
from devenv.client import Client
from devenv.wire import to_json


def run(args: argparse.Namespace) -> int:
    root = project_root(args)
    if args.dry_run:
        return _run(args, root)
    from devenv.core import oplock

    with oplock.hold(root, "migrate"):  # up, stop, data, … refuse meanwhile; so does migrate
        return _run(args, root)


def _run(args: argparse.Namespace, root: Path) -> int:
    from devenv.migration import journal_file, make

    cut_short = journal_file(root).exists()
    if cut_short and args.dry_run:
        out.print("a migration was cut short (.devenv/migrate/journal.json): `devenv migrate "
                  "--confirm` rolls it back to its snapshot", markup=False)
        return 1
    # (cut short: the engine rolls it back, whatever the files say now)
    plan = make(root) if not cut_short else None  # ConfigError (exit 2): invalid upgrade
    if plan is not None and args.dry_run:
        if args.json:
            print_json(plan.to_json())
            return 0
        if not plan.changed and not plan.kube:
            out.print("nothing to migrate: the environment is up to date", markup=False)
            return 0
        out.print("plan:", markup=False)
        for step in plan.steps():
            out.print(f"  - {step}", markup=False)
        for change in plan.files:
            out.print(change.diff(), markup=False, end="")
        if plan.blocked:
            out.print("cannot be applied here: " + "; ".join(plan.blocked), markup=False)
            return 1
        out.print("dry run: nothing was changed; apply with `devenv migrate --confirm`",
                  markup=False)
        return 0
    if plan is not None and not plan.changed:
        if args.json:
            print_json({"ok": True, "changed": False, "steps": plan.steps()})
        else:
            out.print("nothing to migrate: the environment is up to date", markup=False)
            for step in plan.kube:
                out.print(f"  - {step}", markup=False)
        return 0
    client = Client(root)
    started = not client.running()
    client.ensure_engine()
    if not args.json:
        err.print("migrating (a snapshot first)…")
    try:
        result = client.migrate()
    finally:
        if started and client.running():  # an engine started for this: not left idle
            client.stop(persist_data=True)
    if args.json:
        print_json(to_json(result))
    elif result.ok:
        if result.snapshot:
            out.print(f"snapshot {result.snapshot} taken first", markup=False)
        for step in result.applied:
            out.print(f"  applied: {step}", markup=False)
        out.print("migrated; the environment came up healthy", markup=False)
    else:
        out.print(f"migration failed: {result.error}", markup=False)
        for line in result.details:
            out.print(f"  {line}", markup=False)
        for step in result.rolled_back:
            out.print(f"  rolled back: {step}", markup=False)
        if result.snapshot:
            out.print(f"(the snapshot {result.snapshot} is kept)", markup=False)
    return 0 if result.ok else 1
