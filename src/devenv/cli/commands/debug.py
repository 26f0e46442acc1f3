"""`devenv debug SERVICE [--wait] [--off]`: run a service under its language's debugger.

`.vscode/launch.json` is merged here, as the user who runs the command (the engine may run as
another user): it is read and checked before the engine is asked for anything, so a file that
cannot be read stops the command with nothing changed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from devenv import launchjson
from devenv.cli.commands._common import project_root
from devenv.cli.output import err, out, print_json, warn
from devenv.client import Client
from devenv.core.atomic import write_atomic
from devenv.core.errors import DevenvError
from devenv.wire import DebugResult, to_json


def run(args: argparse.Namespace) -> int:
    root = project_root(args)
    launch = root / ".vscode" / "launch.json"
    writes = not args.off and not args.no_launch_json
    if writes:
        launchjson.parse(read_text(launch), where=str(launch))  # (DevenvError: nothing done)
    result = Client(root).debug(args.service, wait=args.wait, off=args.off,
                                allow_root=args.allow_root)
    if result.debug is not None and writes:
        try:
            write_launch_json(launch, result)
        except (OSError, DevenvError) as exc:  # (changed meanwhile): the service is debugged
            warn(f"{launch} was not updated: {getattr(exc, 'message', exc)}")
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
    tool = "debugpy" if info.language == "python" else "node --inspect"
    out.print(f"{result.service}: under the {info.language} debugger ({tool}) on "
              f"[bold]{info.address}[/]; one replica, kept through failed health checks "
              "(a breakpoint does not restart it)")
    if result.detail:
        out.print(f"{result.service}: {escape(result.detail)}")
    if info.wait:
        out.print(f"{result.service} waits for a debugger before it runs its code: requests "
                  "wait at its address until you attach and let it go on")
    if writes:
        out.print(f"VS Code: attach with \"{launchjson.PREFIX}{result.service}\" "
                  "(.vscode/launch.json)")
    if result.attach:
        out.print(f"other tools: {escape(result.attach)}")
    out.print(f"note: {info.address} accepts any local process, with no password: whoever can "
              f"run a program on this machine can run code in {result.service} through it")
    return 0 if result.ok else 1


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise DevenvError(f"cannot read {path}: {exc}; it was left as it is",
                          hint="fix it (or move it away) and run the command again, or pass "
                          "--no-launch-json") from None


def write_launch_json(path: Path, result: DebugResult) -> None:
    """Merge the service's attach configuration into .vscode/launch.json (nothing written
    when it already says the same; DevenvError, the file left as it is, when it cannot be
    read)."""
    assert result.debug is not None
    host, _, port = result.debug.address.rpartition(":")
    text = read_text(path)
    merged = launchjson.merge(text, [launchjson.entry(result.service, result.debug.language,
                                                      host, int(port), result.workdir)],
                              where=str(path))
    if not merged.changed:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if merged.dropped_comments and text is not None:
        backup = path.with_name(path.name + ".bak")
        write_atomic(backup, text, encoding="utf-8")
        warn(f"{path} had comments, which JSON cannot keep: the file as it was is in {backup}")
    write_atomic(path, merged.text, encoding="utf-8")
