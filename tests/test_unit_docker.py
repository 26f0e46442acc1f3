"""The docker runtime's and data layer's pure choices (no Docker Engine needed)."""

from __future__ import annotations

from typing import Any

import pytest

from devenv.data.container import pick_running
from devenv.runtime.base import exec_one_program


def _c(cid: str, replica: int, created: int, name: str = "", **labels: str) -> dict[str, Any]:
    return {"Id": cid, "Created": created, "Names": [f"/devenv-p-1234-api-{replica}{name}"],
            "Labels": {"devenv.service": "api", "devenv.replica": str(replica), **labels}}


def test_exec_and_snapshots_pick_the_running_instance_never_a_one_off() -> None:
    listed = [_c("run", 2, 50, "-abc1-run", **{"devenv.oneoff": "1"}),  # newest: a one-off
              _c("old2", 2, 10), _c("new2", 2, 20), _c("one", 1, 30),
              _c("helper", 1, 40, **{"devenv.helper": "api"}),
              _c("legacy-run", 1, 45, "-abc2-run")]  # (one-offs before the label)
    assert pick_running(listed, 2)["Id"] == "new2"  # the replica asked, its newest
    assert pick_running(listed, 1)["Id"] == "one"
    assert pick_running(listed)["Id"] == "one"  # (data services: one replica)
    assert pick_running(listed, 3) is None
    assert pick_running([listed[0], listed[4]]) is None


@pytest.mark.parametrize(("line", "execed"), [
    ("python3 app.py --port 8080", True),
    ("npm start", True),
    ("./bin/server -v \"$LEVEL\"", True),
    ("echo hi; python3 app.py", False),  # a list: the shell runs both
    ("cd web && npm start", False),
    ("FOO=1 python3 app.py", False),  # (`exec FOO=1` is no command)
    ("exec python3 app.py", False),  # already
    ("python3 app.py > log.txt", False),
    ("if true; then x; fi", False),
    ("$SERVER", False),
])
def test_a_shell_line_running_one_program_runs_it_with_exec(line: str, execed: bool) -> None:
    got = exec_one_program(["/bin/sh", "-c", line])
    assert got == (["/bin/sh", "-c", f"exec {line}"] if execed else ["/bin/sh", "-c", line])
    assert exec_one_program(["python3", "app.py"]) == ["python3", "app.py"]  # a list: no shell


def test_a_version_whose_output_the_daemon_lost_is_asked_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A short-lived exec's output came back empty from a loaded daemon once (a snapshot
    failed on `list index out of range`): asked again; never printed is an error that says
    so."""
    from devenv.core.errors import DevenvError
    from devenv.data import container

    answers = ["", "\n", "postgres (PostgreSQL) 16.4\n"]
    monkeypatch.setattr(container, "exec_out", lambda *a, **k: answers.pop(0))
    printed = container.exec_printed("c1", ["postgres", "--version"])
    assert printed == "postgres (PostgreSQL) 16.4\n" and answers == []  # (asked 3 times)
    monkeypatch.setattr(container, "exec_out", lambda *a, **k: "")
    with pytest.raises(DevenvError, match=r"postgres printed nothing in the container \(3 "):
        container.exec_printed("c1", ["postgres", "--version"])

