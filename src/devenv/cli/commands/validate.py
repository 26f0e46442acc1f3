"""`devenv validate --all-services`: the environment (or a candidate configuration) started
in an isolated copy (devenv/candidate.py) on its own ports and state, checked by its own
engine (each service healthy, its `test:` passed, its dependencies reachable), then stopped
and removed, its data with it (Docker volumes, a cluster's claims); the running environment,
if any, is never touched. `--timeout` bounds the whole run: past it the copy is stopped the
same way and the matrix says what did not finish."""

from __future__ import annotations

import argparse
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rich.markup import escape

from devenv.cli.commands._common import project_root
from devenv.cli.output import Column, err, out, print_json, print_table
from devenv.client import Client, EngineTimeout
from devenv.core.errors import DevenvError, UsageError
from devenv.wire import UpResult, ValidationResult, ValidationRow, to_json

# the copy's stop, after the run or its --timeout: a cluster's StatefulSets stopped, each
# Docker volume's removal retried for 15 s
STOP_TIMEOUT = 180.0
MAX_TIMEOUT = 7 * 24 * 3600.0  # --timeout's largest (SIGALRM's timer takes far less)


_T = TypeVar("_T")


class _Expired(BaseException):
    """--timeout went off (raised by SIGALRM wherever the run waits, like Ctrl-C)."""


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
    limit, label = _timeout(args.timeout)
    say = err.print if not args.json else (lambda *a, **k: None)
    _clean_stale(cand.stale())
    say(f"validating in an isolated copy (ports from {args.ports}, at most {label})…")
    began = time.monotonic()
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGALRM)
    copy: cand.Candidate | None = None
    states: dict[str, str] = {}  # each service's last state in the copy's `up`
    result = UpResult(ok=False, services=[])
    try:
        signal.signal(signal.SIGTERM, _interrupt)  # stopped like Ctrl-C: the copy is cleaned
        signal.signal(signal.SIGALRM, _expire)
        try:
            signal.setitimer(signal.ITIMER_REAL, limit)
            copy = cand.make(root, overrides, args.profile, ports)
            client = Client(copy.root)
            _engine(client.ensure_engine, "while it started")
            result = _engine(lambda: _up(client, args, say, states),
                             "while it started the services")
            left = limit - (time.monotonic() - began)
            signal.setitimer(signal.ITIMER_REAL, 0)  # the engine ends the checks by `left`
            if result.ok and left > 0:
                try:
                    checked = client.validate(args.services or [], left)
                except EngineTimeout:  # (its own bound is `left` and a grace)
                    raise _Expired from None
                if any(row.unfinished for row in checked.services):
                    checked = ValidationResult(ok=False, services=checked.services,
                                               timed_out=label)
            elif result.ok:
                raise _Expired
            else:
                error = result.error.message if result.error else "did not come up"
                checked = ValidationResult(ok=False, services=[])
                say(f"[red]the candidate did not come up:[/] {escape(error)}")
                for svc in result.services:
                    if not svc.ok:
                        say(f"  {svc.name}: {escape(svc.detail or svc.state)}")
                        for line in svc.logs[-5:]:
                            say(f"    {escape(line)}")
            signal.setitimer(signal.ITIMER_REAL, 0)  # (it fires only in here)
        except _Expired:
            signal.setitimer(signal.ITIMER_REAL, 0)
            checked = _unfinished(copy, args.services, states, label)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        # a second Ctrl-C, or a SIGTERM, must not leave the copy half-removed
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if copy is not None:
                _discard(copy.root)
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous[0])
            signal.signal(signal.SIGALRM, previous[1])
    _show(checked, result, args.json)
    return 0 if checked.ok and result.ok else 1


def _timeout(value: str) -> tuple[float, str]:
    """--timeout's seconds, and the words the matrix says it with (`10m`)."""
    from devenv.config.schema import parse_duration

    try:
        seconds = parse_duration(value.strip())
    except (ValueError, OverflowError):
        seconds = -1.0
    if not math.isfinite(seconds) or seconds <= 0:
        raise UsageError(f"--timeout {value!r}: not a duration",
                         hint="e.g. --timeout 90s, --timeout 20m")
    if seconds > MAX_TIMEOUT:
        raise UsageError(f"--timeout {value!r}: out of range; it is at most "
                         f"{MAX_TIMEOUT // 3600:.0f}h", hint="e.g. --timeout 20m, --timeout 2h")
    return seconds, value.strip()


def _engine(call: Callable[[], _T], when: str) -> _T:
    """`call`'s answer; the copy's engine not answering in time said as what it is (not as
    --timeout: that bounds the run, these are the engine's own bounds)."""
    try:
        return call()
    except EngineTimeout as exc:
        raise DevenvError(f"the copy's engine did not answer in time {when}",
                          hint="the machine may be overloaded; try again (the copy was "
                          "removed)") from exc


