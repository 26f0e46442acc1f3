"""`devenv debug SERVICE [--wait] [--off]`: run a service under its language's debugger."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from devenv import launchjson
from devenv.cli.commands._common import project_root
from devenv.cli.output import err, out, print_json, warn
from devenv.client import Client
from devenv.core.atomic import write_atomic
from devenv.debuggers import attach_recipe
from devenv.wire import DebugResult, to_json


def run(args: argparse.Namespace) -> int:
    root = project_root(args)
    result = Client(root).debug(args.service, wait=args.wait, off=args.off)
    if result.debug is not None and not args.no_launch_json:
        write_launch_json(root / ".vscode" / "launch.json", result)
    if args.json:
        print_json(to_json(result))
        return 0 if result.ok else 1
    if result.error:
        err.print(f"[red]{escape(result.service)}[/]: {escape(result.error)}")
    info = result.debug
    if info is None:
        out.print(f"{result.service}: not debugged; {result.replicas} replica"
                  f"{'' if result.replicas == 1 else 's'} as planned")
        return 0 if result.ok else 1
    port = info.address.rpartition(":")[2]
    tool = "debugpy" if info.language == "python" else "node --inspect"
    out.print(f"{result.service}: under the {info.language} debugger ({tool}) on "
              f"[bold]{info.address}[/]; one replica, kept through failed health checks "
              "(a breakpoint does not restart it)")
    if info.wait:
        out.print(f"{result.service} waits for a debugger before it runs its code: requests "
                  "wait at its address until you attach and let it go on")
    if not args.no_launch_json:
        out.print(f"VS Code: attach with \"{launchjson.PREFIX}{result.service}\" "
                  "(.vscode/launch.json)")
    out.print(f"other tools: {escape(attach_recipe(info.language, int(port)))}")
    return 0 if result.ok else 1


def write_launch_json(path: Path, result: DebugResult) -> None:
    """Merge the service's attach configuration into .vscode/launch.json (refused, and the
    file left as it is, when it cannot be read)."""
    assert result.debug is not None
    host, _, port = result.debug.address.rpartition(":")
    try:
        text: str | None = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = None
    merged = launchjson.merge(text, [launchjson.entry(result.service, result.debug.language,
                                                      host, int(port), result.workdir)],
                              where=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    if merged.dropped_comments and text is not None:
        backup = path.with_name(path.name + ".bak")
        write_atomic(backup, text)
        warn(f"{path} had comments, which JSON cannot keep: the file as it was is in {backup}")
    write_atomic(path, merged.text)
