"""`devenv audit [--since 1d] [--json] [--verify]`: the audit trail of state-changing
commands (`.devenv/audit.log`), and the check of its hash chain."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.markup import escape

from devenv import audit
from devenv.cli.commands._common import project_root
from devenv.cli.output import Column, out, print_table
from devenv.core.errors import DevenvError, UsageError
from devenv.core.paths import StateDir

_DAYS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*d\s*$")


def parse_since(value: str | None) -> float | None:
    """A moment: now less 30s, 5m, 2h, 1d; or an ISO time."""
    if value is None:
        return None
    days = _DAYS.match(value)
    if days:
        return time.time() - float(days.group(1)) * 86400
    from devenv.cli.commands.logs import parse_since as logs_since

    try:
        return logs_since(value)
    except UsageError:
        raise UsageError(f"--since {value!r}: not a duration or a time",
                         hint="e.g. --since 30m, --since 1d, --since 2026-11-24T10:00:00"
                         ) from None


def record_time(record: dict[str, Any]) -> float | None:
    try:
        return datetime.fromisoformat(str(record["time"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return None


def run(args: argparse.Namespace) -> int:
    log = StateDir(project_root(args)).base / audit.LOG_NAME
    if args.verify:
        return verify(log)
    since = parse_since(args.since)
    records = [r for r in audit.read(log)
               if since is None or (record_time(r) or 0) >= since]
    if args.json:
        for record in records:
            sys.stdout.write(json.dumps(record) + "\n")
        return 0
    if not records:
        out.print("no audited commands" + (" in that time" if since is not None else " yet"))
        return 0
    print_table([Column("TIME"), Column("USER"), Column("EXIT"), Column("TOOK"),
                 Column("COMMAND", wrap=True)], [_row(r) for r in records])
    return 0


def _row(record: dict[str, Any]) -> list[str]:
    moment = record_time(record)
    shown = datetime.fromtimestamp(moment).strftime("%Y-%m-%d %H:%M:%S") if moment else "?"
    who = str(record.get("user", "?"))
    if record.get("sudo_user"):
        who += f" (sudo by {record['sudo_user']})"
    code = record.get("exit")
    exit_text = "[green]0[/]" if code == 0 else f"[red]{escape(str(code))}[/]"
    command = escape("devenv " + shlex.join(str(a) for a in record.get("args", [])))
    if record.get("error"):
        command += f"  [red]{escape(str(record['error']))}[/]"
    return [shown, escape(who), exit_text, f"{record.get('duration', 0):.2f}s", command]


def verify(log: Path) -> int:
    lines = audit.read_lines(log)
    problems = audit.verify(lines, audit.read_head(log))
    if problems:
        count = len(problems)
        raise DevenvError(f"the audit log {log} is not intact ({count} problem"
                          f"{'s' if count != 1 else ''})", details=[str(p) for p in problems],
                          hint="the lines named were changed after they were written; keep "
                          "a copy of the log as it is")
    out.print(f"ok: {len(lines)} records, the hash chain is intact")
    return 0
