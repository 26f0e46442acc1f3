"""`devenv doctor` and `devenv init`'s prerequisite checks: each ok / warn / fail with a fix."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import socket
import stat
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from devenv.core.errors import ConfigError, DevenvError
from devenv.core.paths import StateDir
from devenv.core.ports import port_owner
from devenv.profiling import permissions

if TYPE_CHECKING:
    from devenv.config.load import Loaded


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
    out.append(profiler_check())
    out.append(_ingress())
    return out


def _ingress() -> Check:
    """Whether the ingress runs compiled (mypyc) or interpreted, the same code but slower,
    and on which event loop."""
    from devenv import native
    from devenv.core import eventloop

    compiled, said, fix = native.describe()
    fast_loop, loop = eventloop.describe()
    if not fast_loop:
        fix = f"{fix}; pip install uvloop" if fix else "pip install uvloop"
    return Check("ingress", "ok" if compiled and fast_loop else "warn", f"{said}, {loop}", fix)


def profiler_check(facts: permissions.Facts | None = None) -> Check:
    """Whether `devenv profile` may attach py-spy/memray to services (Node needs none)."""
    verdict = permissions.decide(facts or permissions.facts())
    if verdict.allowed:
        return Check("profiling", "ok", verdict.reason)
    return Check("profiling", "warn", f"`devenv profile` cannot attach to Python services: "
                 f"{verdict.reason}", verdict.fix)


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
    state = StateDir(root)
    out += _state(state, engine_running)
    engine = _engine_pid(state) if engine_running else None
    ports = [("ingress.port", project.ingress.port)] if project.ingress.enabled else []
    ports += [(f"services.{n}.port", s.port) for n, s in project.services.items() if s.port]
    out += [_port(key, port, engine) for key, port in ports]
    if project.runtime == "kubernetes" and project.cluster.provider == "k3d":
        out.append(k3d_check())
    base = _environ(engine)
    for name, svc in project.services.items():
        out.append(_data_binaries(loaded, name) if svc.is_data
                   else _executable(loaded, name, base))
    return out


def k3d_check() -> Check:
    """`cluster.provider: k3d` needs the k3d CLI."""
    from devenv.kube.k3d import INSTALL_HINT

    found = shutil.which("k3d")
    if found:
        return Check("k3d", "ok", f"k3d at {found}")
    return Check("k3d", "fail", "the k3d command is not installed (cluster.provider: k3d)",
                 INSTALL_HINT)


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


def _port(key: str, port: int, engine: int | None) -> Check:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return Check(key, "ok", f"port {port} is free")
        except OSError:
            pass
    if engine is not None and _listener(port) == engine:
        return Check(key, "ok", f"port {port} is held by this project's engine (pid {engine})")
    owner = port_owner(port)
    return Check(key, "fail", f"port {port} is in use{owner or ' by another program'}",
                 f"stop that program, or choose another port with `devenv config set {key} N`")


def _listener(port: int) -> int | None:
    with contextlib.suppress(Exception):
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == "LISTEN":
                return conn.pid
    return None


def _engine_pid(state: StateDir) -> int | None:
    try:
        return int(state.pidfile.read_text())
    except (OSError, ValueError):
        return None


def _environ(engine: int | None) -> dict[str, str]:
    """The environment services inherit: the running engine's (it is the environment of
    the `up` that started it), else this one's (the next `up` starts the engine with it)."""
    if engine is not None:
        with contextlib.suppress(OSError):
            raw = Path(f"/proc/{engine}/environ").read_bytes()
            pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
            return {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}
    return dict(os.environ)


SHELL_WORDS = {"cd", "export", "source", ".", "set", "exec", "env", "if", "for", "while",
               "test", "[", "true", "false", "echo", "trap", "ulimit", "umask", "{", "("}


def program(command: str | list[str]) -> str | None:
    """The program a command runs: argv[0] of a list; the first word of a shell string after
    its `VAR=value` assignments (and `exec`); None when the shell itself does the work."""
    if isinstance(command, list):
        return command[0] if command else None
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        return None
    while words and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]) or words[0] == "exec"):
        words.pop(0)
    if not words or words[0] in SHELL_WORDS or any(c in words[0] for c in "$`;&|<>()"):
        return None
    return words[0]


def resolve(prog: str, path_var: str, folder: Path) -> Path | None:
    """Where `prog` is found as the service's process will find it: a path with a '/'
    relative to its folder, else each PATH entry, relative entries from its folder too."""
    if "/" in prog:
        candidates = [folder / prog]
    else:
        candidates = [folder / entry / prog for entry in path_var.split(os.pathsep) if entry]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def _executable(loaded: Loaded, name: str, base: dict[str, str]) -> Check:
    from devenv.plan import service_plan

    svc = loaded.project.services[name]
    key = f"services.{name}.command"
    prog = program(svc.command) if svc.command is not None else None
    if prog is None:
        return Check(key, "ok", "a shell command (its programs are not checked)")
    env = {**base, **service_plan(loaded, name).env}
    path_var = env.get("PATH", os.defpath)
    folder = loaded.root / svc.path
    found = resolve(prog, path_var, folder)
    if found is not None:
        return Check(key, "ok", f"{name} runs {prog}: {found}")
    if "/" in prog:
        return Check(key, "fail", f"service {name}: {prog!r} not found in {svc.path}/",
                     f"create {svc.path}/{prog} (executable), or fix {key}")
    return Check(key, "fail", f"service {name}: {prog!r} not found on the PATH it gets "
                 f"({path_var})", f"install {prog}, or add its folder to "
                 f"services.{name}.env.PATH (a relative folder counts from {svc.path}/)")


COMMON_EXTENSIONS = ("uuid-ossp", "pgcrypto", "pg_trgm", "citext", "hstore", "vector")


def _data_binaries(loaded: Loaded, name: str) -> Check:
    from devenv import data
    from devenv.plan import data_service

    key = f"services.{name}.kind"
    ds = data_service(loaded, name)
    try:
        found = data.binaries(ds)
    except DevenvError as exc:
        return Check(key, "fail", str(exc), exc.hint or "")
    shipped = data.extensions(ds)
    if shipped is None:
        return Check(key, "ok", f"{name}: {found}")
    lacking = [e for e in COMMON_EXTENSIONS if e not in shipped]
    note = f"; {len(shipped)} extensions" + (
        f", not {', '.join(lacking)} (declare what you need in `extensions:`; `up` says "
        "how to get a missing one)" if lacking else "")
    return Check(key, "ok", f"{name}: {found}{note}")
