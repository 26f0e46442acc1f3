"""`devenv trace`: recent traces as a table (or JSON, or followed), and one trace as a
waterfall. With no engine running it reads the store under .devenv/traces directly."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from rich.markup import escape
from rich.text import Text

from devenv.cli.commands._common import project_root
from devenv.cli.commands.logs import parse_since
from devenv.cli.output import Column, err, out, print_json, print_table, service_color
from devenv.client import Client
from devenv.config.schema import parse_duration
from devenv.core.errors import DevenvError, UsageError
from devenv.core.paths import StateDir
from devenv.telemetry import store
from devenv.wire import SpanInfo, Trace, TraceSummary, to_json

SHORT_ID = 12  # digits of a trace id shown in the list (8 or more find it)
LABEL_MAX = 48
PIPED_WIDTH = 120
# the attributes worth a glance, in this order (old and new semantic-convention names)
KEY_ATTRIBUTES = (
    "http.request.method", "http.method", "http.route", "url.path", "http.target",
    "http.response.status_code", "http.status_code", "db.system", "db.query.text",
    "db.statement", "messaging.system", "messaging.destination.name", "rpc.method",
    "error.type", "exception.type", "exception.message",
)
SHORTEN = 60  # characters of a long attribute value (a SQL statement) shown


def run(args: argparse.Namespace) -> int:
    root = project_root(args)
    min_duration = _duration(args.min_duration)
    since = parse_since(args.since)
    client = Client(root)
    online = client.running()
    if args.id:
        if args.follow:
            raise UsageError("--follow lists new traces: give no ID with it",
                             hint="devenv trace --follow, or devenv trace ID")
        if online:
            found = client.trace(args.id)
        else:
            limits = _limits(root)
            found = store.lookup(_path(root), args.id, *limits)
        if args.json:
            print_json([to_json(found)])
        else:
            for line in waterfall(found, out.width if out.is_terminal else PIPED_WIDTH):
                out.print(line, soft_wrap=True, crop=False)
        return 0
    query = store.Query(services=tuple(args.services), since=since, min_duration=min_duration,
                        errors=args.errors, limit=args.limit)
    if online:
        items: Iterator[TraceSummary | Trace] = client.traces(
            services=args.services, since=since, min_duration=min_duration,
            errors=args.errors, limit=args.limit, follow=args.follow, spans=args.json)
    else:
        found_list = store.recent(_path(root), query)
        items = iter([store.trace(_path(root), t.trace_id) or t for t in found_list]
                     if args.json else found_list)
    if args.follow:
        _follow(items, args.json)
        err.print("[dim]the environment is not running; nothing more will come[/]"
                  if not online else "[dim]the environment stopped; nothing more will come[/]")
        return 0
    listed = list(items)
    if args.json:
        print_json([to_json(t) for t in listed])
    elif listed:
        print_table(COLUMNS, [row(t) for t in listed])
    else:
        err.print("[dim]no traces" + (" match" if _filtered(args) else " yet") +
                  " (services get OTEL_* variables from devenv; the ingress records every "
                  "request it answers)[/]")
    return 0


COLUMNS = [Column("TIME"), Column("TRACE"), Column("ROOT", wrap=True), Column("SERVICES",
           wrap=True), Column("SPANS"), Column("DURATION"), Column("STATUS")]


def row(t: TraceSummary) -> list[str]:
    status = "[red]error[/]" if t.status == "error" else "[green]ok[/]"
    return [_clock(t.start_ns), t.trace_id[:SHORT_ID],
            f"[{service_color(t.root_service)}]{escape(t.root_service)}[/] "
            f"{escape(t.root_name)}",
            ",".join(escape(s) for s in t.services), str(t.span_count), duration(t.duration),
            status + (f" ({t.errors})" if t.errors > 1 else "")]


def _follow(items: Iterator[TraceSummary | Trace], as_json: bool) -> None:
    header = False
    for item in items:
        if as_json:
            sys.stdout.write(json.dumps(to_json(item)) + "\n")
            sys.stdout.flush()
            continue
        if not header:
            out.print("[dim]" + "  ".join(c.header for c in COLUMNS) + "[/]")
            header = True
        out.print("  ".join(row(item)), soft_wrap=True, crop=False)


# ---- the waterfall


def waterfall(trace: Trace, width: int) -> list[Text]:
    """One trace as lines: a head, then each span under its parent with its offset,
    duration, a bar on the trace's time scale, its status and key attributes."""
    total = max(trace.duration, 1e-9)
    rows = list(_tree(trace.spans))
    labels = [Text(prefix) + _label(span) for prefix, span in rows]
    label_width = min(max((len(t) for t in labels), default=10), LABEL_MAX)
    bar_width = max(10, width - label_width - 2 * 10 - 12)
    status = Text("error", "bold red") if trace.status == "error" else Text("ok", "green")
    lines = [Text.assemble(("trace ", "bold"), (trace.trace_id, "bold"), "  ",
                           _clock(trace.start_ns), f"  {len(trace.services)} service"
                           f"{'s' if len(trace.services) != 1 else ''}  {trace.span_count} "
                           f"span{'s' if trace.span_count != 1 else ''}  ",
                           duration(trace.duration), "  ", status)]
    for (_prefix, span), label in zip(rows, labels, strict=True):
        if len(label) > label_width:
            label.truncate(label_width - 1)
            label.append("…")
        label.pad_right(label_width - len(label))
        start = min(int(span.offset / total * bar_width), bar_width - 1)
        length = max(1, min(round(span.duration / total * bar_width), bar_width - start))
        failed = span.status == "error"
        bar = Text(" " * start + "█" * length + " " * (bar_width - start - length),
                   "red" if failed else service_color(span.service))
        line = Text.assemble(label, f"  {duration(span.offset):>8}  {duration(span.duration):>8}"
                             "  ", bar)
        if failed:
            line.append("  error", "bold red")
            line.stylize("red", 0, label_width)
        lines.append(line)
        detail = _details(span)
        if detail:
            indent = " " * (len(_prefix) + 3)
            lines.append(Text(indent + detail, "red" if failed else "dim"))
    return lines


