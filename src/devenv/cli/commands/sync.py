"""`devenv sync --branch NAME`: take a teammate's config branch: show what it changes,
validate it, write it, and converge a running environment (only changed services are
replaced)."""

from __future__ import annotations

import argparse

from devenv.cli.commands._common import ask, project_root
from devenv.cli.output import err, out, warn
from devenv.client import Client
from devenv.teams import refs, sync
from devenv.teams.branches import Branches
from devenv.teams.diff import render, runs
from devenv.wire import UpResult


def run(args: argparse.Namespace) -> int:
    root = project_root(args)
    name, remote = refs.check_name(args.branch), refs.check_remote(args.remote)
    branches = Branches(root)
    incoming = sync.prepare(branches, name, remote, force=args.force, profile=args.profile)
    if incoming.changes:
        out.print(f"{name} ({incoming.content.commit[:12]}) changes:", markup=False)
        for line in render(incoming.changes):
            out.print(f"  {line}", markup=False)
    else:
        out.print(f"{name} ({incoming.content.commit[:12]}) changes nothing here", markup=False)
    if args.dry_run:
        sync.discard(branches, incoming)
        return 0
    risky = [c for c in incoming.changes if runs(c)]
    if risky and not args.yes and not _confirmed(name, render(risky)):
        sync.discard(branches, incoming)
        return 1
    kept = sync.apply(branches, incoming)
    if kept.overrides:
        err.print(f"your previous overrides are kept in {kept.overrides}", markup=False)
    if kept.ref:
        err.print(f"your branch's previous commit is kept as {kept.ref} (git log {kept.ref})",
                  markup=False)
    for message in incoming.loaded.warnings:
        warn(message)
    out.print(f"now on config branch {name}", markup=False)
    client = Client(root)
    if not client.running():
        err.print("the environment is not running; `devenv up` starts it with these settings")
        return 0
    from devenv.cli.commands.up import _summary  # (the engine's answer, as `up` shows it)

    result = UpResult(ok=False, services=[])
    for event in client.up([], args.profile):
        if isinstance(event, UpResult):
            result = event
    _summary(result)
    if not result.ok:
        return result.error.exit_code if result.error else 1
    return 0


def _confirmed(name: str, lines: list[str]) -> bool:
    """The user agrees to run what the branch changes (a y/N question on a terminal; else
    no, saying how to agree)."""
    err.print(f"{name} changes what runs on this machine (commands, images, env files or "
              "artifacts):", markup=False)
    for line in lines:
        err.print(f"  {line}", markup=False)
    if ask("apply it and run these?"):
        return True
    err.print(f"nothing applied; read the changes, then `devenv sync --branch {name} --yes` "
              "to take them", markup=False)
    return False
