from __future__ import annotations

import argparse

from devenv.cli.commands._common import project_root
from devenv.cli.output import err, out, print_rolled
from devenv.client import Client


def run(args: argparse.Namespace) -> int:
    client = Client(project_root(args))
    if not client.running():
        from devenv.client import EngineNotRunning

        raise EngineNotRunning(client.root)
    if args.action == "load":
        result = client.data_load(args.dataset)
        counts = ", ".join(f"{t}: {n}" for t, n in result.counts.items())
        out.print(f"loaded dataset {args.dataset}" + (f" ({counts})" if counts else ""))
    elif args.action == "reset":
        reset = client.data_reset()
        out.print("reset " + ", ".join(reset.reset) + " to fresh data")
        print_rolled(reset.rolled)
    else:
        snap = client.snapshot_restore(args.snapshot)
        out.print(f"restored snapshot {snap.name} ({snap.created})")
        if snap.datasets:
            err.print("datasets in it: " + ", ".join(snap.datasets))
        print_rolled(snap.rolled)
    return 0
