from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any

from rich.live import Live
from rich.markup import escape
from rich.table import Table

from devenv.cli.commands._common import ask, load_project
from devenv.cli.output import err, out, print_json, seconds, service_color, state_text
from devenv.client import Client
from devenv.config.graph import select
from devenv.config.load import RUNTIME_VAR
from devenv.wire import UpResult, to_json


def run(args: argparse.Namespace) -> int:
    began = time.time()
    if args.runtime:  # (read by the config's load, here and in the engine: the caller's env)
        os.environ[RUNTIME_VAR] = args.runtime
    # bad config: exit 2 before anything starts (its warnings come back in the result)
    loaded = load_project(args, args.profile, quiet=True)
    names = list(select(loaded, args.services))
    from devenv.kube.render import check_registry

    check_registry(loaded, names)  # (a cluster that exists: built images need a registry)
    client = Client(loaded.root)
    if (refused := _cluster_version(loaded, args.yes, client)) is not None:
        return refused
    client.ensure_engine()
    rows: dict[str, dict[str, Any]] = {n: {"state": "pending", "detail": ""} for n in names}
    result = UpResult(ok=False, services=[])
    live = Live(_table(rows), console=err, transient=True, refresh_per_second=12) \
        if err.is_terminal and not args.json else None
    if live:
        live.start()
    try:
        rerun = [name for group in args.rerun for name in group]
        for event in client.up(args.services, args.profile, args.watch, rerun):
            if isinstance(event, UpResult):
                result = event
                break
            row = rows.setdefault(event.service, {})
            if (row.get("state"), row.get("detail")) == (event.state, event.detail):
                continue
            row.update(state=event.state, detail=event.detail)
            if live:
                live.update(_table(rows))
            elif not args.json:
                detail = f"  {escape(event.detail)}" if event.detail else ""
                err.print(f"  [{service_color(event.service)}]{event.service:<16}[/] "
                          f"{state_text(event.state)}{detail}")
    finally:
        if live:
            live.stop()
    if args.json:
        print_json(to_json(result))
    else:
        _summary(result)
        if args.monitoring and result.dashboard:
            out.print(f"dashboard: {result.dashboard.url}", markup=False)
    if not result.ok:
        return result.error.exit_code if result.error else 1
    if args.attach:
        from devenv.cli.commands import logs

        def interrupt(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        for sig in (signal.SIGTERM, signal.SIGHUP):  # a closed terminal stops it like Ctrl-C
            signal.signal(sig, interrupt)
        try:
            logs.stream(client, [], follow=True, since=began, tail=None,  # incl. start-up
                        startup=False, verbose=False, as_json=False)
            err.print("[dim]the environment stopped[/]")  # (stopped by another command)
        except KeyboardInterrupt:
            err.print("stopping…")
            client.stop(persist_data=True)
    return 0


def _cluster_version(loaded: Any, yes: bool, client: Client) -> int | None:
    """`provider: k3d` at another version than the pinned one: the cluster recreated first
    (devenv.runtime.kube_recreate: a deliberate edge, like `exec`'s, since it reports each
    step here), once the user agreed (`--yes`, or y on a terminal); else exit 1."""
    from devenv.runtime import kube_recreate

    change = kube_recreate.pending(loaded)
    if change is None:
        return None
    if not change.resumed and not yes:
        err.print(change.describe(), markup=False)
        if not ask("delete and recreate it?"):
            err.print(f"nothing deleted; `devenv up --yes` recreates the cluster "
                      f"{change.cluster}, or pin the version it runs (devenv config set "
                      "kubernetes.version ...)", markup=False)
            return 1
    if client.running():  # (its engine reaches the old cluster)
        err.print("stopping the environment first: it runs on the cluster to recreate",
                  markup=False)
        client.stop(persist_data=True)
    kube_recreate.recreate(loaded, lambda line: err.print(line, markup=False))
    return None


def _table(rows: dict[str, dict[str, Any]]) -> Table:
    table = Table(box=None, show_header=False, pad_edge=False)
    for name, row in rows.items():
        table.add_row(f"[{service_color(name)}]{name}[/]", state_text(row.get("state", "")),
                      f"[dim]{escape(row.get('detail') or '')}[/]")
    return table


def _summary(result: UpResult) -> None:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("SERVICE", "STATE", "URL", "STARTED", "HEALTHY"):
        table.add_column(col)
    for svc in result.services:
        state = svc.state
        if svc.action == "keep" and svc.ok:
            state = f"{state} (unchanged)"
        elif svc.action == "update" and svc.ok:
            state = f"{state} (settings updated)"
        if svc.state == "completed" and svc.detail:
            state = f"{state} ({svc.detail.split(';')[0]})"
        table.add_row(f"[{service_color(svc.name)}]{svc.name}[/]", state_text(state),
                      svc.url or "-", seconds(svc.started_s), seconds(svc.healthy_s))
    out.print(table)
    if result.ingress:
        out.print(f"ingress: {result.ingress}  (e.g. http://<service>.localhost:"
                  f"{result.ingress.rsplit(':', 1)[1]}/)")
    if result.metrics:
        out.print(f"metrics: {result.metrics.url}")
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}")
    for svc in result.services:
        if svc.ok:
            continue
        err.print(f"\n[bold red]{svc.name}[/] {escape(svc.detail)}")
        for line in svc.logs:
            err.print(f"  [dim]│[/] {escape(line)}")
    if result.error:
        from devenv.cli.output import print_error
        from devenv.core.errors import DevenvError

        error = DevenvError(result.error.message, hint=result.error.hint,
                            details=result.error.details)
        print_error(error)
        return
    if not result.ok:
        err.print("\n[red]some services are not healthy[/]; see `devenv logs` and "
                  "`devenv status`")
    sys.stdout.flush()
