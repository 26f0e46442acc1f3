"""Services run under a debugger (`devenv debug`): each one's session, its plan rewrite, and
turning it on (`debug_on`) and off (`debug_off`).

A session lives on its `ServiceRunner` (`runner.debug`), in the engine only: when the engine
stops, the debugging ends with it (the debug ports stay: they are kept in
`.devenv/debug-ports.json`, so an IDE's launch.json keeps working). While a session is on,
every instance the runner starts (scale, replace, reload, roll) runs the debugged command,
one replica at a time (`scale` counts are remembered and given back by `debug --off`).

debugpy and node's inspector ask for no password: whoever can connect to 127.0.0.1 can run
code in the debugged process. So a service that would run as root is not debugged unless the
caller says the machine has no other user (`allow_root`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import socket
import stat
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from devenv import debuggers
from devenv.config.model import Debug
from devenv.core.atomic import write_atomic
from devenv.core.errors import DevenvError, UsageError
from devenv.core.paths import PRIVATE_DIR, PRIVATE_FILE, StateDir, private_dir
from devenv.core.ports import port_owner
from devenv.plan import ServicePlan
from devenv.wire import Condition, DebugInfo, DebugResult

if TYPE_CHECKING:
    from devenv.engine.reconciler import Engine
    from devenv.engine.service import ServiceRunner


@dataclass
class DebugSession:
    service: str
    language: str
    port: int
    wait: bool
    declared: str | None  # services.NAME.debug.language
    root: Path
    debugpy_dir: str
    replicas: int = 1  # what the service runs when the session ends

    def apply(self, plan: ServicePlan) -> ServicePlan:
        """`plan` as a debugged instance runs it: the rewritten command, one replica.
        UsageError when it cannot run under the debugger (its command changed since)."""
        done = debuggers.debug(plan.name, plan.command, self.root / plan.workdir, plan.env,
                               self.declared, self.port, self.wait, self.debugpy_dir)
        self.language = done.language
        return replace(plan, command=done.command, env={**plan.env, **done.env}, replicas=1)

    def info(self) -> DebugInfo:
        return DebugInfo(language=self.language, address=f"{debuggers.HOST}:{self.port}",
                         wait=self.wait)


async def debug_on(engine: Engine, root: Path, runner: ServiceRunner, declared: Debug | None,
                   wait: bool, allow_root: bool) -> DebugResult:
    """Run `runner`'s service under its debugger (one replica, exempt from health's verdicts)
    through a replace, so callers see no gap (but for a debugged instance replaced by
    another: both cannot hold the debug port). Answers once the debugged instance is healthy,
    has started (`wait`), or was not healthy within its start_period (kept: the answer says
    so); the service's lock is never held longer."""
    name = runner.name
    if runner.plan.data is not None or runner.plan.job:
        what = "a data service" if runner.plan.data is not None else "a one-shot job"
        raise UsageError(f"cannot debug {name}: it is {what}",
                         hint="`devenv debug` runs a server under Python's or Node's debugger")
    refuse_root(name, allow_root)
    workdir = str(root / runner.plan.workdir)
    session = await engine.ctx.blocking(
        open_session, root, runner.plan, declared.language if declared else None,
        declared.port if declared else None, wait, runner.debug)
    async with engine.holding([name], "debug"):
        previous = runner.debug
        session.replicas = previous.replicas if previous else runner.desired
        runner.debug = session
        failure: list[str] = []
        was_debugged = any(r.debugged for r in runner.replicas)  # (those go first)
        ok = await runner.replace(runner.plan, failure=failure)
        if not ok and not was_debugged:
            runner.debug = previous  # the previous instances keep serving
            return DebugResult(name, False, None, workdir, runner.desired,
                               error="; ".join(failure[:3]) or "the debugged instance "
                               "failed to start")
        await runner.scale(session.replicas)
    detail = None
    if ok and not wait and runner.ready < 1:
        budget = runner.plan.health.start_period if runner.plan.health else 60.0
        detail = (f"started; not healthy yet after {budget:g}s (start_period): it is kept under "
                  "the debugger and joins the pool once its health check passes (see "
                  f"`devenv logs {name}`)")
    return DebugResult(name, ok, session.info(), workdir, 1,
                       error=None if ok else "; ".join(failure[:3]),
                       attach=debuggers.attach_recipe(session.language, session.port),
                       detail=detail)


async def debug_off(engine: Engine, root: Path, runner: ServiceRunner) -> DebugResult:
    """Run `runner`'s service as planned again (its command, the latest replica count), with
    no gap."""
    name = runner.name
    workdir = str(root / runner.plan.workdir)
    async with engine.holding([name], "debug --off"):
        session, runner.debug = runner.debug, None
        if session is None:
            return DebugResult(name, True, None, workdir, runner.desired)
        failure: list[str] = []
        ok = await runner.replace(runner.plan, failure=failure)
        await runner.scale(session.replicas)
    try:
        reason = await runner.wait_condition(Condition.UP, runner.up_budget)
    except TimeoutError:
        reason = f"not healthy within {runner.up_budget:g}s"
    return DebugResult(name, ok and reason is None, None, workdir, session.replicas,
                       error=None if ok and reason is None
                       else "; ".join(failure[:1]) or reason)


def deferred_counts(runners: Mapping[str, ServiceRunner], counts: dict[str, int]
                    ) -> dict[str, str] | None:
    """For `scale`: the services it scaled that run one debugged replica meanwhile, each with
    what the answer says (the count applies after `debug --off`); None when there are none."""
    notes = {name: f"under a debugger: runs 1 replica until `devenv debug {name} --off`, "
             f"then {count}"
             for name, count in counts.items()
             if name in runners and runners[name].debug is not None}
    return notes or None


