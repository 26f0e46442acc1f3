from __future__ import annotations

import argparse
import sys

from devenv.cli.commands._common import load_project, project_root
from devenv.client import Client
from devenv.core.errors import UsageError
from devenv.runtime import get_runtime
from devenv.runtime.base import InstanceSpec


def run(args: argparse.Namespace) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise UsageError("say what to run", hint=f"devenv exec {args.service} -- CMD [ARGS…]")
    root = project_root(args)
    client = Client(root)
    if client.running():  # as the service runs now: its profile, the `up` caller's ${VAR}s
        runtime, spec = client.exec_target(args.service)
    else:
        runtime, spec = _from_config(args)
    if len(argv) == 1 and " " in argv[0]:
        from devenv.plan import command_argv

        argv = list(command_argv(argv[0]))
    return get_runtime(runtime, root).exec(spec, tuple(argv), tty=sys.stdin.isatty())


def _from_config(args: argparse.Namespace) -> tuple[str, InstanceSpec]:
    from devenv.plan import exec_spec, service_plan

    loaded = load_project(args)
    if args.service not in loaded.project.services:
        from devenv.config.schema import did_you_mean

        raise UsageError(f"no service '{args.service}'"
                         f"{did_you_mean(args.service, loaded.project.services)}",
                         hint="services: " + ", ".join(loaded.project.services))
    plan = service_plan(loaded, args.service)
    return plan.runtime, exec_spec(plan)
