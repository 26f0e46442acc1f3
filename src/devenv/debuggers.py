"""Which debugger runs a service, and its command rewritten to run under it.

Pure but for reading files (a console script's `#!` line, a package.json script), like
`devservers.py`. Python runs through debugpy (`python -m debugpy --listen 127.0.0.1:PORT
[--wait-for-client] ...`), Node through its inspector (`node --inspect=127.0.0.1:PORT`, or
`--inspect-brk` to wait). The language comes from the command (python, uvicorn, gunicorn,
flask, fastapi, node, npm/npx running node, ...) or from `services.NAME.debug.language`.

A console script (uvicorn, gunicorn, ...) is run as a module (`-m uvicorn`) by the python of
its `#!` line. debugpy follows subprocesses (its default `subProcess: true`), so with
`uvicorn --reload` or gunicorn's workers an IDE attaches to the child that serves (a
plain DAP client sees the parent, which is where the code runs without them).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from devenv.core.errors import UsageError

HOST = "127.0.0.1"
PORTS = range(9230, 9730)  # debug ports picked for services (9229 is node's own default)
LANGUAGES = ("python", "node")
DEBUG_PATH_VAR = "PYTHONPATH"

_PYTHON = re.compile(r"^python(\d+(\.\d+)?)?$")
_NODE = re.compile(r"^(node|nodejs)$")
# console scripts run as `python -m <module>`
_MODULES = {"uvicorn": "uvicorn", "gunicorn": "gunicorn", "flask": "flask",
            "fastapi": "fastapi", "hypercorn": "hypercorn", "celery": "celery",
            "pytest": "pytest", "django-admin": "django"}
_SHELL_SYNTAX = re.compile(r"[;&|<>()`]")
_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_UNQUOTED = re.compile(r"^[\w@%+=:,./${}-]+$")  # kept bare: `$PORT` still expands
_PY_OPTS_WITH_VALUE = {"-X", "-W", "-Q"}


@dataclass(frozen=True)
class Debugged:
    """How a debugged instance runs."""

    language: str
    command: tuple[str, ...]
    env: dict[str, str]  # added to the service's (PYTHONPATH for debugpy, node_modules/.bin)


def stable_port(key: str, taken: set[int]) -> int:
    """A port from PORTS picked by the hash of `key` (project folder + service), skipping
    `taken` (other services' kept ports)."""
    start = int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(PORTS)
    for i in range(len(PORTS)):
        port = PORTS[(start + i) % len(PORTS)]
        if port not in taken:
            return port
    raise UsageError("no debug port left in 9230-9729",
                     hint="set one: services.NAME.debug.port")


def attach_recipe(language: str, port: int) -> str:
    """The one line for tools other than VS Code."""
    if language == "python":
        return (f"attach a Python debugger to {HOST}:{port} (PyCharm: a \"Python Debug Server\""
                f"/remote attach configuration on {HOST}:{port}; any DAP client)")
    return (f"open chrome://inspect and add {HOST}:{port} under \"Configure\" (or attach any "
            f"Chrome DevTools Protocol client to http://{HOST}:{port}/json)")


def debug(service: str, command: tuple[str, ...], folder: Path, env: dict[str, str],
          declared: str | None, port: int, wait: bool, debugpy_dir: str) -> Debugged:
    """`command` (a plan's argv, run in `folder` with `env`) rewritten to run under its
    language's debugger on HOST:port. UsageError naming what to declare when the language is
    unknown or the command cannot be rewritten."""
    shell = len(command) == 3 and command[:2] == ("/bin/sh", "-c")
    if shell:
        text = command[2]
        if _SHELL_SYNTAX.search(text):
            raise UsageError(
                f"cannot debug {service}: its command is a shell line with pipes, lists or "
                f"redirections ({text!r})",
                hint=f"give services.{service}.command as a list, or run a script from it")
        try:
            words = shlex.split(text)
        except ValueError as exc:
            raise UsageError(f"cannot debug {service}: cannot read its command: {exc}") from None
    else:
        words = list(command)
    assigns = []
    while words and _ASSIGN.match(words[0]):
        assigns.append(words.pop(0))
    if not words:
        raise UsageError(f"cannot debug {service}: it has no command")
    path = env.get("PATH", os.environ.get("PATH", ""))
    path = os.pathsep.join(str(folder / p) for p in path.split(os.pathsep))
    language, argv, extra = _rewrite(service, words, folder, path, declared, port, wait)
    if language == "python":
        extra["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # (-Xfrozen_modules=off is given)
        given = env.get(DEBUG_PATH_VAR, "")
        extra[DEBUG_PATH_VAR] = debugpy_dir + (os.pathsep + given if given else "")
    if shell or assigns:
        line = " ".join(_quote(w) for w in [*assigns, *argv])
        return Debugged(language, ("/bin/sh", "-c", f"exec {line}" if not assigns else line),
                        extra)
    return Debugged(language, tuple(argv), extra)


def _rewrite(service: str, words: list[str], folder: Path, path: str, declared: str | None,
             port: int, wait: bool) -> tuple[str, list[str], dict[str, str]]:
    program, rest = words[0], words[1:]
    name = os.path.basename(program)
    if _PYTHON.match(name) and declared in (None, "python"):
        return "python", _python(program, rest, port, wait), {}
    if _NODE.match(name) and declared in (None, "node"):
        return "node", _node(program, rest, port, wait), {}
    script = _resolve(program, folder, path)
    shebang = _interpreter(script) if script else None
    if name in _MODULES and declared in (None, "python"):
        python = shebang if shebang and _PYTHON.match(os.path.basename(shebang)) else "python3"
        return "python", _python(python, ["-m", _MODULES[name], *rest], port, wait), {}
    if name == "npx" and rest and declared in (None, "node"):
        tool = folder / "node_modules" / ".bin" / rest[0]
        if tool.exists():
            return "node", _node("node", [str(tool.resolve()), *rest[1:]], port, wait), {}
    if name in ("npm", "pnpm", "yarn") and rest and declared in (None, "node"):
        script_name, args = (rest[1], rest[2:]) if rest[0] == "run" and len(rest) > 1 \
            else (rest[0], rest[1:])
        args = args[1:] if args[:1] == ["--"] else args
        line = _package_script(folder, script_name)
        if line and not _SHELL_SYNTAX.search(line) and shlex.split(line):
            bins = str(folder / "node_modules" / ".bin") + os.pathsep + path
            language, argv, _ = _rewrite(service, shlex.split(line), folder, bins, declared,
                                         port, wait)
            return language, argv + args, {"PATH": bins}
    lang = declared or _language_of(shebang)
    if lang == "python" and script and not _MODULES.get(name):
        python = shebang if shebang and _PYTHON.match(os.path.basename(shebang)) else "python3"
        return "python", _python(python, [str(script), *rest], port, wait), {}
    if lang == "node" and script:
        node = shebang if shebang and _NODE.match(os.path.basename(shebang)) else "node"
        return "node", _node(node, [str(script), *rest], port, wait), {}
    what = f"run {' '.join(words[:3])!r} under" if not declared else \
        f"run {program!r} (not a script file) under the {declared} debugger"
    raise UsageError(
        f"cannot tell how to {what} a debugger ({service})",
        hint=f"declare it in devenv.yaml: services.{service}.debug: {{language: python}} (or "
        "node); the command must then run a python or node program, e.g. `python app.py`")


def _python(python: str, rest: list[str], port: int, wait: bool) -> list[str]:
    """`python [its options] -m debugpy --listen H:P [--wait-for-client] <what it ran>`."""
    options = []
    i = 0
    while i < len(rest) and rest[i].startswith("-") and rest[i] not in ("-m", "-c", "-"):
        options.append(rest[i])
        if rest[i] in _PY_OPTS_WITH_VALUE and i + 1 < len(rest):
            options.append(rest[i + 1])
            i += 1
        i += 1
    listen = ["-m", "debugpy", "--listen", f"{HOST}:{port}"]
    if not any(o.startswith("-Xfrozen_modules") for o in options):  # (else it may miss
        options += ["-Xfrozen_modules=off"]  # breakpoints, and says so; older ones ignore -X)
    return [python, *options, *listen, *(["--wait-for-client"] if wait else []), *rest[i:]]


def _node(node: str, rest: list[str], port: int, wait: bool) -> list[str]:
    rest = [w for w in rest if not re.match(r"^--inspect(-brk)?(=.*)?$", w)]
    flag = "--inspect-brk" if wait else "--inspect"
    return [node, f"{flag}={HOST}:{port}", *rest]


def _resolve(program: str, folder: Path, path: str) -> Path | None:
    if "/" in program:
        found = folder / program
        return found if found.is_file() else None
    which = shutil.which(program, path=path)
    return Path(which) if which else None


def _interpreter(script: Path) -> str | None:
    """The program of a script's `#!` line (`/usr/bin/env node` → node)."""
    try:
        with script.open("rb") as fh:
            first = fh.readline(256).decode(errors="replace")
    except OSError:
        return None
    if not first.startswith("#!"):
        return None
    words = first[2:].split()
    if words and os.path.basename(words[0]) == "env":
        words = [w for w in words[1:] if not w.startswith("-")]
    return words[0] if words else None


def _language_of(interpreter: str | None) -> str | None:
    name = os.path.basename(interpreter or "")
    if _PYTHON.match(name):
        return "python"
    return "node" if _NODE.match(name) else None


def _package_script(folder: Path, name: str) -> str | None:
    try:
        scripts = json.loads((folder / "package.json").read_text(encoding="utf-8"))["scripts"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if name == "start" and isinstance(scripts, dict) and "start" not in scripts:
        return "node server.js"  # npm's own default
    script = scripts.get(name) if isinstance(scripts, dict) else None
    return script if isinstance(script, str) else None


def _quote(word: str) -> str:
    return word if _UNQUOTED.match(word) else shlex.quote(word)
