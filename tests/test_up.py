"""`devenv up` on real processes: order, health, discovery, ingress, idempotence, failure."""

from __future__ import annotations

import json
import os
import stat

import psutil

from conftest import Project, free_ports, service_procs, wait_for


def three_services(project: Project, greeting: str = "hi") -> tuple[int, int, int]:
    db, api, web = free_ports(3)
    project.services(f"""\
          db:
            command: python svc.py
            port: {db}
            health: {{http: /healthz}}
          api:
            command: [python, svc.py]
            port: {api}
            replicas: 2
            env: {{GREETING: {greeting}}}
            depends_on: [db]
            health: {{http: /healthz}}
            ingress: {{path: /api, strip_prefix: true}}
          web:
            command: python svc.py
            port: {web}
            depends_on: {{api: healthy}}
            ingress: {{host: shop.localhost}}
        """)
    return db, api, web


def test_up_starts_in_order_routes_and_stop_leaves_nothing(project: Project) -> None:
    _db, api, web = three_services(project)
    result = project.up()
    assert "web" in result.stdout and "healthy" in result.stdout
    status = project.status()
    by_name = {s["name"]: s for s in status["services"]}
    assert [s["name"] for s in status["services"]] == ["db", "api", "web"]
    assert by_name["api"]["replicas"] == {"ready": 2, "desired": 2}
    assert all(s["state"] == "healthy" for s in status["services"])
    assert by_name["api"]["url"] == f"http://127.0.0.1:{api}"
    assert status["ingress"] == f"http://127.0.0.1:{project.ingress_port}"

    # service discovery: web reaches api through API_URL, the stable balanced address
    code, who = project.get(f"http://127.0.0.1:{web}/call/API_URL")
    assert code == 200 and who["service"] == "api"
    # the ingress routes by <service>.localhost, by declared host and by path prefix
    assert project.ingress("/whoami", "db.localhost")[1]["service"] == "db"
    assert project.ingress("/whoami", "shop.localhost")[1]["service"] == "web"
    assert project.ingress("/api/whoami", "127.0.0.1")[1]["service"] == "api"
    replicas = {project.ingress("/api/whoami", "localhost")[1]["replica"] for _ in range(8)}
    assert replicas == {"1", "2"}
    code, page = project.ingress("/nowhere", "unknown.localhost")
    assert code == 404 and "api" in page

    pids = [p.pid for p in service_procs(project.root)]
    assert len(pids) >= 4
    project.devenv("stop", check=True)
    assert wait_for(lambda: not any(psutil.pid_exists(p) for p in pids), timeout=5)
    assert project.engine_pid() is None


def test_up_json_reports_times_and_only_changed_services_restart(project: Project) -> None:
    three_services(project)
    first = json.loads(project.up("--json").stdout)
    assert first["ok"] is True
    for svc in first["services"]:
        assert svc["action"] == "create"
        assert 0 <= svc["started_s"] <= svc["healthy_s"] < 30
    pids = {s["name"]: [i["id"] for i in s["instances"]] for s in project.status()["services"]}

    again = json.loads(project.up("--json").stdout)
    assert [s["action"] for s in again["services"]] == ["keep", "keep", "keep"]
    assert {s["name"]: [i["id"] for i in s["instances"]]
            for s in project.status()["services"]} == pids

    three_services_text = (project.root / "devenv.yaml").read_text()
    (project.root / "devenv.yaml").write_text(three_services_text.replace("GREETING: hi",
                                                                          "GREETING: hello"))
    changed = json.loads(project.up("--json").stdout)
    assert {s["name"]: s["action"] for s in changed["services"]} == {
        "db": "keep", "api": "replace", "web": "keep"}
    after = {s["name"]: [i["id"] for i in s["instances"]] for s in project.status()["services"]}
    assert after["db"] == pids["db"] and after["web"] == pids["web"]
    assert not set(after["api"]) & set(pids["api"])
    assert project.ingress("/api/whoami", "localhost")[1]["greeting"] == "hello"


def test_services_flag_starts_only_the_closure(project: Project) -> None:
    three_services(project)
    project.up("--services", "api")
    names = {s["name"] for s in project.status()["services"]}
    assert names == {"db", "api"}


def test_failing_service_fails_up_with_its_logs_and_blocks_dependents(project: Project) -> None:
    db, api = free_ports(2)
    project.services(f"""\
          db:
            command: python svc.py
            port: {db}
            env: {{FAIL_AT_START: missing DB_HOST}}
          api:
            command: python svc.py
            port: {api}
            depends_on: [db]
        """)
    result = project.devenv("up")
    assert result.returncode == 1
    assert "fatal: cannot start (missing DB_HOST)" in result.stderr
    assert "db" in result.stderr and "api" in result.stderr
    assert "dependency 'db' failed" in result.stderr
    api_procs = [p for p in service_procs(project.root)
                 if "api" in p.environ().get("DEVENV_SERVICE", "")]
    assert api_procs == []


def test_bad_config_exits_2_with_location_and_starts_nothing(project: Project) -> None:
    project.write("""\
        version: 1
        services:
          api:
            command: python svc.py
            depends_on: [ordr]
          order:
            command: python svc.py
        """)
    result = project.devenv("up")
    assert result.returncode == 2
    assert ("devenv.yaml:5 services.api.depends_on.ordr: unknown service 'ordr' "
            "(did you mean 'order'?)") in result.stderr
    assert not (project.root / ".devenv/run/engine.pid").exists()
    assert service_procs(project.root) == []


def test_control_socket_is_owner_only(project: Project) -> None:
    three_services(project)
    project.up("--services", "db")
    run = project.root / ".devenv/run"
    assert stat.S_IMODE(os.stat(run).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(run / "engine.sock").st_mode) == 0o600


def test_status_resources_and_engine_not_running(project: Project) -> None:
    three_services(project)
    assert project.status() == {"project": "proj", "running": False, "ingress": None,
                                "services": []}
    project.up("--services", "db")
    svc = project.status("--resources")["services"][0]
    assert svc["rss_bytes"] > 5_000_000 and svc["cpu_percent"] >= 0
    text = project.devenv("status", "--resources", check=True).stdout
    assert "MiB" in text and "db" in text


def test_interpolation_uses_the_callers_environment_on_every_up(project: Project) -> None:
    (port,) = free_ports(1)
    project.services(f"""\
          api:
            command: python svc.py
            port: {port}
            env: {{GREETING: "${{GREETING:-default}}"}}
        """)
    project.up()
    assert project.get(f"http://127.0.0.1:{port}/whoami")[1]["greeting"] == "default"
    import subprocess
    import sys

    from conftest import ENV

    subprocess.run([sys.executable, "-m", "devenv", "up"], cwd=project.root, check=True,
                   capture_output=True, env={**ENV, "GREETING": "from-the-shell"})
    assert project.get(f"http://127.0.0.1:{port}/whoami")[1]["greeting"] == "from-the-shell"
