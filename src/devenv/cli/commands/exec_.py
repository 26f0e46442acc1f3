from __future__ import annotations

import argparse

from devenv.cli.commands._common import load_project
from devenv.core.errors import UsageError
from devenv.plan import command_argv, service_plan
from devenv.runtime.local import run_foreground


def run(args: argparse.Namespace) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise UsageError("say what to run", hint=f"devenv exec {args.service} -- CMD [ARGS…]")
    loaded = load_project(args)
    if args.service not in loaded.project.services:
        from devenv.config.schema import did_you_mean

        raise UsageError(f"no service '{args.service}'"
                         f"{did_you_mean(args.service, loaded.project.services)}",
                         hint="services: " + ", ".join(loaded.project.services))
    plan = service_plan(loaded, args.service)
    env = dict(plan.env)
    if plan.port:
        env["SERVICE_URL"] = f"http://127.0.0.1:{plan.port}"  # the service's own address
    if len(argv) == 1 and " " in argv[0]:
        argv = list(command_argv(argv[0]))
    return run_foreground(argv, env, loaded.root / plan.workdir)
