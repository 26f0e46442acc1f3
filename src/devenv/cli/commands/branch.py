"""`devenv config branch [NAME] [--push]`: list config branches, or save the override layer
as one (creating it and switching to it) and optionally publish it."""

from __future__ import annotations

import argparse

from devenv.cli.commands._common import project_root
from devenv.cli.output import out, print_json
from devenv.core.errors import UsageError
from devenv.teams import refs
from devenv.teams.branches import Branches


def run(args: argparse.Namespace) -> int:
    branches = Branches(project_root(args))
    if args.name is None:
        if args.push:
            raise UsageError("--push needs a branch name", hint="devenv config branch NAME --push")
        return _list(branches, args.json)
    name = refs.check_name(args.name)
    remote = refs.check_remote(args.remote)
    current = branches.current()
    existed = branches.exists(name)
    if existed and name != current:
        raise UsageError(f"config branch '{name}' exists and is not the current one "
                         f"({current or 'none'})", hint=f"switch to it with `devenv sync "
                         f"--branch {name}`, or choose another name")
    # the artifacts it names: the current branch's (publish records there), else those run here
    manifest = branches.read(current).manifest if current and branches.exists(current) \
        else branches.local_manifest()
    verb = "saved to" if existed else "created"
    commit = branches.save(name, branches.local_overrides(), manifest,
                           f"devenv config branch {name}")
    branches.set_current(name)
    out.print(f"{verb} config branch {name} ({commit[:12]}); now on {name}", markup=False)
    if args.push:
        pushed = branches.push(name, remote)
        out.print(f"pushed {name} to {remote} ({len(pushed)} ref{'s' * (len(pushed) != 1)})",
                  markup=False)
    return 0


def _list(branches: Branches, as_json: bool) -> int:
    names, current = branches.names(), branches.current()
    if as_json:
        print_json({"current": current, "branches": names})
        return 0
    if not names:
        out.print("no config branches; create one: devenv config branch NAME", markup=False)
    for name in names:
        out.print(f"{'*' if name == current else ' '} {name}", markup=False)
    return 0
