"""Which debugger runs a command, and the command rewritten to run under it."""

from __future__ import annotations

import json
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
