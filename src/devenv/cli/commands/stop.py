from __future__ import annotations

import argparse

from devenv.cli.commands._common import project_root
from devenv.cli.output import out
from devenv.client import Client


def run(args: argparse.Namespace) -> int:
    client = Client(project_root(args))
    if not client.reachable():
        out.print("nothing is running")
        return 0
    result = client.stop(persist_data=args.persist_data)
    stopped = result.stopped
    out.print(f"stopped {len(stopped)} service{'s' if len(stopped) != 1 else ''}"
              + (f": {', '.join(stopped)}" if stopped else ""))
    if result.data == "discarded":
        out.print(f"data discarded; automatic snapshot [bold]{result.snapshot}[/] kept "
                  f"(bring it back with `devenv up` then `devenv snapshot restore "
                  f"{result.snapshot}`; keep data across stops with --persist-data)")
    elif result.data == "kept":
        out.print("data kept for the next `devenv up`")
    if result.warning:
        from devenv.cli.output import warn

        warn(result.warning)
    return 0
