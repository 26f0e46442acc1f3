"""Services run under a debugger (`devenv debug`): each one's session and its plan rewrite.

A session lives on its `ServiceRunner` (`runner.debug`), in the engine only: when the engine
stops, the debugging ends with it (the debug ports stay: they are kept in
`.devenv/debug-ports.json`, so an IDE's launch.json keeps working). While a session is on,
every instance the runner starts (scale, replace, reload, roll) runs the debugged command,
one replica at a time (`scale` counts are remembered and given back by `debug --off`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path

from devenv import debuggers
from devenv.core.atomic import write_atomic
from devenv.core.errors import DevenvError, UsageError
from devenv.core.paths import PRIVATE_FILE, StateDir
from devenv.core.ports import port_owner
from devenv.plan import ServicePlan
from devenv.wire import DebugInfo


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
        """`plan` as a debugged instance runs it: the rewritten command, one replica."""
        done = debuggers.debug(plan.name, plan.command, self.root / plan.workdir, plan.env,
                               self.declared, self.port, self.wait, self.debugpy_dir)
        self.language = done.language
        return replace(plan, command=done.command, env={**plan.env, **done.env}, replicas=1)

    def info(self) -> DebugInfo:
        return DebugInfo(language=self.language, address=f"{debuggers.HOST}:{self.port}",
                         wait=self.wait)


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
    state.base.mkdir(parents=True, exist_ok=True)
    write_atomic(file, json.dumps(kept, indent=1, sort_keys=True), PRIVATE_FILE)
    return port


def check_free(service: str, port: int, declared: bool) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((debuggers.HOST, port))
            return
        except OSError as exc:
            reason = f"{exc.strerror}{port_owner(port)}"
    where = f"services.{service}.debug.port" if declared else ".devenv/debug-ports.json"
    raise UsageError(f"cannot debug {service}: its debug port {debuggers.HOST}:{port} is "
                     f"taken ({reason}); nothing was changed",
                     hint=f"stop what holds it, or set another with `devenv config set "
                     f"services.{service}.debug.port N` (now from {where})")


def debugpy_path(root: Path) -> str:
    """A folder holding only devenv's own debugpy (a link), put first on a debugged Python
    service's PYTHONPATH: the service's interpreter imports it without seeing any other
    package of devenv's environment."""
    spec = importlib.util.find_spec("debugpy")
    if spec is None or not spec.submodule_search_locations:
        raise DevenvError("debugpy is not installed in devenv's environment",
                          hint="pip install debugpy (into the environment devenv runs from)")
    package = Path(next(iter(spec.submodule_search_locations)))
    folder = StateDir(root).run / "debugpy"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    link = folder / "debugpy"
    if not link.is_symlink() or os.readlink(link) != str(package):
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(package, target_is_directory=True)
    return str(folder)