def refuse_root(service: str, allow_root: bool) -> None:
    """UsageError when the debugged process would run as root (the local runtime runs a
    service as the engine's user) and the caller did not say the machine has no other user."""
    if allow_root or os.geteuid() != 0:
        return
    raise UsageError(
        f"refusing to debug {service}: devenv runs as root, so {service} would run as root, "
        "and its debug port gives code execution as root to anyone on this machine (debugpy "
        "and node's inspector ask for no password); nothing was changed",
        hint="run devenv as your own user; or, on a machine where no other user can log in "
        f"(a dev container), pass --allow-root: `devenv debug {service} --allow-root`")


def open_session(root: Path, plan: ServicePlan, declared: str | None, port: int | None,
                 wait: bool, current: DebugSession | None) -> DebugSession:
    """A session for `plan`'s service, its command rewritten once now so that a command
    that cannot be debugged fails before anything is replaced. The port: `port` (declared),
    else the one kept for the service; refused when something else listens on it."""
    chosen = port or kept_port(root, plan.name)
    if current is None or current.port != chosen:
        check_free(plan.name, chosen, declared=port is not None)
    session = DebugSession(plan.name, "", chosen, wait, declared, root, debugpy_path(root))
    session.apply(plan)  # (UsageError: what to declare)
    return session


def kept_port(root: Path, service: str) -> int:
    """The service's debug port: picked once (stable per project folder and service, from
    debuggers.PORTS) and kept in .devenv/debug-ports.json across engines."""
    state = StateDir(root)
    file = state.base / "debug-ports.json"
    try:
        kept = json.loads(file.read_text())
        kept = kept if isinstance(kept, dict) else {}
    except (OSError, ValueError):
        kept = {}
    if isinstance(kept.get(service), int):
        return int(kept[service])
    port = debuggers.stable_port(f"{root}:{service}", {v for v in kept.values()
                                                       if isinstance(v, int)})
    kept[service] = port
    private_dir(state.base)
    write_atomic(file, json.dumps(kept, indent=1, sort_keys=True), PRIVATE_FILE)
    return port


def check_free(service: str, port: int, declared: bool) -> None:
    """UsageError naming the port, what holds it (when it can be told) and what to do, when
    the debug port cannot be listened on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((debuggers.HOST, port))
            return
        except OSError as exc:
            why = exc.strerror or str(exc)
    owner = port_owner(port).strip()  # 'by pid N (name)', or '' when it cannot be read
    holder = f"held {owner}" if owner else f"in use by another program ({why})"
    source = f"services.{service}.debug.port" if declared else \
        ".devenv/debug-ports.json, where devenv keeps the port it picked"
    stop = f"stop {owner.removeprefix('by ')}" if owner else "stop what listens on it"
    raise UsageError(
        f"cannot debug {service}: its debug port {port} ({debuggers.HOST}:{port}, from "
        f"{source}) is {holder}; nothing was changed",
        hint=f"{stop}, or give {service} another debug port: set services.{service}.debug.port "
        f"(`devenv config set services.{service}.debug.port N`)")


def debugpy_path(root: Path) -> str:
    """A folder holding only devenv's own debugpy (a link), put first on a debugged Python
    service's PYTHONPATH: the service's interpreter imports it without seeing any other
    package of devenv's environment.

    Whatever is on that path runs in the service (a `sitecustomize.py` would run at its
    start), so the folder is the engine user's alone: `.devenv/run` must be a real folder
    owned by that user (made owner-only), and `debugpy/` in it is used only as devenv makes
    it (owner-only, nothing but the link); anything else there is removed and made again."""
    spec = importlib.util.find_spec("debugpy")
    if spec is None or not spec.submodule_search_locations:
        raise DevenvError("debugpy is not installed in devenv's environment",
                          hint="pip install debugpy (into the environment devenv runs from)")
    package = Path(next(iter(spec.submodule_search_locations)))
    run = _owned_private(StateDir(root).run)
    folder = run / "debugpy"
    if not _as_made(folder, package):
        _remove(folder)
        folder.mkdir(mode=PRIVATE_DIR)  # (fails if something took the name meanwhile)
        os.chmod(folder, PRIVATE_DIR)  # (whatever the umask)
        (folder / "debugpy").symlink_to(package, target_is_directory=True)
    return str(folder)


def _owned_private(folder: Path) -> Path:
    """`folder` (missing parents made owner-only) as a real folder of the engine's user,
    owner-only; refused when it is a link or another user's."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISLNK(folder.lstat().st_mode):
            raise DevenvError(f"cannot debug: {folder} is a symbolic link; devenv keeps what a "
                              "debugged service imports there only in a folder of its own",
                              hint=f"remove {folder} (with devenv stopped) and try again")
    private_dir(folder)
    owner = folder.lstat().st_uid
    if owner != os.geteuid():
        raise DevenvError(f"cannot debug: {folder} belongs to uid {owner}, not to devenv's "
                          f"user (uid {os.geteuid()}): whoever owns it could put code in what "
                          "a debugged service imports",
                          hint=f"remove {folder} (with devenv stopped), or run devenv as its "
                          "owner")
    return folder


def _as_made(folder: Path, package: Path) -> bool:
    """Whether `folder` is exactly as debugpy_path makes it."""
    try:
        info = folder.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() \
                or stat.S_IMODE(info.st_mode) != PRIVATE_DIR:
            return False
        link = folder / "debugpy"
        return os.listdir(folder) == ["debugpy"] and link.is_symlink() \
            and os.readlink(link) == str(package)
    except OSError:
        return False


def _remove(path: Path) -> None:
    """`path`, whatever it is (a link is removed, never followed)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(path)
    else:
        path.unlink()
