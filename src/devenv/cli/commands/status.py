from __future__ import annotations

import argparse

from rich.markup import escape

from devenv.cli.commands._common import project_root
from devenv.cli.output import Column, out, print_json, print_table, service_color, size, state_text
from devenv.client import Client
from devenv.wire import EnvironmentStatus, ServiceStatus, to_json


def run(args: argparse.Namespace) -> int:
    root = project_root(args)
    client = Client(root)
    if not client.running():
        if args.json:
            print_json(to_json(EnvironmentStatus(project=root.name, running=False,
                                                 ingress=None, services=[])))
        else:
            out.print(f"no environment is running for {root}; start it with `devenv up`")
        return 0
    data = client.status(resources=args.resources)
    if args.json:
        print_json(to_json(data))
        return 0
    names = ["SERVICE", "STATE", "READY", "RESTARTS", "URL"]
    if args.resources:
        names += ["CPU", "MEMORY"]
    columns = [Column(n) for n in names] + [Column("", wrap=True)]  # the note
    rows = []
    for svc in data.services:
        row = [f"[{service_color(svc.name)}]{escape(svc.name)}[/]", state_text(svc.state),
               _ready(svc), str(svc.restarts),
               escape(svc.url or "-")]
        if args.resources:
            row += [f"{svc.cpu_percent or 0:.1f}%", size(svc.rss_bytes or 0)]
        rows.append([*row, _note(svc)])
    print_table(columns, rows)
    if data.ingress:
        out.print(f"ingress: {data.ingress}")
    if data.metrics:
        out.print(f"metrics: {data.metrics.url}")
    return 0


def _note(svc: ServiceStatus) -> str:
    """The one line worth reading about a service: what is wrong, or its last reload."""
    if svc.detail:
        return f"[dim]{escape(svc.detail.splitlines()[0])}[/]"
    if svc.debug:
        return f"[magenta]debugger ({svc.debug.language}) on {svc.debug.address}[/]"
    if svc.scrape_error:
        return f"[red]metrics scrape failed[/]: {escape(svc.scrape_error)}"
    last = svc.last_reload
    if not last:  # how it reloads, when that is not devenv's own replace
        return f"[dim]watch: {escape(svc.watch)}[/]" if svc.watch.startswith("none") else ""
    if not last.ok:
        error = str(last.error).splitlines()[0] if last.error else "no reason given"
        return f"[red]last reload failed[/]: {escape(error)}"
    return f"[dim]reloaded in {last.phases.get('total', 0):.2f}s ({last.action})[/]"


def _ready(svc: ServiceStatus) -> str:
    """Ready/desired replicas; a one-shot job has nothing to be ready: its state says it."""
    return "-" if svc.job else f"{svc.replicas.ready}/{svc.replicas.desired}"
