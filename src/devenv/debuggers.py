"""Which debugger runs a service, and its command rewritten to run under it.

Pure but for reading files (a console script's `#!` line, a package.json script), like
`devservers.py`. Python runs through debugpy (`python -m debugpy --listen 127.0.0.1:PORT
[--wait-for-client] ...`), Node through its inspector (`node --inspect=127.0.0.1:PORT`, or
`--inspect-brk` to wait). The language comes from the command (python, uvicorn, gunicorn,
flask, fastapi, node, npm/npx running node, ...) or from `services.NAME.debug.language`.

The command keeps its form, and no shell ever reads a value devenv puts in: a list stays an
argv; a shell line stays the user's line, its words as written, devenv's own words quoted.

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
_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_LITERAL = re.compile(r"^[\w@%+=:,./-]+$")  # a word a shell leaves as it is
_OPERATORS = set(";&|<>()")
_PY_OPTS_WITH_VALUE = {"-X", "-W", "-Q"}
_SHELL_FORBIDDEN = "pipes, lists, redirections or command substitutions"


@dataclass(frozen=True)
class Debugged:
    """How a debugged instance runs."""

    language: str
    command: tuple[str, ...]
    env: dict[str, str]  # added to the service's (PYTHONPATH for debugpy, node_modules/.bin)


@dataclass(frozen=True)
class Word:
    """One word of a command: its value (what the program gets), and, for a word of a shell
    line someone wrote (the service's command, a package.json script), the text written,
    kept as it is. devenv's own words have no `raw`: a shell line gets them quoted."""

    value: str
    raw: str | None = None

    def shell(self) -> str:
        return self.raw if self.raw is not None else shlex.quote(self.value)


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
    unknown or the command cannot be rewritten.

    The command keeps its form: a list stays an argv (no shell); a shell line (`/bin/sh -c
    LINE`) stays the user's line, its words as written, devenv's own words inserted quoted.
    No value (a path, a port) is ever left for a shell to read."""
    shell = len(command) == 3 and command[:2] == ("/bin/sh", "-c")
    if shell:
        words = shell_words(command[2], f"cannot debug {service}: its command",
                            f"give services.{service}.command as a list, or run a script "
                            "from it")
    else:
        words = [Word(w) for w in command]
        if words and _ASSIGN.match(words[0].value):
            raise UsageError(
                f"cannot debug {service}: its command is a list, so {words[0].value!r} is run "
                "as a program, not set as a variable",
                hint=f"set it in services.{service}.env (or give the command as a string)")
    assigns = []
    while shell and words and _ASSIGN.match(words[0].value):
        assigns.append(words.pop(0))
    if shell and words and words[0].value == "exec":
        words.pop(0)  # (devenv's own `exec` is put back)
    if not words:
        raise UsageError(f"cannot debug {service}: it has no command")
    path = env.get("PATH", os.environ.get("PATH", ""))
    path = os.pathsep.join(str(folder / p) for p in path.split(os.pathsep))
    language, argv, extra = _rewrite(service, words, folder, path, declared, port, wait)
    if language == "python":
        extra["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # (-Xfrozen_modules=off is given)
        given = env.get(DEBUG_PATH_VAR, "")
        extra[DEBUG_PATH_VAR] = debugpy_dir + (os.pathsep + given if given else "")
    # a package.json script's words may need a shell (`$PORT`, quotes, `FOO=1 node ...`)
    needs_shell = shell or any(w.raw is not None and (not _LITERAL.match(w.raw)
                                                      or _ASSIGN.match(w.raw)) for w in argv)
    if not needs_shell:
        return Debugged(language, tuple(w.value for w in argv), extra)
    leads = argv and _ASSIGN.match(argv[0].value)
    line = " ".join(w.shell() for w in [*assigns, *argv])
    return Debugged(language, ("/bin/sh", "-c", line if assigns or leads else f"exec {line}"),
                    extra)


def shell_words(text: str, what: str, hint: str) -> list[Word]:
    """The words of a simple shell line (no operators), each with its text as written.
    UsageError (`what` ... , `hint`) for what this cannot keep as words: pipes, lists,
    redirections, subshells, command substitution, an unterminated quote."""
    words: list[Word] = []
    i, n = 0, len(text)

    def refuse(why: str) -> UsageError:
        return UsageError(f"{what} is a shell line with {why} ({text!r})", hint=hint)

    while i < n:
        if text[i].isspace():
            i += 1
            continue
        if text[i] == "#":
            break  # a comment, to the end
        start, value = i, []
        while i < n and not text[i].isspace():
            ch = text[i]
            if ch in _OPERATORS or ch == "`" or text.startswith("$(", i):
                raise refuse(_SHELL_FORBIDDEN)
            if ch == "'":
                end = text.find("'", i + 1)
                if end < 0:
                    raise refuse("an unterminated quote")
                value.append(text[i + 1:end])
                i = end + 1
            elif ch == '"':
                i += 1
                while i < n and text[i] != '"':
                    if text[i] == "`" or text.startswith("$(", i):
                        raise refuse(_SHELL_FORBIDDEN)
                    if text[i] == "\\" and i + 1 < n and text[i + 1] in '$`"\\\n':
                        i += 1
                    value.append(text[i])
                    i += 1
                if i >= n:
                    raise refuse("an unterminated quote")
                i += 1
            elif ch == "\\":
                if i + 1 < n:
                    value.append(text[i + 1])
                i += 2
            else:
                value.append(ch)
                i += 1
        words.append(Word("".join(value), text[start:i]))
    return words


def _rewrite(service: str, words: list[Word], folder: Path, path: str, declared: str | None,
             port: int, wait: bool) -> tuple[str, list[Word], dict[str, str]]:
    program, rest = words[0], words[1:]
    name = os.path.basename(program.value)
    if _PYTHON.match(name) and declared in (None, "python"):
        return "python", _python(program, rest, port, wait), {}
    if _NODE.match(name) and declared in (None, "node"):
        return "node", _node(program, rest, port, wait), {}
    script = _resolve(program.value, folder, path)
    shebang = _interpreter(script) if script else None
    if name in _MODULES and declared in (None, "python"):
        python = shebang if shebang and _PYTHON.match(os.path.basename(shebang)) else "python3"
        return "python", _python(Word(python), [Word("-m"), Word(_MODULES[name]), *rest],
                                 port, wait), {}
    if name == "npx" and rest and declared in (None, "node"):
        tool = folder / "node_modules" / ".bin" / rest[0].value
        if tool.exists():
            return "node", _node(Word("node"), [Word(str(tool.resolve())), *rest[1:]], port,
                                 wait), {}
    if name in ("npm", "pnpm", "yarn") and rest and declared in (None, "node"):
        found = _npm(service, rest, folder, path, declared, port, wait)
        if found is not None:
            return found
    lang = declared or _language_of(shebang)
    if lang == "python" and script and not _MODULES.get(name):
        python = shebang if shebang and _PYTHON.match(os.path.basename(shebang)) else "python3"
        return "python", _python(Word(python), [Word(str(script)), *rest], port, wait), {}
    if lang == "node" and script:
        node = shebang if shebang and _NODE.match(os.path.basename(shebang)) else "node"
        return "node", _node(Word(node), [Word(str(script)), *rest], port, wait), {}
    shown = " ".join(w.value for w in words[:3])
    what = f"run {shown!r} under" if not declared else \
        f"run {program.value!r} (not a script file) under the {declared} debugger"
    raise UsageError(
        f"cannot tell how to {what} a debugger ({service})",
        hint=f"declare it in devenv.yaml: services.{service}.debug: {{language: python}} (or "
        "node); the command must then run a python or node program, e.g. `python app.py`")


def _npm(service: str, rest: list[Word], folder: Path, path: str, declared: str | None,
         port: int, wait: bool) -> tuple[str, list[Word], dict[str, str]] | None:
    """`npm [run] NAME [-- args]`: the package.json script it runs, under the debugger
    (its words as written, the command's arguments after them); None when it cannot be."""
    values = [w.value for w in rest]
    name, args = (rest[1], rest[2:]) if values[0] == "run" and len(rest) > 1 \
        else (rest[0], rest[1:])
    args = args[1:] if args[:1] and args[0].value == "--" else args
    line = _package_script(folder, name.value)
    if not line:
        return None
    try:
        script = shell_words(line, "package.json script", "")
    except UsageError:
        return None
    assigns = []
    while script and _ASSIGN.match(script[0].value):
        assigns.append(script.pop(0))
    if not script:
        return None
    bins = str(folder / "node_modules" / ".bin") + os.pathsep + path
    language, argv, _ = _rewrite(service, script, folder, bins, declared, port, wait)
    return language, [*assigns, *argv, *args], {"PATH": bins}


def _python(python: Word, rest: list[Word], port: int, wait: bool) -> list[Word]:
    """`python [its options] -m debugpy --listen H:P [--wait-for-client] <what it ran>`."""
    options = []
    i = 0
    while i < len(rest) and rest[i].value.startswith("-") and \
            rest[i].value not in ("-m", "-c", "-"):
        options.append(rest[i])
        if rest[i].value in _PY_OPTS_WITH_VALUE and i + 1 < len(rest):
            options.append(rest[i + 1])
            i += 1
        i += 1
    listen = ["-m", "debugpy", "--listen", f"{HOST}:{port}"]
    if not any(o.value.startswith("-Xfrozen_modules") for o in options):  # (else it may miss
        listen.insert(0, "-Xfrozen_modules=off")  # breakpoints, and says so; older: ignored)
    ours = [Word(w) for w in [*listen, *(["--wait-for-client"] if wait else [])]]
    return [python, *options, *ours, *rest[i:]]


def _node(node: Word, rest: list[Word], port: int, wait: bool) -> list[Word]:
    rest = [w for w in rest if not re.match(r"^--inspect(-brk)?(=.*)?$", w.value)]
    flag = "--inspect-brk" if wait else "--inspect"
    return [node, Word(f"{flag}={HOST}:{port}"), *rest]


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
