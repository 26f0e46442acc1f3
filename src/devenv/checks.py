"""`devenv doctor` and `devenv init`'s prerequisite checks: each ok / warn / fail with a fix."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import stat
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from devenv.core.errors import ConfigError
from devenv.core.paths import StateDir
from devenv.core.ports import port_owner


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    message: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def machine_checks(root: Path) -> list[Check]:
    out = [_python()]
    out.append(_writable(root))
    out.append(_inotify())
    out.append(_disk(root))
    out.append(_localhost())
    return out


def project_checks(root: Path, engine_running: bool) -> list[Check]:
    from devenv.config.load import load

    try:
        loaded = load(root)
    except ConfigError as exc:
        return [Check("config", "fail", f"{len(exc.problems)} problem(s): {exc.details[0]}",
                      "run `devenv config validate` to see them all")]
    project = loaded.project
    out = [Check("config", "ok", f"{loaded.file.name} is valid: {len(project.services)} services")]
    out += [Check("config", "warn", message) for message in loaded.warnings]
    out += _state(StateDir(root), engine_running)
    if not engine_running:
        ports = [("ingress.port", project.ingress.port)] if project.ingress.enabled else []
        ports += [(f"services.{n}.port", s.port) for n, s in project.services.items() if s.port]
        out += [_port(key, port) for key, port in ports]
    for name, svc in project.services.items():
        argv = shlex.split(svc.command) if isinstance(svc.command, str) else svc.command
        if argv and "/" not in argv[0] and not shutil.which(argv[0]) and "=" not in argv[0]:
            out.append(Check(f"services.{name}.command", "warn", f"'{argv[0]}' is not on PATH",
                             f"install {argv[0]}, or fix services.{name}.command"))
    return out


def _python(minimum: tuple[int, int] = (3, 11)) -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] >= minimum:
        return Check("python", "ok", f"Python {version}")
    return Check("python", "fail", f"Python {version} is too old",
                 f"install Python {minimum[0]}.{minimum[1]} or newer")


def _writable(root: Path) -> Check:
    if os.access(root, os.W_OK):
        return Check("project folder", "ok", f"{root} is writable")
    return Check("project folder", "fail", f"cannot write to {root}",
                 "devenv keeps its state in .devenv/ there; fix the folder's permissions")


def _inotify() -> Check:
    path = Path("/proc/sys/fs/inotify/max_user_watches")
    try:
        watches = int(path.read_text())
    except (OSError, ValueError):
        return Check("file watching", "ok", "native file events available")
    if watches < 65536:
        return Check("file watching", "warn", f"only {watches} inotify watches",
                     "sudo sysctl fs.inotify.max_user_watches=524288")
    return Check("file watching", "ok", f"{watches} inotify watches")


def _disk(root: Path) -> Check:
    free = shutil.disk_usage(root).free
    if free < 1 << 30:
        return Check("disk", "warn", f"{free >> 20} MiB free", "free some space for logs and data")
    return Check("disk", "ok", f"{free >> 30} GiB free")


def _localhost() -> Check:
    try:
        infos = socket.getaddrinfo("api.localhost", 80, proto=socket.IPPROTO_TCP)
    except OSError:
        infos = []
    if any(str(i[4][0]).startswith(("127.", "::1")) for i in infos):
        return Check("*.localhost", "ok", "<service>.localhost resolves to this machine")
    return Check("*.localhost", "warn", "<service>.localhost does not resolve here",
                 "browsers and curl resolve it themselves; for other tools use the "
                 "ingress's path routes or add the names to /etc/hosts")


def _state(state: StateDir, engine_running: bool) -> list[Check]:
    out = []
    if state.run.exists():
        mode = stat.S_IMODE(state.run.stat().st_mode)
        ok = mode & 0o077 == 0
        out.append(Check("control channel", "ok" if ok else "fail",
                         f"{state.run} is mode {mode:o}",
                         "" if ok else f"chmod 700 {state.run}"))
    if engine_running:
        out.append(Check("engine", "ok", "running"))
    elif state.socket.exists():
        out.append(Check("engine", "warn", "a stale control socket is left from an engine that "
                         "died", "the next `devenv up` cleans it up and stops any leftovers"))
    else:
        out.append(Check("engine", "ok", "not running (starts with `devenv up`)"))
    return out


def _port(key: str, port: int) -> Check:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return Check(key, "ok", f"port {port} is free")
        except OSError:
            pass
    owner = port_owner(port)
    return Check(key, "fail", f"port {port} is in use{owner}",
                 f"stop that program, or choose another port with `devenv config set {key} N`")