def _tree(spans: list[SpanInfo]) -> Iterator[tuple[str, SpanInfo]]:
    """Spans depth first under their parents (in start order), with tree-drawing prefixes;
    a span whose parent is not in the trace starts a tree of its own."""
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[SpanInfo]] = {}
    for span in sorted(spans, key=lambda s: (s.start_ns, s.span_id)):
        parent = span.parent_id if span.parent_id in ids else None
        children.setdefault(parent, []).append(span)
    seen: set[str] = set()

    def walk(parent: str | None, indent: str) -> Iterator[tuple[str, SpanInfo]]:
        kids = [k for k in children.get(parent, []) if k.span_id not in seen]
        for i, span in enumerate(kids):
            seen.add(span.span_id)
            last = i == len(kids) - 1
            yield (indent + ("└─ " if last else "├─ ") if parent else ""), span
            yield from walk(span.span_id, indent + ("   " if last else "│  ")
                            if parent else "")
    yield from walk(None, "")


def _label(span: SpanInfo) -> Text:
    return Text.assemble((span.service, service_color(span.service)), " ", span.name)


def _details(span: SpanInfo) -> str:
    parts = []
    if span.status == "error" and span.status_message:
        parts.append(_short(span.status_message))
    for key in KEY_ATTRIBUTES:
        if key in span.attributes:
            parts.append(f"{key}={_short(str(span.attributes[key]))}")
    return "  ".join(parts)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SHORTEN else text[: SHORTEN - 1] + "…"


def duration(seconds: float) -> str:
    ms = seconds * 1000
    if ms < 1:
        return f"{ms:.2f}ms"
    if ms < 1000:
        return f"{ms:.1f}ms"
    return f"{seconds:.2f}s"


def _clock(start_ns: int) -> str:
    return datetime.fromtimestamp(start_ns / 1e9).strftime("%H:%M:%S.%f")[:-3]


# ---- arguments and the store read directly


def _duration(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError:
        seconds = -1
    if seconds < 0:
        raise UsageError(f"--min-duration {value!r}: not a duration",
                         hint="e.g. --min-duration 100ms, --min-duration 2s")
    return seconds


def _filtered(args: argparse.Namespace) -> bool:
    return bool(args.services or args.since or args.min_duration or args.errors)


def _path(root: Path) -> Path:
    return StateDir(root).base / "traces" / store.DB_NAME


def _limits(root: Path) -> tuple[float, int]:
    """The store's bounds as devenv.yaml sets them (its defaults if it cannot be read)."""
    from devenv.config.load import load
    from devenv.config.model import MonitoringConfig

    monitoring = MonitoringConfig()
    with contextlib.suppress(DevenvError, OSError):  # only for the wording of an error
        monitoring = load(root, None).project.monitoring
    return float(monitoring.trace_max_age), monitoring.trace_max_mb * 1024 * 1024
