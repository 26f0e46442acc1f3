"""The audit trail through the real CLI and real processes: `up`, `scale`, `stop` leave one
line each and `status`/`logs` none; secrets from the command line or the environment never
reach the log; concurrent writers keep one valid chain; `--since` and `--verify`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import ENV, Project, free_ports
from devenv import audit

WRITERS, EACH = 6, 25
WRITER = """
import sys
from pathlib import Path
from devenv import audit
for i in range(int(sys.argv[2])):
    audit.append(Path(sys.argv[1]), {"command": "scale", "args": [sys.argv[3], str(i)],
                                     "exit": 0})
"""


def records(project: Project, *args: str) -> list[dict[str, Any]]:
    result = project.devenv("audit", "--json", *args, check=True)
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_state_changing_commands_leave_one_line_each(project: Project) -> None:
    (api,) = free_ports(1)
    project.services(f"""\
        api:
          command: python svc.py
          port: {api}
          health: {{http: /healthz}}
        """)
    project.up()
    project.devenv("scale", "api=2", check=True)
    project.devenv("status", check=True)
    project.devenv("logs", "api", check=True)
    project.devenv("stop", check=True)
    found = records(project)
    assert [(r["command"], r["args"], r["exit"], r["error"]) for r in found] == [
        ("up", ["up"], 0, None), ("scale", ["scale", "api=2"], 0, None),
        ("stop", ["stop"], 0, None)]
    assert all(r["user"] and r["duration"] >= 0 and r["time"].endswith("Z") for r in found)
    log = project.root / ".devenv" / "audit.log"
    assert (log.stat().st_mode & 0o777, log.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    assert "3 records, the hash chain is intact" in project.devenv(
        "audit", "--verify", check=True).stdout
    # edited afterwards: --verify names the line
    lines = log.read_text().splitlines()
    lines[1] = lines[1].replace('"api=2"', '"api=9"')
    log.write_text("\n".join(lines) + "\n")
    checked = project.devenv("audit", "--verify")
    assert checked.returncode == 1
    assert "line 2 was edited: record 3 (line 3) chains from other content" in checked.stderr


def test_a_failed_command_is_recorded_with_its_error(project: Project) -> None:
    project.services("api: {command: python svc.py}\n")
    failed = project.devenv("scale", "nope=2")
    assert failed.returncode == 2
    (record,) = records(project)
    assert (record["command"], record["exit"]) == ("scale", 2)
    assert record["error"].startswith("no service 'nope'")


def test_secrets_never_reach_the_log(project: Project) -> None:
    (db,) = free_ports(1)
    project.services(f"""\
        db: {{kind: redis, port: {db}, password: yaml-redis-s3cret}}
        api:
          command: python svc.py
          env: {{API_TOKEN: yaml-env-s3cret}}
        """)
    environ = {**ENV, "DEPLOY_TOKEN": "caller-env-s3cret"}

    def devenv(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "devenv", *args], cwd=project.root,
                              capture_output=True, text=True, timeout=60, env=environ)

    assert devenv("config", "set", "services.db.password", "cli-given-s3cret").returncode == 0
    assert devenv("config", "set", "services.api.env.SESSION_SECRET", "cli-key-s3cret"
                  ).returncode == 0
    # values that the error message repeats ("cannot read 'api=…'")
    for value in ("caller-env-s3cret", "yaml-env-s3cret", "cli-given-s3cret"):
        assert devenv("scale", f"api={value}").returncode == 2
    text = (project.root / ".devenv" / "audit.log").read_text()
    assert len(text.splitlines()) == 5
    for secret in ("yaml-redis-s3cret", "yaml-env-s3cret", "caller-env-s3cret",
                   "cli-given-s3cret", "cli-key-s3cret"):
        assert secret not in text, f"{secret} in the audit log"
    assert '"services.db.password","********"' in text
    assert "cannot read 'api=********'" in text


def test_since_filters(project: Project) -> None:
    project.services("api: {command: python svc.py}\n")
    state = project.root / ".devenv"
    state.mkdir(mode=0o700)
    audit.append(state / "audit.log", {"time": "2020-01-01T00:00:00.000Z", "user": "old",
                                       "command": "stop", "args": ["stop"], "exit": 0})
    project.devenv("config", "set", "services.api.replicas", "2", check=True)
    assert records(project)[0]["user"] == "old"
    recent = records(project, "--since", "1d")
    assert [r["command"] for r in recent] == ["config set"]
    assert [r["command"] for r in records(project, "--since", "2019-12-31T00:00:00")] == [
        "stop", "config set"]
    shown = project.devenv("audit", "--since", "1h", check=True).stdout
    assert "devenv config set services.api.replicas 2" in shown and "old" not in shown
    bad = project.devenv("audit", "--since", "yesterday")
    assert bad.returncode == 2 and "--since 'yesterday'" in bad.stderr


def test_concurrent_writers_keep_one_chain(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(log), str(EACH), f"w{w}"],
                              env=env) for w in range(WRITERS)]
    assert [p.wait(60) for p in procs] == [0] * WRITERS
    lines = audit.read_lines(log)
    assert len(lines) == WRITERS * EACH
    assert audit.verify(lines, audit.read_head(log)) == []
    seen = [json.loads(line) for line in lines]
    assert [r["seq"] for r in seen] == list(range(1, WRITERS * EACH + 1))
    for w in range(WRITERS):  # each writer's lines in its own order
        assert [r["args"][1] for r in seen if r["args"][0] == f"w{w}"] == [
            str(i) for i in range(EACH)]
