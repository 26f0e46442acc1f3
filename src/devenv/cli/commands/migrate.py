"""`devenv migrate --dry-run | --confirm`: upgrade what the environment runs on.

--dry-run prints the plan (devenv/migration.py) and the unified diff of every file it would
rewrite, and changes nothing. --confirm asks the engine to apply it (engine/migration.py):
a snapshot first, then the files and the data, then the environment must come up healthy;
on any failure everything is rolled back to the snapshot. A k3d cluster at another version
than the pinned one is recreated first (asking is not needed: --confirm is the consent); a
failure there cannot be rolled back and says what to run instead (exit 1, on stderr, in the
audit trail). The engine holds the project's
operation lock (core/oplock.py) exclusively for the whole migration, whatever becomes of this
command (Ctrl-C leaves it migrating): the commands that change the environment, and another
migrate, refuse meanwhile; --confirm refuses while one of them runs."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from devenv.cli.commands._common import project_root
from devenv.cli.output import err, out, print_json
from devenv.client import Client
from devenv.core.errors import DevenvError
from devenv.wire import MigrateResult, to_json


def run(args: argparse.Namespace) -> int:
    root = project_root(args)
    if not args.dry_run:
        from devenv.core import oplock

        oplock.free(root)  # before anything starts: no command changing it runs, no migrate
    return _run(args, root)


def _run(args: argparse.Namespace, root: Path) -> int:
    from devenv.migration import journal_file, make

    cut_short = journal_file(root).exists()
    if cut_short and args.dry_run:
        from devenv.core import oplock

        try:
            oplock.free(root)
        except oplock.Busy as busy:  # (not cut short: running now)
            out.print(f"{busy.message}: the plan is shown once it is done", markup=False)
            return 1
        except DevenvError:
            pass
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
    result = _migrate(client, started)
    if args.json:
        print_json(to_json(result))
    elif result.ok:
        if result.snapshot:
            out.print(f"snapshot {result.snapshot} taken first", markup=False)
        for step in result.applied:
            out.print(f"  applied: {step}", markup=False)
        out.print("migrated; the environment came up healthy", markup=False)
    else:
        for step in result.rolled_back:
            out.print(f"  rolled back: {step}", markup=False)
        if result.snapshot:
            out.print(f"(the snapshot {result.snapshot} is kept)", markup=False)
    if not result.ok:  # (exit 1, said once on stderr, and the audit trail records it)
        raise DevenvError(f"migration failed: {result.error}", details=result.details,
                          hint=result.hint)
    return 0


def _migrate(client: Client, started: bool) -> MigrateResult:
    """The engine's migration; an engine started for it stopped after (not left idle)."""
    try:
        result = client.migrate()
    except KeyboardInterrupt:  # the engine goes on: it must not be left half-way
        err.print("interrupted: the engine goes on migrating (a failure is rolled back to "
                  "its snapshot); watch it with `devenv status` and `devenv logs`; other "
                  "commands that change the environment refuse until it is done")
        raise
    except BaseException:
        _idle(client, started)
        raise
    _idle(client, started)
    return result


def _idle(client: Client, started: bool) -> None:
    if started:
        with contextlib.suppress(DevenvError):  # (not in place of what went wrong)
            if client.running():
                client.stop(persist_data=True)
