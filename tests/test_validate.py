"""`devenv validate --all-services`: an isolated copy on its own ports and state, checked by
its own engine, beside the running environment, which keeps its instances and answers."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import NamedTuple

import psutil

from conftest import Project, free_ports, procs_in, wait_for

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


def _candidates(project: Project) -> list[Path]:
    """The isolated copies of this project that exist now."""
    return [p for p in Path("/tmp").glob("devenv-validate-*")
            if (p / "c" / "svc.py").is_symlink()
            and (p / "c" / "svc.py").resolve() == (project.root / "svc.py").resolve()]


class Stuck(NamedTuple):
    proc: subprocess.Popen[str]  # the validate
    copy: Path  # its copy's folder
    engine: int  # its copy's engine's pid
    healthy: str  # devenv.yaml as it was, web healthy


def _validating_a_stuck_web(project: Project) -> Stuck:
    """A `validate` still waiting (its copy's web never gets healthy), once its copy's
    engine answers."""
    api, web = free_ports(2)
    _write(project, api, web, "true")
    text = (project.root / "devenv.yaml").read_text()
    (project.root / "devenv.yaml").write_text(text.replace(
        "  web:\n    command: [python, svc.py]",
        "  web:\n    command: [python, -c, 'import time; time.sleep(600)']"))
    proc = project.popen("validate", "--all-services", "--ports", _ranges(4))
    assert wait_for(lambda: any((c / "c" / ".devenv" / "run" / "engine.sock").exists()
                                and _candidate_api_up(c) for c in _candidates(project)),
                    timeout=30)
    copy = _candidates(project)[0]
    return Stuck(proc, copy, int((copy / "c" / ".devenv" / "run" / "engine.pid").read_text()),
                 text)


def test_ctrl_c_stops_the_candidate_and_removes_it(project: Project) -> None:
    proc, copy, engine, _ = _validating_a_stuck_web(project)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) != 0
    assert not copy.exists()
    assert wait_for(lambda: not psutil.pid_exists(engine) or
                    psutil.Process(engine).status() == psutil.STATUS_ZOMBIE, timeout=20)
    assert wait_for(lambda: not [p for p in procs_in(project.root)
                                 if "sleep(600)" in " ".join(p.cmdline())], timeout=20)


def test_a_killed_validate_is_cleaned_up_by_the_next(project: Project) -> None:
    proc, copy, engine, text = _validating_a_stuck_web(project)
    proc.kill()  # kill -9: nothing of it cleans up
    proc.wait(10)
    assert copy.exists() and psutil.pid_exists(engine)
    (project.root / "devenv.yaml").write_text(text)
    again = project.devenv("validate", "--all-services", "--ports", _ranges(4), timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"removed {copy}" in again.stderr.replace("\n", ""), again.stderr
    assert not copy.exists()
    assert wait_for(lambda: not psutil.pid_exists(engine) or
                    psutil.Process(engine).status() == psutil.STATUS_ZOMBIE, timeout=20)
    assert wait_for(lambda: not [p for p in procs_in(project.root)
                                 if "sleep(600)" in " ".join(p.cmdline())], timeout=20)


def _candidate_api_up(copy: Path) -> bool:
    """The copy's api is healthy (so `up` is waiting for web)."""
    try:
        text = (copy / "c" / ".devenv" / "local.yaml").read_text()
    except OSError:
        return False
    port = int(text.split("api:\n")[1].split("port:")[1].split()[0])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_a_config_branch_is_validated_instead_of_the_local_overrides(project: Project) -> None:
    api, web = free_ports(2)
    _write(project, api, web, "test \"$MODE\" = good")
    for args in (("init", "-q"), ("add", "-A"), ("-c", "user.name=t", "-c", "user.email=t@x",
                                                   "commit", "-qm", "start")):
        subprocess.run(["git", *args], cwd=project.root, check=True, capture_output=True)
    project.devenv("config", "set", "services.web.env.MODE", "good", check=True)
    project.devenv("config", "branch", "good-mode", check=True)
    project.devenv("config", "set", "services.web.env.MODE", "bad", check=True)
    mine = project.devenv("validate", "--all-services", "--ports", _ranges(4), timeout=120)
    assert mine.returncode == 1, mine.stdout + mine.stderr
    branch = project.devenv("validate", "--all-services", "--config-branch", "good-mode",
                            "--ports", _ranges(4), timeout=120)
    assert branch.returncode == 0, branch.stdout + branch.stderr
    unknown = project.devenv("validate", "--all-services", "--config-branch", "nope")
    assert unknown.returncode == 2 and "no config branch 'nope'" in unknown.stderr


def _leftover(token: str) -> list[psutil.Process]:
    """Live processes whose command line holds `token`."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and \
                token in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


def test_timeout_ends_a_test_that_never_finishes_and_says_so(project: Project) -> None:
    api, web = free_ports(2)
    token = f"never-ends-{web}"
    _write(project, api, web, f"python -c 'import time; t = \"{token}\"; time.sleep(600)'")
    began = time.monotonic()
    result = project.devenv("validate", "--all-services", "--json", "--timeout", "8s",
                            "--ports", _ranges(4), timeout=90)
    took = time.monotonic() - began
    assert result.returncode == 1, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] is False and data["timed_out"] == "8s"
    rows = {r["service"]: r for r in data["services"]}
    assert rows["api"]["unfinished"] == "" and rows["api"]["test"]["code"] == 0
    assert rows["web"]["unfinished"] == "test", rows["web"]
    assert took < 8 + 30, took  # the copy stopped right after
    assert not _candidates(project)
    assert wait_for(lambda: not _leftover(token), timeout=20)


def test_timeout_while_a_service_never_gets_healthy_stops_the_copy(project: Project) -> None:
    api, web = free_ports(2)
    _write(project, api, web, "true")
    token = f"never-healthy-{web}"
    text = (project.root / "devenv.yaml").read_text()
    (project.root / "devenv.yaml").write_text(text.replace(
        "  web:\n    command: [python, svc.py]",
        f"  web:\n    command: [python, -c, 'import time; time.sleep(600)  # {token}']"))
    began = time.monotonic()
    result = project.devenv("validate", "--all-services", "--timeout", "4s",
                            "--ports", _ranges(4), timeout=90)
    took = time.monotonic() - began
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "timed out after 4s" in out and "TIMED OUT" in out, out
    assert "validate: FAILED, timed out after 4s; did not finish: api, web" in \
        " ".join(out.split()), out
    web_row = next(line for line in out.splitlines() if line.startswith("web"))
    assert "NO (starting), timed out after 4s" in web_row, out
    assert took < 4 + 30, took
    assert not _candidates(project)
    assert wait_for(lambda: not _leftover(token), timeout=20)
    bad = project.devenv("validate", "--all-services", "--timeout", "soon")
    assert bad.returncode == 2 and "--timeout 'soon': not a duration" in bad.stderr


def test_a_timeout_out_of_range_is_a_usage_error(project: Project) -> None:
    api, web = free_ports(2)
    _write(project, api, web, "true")
    bad = project.devenv("validate", "--all-services", "--timeout", "1000000000h")
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "--timeout '1000000000h': out of range; it is at most 168h" in bad.stderr
    assert "Traceback" not in bad.stderr and not _candidates(project)


def test_an_environment_is_never_stopped_without_its_snapshot(project: Project) -> None:
    """Only a validate copy's engine discards its data unsaved (`snapshot: false`)."""
    from devenv.client import Client
    from devenv.core.errors import DevenvError

    api, web = free_ports(2)
    _write(project, api, web, "true")
    project.up()
    try:
        Client(project.root).stop(persist_data=False, snapshot=False, timeout=30)
        raise AssertionError("stopped without a snapshot")
    except DevenvError as exc:
        assert exc.exit_code == 2 and "only for the copy of a `devenv validate`" in exc.message
    assert project.service("api")["state"] == "healthy"  # still running
