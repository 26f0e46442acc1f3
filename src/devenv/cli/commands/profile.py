"""`devenv profile --service S`: sample a running service without restarting it.

CPU (default): the engine samples one instance (Python: py-spy, children included; Node:
its inspector's CPU profiler) for --duration, writes `.devenv/profiles/<service>-<time>.*`
(a speedscope JSON file and an SVG flame graph) and this prints the top functions by self
and total time. `--memory`: each instance's RSS over the window (min/avg/max) and, for
Python, the top allocation sites (memray).

`--json` prints {"service", "instance", "sampler", "seconds", "samples", "sampled_s",
"files", "top_self", "top_total": [{"function", "file", "line", "self_s", "total_s",
"self_pct", "total_pct"}], "memory": [{"instance", "samples", "min_bytes", "avg_bytes",
"max_bytes"}], "allocations": [{"function", "file", "line", "bytes", "allocations"}],
"notes"}. Keys are only ever added.
"""

from __future__ import annotations

import argparse
import os

from rich.markup import escape

from devenv.cli.commands._common import project_root
from devenv.cli.output import Column, err, out, print_json, print_table, size
from devenv.client import Client
from devenv.config.schema import parse_duration
from devenv.core.errors import DevenvError, UsageError
from devenv.wire import FunctionTime, ProfileResult, ProfileTick, to_json

SHOWN = 10


def run(args: argparse.Namespace) -> int:
    seconds = _seconds(args.duration)
    if args.replica is not None and args.replica < 1:
        raise UsageError(f"--replica {args.replica}: replicas are numbered from 1")
    if args.memory and args.format:
        raise UsageError("--format goes with a CPU profile, not --memory")
    root = project_root(args)
    formats = [args.format] if args.format else ["speedscope", "flamegraph"]
    result: ProfileResult | None = None
    told = False
    for item in Client(root).profile(args.service, seconds=seconds, replica=args.replica,
                                     formats=formats, memory=args.memory,
                                     allow_root=args.allow_root):
        if isinstance(item, ProfileTick):
            if not told and not args.json:
                err.print(f"sampling {item.instance} with {item.sampler} for {seconds:g}s "
                          "(Ctrl-C stops)…")
                told = True
        else:
            result = item
    if result is None:
        raise DevenvError("the engine ended the profile without a result",
                          hint="see the engine's log: devenv logs --engine")
    if args.json:
        print_json(to_json(result))
        return 0
    _print(result, root)
    return 0


def _seconds(value: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError:
        seconds = -1
    if seconds <= 0:
        raise UsageError(f"--duration {value!r}: not a duration",
                         hint="e.g. --duration 30s, --duration 2m")
    return seconds


def _print(result: ProfileResult, root: object) -> None:
    for note in result.notes:
        err.print(f"[yellow]note[/]: {escape(note)}")
    if result.memory:
        out.print(f"memory of {result.service} over {result.seconds:g}s (RSS):")
        print_table([Column("INSTANCE"), Column("MIN"), Column("AVG"), Column("MAX"),
                     Column("SAMPLES")],
                    [[m.instance, size(m.min_bytes), size(m.avg_bytes), size(m.max_bytes),
                      str(m.samples)] for m in result.memory])
    if result.allocations:
        out.print(f"\ntop allocation sites at the peak ({result.sampler}):")
        print_table([Column("BYTES"), Column("ALLOCS"), Column("FUNCTION", wrap=True)],
                    [[size(a.bytes), str(a.allocations),
                      escape(f"{a.function} ({_where(a.file, a.line)})")]
                     for a in result.allocations[:SHOWN]])
    if result.top_self or result.samples:
        out.print(f"{result.instance}: {result.samples} samples, {result.sampled_s:g}s of CPU "
                  f"over {result.seconds:g}s ({result.sampler})")
        _functions("by self time", result.top_self, "self")
        _functions("by total time", result.top_total, "total")
    for path in result.files:
        out.print(f"wrote {escape(os.path.relpath(path))}")


def _functions(title: str, rows: list[FunctionTime], key: str) -> None:
    out.print(f"\ntop functions {title}:")
    print_table([Column("SELF"), Column("TOTAL"), Column("FUNCTION", wrap=True)],
                [[f"{r.self_pct:.1f}%", f"{r.total_pct:.1f}%",
                  escape(f"{r.function} ({_where(r.file, r.line)})")] for r in rows[:SHOWN]])


def _where(file: str, line: int) -> str:
    name = file.rsplit("/", 1)[-1] or "?"
    return f"{name}:{line}" if line else name
