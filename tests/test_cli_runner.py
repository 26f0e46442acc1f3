"""The tests' CLI calls (tests/cli_runner.py, through a worker's zygote) answer as a new
`python -m devenv` would, and a call past its timeout is killed and waited for."""

from __future__ import annotations

import subprocess

import cli_runner
import psutil
import pytest

from conftest import ENV, Project, free_ports


def _zygote_children() -> list[psutil.Process]:
    (proc, _), = (z for key, z in cli_runner._zygotes.items() if key == frozenset(ENV.items()))
    return psutil.Process(proc.pid).children()


def test_a_call_through_the_zygote_answers_as_a_new_interpreter(
        project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    project.write("version: 1\nservices:\n  api:\n    command: python svc.py\n    port: nope\n")
    calls = (["--version"], ["bogus"], ["config", "validate"], ["config", "get", "services"])
    forked = [cli_runner.run_cli(args, project.root, ENV, 30) for args in calls]
    assert _zygote_children() == []  # (it ran them: each was reaped)
    monkeypatch.setenv("DEVENV_TESTS_EXEC", "1")
    fresh = [cli_runner.run_cli(args, project.root, ENV, 30) for args in calls]
    for one, other in zip(forked, fresh, strict=True):
        assert (one.returncode, one.stdout, one.stderr) == \
            (other.returncode, other.stdout, other.stderr), one.args
    assert [r.returncode for r in forked] == [0, 2, 2, 2]
    assert "devenv.yaml:5 services.api.port" in forked[2].stderr  # (found from its folder)


def test_a_call_past_its_timeout_is_killed_and_waited_for(project: Project) -> None:
    port = free_ports(1)[0]
    project.services(f"""\
        never:
          command: python -c "import time; time.sleep(600)"
          port: {port}
          health: {{http: /healthz, timeout: 120s}}
        """)
    try:
        with pytest.raises(subprocess.TimeoutExpired) as raised:
            cli_runner.run_cli(["up"], project.root, ENV, 3)
        assert isinstance(raised.value.stdout, bytes)  # (as subprocess.run gives it)
        assert _zygote_children() == []
    finally:
        project.devenv("stop", check=True)
