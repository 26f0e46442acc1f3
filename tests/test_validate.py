"""`devenv validate --all-services`: an isolated copy on its own ports and state, checked by
its own engine, beside the running environment, which keeps its instances and answers."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from conftest import Project, free_ports

SERVICES = """\
api:
  command: [python, svc.py]
  port: {api}
  health: {{http: /healthz}}
  test: >-
    python -c "import os, urllib.request;
    urllib.request.urlopen(os.environ['SERVICE_URL'] + '/healthz'); print('api contract ok')"
web:
  command: [python, svc.py]
  port: {web}
  depends_on: [api]
  health: {{http: /healthz}}
  test: {web_test}
"""


def _ranges(n: int) -> str:
    return ",".join(str(p) for p in free_ports(n))


def _write(project: Project, api: int, web: int, web_test: str) -> None:
    project.services(SERVICES.format(api=api, web=web, web_test=web_test))


def test_validate_beside_a_running_environment(project: Project) -> None:
    api, web = free_ports(2)
    _write(project, api, web, "python -c 'print(\"web smoke ok\")'")
    project.up()
    before = {s["name"]: [i["id"] for i in s["instances"]] for s in project.status()["services"]}
    answered: list[int] = []
    stop = threading.Event()

    def keep_asking() -> None:  # the running environment answers while validate runs
        while not stop.is_set():
            status, _ = project.get(f"http://127.0.0.1:{api}/whoami", timeout=5)
            answered.append(status)
            stop.wait(0.05)

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        result = project.devenv("validate", "--all-services", "--json",
                                "--ports", _ranges(4), timeout=120)
    finally:
        stop.set()
        asker.join()
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] is True
    rows = {r["service"]: r for r in data["services"]}
    assert rows["api"]["healthy"] and rows["api"]["test"]["code"] == 0
    assert "api contract ok" in rows["api"]["test"]["output"]
    assert rows["web"]["dependencies"][0]["name"] == "api"
    assert rows["web"]["dependencies"][0]["ok"] is True
    # the candidate's api was on another port than the running one
    assert rows["web"]["dependencies"][0]["address"] != f"127.0.0.1:{api}"
    after = {s["name"]: [i["id"] for i in s["instances"]] for s in project.status()["services"]}
    assert after == before
    assert answered and all(code == 200 for code in answered)
    leftovers = list(Path("/tmp").glob("devenv-validate-*"))
    assert not [p for p in leftovers if (p / "c" / "svc.py").resolve() == project.root / "svc.py"]


def test_a_failing_test_and_a_candidate_value_fail_the_matrix(project: Project) -> None:
    api, web = free_ports(2)
    _write(project, api, web, "python -c 'import sys; print(\"web broke\"); sys.exit(3)'")
    result = project.devenv("validate", "--all-services", "--ports", _ranges(4), timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL (exit 3)" in result.stdout
    assert "web broke" in result.stdout
    assert "validate: FAILED" in result.stdout
    # --set: a candidate whose web test passes
    result = project.devenv("validate", "--all-services", "--ports", _ranges(4),
                            "--set", "services.web.test=true", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (project.root / ".devenv" / "run" / "engine.sock").exists()  # none started here


def test_validate_usage_errors(project: Project) -> None:
    api, web = free_ports(2)
    _write(project, api, web, "true")
    assert project.devenv("validate").returncode == 2
    bad = project.devenv("validate", "--all-services", "--set", "services.web.replicas=lots",
                         "--ports", _ranges(4))
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "replicas" in bad.stderr