def _expire(signum: int, frame: object) -> None:
    raise _Expired


def _unfinished(copy: Any, named: list[str], states: dict[str, str], label: str
                ) -> ValidationResult:
    """The matrix of a run --timeout ended before the checks answered: every service
    checked, as far as its start got."""
    names = [n for n in (copy.services if copy is not None else list(states))
             if not named or n in named]
    rows = []
    for name in names:
        state = states.get(name, "pending")
        healthy = state in ("healthy", "completed")
        rows.append(ValidationRow(service=name, state=state, healthy=healthy, test=None,
                                  dependencies=[], unfinished="checks" if healthy else "start"))
    return ValidationResult(ok=False, services=rows, timed_out=label)


def _clean_stale(folders: list[Path]) -> None:
    """Copies a killed `devenv validate` left: their engines stopped, what they left outside
    their folders removed, then the folders, and said (on stderr, also with --json)."""
    from devenv import candidate as cand

    for folder in folders:
        _discard(folder / cand.FOLDER)
        err.print(f"removed {escape(str(folder))}, the copy of a `devenv validate` that was "
                  "killed (its engine stopped)")


def _discard(root: Path) -> None:
    """The copy at `root` gone: its engine stopped, its data discarded unsaved (its data
    folders, Docker volumes, a cluster's claims); when the engine could not do that, what it
    left outside the folder removed here (nothing finds it once the folder is gone); then
    the folder."""
    from devenv import candidate as cand

    try:
        if not _stop(Client(root)):
            for problem in cand.discard_data(root):
                err.print(f"[yellow]removing the candidate's data: {escape(problem)}[/]")
    finally:
        cand.remove_folder(root.parent)


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


def _up(client: Client, args: argparse.Namespace, say: Any, seen: dict[str, str]
        ) -> UpResult:
    result = UpResult(ok=False, services=[])
    for event in client.up([], args.profile, watch=False):
        if isinstance(event, UpResult):
            return event
        if seen.get(event.service) != event.state:
            seen[event.service] = event.state
            say(f"  {event.service:<16} {event.state}")
    return result


def _stop(client: Client) -> bool:
    """Whether the copy's engine stopped, its data discarded unsaved (its data folders, its
    Docker volumes and a cluster's claims): False when it was not running, or failed."""
    if not client.running():
        return False
    try:
        client.stop(persist_data=False, snapshot=False, timeout=STOP_TIMEOUT)
    except DevenvError as exc:  # (then what it left is removed by the caller)
        err.print(f"[yellow]stopping the candidate: {escape(exc.message)}[/]")
        return False
    return True


def _show(checked: ValidationResult, result: UpResult, as_json: bool) -> None:
    ok = checked.ok and result.ok
    if as_json:
        data = to_json(checked)
        data["ok"] = ok
        if not result.ok and result.error:
            data["error"] = result.error.message
        print_json(data)
        return
    late = f"timed out after {checked.timed_out}"
    rows = []
    for row in checked.services:
        if row.unfinished == "test":
            test = late
        elif row.unfinished:
            test = "not run"
        else:
            test = "-" if row.test is None else ("pass" if row.test.code == 0
                                                else f"FAIL (exit {row.test.code})")
        deps = ", ".join(("" if d.ok else "✗ ") + d.name for d in row.dependencies) or "-"
        bad = [d for d in row.dependencies if not d.ok]
        healthy = "yes" if row.healthy else f"NO ({row.state})"
        if row.unfinished == "start":
            healthy += f", {late}"
        rows.append([escape(row.service), escape(healthy), escape(test),
                     escape(deps if not bad else "FAIL: " + deps),
                     "TIMED OUT" if row.unfinished else "ok" if row.ok else "FAIL"])
    if rows:
        print_table([Column("SERVICE"), Column("HEALTHY"), Column("TEST"),
                     Column("DEPENDENCIES", wrap=True), Column("RESULT")], rows)
    for row in checked.services:
        if row.test is not None and row.test.code != 0 and row.test.output \
                and not row.unfinished:
            out.print(f"{row.service} test output:", markup=False)
            for line in row.test.output.splitlines():
                out.print(f"  {line}", markup=False)
        for dep in row.dependencies:
            if not dep.ok:
                out.print(f"{row.service} → {dep.name} ({dep.address or 'no address'}): "
                          f"{dep.error}", markup=False)
    if checked.timed_out:
        left = [row.service for row in checked.services if row.unfinished]
        out.print(f"validate: FAILED, {late}" + (f"; did not finish: {', '.join(left)}"
                                                 if left else ""), markup=False)
        return
    out.print("validate: " + ("passed" if ok else "FAILED"), markup=False)
