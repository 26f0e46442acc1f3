"""`devenv validate --all-services`: the environment (or a candidate configuration) started
in an isolated copy (devenv/candidate.py) on its own ports and state, checked by its own
engine (each service healthy, its `test:` passed, its dependencies reachable), then stopped
and removed; the running environment, if any, is never touched."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import Any

from rich.markup import escape

from devenv.cli.commands._common import project_root
from devenv.cli.output import Column, err, out, print_json, print_table
from devenv.client import Client
from devenv.core.errors import DevenvError, UsageError
from devenv.wire import UpResult, ValidationResult, to_json

VALIDATE_TIMEOUT = 3600.0  # the checks' answer; each test is bounded by its run_timeout


def run(args: argparse.Namespace) -> int:
    from devenv import candidate as cand

    if not args.all_services and not args.services:
        raise UsageError("say what to validate: --all-services, or --service NAME",
                         hint="e.g. devenv validate --all-services")
    root = project_root(args)
    ports = cand.parse_ports(args.ports)
    overrides = _overrides(root, args.config_branch)
    for item in args.set:
        key, eq, text = item.partition("=")
        if not eq:
            raise UsageError(f"--set {item}: expected KEY=VALUE",
                             hint="e.g. --set services.api.replicas=2")
        from devenv.config.edit import parse_value

        cand.set_path(overrides, key.strip(), parse_value(text))
    say = err.print if not args.json else (lambda *a, **k: None)
    _clean_stale(cand.stale())
    say(f"validating in an isolated copy (ports from {args.ports})…")
    copy = cand.make(root, overrides, args.profile, ports)
    client = Client(copy.root)
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _interrupt)  # stopped like Ctrl-C: the copy is cleaned up
    try:
        client.ensure_engine()
        result = _up(client, args, say)
        if result.ok:
            checked = client.validate(args.services or [], VALIDATE_TIMEOUT)
        else:
            error = result.error.message if result.error else "did not come up"
            checked = ValidationResult(ok=False, services=[])
            say(f"[red]the candidate did not come up:[/] {escape(error)}")
            for svc in result.services:
                if not svc.ok:
                    say(f"  {svc.name}: {escape(svc.detail or svc.state)}")
                    for line in svc.logs[-5:]:
                        say(f"    {escape(line)}")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave it
        try:
            _stop(client)
        finally:
            cand.remove(copy)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)
    _show(checked, result, args.json)
    return 0 if checked.ok and result.ok else 1


def _clean_stale(folders: list[Path]) -> None:
    """Copies a killed `devenv validate` left: their engines stopped, their folders removed,
    and said (on stderr, also with --json)."""
    import shutil

    from devenv import candidate as cand

    for folder in folders:
        _stop(Client(folder / cand.FOLDER))
        shutil.rmtree(folder, ignore_errors=True)
        err.print(f"removed {escape(str(folder))}, the copy of a `devenv validate` that was "
                  "killed (its engine stopped)")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _overrides(root: Path, branch: str | None) -> dict[str, Any]:
    """The candidate's override layer: a config branch's, else this checkout's."""
    from devenv.core.paths import StateDir
    from devenv.teams.branches import Branches, plain

    if branch is not None:
        data = plain(Branches(root).read(branch).overrides, f"{branch}:overrides.yaml")
    else:
        path = StateDir(root).local_overrides
        data = plain(path.read_text(), ".devenv/local.yaml") if path.is_file() else {}
    return dict(data) if isinstance(data, dict) else {}


def _up(client: Client, args: argparse.Namespace, say: Any) -> UpResult:
    result = UpResult(ok=False, services=[])
    seen: dict[str, str] = {}
    for event in client.up([], args.profile, watch=False):
        if isinstance(event, UpResult):
            return event
        if seen.get(event.service) != event.state:
            seen[event.service] = event.state
            say(f"  {event.service:<16} {event.state}")
    return result


def _stop(client: Client) -> None:
    if not client.running():
        return
    try:
        client.stop(persist_data=True)  # (its folder is removed next: no snapshot needed)
    except DevenvError as exc:  # the engine also ends once its folder is gone
        err.print(f"[yellow]stopping the candidate: {escape(exc.message)}[/]")


def _show(checked: ValidationResult, result: UpResult, as_json: bool) -> None:
    ok = checked.ok and result.ok
    if as_json:
        data = to_json(checked)
        data["ok"] = ok
        if not result.ok and result.error:
            data["error"] = result.error.message
        print_json(data)
        return
    rows = []
    for row in checked.services:
        test = "-" if row.test is None else ("pass" if row.test.code == 0
                                            else f"FAIL (exit {row.test.code})")
        deps = ", ".join(("" if d.ok else "✗ ") + d.name for d in row.dependencies) or "-"
        bad = [d for d in row.dependencies if not d.ok]
        rows.append([escape(row.service), "yes" if row.healthy else f"NO ({row.state})",
                     test, escape(deps if not bad else "FAIL: " + deps),
                     "ok" if row.ok else "FAIL"])
    if rows:
        print_table([Column("SERVICE"), Column("HEALTHY"), Column("TEST"),
                     Column("DEPENDENCIES", wrap=True), Column("RESULT")], rows)
    for row in checked.services:
        if row.test is not None and row.test.code != 0 and row.test.output:
            out.print(f"{row.service} test output:", markup=False)
            for line in row.test.output.splitlines():
                out.print(f"  {line}", markup=False)
        for dep in row.dependencies:
            if not dep.ok:
                out.print(f"{row.service} → {dep.name} ({dep.address or 'no address'}): "
                          f"{dep.error}", markup=False)
    out.print("validate: " + ("passed" if ok else "FAILED"), markup=False)
