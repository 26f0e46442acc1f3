"""Which debugger runs a command, and the command rewritten to run under it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devenv.core.errors import UsageError
from devenv.debuggers import PORTS, debug, stable_port

LISTEN = ["-Xfrozen_modules=off", "-m", "debugpy", "--listen", "127.0.0.1:9300"]


def run(command: tuple[str, ...], folder: Path, declared: str | None = None,
        wait: bool = False, env: dict[str, str] | None = None) -> tuple[str, tuple[str, ...]]:
    done = debug("api", command, folder, env or {"PATH": str(folder / "bin")}, declared, 9300,
                 wait, "/dbg")
    return done.language, done.command


def test_python_and_its_options(tmp_path: Path) -> None:
    assert run(("python", "app.py", "--x"), tmp_path) == ("python", ("python", *LISTEN,
                                                                     "app.py", "--x"))
    _lang, argv = run(("python3.11", "-u", "-X", "dev", "-m", "pkg"), tmp_path, wait=True)
    assert argv == ("python3.11", "-u", "-X", "dev", *LISTEN, "--wait-for-client", "-m", "pkg")


def test_a_shell_line_stays_a_shell_line_and_port_still_expands(tmp_path: Path) -> None:
    _, argv = run(("/bin/sh", "-c", "python app.py --port $PORT"), tmp_path)
    assert argv == ("/bin/sh", "-c", "exec python -Xfrozen_modules=off -m debugpy --listen "
                    "127.0.0.1:9300 app.py --port $PORT")
    with pytest.raises(UsageError, match="pipes"):
        run(("/bin/sh", "-c", "python app.py | tee log"), tmp_path)


def test_console_scripts_run_as_modules_by_their_python(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    script = tmp_path / "bin/uvicorn"
    script.write_text("#!/venv/bin/python3\nfrom uvicorn.main import main\n")
    script.chmod(0o755)
    _, argv = run(("uvicorn", "app:app", "--reload"), tmp_path)
    assert argv == ("/venv/bin/python3", *LISTEN, "-m", "uvicorn", "app:app", "--reload")


def test_node_npm_and_the_python_path(tmp_path: Path) -> None:
    assert run(("node", "--inspect", "s.js"), tmp_path, wait=True) == \
        ("node", ("node", "--inspect-brk=127.0.0.1:9300", "s.js"))
    (tmp_path / "package.json").write_text(json.dumps({"scripts": {"dev": "node srv.js"}}))
    done = debug("api", ("npm", "run", "dev"), tmp_path, {}, None, 9300, False, "/dbg")
    assert done.command == ("node", "--inspect=127.0.0.1:9300", "srv.js")
    py = debug("api", ("python", "a.py"), tmp_path, {"PYTHONPATH": "/mine"}, None, 9300,
               False, "/dbg")
    assert py.env["PYTHONPATH"] == "/dbg:/mine"


def test_unknown_language_names_what_to_declare(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        run(("./server",), tmp_path)
    assert caught.value.exit_code == 2
    assert "services.api.debug: {language: python}" in (caught.value.hint or "")
    script = tmp_path / "server"
    script.write_text("#!/bin/sh\n")
    assert run(("./server", "a"), tmp_path, declared="python")[1] == \
        ("python3", *LISTEN, str(script), "a")


def test_stable_port_is_stable_and_skips_taken() -> None:
    port = stable_port("/p:api", set())
    assert port in PORTS and stable_port("/p:api", set()) == port
    assert stable_port("/p:api", {port}) != port


# ---- no shell ever sees a path or a value: what the program gets, run for real

ARGV_PRINTER = "#!{python}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n"


def _odd_project(tmp_path: Path) -> Path:
    """A project whose folder has `$`, `{}`, a quote and a space in its path, and a console
    script (uvicorn) whose `#!` python (in a folder with `$`, `{}` and a quote: a `#!` line
    cannot hold a space) prints the arguments it gets, as JSON."""
    folder = tmp_path / "my $HOME{x} it's"
    (folder / "bin").mkdir(parents=True)
    python = tmp_path / "py$HOME{x}'q" / "python3"
    python.parent.mkdir()
    python.write_text(ARGV_PRINTER.format(python=sys.executable))
    python.chmod(0o755)
    script = folder / "bin/uvicorn"
    script.write_text(f"#!{python}\nfrom uvicorn.main import main\n")
    script.chmod(0o755)
    return folder


def _argv(command: tuple[str, ...], folder: Path, **env: str) -> list[str]:
    """The arguments the (printing) python of `command` gets when it is run as the runtime
    runs it (an argv, no shell; or /bin/sh -c LINE)."""
    ran = subprocess.run(command, cwd=folder, capture_output=True, text=True, check=True,
                         env={"PATH": os.environ["PATH"], **env}, timeout=10)
    printed: list[str] = json.loads(ran.stdout)
    return printed


def test_a_list_command_stays_an_argv_and_paths_are_never_read_by_a_shell(
        tmp_path: Path) -> None:
    folder = _odd_project(tmp_path)
    env = {"PATH": str(folder / "bin")}
    done = debug("api", ("uvicorn", "app:app", "--root-path", "/a b/$HOME{x}", "'q'"), folder,
                 env, None, 9300, False, "/dbg")
    assert done.command[0] == str(tmp_path / "py$HOME{x}'q/python3")  # no /bin/sh
    assert _argv(done.command, folder) == [*LISTEN, "-m", "uvicorn", "app:app",
                                           "--root-path", "/a b/$HOME{x}", "'q'"]


def test_a_shell_line_keeps_the_users_words_and_quotes_devenvs(tmp_path: Path) -> None:
    folder = _odd_project(tmp_path)
    line = "uvicorn app:app --name '$HOME' --port $PORT --x \"a b\" ${PORT}{y}"
    done = debug("api", ("/bin/sh", "-c", line), folder, {"PATH": str(folder / "bin")}, None,
                 9300, True, "/dbg")
    assert done.command[:2] == ("/bin/sh", "-c")
    # the user's words as written: `$PORT` expands as the user meant, '$HOME' stays quoted;
    # the python path devenv put in (with `$`, `{}`, a quote, a space) is never expanded
    assert _argv(done.command, folder, PORT="8123", HOME="/root") == [
        *LISTEN, "--wait-for-client", "-m", "uvicorn", "app:app", "--name", "$HOME",
        "--port", "8123", "--x", "a b", "8123{y}"]


def test_a_script_path_is_quoted_in_a_shell_line(tmp_path: Path) -> None:
    folder = _odd_project(tmp_path)
    server = folder / "server"
    server.write_text(f"#!{tmp_path}/py$HOME{{x}}'q/python3\n")  # run by its python
    done = debug("api", ("/bin/sh", "-c", "FOO=1 ./server --who '$FOO'"), folder, {}, None, 9300,
                 False, "/dbg")
    assert done.command[2].startswith("FOO=1 ")  # (the user's assignment, as written)
    assert _argv(done.command, folder) == [*LISTEN, str(server), "--who", "$FOO"]


def test_a_list_command_starting_with_an_assignment_is_never_given_to_a_shell(
        tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        run(("FOO=1", "python", "app.py"), tmp_path)
    assert "'FOO=1' is run as a program" in caught.value.message
    assert "services.api.env" in (caught.value.hint or "")


def test_shell_syntax_is_refused_only_outside_quotes(tmp_path: Path) -> None:
    _, argv = run(("/bin/sh", "-c", "python app.py --msg 'a;b|c' \"(x)\""), tmp_path)
    assert argv[2].endswith("app.py --msg 'a;b|c' \"(x)\"")
    for line in ("python app.py $(id)", "python app.py \"`id`\"", "python app.py > log",
                 "python 'app.py"):
        with pytest.raises(UsageError, match="shell line with"):
            run(("/bin/sh", "-c", line), tmp_path)


def test_a_package_script_that_needs_a_shell_keeps_its_words(tmp_path: Path) -> None:
    (tmp_path / "package.json").write_text(json.dumps(
        {"scripts": {"dev": "node srv.js --port $PORT"}}))
    done = debug("api", ("npm", "run", "dev", "--", "a b$c"), tmp_path, {}, None, 9300,
                 False, "/dbg")
    assert done.command == ("/bin/sh", "-c",
                            "exec node --inspect=127.0.0.1:9300 srv.js --port $PORT 'a b$c'")
