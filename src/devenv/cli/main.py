"""Parse the command line and dispatch to one command module; translate errors once."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from devenv import __version__
from devenv.core.errors import DevenvError


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of lines") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} lines: give 0 or more")
    return number


def _kube_version(value: str) -> str:
    parts = value.removeprefix("v").split(".")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"{value!r} is not a Kubernetes version (e.g. 1.32)")
    return ".".join(parts)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="devenv", description="The whole multi-service system on "
                                "your machine with one command.")
    p.add_argument("--version", action="version", version=f"devenv {__version__}")
    p.add_argument("-C", "--project-dir", default=None, help="project folder (default: the "
                   "nearest folder with a devenv.yaml)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("init", help="check prerequisites and scaffold a devenv.yaml")
    s.add_argument("--force", action="store_true", help="overwrite an existing devenv.yaml")

    s = sub.add_parser("up", help="start services in dependency order and wait until healthy")
    s.add_argument("--services", type=_csv, default=[], help="only these (and their dependencies),"
                   " comma-separated")
    s.add_argument("--profile", default=None, help="apply a profile from devenv.yaml")
    s.add_argument("--attach", action="store_true", help="stay in the foreground streaming logs;"
                   " Ctrl-C stops the environment")
    s.add_argument("--no-watch", dest="watch", action="store_false",
                   help="do not reload services when their files change")
    s.add_argument("--rerun", action="append", type=_csv, default=[], metavar="JOB",
                   help="run a one-shot job again even if it completed before and nothing it "
                   "depends on changed (repeatable, or comma-separated)")
    s.add_argument("--runtime", choices=("local", "docker", "kubernetes"), default=None,
                   help="run on this runtime (docker: services with image: or build: as "
                   "containers; kubernetes: as Deployments on `cluster:`); default: "
                   "devenv.yaml's `runtime:`")
    s.add_argument("--monitoring", action="store_true", help="print the web dashboard's URL")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.add_argument("--yes", "-y", action="store_true", help="recreate a k3d cluster at another "
                   "Kubernetes version than the pinned one without asking (its data carried "
                   "over in a snapshot)")

    s = sub.add_parser("stop", help="stop every service and the engine")
    s.add_argument("--persist-data", action="store_true", help="keep data services' data for "
                   "the next up")

    s = sub.add_parser("restart", help="restart services (all by default)")
    s.add_argument("names", nargs="*", metavar="SERVICE", help="services to restart")
    s.add_argument("--service", dest="services", action="append", type=_csv, default=[],
                   help="a service to restart (repeatable, or comma-separated)")

    s = sub.add_parser("status", help="show services, replicas, URLs and health")
    s.add_argument("--resources", action="store_true", help="add CPU and memory per service")
    s.add_argument("--json", action="store_true", help="print a stable JSON document")

    s = sub.add_parser("logs", help="show services' logs, merged")
    s.add_argument("services", nargs="*", metavar="SERVICE")
    s.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    s.add_argument("--since", default=None, help="only lines newer than 10s, 5m, 2h or an ISO "
                   "time")
    s.add_argument("-n", "--tail", type=_count, default=None, metavar="N",
                   help="only the last N lines (with -f: from the last 100 unless given)")
    s.add_argument("--startup", action="store_true",
                   help="only the start-ups of the instances running now")
    s.add_argument("--all", action="store_true",
                   help="with --startup: past start-ups too (restarted, replaced, scaled away)")
    s.add_argument("--verbose", action="store_true", help="include devenv's own events")
    s.add_argument("--json", action="store_true", help="one JSON object per line")

    s = sub.add_parser("metrics", help="show services' current metrics, or export them")
    s.add_argument("--service", action="append", type=_csv, default=[], metavar="S",
                   help="only these services (repeatable, or comma-separated)")
    s.add_argument("--json", action="store_true", help="print a stable JSON document")
    s.add_argument("--export", choices=["prometheus"], default=None,
                   help="write the Prometheus exposition text instead")
    s.add_argument("-o", "--output", default=None, metavar="FILE",
                   help="with --export: write to FILE instead of standard output")

    s = sub.add_parser("trace", help="list recent traces, or show one as a waterfall")
    s.add_argument("id", nargs="?", metavar="ID", help="a trace id (8 or more of its first "
                   "digits): show it as a waterfall")
    s.add_argument("--services", type=_csv, default=[], help="only traces through every one "
                   "of these services, comma-separated")
    s.add_argument("--since", default=None, help="only traces started in the last 10s, 5m, 2h "
                   "or after an ISO time")
    s.add_argument("--min-duration", default=None, metavar="DURATION",
                   help="only traces that took at least this long, e.g. 100ms")
    s.add_argument("--errors", action="store_true", help="only traces with a failed span")
    s.add_argument("-n", "--limit", type=_count, default=20, metavar="N",
                   help="the last N traces (default 20)")
    s.add_argument("-f", "--follow", action="store_true", help="keep printing new traces")
    s.add_argument("--json", action="store_true", help="traces with their spans as JSON (one "
                   "object per line with --follow)")

    s = sub.add_parser("scale", help="set replica counts live, e.g. scale api=3 web=2")
    s.add_argument("counts", nargs="+", metavar="SERVICE=N")

    s = sub.add_parser("debug", help="run a service under its language's debugger (debugpy, "
                       "node --inspect) and write its attach configuration")
    s.add_argument("service", metavar="SERVICE")
    s.add_argument("--wait", action="store_true", help="its code waits for a debugger to "
                   "attach before it runs")
    s.add_argument("--off", action="store_true", help="run it as planned again (replicas, "
                   "command)")
    s.add_argument("--no-launch-json", action="store_true",
                   help="do not write .vscode/launch.json")
    s.add_argument("--allow-root", action="store_true",
                   help="debug even when devenv runs as root (its debug port gives code "
                   "execution as root to any local user): only where no other user can log "
                   "in, e.g. a dev container")
    s.add_argument("--json", action="store_true", help="print the result as JSON")

    s = sub.add_parser("exec", help="run a command with a service's environment and folder")
    s.add_argument("service")
    s.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD")

    s = sub.add_parser("config", help="validate, show, get and set configuration")
    cs = s.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = cs.add_parser("validate", help="check devenv.yaml, overrides and every profile")
    c.add_argument("--json", action="store_true")
    c = cs.add_parser("show", help="print the effective configuration")
    c.add_argument("--profile", default=None)
    c.add_argument("--json", action="store_true")
    c = cs.add_parser("get", help="print one value, e.g. services.api.port")
    c.add_argument("key")
    c.add_argument("--profile", default=None)
    c = cs.add_parser("set", help="set a value (in .devenv/local.yaml unless --project)")
    c.add_argument("key")
    c.add_argument("value")
    c.add_argument("--project", action="store_true", help="write devenv.yaml (keeps comments)")
    c = cs.add_parser("unset", help="remove a value (from .devenv/local.yaml unless --project)")
    c.add_argument("key")
    c.add_argument("--project", action="store_true")
    cs.add_parser("schema", help="print the JSON Schema of devenv.yaml")
    c = cs.add_parser("branch", help="list config branches, or save the overrides as one and "
                      "switch to it")
    c.add_argument("name", nargs="?", metavar="NAME")
    c.add_argument("--push", action="store_true", help="also publish it to the remote")
    c.add_argument("--remote", default="origin", help="where --push publishes (default origin)")
    c.add_argument("--json", action="store_true")

    s = sub.add_parser("sync", help="take a teammate's config branch: show, validate, apply")
    s.add_argument("--branch", required=True, metavar="NAME")
    s.add_argument("--remote", default="origin", help="where to fetch it from (default origin)")
    s.add_argument("--force", action="store_true", help="drop local overrides not saved to a "
                   "branch, and local branch changes the remote lacks")
    s.add_argument("--profile", default=None, help="validate and converge with this profile")
    s.add_argument("--dry-run", action="store_true", help="only show what it changes")
    s.add_argument("--yes", "-y", action="store_true", help="apply changes to commands, "
                   "images, env files and artifacts without asking")

    s = sub.add_parser("publish", help="pack a service (after its build step) into an artifact "
                       "recorded in the current config branch")
    s.add_argument("--service", required=True, metavar="S")
    s.add_argument("--version", default=None, metavar="V", help="a label for it (default: its "
                   "digest)")
    s.add_argument("--push", action="store_true", help="also push the branch and the artifact")
    s.add_argument("--include-secrets", action="store_true", help="also pack files that look "
                   "like secrets (.env*, *.pem, *.key, id_*, …), left out by default")
    s.add_argument("--remote", default="origin", help="where --push publishes (default origin)")

    s = sub.add_parser("data", help="load datasets, reset or restore the data services")
    ds = s.add_subparsers(dest="action", metavar="ACTION", required=True)
    d = ds.add_parser("load", help="load a dataset from devenv.yaml (all or nothing)")
    d.add_argument("--dataset", required=True)
    ds.add_parser("reset", help="every data service back to fresh, empty data")
    d = ds.add_parser("restore", help="restore the data services from a snapshot")
    d.add_argument("--from", dest="snapshot", required=True, metavar="SNAPSHOT")

    s = sub.add_parser("snapshot", help="save, list, restore and share data snapshots")
    ss = s.add_subparsers(dest="action", metavar="ACTION", required=True)
    d = ss.add_parser("save", help="snapshot every data service, while they keep running")
    d.add_argument("name")
    d = ss.add_parser("list", help="the snapshots, newest last")
    d.add_argument("--json", action="store_true")
    d = ss.add_parser("restore", help="put every data service back as in the snapshot")
    d.add_argument("name")
    d = ss.add_parser("delete", help="delete a snapshot")
    d.add_argument("name")
    d = ss.add_parser("export", help="write a snapshot to one file, to share it")
    d.add_argument("name")
    d.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="FILE.tar, or FILE.tar.gz to compress")
    d = ss.add_parser("import", help="add a snapshot from an exported file")
    d.add_argument("file")
    d.add_argument("--name", default=None, help="store it under another name")

    s = sub.add_parser("profile", help="sample a running service's CPU (or memory) without "
                       "restarting it")
    s.add_argument("--service", required=True, metavar="S")
    s.add_argument("--duration", default="10s", help="how long to sample (default 10s)")
    s.add_argument("--replica", type=int, default=None, metavar="N",
                   help="which replica (default: the first healthy one)")
    s.add_argument("--format", choices=["speedscope", "flamegraph"], default=None,
                   help="write only this file (default: both)")
    s.add_argument("--memory", action="store_true", help="RSS of each instance over the "
                   "window, and Python's top allocation sites")
    s.add_argument("--allow-root", action="store_true", help="profile Node even though devenv "
                   "runs as root (its inspector is open meanwhile)")
    s.add_argument("--json", action="store_true", help="print the result as JSON")

    sub.add_parser("dashboard", help="print the URL of the web dashboard (logs, traces, charts)")

    s = sub.add_parser("load-test", help="load a service (or a URL) and measure it")
    s.add_argument("--url", default=None, help="an http:// URL to load")
    s.add_argument("--target", default=None, metavar="S", help="a service, through the ingress")
    s.add_argument("--service", default=None, metavar="S", help="a service, at its own address")
    s.add_argument("--path", default="/", help="the path to request (default /)")
    s.add_argument("--method", default="GET", help="the method (default GET)")
    s.add_argument("--rate", default=None, help="open model: arrivals a second, e.g. 200/s")
    s.add_argument("--connections", type=int, default=None, metavar="N", help="closed model: N "
                   "connections as fast as they go (default 32); with --rate: the most at once")
    s.add_argument("--duration", default=None, help="how long, e.g. 30s (default 10s)")
    s.add_argument("--timeout", default=None, help="one request's limit (default 10s, or "
                   "the pattern's)")
    s.add_argument("--pattern", default=None, metavar="FILE", help="scenarios, stages and "
                   "thresholds from a YAML file")
    s.add_argument("--scenario", default=None, metavar="NAME", help="only this scenario")
    s.add_argument("--threshold", action="append", default=[], metavar="RULE",
                   help="e.g. 'p95 < 300ms' or 'errors < 1%%' (repeatable); broken: exit 1")
    s.add_argument("--workers", type=int, default=None, metavar="N", help="generator "
                   "processes (default: as the load needs, at most one a core)")
    s.add_argument("--json", action="store_true", help="print the figures as JSON")
    s.add_argument("--report", default=None, metavar="FILE.html", help="write an HTML report")

    s = sub.add_parser("docs", help="write the environment's documentation for the team")
    ds = s.add_subparsers(dest="action", metavar="ACTION", required=True)
    d = ds.add_parser("generate", help="Markdown: the dependency graph, each service, the data, "
                      "the configuration reference (no secret values)")
    d.add_argument("-o", "--output", default=None, metavar="FILE",
                   help="where to write it (default: docs/environment.md in the project; "
                   "- for standard output)")
    d.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 when FILE is not what it would be (for CI)")

    s = sub.add_parser("audit", help="show the audit trail of state-changing commands")
    s.add_argument("--since", default=None, help="only records newer than 30m, 2h, 1d or an "
                   "ISO time")
    s.add_argument("--json", action="store_true", help="the records as stored, one per line")
    s.add_argument("--verify", action="store_true", help="check the hash chain: exit 1 naming "
                   "each line edited, removed or out of order")

    s = sub.add_parser("render", help="write the project as Kubernetes manifests (one file "
                       "per service), for any cluster")
    s.add_argument("--runtime", choices=("kubernetes",), default="kubernetes",
                   help="what to render for (kubernetes, the default)")
    s.add_argument("-o", "--output", default=None, metavar="DIR",
                   help="write DIR/<service>.yaml (default: print to standard output)")
    s.add_argument("--services", type=_csv, default=[], help="only these, comma-separated")
    s.add_argument("--profile", default=None, help="apply a profile from devenv.yaml")
    s.add_argument("--kubernetes", default=None, metavar="VERSION", type=_kube_version,
                   help="the target version, e.g. 1.32 (default: kubernetes.version)")
    s.add_argument("--validate", action="store_true", help="check every manifest against "
                   "the target version's OpenAPI schemas; invalid: exit 1")
    s.add_argument("--check-deprecations", action="store_true", help="report manifests "
                   "(rendered and the services' own) using APIs the target version removed "
                   "(exit 1) or deprecates, with the replacement")

    s = sub.add_parser("validate", help="start the environment (or a candidate configuration) "
                       "in an isolated copy on its own ports and state, run each service's "
                       "`test:`, check its dependencies; a pass/fail matrix")
    s.add_argument("--all-services", action="store_true", help="check every service")
    s.add_argument("--service", dest="services", action="append", default=[], metavar="NAME",
                   help="check only this service (repeatable; all still start)")
    s.add_argument("--config-branch", default=None, metavar="NAME",
                   help="the candidate runs this config branch's overrides instead of yours")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a candidate value (repeatable), e.g. services.api.replicas=2")
    s.add_argument("--profile", default=None, help="apply a profile from devenv.yaml")
    from devenv.candidate import DEFAULT_PORTS

    s.add_argument("--ports", default=DEFAULT_PORTS, metavar="RANGE",
                   help=f"ports the copy's addresses are taken from (default {DEFAULT_PORTS}:"
                   " below Linux's ephemeral ports, which outgoing connections take)")
    s.add_argument("--timeout", default="10m", metavar="DURATION",
                   help="the whole run's limit, start to last test, e.g. 90s, 20m (default "
                   "10m); past it the copy is stopped and what did not finish is shown")
    s.add_argument("--json", action="store_true", help="print the matrix as JSON")

    s = sub.add_parser("migrate", help="upgrade what the environment runs on: devenv.yaml's "
                       "schema version, data services' server versions, Kubernetes APIs")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--dry-run", action="store_true", help="print the plan and the diff; "
                   "change nothing")
    g.add_argument("--confirm", action="store_true", help="snapshot, apply, check health; "
                   "roll back to the snapshot on failure")
    s.add_argument("--json", action="store_true", help="print the plan (and outcome) as JSON")

    s = sub.add_parser("doctor", help="diagnose the machine and the project")
    s.add_argument("--json", action="store_true")
    return p


COMMANDS = {
    "init": "init", "up": "up", "stop": "stop", "restart": "restart", "status": "status",
    "logs": "logs", "scale": "scale", "exec": "exec_", "config": "config", "doctor": "doctor",
    "data": "data", "snapshot": "snapshot", "metrics": "metrics", "trace": "trace",
    "dashboard": "dashboard", "debug": "debug", "load-test": "load_test", "profile": "profile",
    "sync": "sync", "publish": "publish",
    "docs": "docs", "audit": "audit",
    "render": "render", "validate": "validate", "migrate": "migrate",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:  # (a Ctrl-C while the command loads: it never ran)
        args = parser().parse_args(argv)
        module = importlib.import_module(f"devenv.cli.commands.{COMMANDS[args.command]}")
        from devenv.cli import audit

        recording = audit.start(args, argv)  # None unless the command changes state
    except KeyboardInterrupt:
        return 130
    try:
        code, error = _run(module, args, recording.root if recording is not None else None)
    except BaseException as exc:
        if recording is not None:
            recording.raised(exc)
        raise
    if recording is not None:
        recording.finish(code, error)
    return code


def _run(module: ModuleType, args: argparse.Namespace, changes: Path | None
         ) -> tuple[int, str | None]:
    """The command's exit code, and its error message if it failed with one. A command that
    changes the project at `changes` holds its operation lock, shared, for its whole run: it
    is refused while a migration holds it, and a migration waits for it (core/oplock.py)."""
    try:
        with _operation(args, changes):
            code: int = module.run(args)
        return code, None
    except DevenvError as exc:
        from devenv.cli.output import print_error

        print_error(exc)
        return exc.exit_code, exc.message
    except KeyboardInterrupt:
        return 130, "interrupted"
    except BrokenPipeError:
        return 0, None


def _operation(args: argparse.Namespace, changes: Path | None
               ) -> contextlib.AbstractContextManager[None]:
    """`migrate` takes none here: --dry-run reads only, and --confirm's engine holds the
    lock exclusively (cli/commands/migrate.py)."""
    if changes is None or args.command == "migrate":
        return contextlib.nullcontext()
    from devenv.core import oplock

    return oplock.shared(changes)


if __name__ == "__main__":
    sys.exit(main())
