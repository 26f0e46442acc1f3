"""`devenv doctor`'s project checks, through the CLI: each service's program on the PATH it
will get, its declared ports, the data servers' binaries; exit 1 on any fail, else 0."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import Project, free_ports, wait_for


def doctor(project: Project) -> tuple[int, dict[str, dict[str, Any]]]:
    result = project.devenv("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    return result.returncode, checks


def executable(path: Path, text: str = "#!/bin/sh\nexec sleep 30\n") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def test_a_missing_program_fails_naming_the_service_and_the_program(
        project: Project) -> None:
    project.services("""\
        api:
          command: python svc.py
        mailer:
          command: no-such-mailer-xyz --serve
        """)
    code, checks = doctor(project)
    assert code == 1
    check = checks["services.mailer.command"]
    assert check["status"] == "fail"
    assert "mailer" in check["message"] and "'no-such-mailer-xyz'" in check["message"]
    assert "services.mailer.env.PATH" in check["fix"]
    assert checks["services.api.command"]["status"] == "ok"
    text = project.devenv("doctor").stdout
    assert "fail services.mailer.command: service mailer: 'no-such-mailer-xyz'" in text


def test_a_program_on_the_service_own_path_or_in_its_folder_is_ok(project: Project) -> None:
    executable(project.root / "app/tools/greeter")
    executable(project.root / "app/scripts/run.sh")
    project.services("""\
        greeter:
          command: LANG=C exec greeter --serve
          path: app
          env: {PATH: "tools:${PATH}"}
        runner:
          command: [./scripts/run.sh]
          path: app
        """)
    code, checks = doctor(project)
    greeter, runner = checks["services.greeter.command"], checks["services.runner.command"]
    assert greeter["status"] == "ok", greeter
    assert greeter["message"].endswith("app/tools/greeter")
    assert runner["status"] == "ok", runner
    assert code == 0, checks
    # and it is so: `up` starts both
    project.up()
    assert {s["name"]: s["state"] for s in project.status()["services"]} == {
        "greeter": "healthy", "runner": "healthy"}


def test_a_port_held_by_another_program_names_it_and_the_project_own_is_ok(
        project: Project) -> None:
    (port,) = free_ports(1)
    project.services(f"""\
        api:
          command: python svc.py
          port: {port}
        """)
    listen = ("import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1])));"
              " s.listen(); print('ready', flush=True); sys.stdin.read()")
    blocker = subprocess.Popen([sys.executable, "-c", listen, str(port)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert blocker.stdout is not None and blocker.stdout.readline() == "ready\n"
        code, checks = doctor(project)
    finally:
        blocker.kill()
        blocker.wait(10)
        for pipe in (blocker.stdin, blocker.stdout):
            if pipe is not None:
                pipe.close()
    assert code == 1
    check = checks["services.api.port"]
    assert check["status"] == "fail"
    assert f"port {port} is in use by pid {blocker.pid} (python" in check["message"]
    assert wait_for(lambda: _bindable(port), timeout=10)
    project.up()
    code, checks = doctor(project)
    assert checks["services.api.port"]["status"] == "ok"
    assert "held by this project's engine" in checks["services.api.port"]["message"]
    assert checks["ingress.port"]["status"] == "ok" and code == 0, checks


def test_data_servers_binaries_are_checked(project: Project, tmp_path: Path) -> None:
    db, cache = free_ports(2)
    project.services(f"""\
        db:
          kind: postgres
          port: {db}
          bin_dir: {tmp_path / "no-postgres-here"}
        cache:
          kind: redis
          port: {cache}
        """)
    code, checks = doctor(project)
    assert code == 1
    assert checks["services.db.kind"]["status"] == "fail"
    assert "no postgres in bin_dir" in checks["services.db.kind"]["message"]
    assert checks["services.db.kind"]["fix"] == "fix services.db.bin_dir"
    assert checks["services.cache.kind"]["status"] == "ok"
    assert checks["services.cache.kind"]["message"].startswith("cache: Redis 6.")
    assert not (project.root / ".devenv/data/db").exists()  # (nothing was prepared)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
