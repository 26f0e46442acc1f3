"""`devenv load-test`: resolve the target through the engine's status, build the pattern
(the quick form or a pattern file), run the generator, print and check the figures."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.markup import escape

from devenv.cli.commands._common import project_root
from devenv.cli.output import Column, out, print_json, print_table, warn
from devenv.client import Client
from devenv.core.errors import DevenvError, UsageError
from devenv.loadtest import generator, pattern, units
from devenv.loadtest.report import Sample, write_report
from devenv.loadtest.results import Results, step_label
from devenv.loadtest.worker import Target
from devenv.wire import ServiceStatus


def run(args: argparse.Namespace) -> int:
    pat = _pattern(args)
    if args.workers is not None and not 1 <= args.workers <= generator.MAX_WORKERS:
        raise UsageError(f"--workers {args.workers}: give 1 to {generator.MAX_WORKERS}")
    workers = args.workers or generator.workers_for(pat)
    generator.check_open_files(generator.files_needed(pat, workers))
    target, client = _target(args, pat)
    report = Path(args.report) if args.report else None
    if report is not None:
        _check_report(report, args.report)
    return _run(args, pat, target, client, workers, report)


def _check_report(path: Path, name: str) -> None:
    """Refuse now, not after the whole test, a report that could not be written. It is
    written (in place: its mode, links and a device such as /dev/stdout kept) only once the
    run has figures to show: one that fails before leaves an earlier report as it was."""
    reason = None
    if path.is_dir():
        reason = "it is a folder"
    elif path.exists():
        if not os.access(path, os.W_OK):
            reason = "Permission denied"
    else:
        try:
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}."):
                pass
        except OSError as exc:
            reason = exc.strerror or str(exc)
    if reason:
        raise UsageError(f"--report {name}: cannot write it ({reason})",
                         hint="give a file in an existing folder you can write to")


def _run(args: argparse.Namespace, pat: pattern.Pattern, target: Target,
         client: Client | None, workers: int, report: Path | None) -> int:
    generator.reachable(target)
    samples: list[Sample] = []
    stop = threading.Event()
    sampler = None
    if report is not None and client is not None:
        sampler = threading.Thread(target=_sample, args=(client, samples, stop), daemon=True)
        sampler.start()
    live = sys.stdout.isatty() and not args.json
    asked = _asked(pat)
    if not args.json:
        out.print(f"load test of {escape(target.label)}: {escape(asked)}")
    results = generator.run(pat, target, workers=workers, asked=asked,
                            progress=_progress(pat) if live else None, notice=_notice(live))
    stop.set()
    if sampler:
        sampler.join(timeout=3)
    if live:
        sys.stdout.write("\r\033[K")
    verdicts = results.check(pat)
    if args.json:
        print_json(results.as_json())
    else:
        _summary(results)
    if report is not None:
        with report.open("w", encoding="utf-8") as fh:
            write_report(fh, results, samples)
        if not args.json:
            out.print(f"report: {args.report}")
    if results.interrupted:
        return 130
    total = results.total()
    if not total.requests:
        raise DevenvError(f"no request to {target.label} was made or answered",
                          hint="see the summary above; check the target and the pattern")
    if total.error_count == total.requests:
        kinds = ", ".join(f"{k} {n:,}" for k, n in sorted(total.errors.items()))
        raise DevenvError(f"every request to {target.label} failed ({kinds})",
                          hint="see the summary above; check the target and the pattern")
    return 1 if any(not v.ok for v in verdicts) else 0


def _pattern(args: argparse.Namespace) -> pattern.Pattern:
    timeout = _usage(units.duration, args.timeout or "10s", "--timeout",
                     "a duration like 10s")
    if (problem := units.duration_problem(timeout)):
        raise UsageError(f"--timeout: {problem}")
    thresholds = []
    for text in args.threshold:
        t = pattern.threshold(text, "--threshold")
        if isinstance(t, str):
            raise UsageError(f"--threshold: {t}")
        thresholds.append(t)
    if args.pattern:
        if args.rate or args.connections or args.path != "/" or args.method.upper() != "GET":
            raise UsageError("--pattern sets the rate, connections, methods and paths",
                             hint="give those in the pattern file, or drop --pattern")
        pat = pattern.load(Path(args.pattern), args.pattern)
        if args.timeout:  # (over the file's own)
            pat = replace(pat, timeout_s=timeout)
        if args.duration:  # a short run of a one-stage pattern
            if len(pat.stages) != 1:
                raise UsageError("--duration with --pattern needs a pattern of one stage",
                                 hint="set each stage's duration in the file")
            seconds = _usage(units.duration, args.duration, "--duration", "a duration")
            if (problem := units.duration_problem(seconds)):
                raise UsageError(f"--duration: {problem}")
            pat = replace(pat, stages=(replace(pat.stages[0], duration_s=seconds),))
        if args.scenario:
            names = [s.name for s in pat.scenarios]
            if args.scenario not in names:
                raise UsageError(f"no scenario named {args.scenario!r} in {args.pattern}",
                                 hint=f"scenarios: {', '.join(names)}")
            pat = pat.only(args.scenario)
        if thresholds:
            pat = replace(pat, thresholds=pat.thresholds + tuple(thresholds))
        return pat
    if args.scenario:
        raise UsageError("--scenario names a scenario of a --pattern file")
    duration = _usage(units.duration, args.duration or "10s", "--duration", "a duration "
                      "like 30s")
    if (problem := units.duration_problem(duration)):
        raise UsageError(f"--duration: {problem}")
    if args.connections is not None and (problem := units.count_problem(args.connections)):
        raise UsageError(f"--connections: {problem}")
    if args.rate:
        rate = _usage(units.rate, args.rate, "--rate", "a rate like 200/s")
        if (problem := units.rate_problem(rate)):
            raise UsageError(f"--rate: {problem}")
        stage = pattern.Stage("rate", duration, rate, rate)
    else:
        stage = pattern.Stage("users", duration, users=args.connections or 32)
    if not args.path.startswith("/"):
        raise UsageError(f"--path {args.path!r}: give a path starting with /")
    method = args.method.upper()
    if method not in pattern.METHODS:
        raise UsageError(f"--method {args.method!r}: not a method",
                         hint=f"methods: {', '.join(pattern.METHODS)}")
    return pattern.quick(method, _quick_path(args), stage, args.connections or 0, timeout,
                         tuple(thresholds))


def _whole_url(args: argparse.Namespace) -> bool:
    """The quick form's --url without --path: the URL, query and all, is what is requested
    (else --path goes under the URL's path)."""
    return bool(args.url) and not args.pattern and args.path == "/"


def _quick_path(args: argparse.Namespace) -> str:
    """What the quick form requests: --path, or the whole URL's path and query."""
    if not _whole_url(args):
        return str(args.path)
    parts = urllib.parse.urlsplit(args.url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _usage(parse: Any, value: str, flag: str, what: str) -> Any:
    try:
        return parse(value)
    except ValueError:
        raise UsageError(f"{flag} {value!r}: give {what}") from None


def _target(args: argparse.Namespace, pat: pattern.Pattern) -> tuple[Target, Client | None]:
    given = [(k, getattr(args, k)) for k in ("url", "target", "service") if getattr(args, k)]
    if len(given) > 1:
        raise UsageError("give one of --url, --target or --service")
    kind, value = given[0] if given else (pat.target or (None, None))
    if kind is None or value is None:
        raise UsageError("what should be loaded? give --target SERVICE (through the ingress),"
                         " --service SERVICE (its own address) or --url URL")
    if kind == "url":
        return _from_url(value, value, whole=_whole_url(args)), None
    client = Client(project_root(args))
    if not client.running():
        raise DevenvError("no environment is running, so there is no service "
                          f"{value!r} to load", hint="start it with `devenv up`, or give --url")
    status = client.status()
    services = {s.name: s for s in status.services}
    if value not in services:
        raise UsageError(f"no service named {value!r}", hint=f"services: "
                         f"{', '.join(sorted(services))}")
    _ready(services[value])
    if kind == "service":
        url = services[value].url
        assert url is not None  # (`_ready` refused a service without an address)
        return _from_url(url, f"{value} ({url})"), client
    if not status.ingress:
        raise DevenvError("the ingress is not running", hint="use --service to load the "
                          "service's own address")
    ingress = _from_url(status.ingress, "")
    return Target(ingress.host, ingress.port, f"{value}.localhost:{ingress.port}", "",
                  f"{value} via the ingress ({status.ingress})"), client


def _ready(svc: ServiceStatus) -> None:
    """Refuse, before the run, a service that cannot answer HTTP now: a data service, one
    without an address, one with no instance ready (every request would fail or wait)."""
    name = svc.name
    if not svc.url:
        raise DevenvError(f"service {name!r} has no address (no port): there is nothing to "
                          "send requests to", hint="load a service that has a port")
    scheme = svc.url.partition("://")[0]
    if scheme != "http":
        raise UsageError(f"service {name!r} is a {_KINDS.get(scheme, scheme)} data service; "
                         "load-test sends HTTP requests",
                         hint="load the services that use it (their requests reach it)")
    if svc.replicas.ready == 0:
        detail = f": {svc.detail}" if svc.detail else ""
        raise DevenvError(f"service {name!r} has no instance ready ({svc.state}{detail})",
                          hint=f"see `devenv status` and `devenv logs {name}`; run the test "
                          "once it is healthy")


_KINDS = {"postgresql": "PostgreSQL", "postgres": "PostgreSQL", "redis": "Redis"}


def _from_url(url: str, label: str, *, whole: bool = False) -> Target:
    """Where a URL points; its path is put before every path requested, unless it is
    requested `whole` (the quick form's --url without --path: its path and query are the
    request's own)."""
    problem = pattern.url_problem(url, whole=whole)
    if problem:
        hint = "put the query in the path (--path /p?q=1, or each step's)" \
            if "query" in problem else None
        raise UsageError(f"{url!r}: {problem}", hint=hint)
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None
    prefix = "" if whole else parts.path.rstrip("/")
    return Target(parts.hostname, parts.port or 80, parts.netloc, prefix, label or url)


def _asked(pat: pattern.Pattern) -> str:
    parts = []
    for s in pat.stages:
        if s.kind == "users":
            parts.append(f"{s.users:,} connection{'s' if s.users != 1 else ''} for "
                         f"{s.duration_s:g}s")
        elif s.kind == "ramp":
            parts.append(f"{units.shown(s.rate)} to {units.shown(s.to)} over {s.duration_s:g}s")
        else:
            parts.append(f"{units.shown(s.rate)} for {s.duration_s:g}s" + (
                " (spike)" if s.kind == "spike" else ""))
    names = ", ".join(s.name for s in pat.scenarios)
    return "; ".join(parts) + (f" [{names}]" if pat.file else "")


def _notice(live: bool) -> generator.Notice:
    def say(text: str) -> None:
        if live:
            sys.stdout.write("\r\033[K")
            sys.stdout.flush()
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    return say


def _progress(pat: pattern.Pattern) -> generator.Progress:
    def show(results: Results, elapsed: float) -> None:
        total = results.total()
        recent = sorted(s for s in results.timeline if s < int(elapsed))[-2:]  # (whole ones)
        rps = f"{sum(results.timeline[s].requests for s in recent) / len(recent):,.0f}" \
            if recent else "-"
        lat = total.hist.summary_ms()
        left = max(0.0, pat.duration_s - elapsed)
        sys.stdout.write(
            f"\r\033[K{rps} req/s  p50 {lat['p50']:.1f} ms  "
            f"p95 {lat['p95']:.1f} ms  p99 {lat['p99']:.1f} ms  errors {total.error_count:,}  "
            f"{left:.0f}s left")
        sys.stdout.flush()
    return show


def _sample(client: Client, samples: list[Sample], stop: threading.Event) -> None:
    start = time.monotonic()
    while not stop.is_set():
        try:
            status = client.status(resources=True)
        except DevenvError:
            return
        samples.append(Sample(time.monotonic() - start, {
            s.name: (s.cpu_percent or 0.0, s.rss_bytes or 0) for s in status.services
            if s.cpu_percent is not None}))
        stop.wait(1.0)


def _ms(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _summary(results: Results) -> None:
    seconds = max(results.duration_s, 1e-9)
    rows = []
    steps = [(step_label(k), f) for k, f in results.step_rows()]
    for key, figures in [*steps, ("all", results.total())]:
        d = figures.as_json(seconds)
        lat = d["latency_ms"]
        rows.append([escape(key), f"{d['requests']:,}", f"{d['rps']:,.1f}",
                     f"{d['errors']['total']:,}",
                     *(_ms(lat[p]) if lat[p] is not None else "-"
                       for p in ("p50", "p90", "p95", "p99", "max"))])
    print_table([Column("STEP"), Column("REQUESTS"), Column("REQ/S"), Column("ERRORS"),
                 Column("P50 MS"), Column("P90 MS"), Column("P95 MS"), Column("P99 MS"),
                 Column("MAX MS")], rows)
    total = results.total()
    if total.errors:
        out.print("errors: " + ", ".join(f"{k} {n:,}" for k, n in sorted(total.errors.items())))
    for key, figures in steps:
        if figures.codes:
            out.print(f"  {escape(key)}: status " + ", ".join(
                f"{code} x{n:,}" for code, n in sorted(figures.codes.items())))
        for why, n in figures.failed.most_common(3):
            out.print(f"  {escape(key)}: check failed, {escape(why)} x{n:,}")
    if results.interrupted:
        cut = results.cut_s if results.cut_s is not None else results.duration_s
        out.print(f"[yellow]interrupted after {cut:.1f}s: partial figures (rates over "
                  f"{results.duration_s:.1f}s, the answers to the Ctrl-C's requests in "
                  "flight included)[/]")
    if results.cut_note:
        out.print(f"[yellow]{results.cut_note}[/]")
    if results.steps_lost:
        how = "stopped at once (a second Ctrl-C)" if results.hurried else \
            "the workers did not finish in time"
        out.print(f"[yellow]{how}: the workers' per-step figures were not handed in; the "
                  "totals are those of the seconds received[/]")
    if results.behind:
        warn(results.behind)
    for v in results.verdicts:
        mark = "[green]ok[/]" if v.ok else "[yellow]NOT MEASURED[/]" if v.reason else \
            "[red]BROKEN[/]"
        out.print(f"threshold {mark} {escape(v.scope or 'all')}: {escape(v.threshold.text)} "
                  f"({v.said}) [dim]{escape(v.threshold.where)}[/]")
