"""`devenv metrics`: each service's current figures, or the engine's Prometheus exposition.

Both come from the engine's telemetry address on 127.0.0.1 (`status` gives its URL):
`/metrics/summary` for the table and `--json`, `/metrics` for `--export prometheus`.

`--json` prints {"project", "services": [{"service", "state", "ready", "desired",
"restarts", "reloads", "cpu_percent", "rss_bytes", "requests_per_s", "p95_s", "error_rate",
"scrape_error", "scraped_series"}]}; rates, p95 and error rate cover the last minute of
requests through the ingress (null when there were none). Keys are only ever added.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from rich.markup import escape

from devenv.cli.commands._common import project_root
from devenv.cli.output import Column, out, print_json, print_table, service_color, size, state_text
from devenv.client import Client
from devenv.core.errors import DevenvError, UsageError

TIMEOUT = 10.0
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def run(args: argparse.Namespace) -> int:
    if args.output and not args.export:
        raise UsageError("-o/--output goes with --export",
                         hint="e.g. `devenv metrics --export prometheus -o metrics.txt`")
    root = project_root(args)
    client = Client(root)
    if not client.running():
        raise DevenvError(f"no environment is running for {root}",
                          hint="start it with `devenv up`")
    status = client.status(resources=False)
    if status.metrics is None:
        raise DevenvError("the engine serves no metrics (its telemetry address is not up)",
                          hint="run `devenv up` again")
    url = status.metrics.url
    token = status.dashboard.url.split("token=", 1)[1] if status.dashboard else ""
    if args.export:
        text = _get(url)
        if args.output:
            Path(args.output).write_bytes(text)
        else:
            out.file.write(text.decode())
            out.file.flush()
        return 0
    data: dict[str, Any] = json.loads(_get(url + "/summary", token))
    wanted = [name for group in args.service for name in group]
    if wanted:
        known = {row["service"] for row in data["services"]}
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise UsageError(f"no service '{unknown[0]}' is running",
                             hint="services: " + (", ".join(sorted(known)) or "none"))
        data["services"] = [r for r in data["services"] if r["service"] in wanted]
    if args.json:
        print_json(data)
        return 0
    _table(data["services"])
    out.print(f"metrics: {url}")
    return 0


def _get(url: str, token: str = "") -> bytes:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}
                                     if token else {})
    try:  # (no proxy: the engine is on 127.0.0.1 whatever http_proxy says)
        with NO_PROXY.open(request, timeout=TIMEOUT) as resp:
            body: bytes = resp.read()
            return body
    except (urllib.error.URLError, OSError) as exc:
        raise DevenvError(f"cannot read the engine's metrics at {url}: {exc}",
                          hint="check the engine with `devenv status`") from exc


def _table(rows: list[dict[str, Any]]) -> None:
    names = ["SERVICE", "STATE", "READY", "RESTARTS", "RELOADS", "CPU", "MEMORY", "REQ/S",
             "P95", "ERRORS"]
    columns = [Column(n) for n in names] + [Column("", wrap=True)]
    lines = []
    for r in rows:
        note = f"[red]scrape: {escape(r['scrape_error'])}[/]" if r.get("scrape_error") else ""
        lines.append([
            f"[{service_color(r['service'])}]{escape(r['service'])}[/]", state_text(r["state"]),
            f"{r['ready']}/{r['desired']}", str(r["restarts"]), str(r["reloads"]),
            f"{r['cpu_percent'] or 0:.1f}%", size(r["rss_bytes"] or 0),
            f"{r['requests_per_s']:.2f}",
            "-" if r["p95_s"] is None else f"{r['p95_s'] * 1000:.0f}ms",
            "-" if r["error_rate"] is None else f"{r['error_rate'] * 100:.1f}%", note])
    print_table(columns, lines)
