from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from rich.markup import escape

from devenv.cli.commands._common import project_root
from devenv.cli.output import err, out, service_color
from devenv.client import Client
from devenv.config.schema import did_you_mean, parse_duration
from devenv.core.errors import ConfigError, UsageError
from devenv.engine import logstore
from devenv.wire import LogLine, to_json

STREAM_STYLE = {"err": "red", "devenv": "dim italic", "alert": "bold red"}
FOLLOW_TAIL = 100  # `logs -f` starts from the last this many lines unless -n says otherwise


def parse_since(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return time.time() - parse_duration(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--since {value!r}: not a duration or a time",
                         hint="e.g. --since 30s, --since 5m, --since 2026-11-24T10:00:00") from None
    return moment.astimezone().timestamp()


def run(args: argparse.Namespace) -> int:
    root = project_root(args)
    since = parse_since(args.since)
    if args.all and not args.startup:
        raise UsageError("--all goes with --startup: it adds past start-ups to the current ones",
                         hint="devenv logs --startup --all [SERVICE…]")
    tail = args.tail if args.tail is not None else FOLLOW_TAIL if args.follow else None
    client = Client(root)
    if args.services:
        check_services(root, client, args.services)
    if client.running():
        stream(client, args.services, follow=args.follow, since=since, tail=tail,
               startup=args.startup, verbose=args.verbose, as_json=args.json,
               all_starts=args.all)
        if args.follow:  # the engine ended the stream: it is stopping
            err.print("[dim]the environment stopped; nothing more will come[/]")
        return 0
    folder = client.state.logs
    services = args.services or logstore.logged_services(folder)
    starts = offline_starts(root, past=args.all) if args.startup else None
    lines = logstore.query(folder, services, since=since, tail=tail, startup=args.startup,
                           verbose=args.verbose, starts=starts)
    show(lines, as_json=args.json)
    if args.follow:
        err.print("[dim]the environment is not running; nothing more will come "
                  "(start it with `devenv up`)[/]")
    return 0


def check_services(root: Path, client: Client, asked: list[str]) -> None:
    """Every service asked for is declared in devenv.yaml, or has logs (a service since
    renamed or removed); else a usage error naming the close one."""
    declared = declared_services(root)
    known = set(declared) | set(logstore.logged_services(client.state.logs))
    for name in asked:
        if name not in known:
            raise UsageError(f"no service '{name}'{did_you_mean(name, declared or known)}",
                             hint="services: " + (", ".join(declared or sorted(known))
                                                  or "none declared"))


def declared_services(root: Path) -> list[str]:
    """The services devenv.yaml declares; when it does not load, the names written in it."""
    from devenv.config.load import load, read_yaml
    from devenv.core.paths import config_file

    try:
        return list(load(root).project.services)
    except ConfigError:
        pass
    try:
        written = read_yaml(config_file(root), "devenv.yaml").data.get("services")
    except ConfigError:
        return []
    return [str(n) for n in written] if isinstance(written, dict) else []


def offline_starts(root: Path, *, past: bool) -> logstore.Starts:
    """With no engine, what devenv.yaml tells of start-ups (one-shots, services with no
    health check or port); which instances were current, the log tells."""
    from devenv.config.load import load

    try:
        services = load(root).project.services
    except ConfigError:
        return logstore.Starts(past=past)
    return logstore.Starts(
        past=past, one_shots=frozenset(n for n, s in services.items() if s.job),
        unchecked=frozenset(n for n, s in services.items()
                            if not s.is_data and s.port is None and s.health is None))


def stream(client: Client, services: list[str], *, follow: bool, since: float | None,
           tail: int | None, startup: bool, verbose: bool, as_json: bool,
           all_starts: bool = False) -> None:
    show(client.logs(services, follow=follow, since=since, tail=tail, startup=startup,
                     verbose=verbose, all_starts=all_starts), as_json=as_json)


def show(lines: Iterable[LogLine], *, as_json: bool) -> None:
    width = 0
    for line in lines:
        if as_json:
            sys.stdout.write(json.dumps(to_json(line)) + "\n")
            sys.stdout.flush()
            continue
        label = f"{line.service}-{line.replica}"
        width = max(width, len(label))
        text = escape(line.text)
        style = STREAM_STYLE.get(line.stream)
        if style:
            text = f"[{style}]{text}[/]"
        out.print(f"[{service_color(line.service)}]{label:<{width}} |[/] {text}")
