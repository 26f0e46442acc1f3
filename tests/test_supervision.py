"""Supervision: crash restarts, kill -9 of the engine, live scaling under traffic, concurrency."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import urllib.request

import psutil

from conftest import Project, free_ports, service_procs, wait_for


def one_service(project: Project, replicas: int = 1) -> int:
    (port,) = free_ports(1)
    project.services(f"""\
        api:
          command: python svc.py
          port: {port}
          replicas: {replicas}
          stop_timeout: 3s
          health: {{http: /healthz, interval: 200ms, retries: 1}}
        """)
    return port


def test_crashed_service_is_restarted_and_counted(project: Project) -> None:
    port = one_service(project)
    project.up()
    before = project.get(f"http://127.0.0.1:{port}/whoami")[1]["pid"]
    with contextlib.suppress(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/crash", timeout=5)
    svc = wait_for(lambda: (s := project.service("api"))["restarts"] >= 1
                   and s["state"] == "healthy" and s, timeout=10)
    assert svc, project.service("api")
    after = project.get(f"http://127.0.0.1:{port}/whoami")[1]["pid"]
    assert after != before
    assert not psutil.pid_exists(before)
    logs = project.devenv("logs", "api", "--verbose", check=True).stdout
    assert "exited with code 3" in logs and "crashing on request" in logs


def test_crash_loop_is_shown_as_such(project: Project) -> None:
    (port,) = free_ports(1)
    project.services(f"""\
        flaky:
          command: python -c "import sys; print('boom', flush=True); sys.exit(2)"
          port: {port}
        """)
    result = project.devenv("up")
    assert result.returncode == 1 and "boom" in result.stderr
    svc = wait_for(lambda: "crash loop" in (s := project.service("flaky"))["detail"] and s,
                   timeout=20)
    assert svc and svc["state"] == "crashed" and svc["restarts"] >= 4


def test_kill_9_of_the_engine_leaves_no_orphans_and_next_up_recovers(project: Project) -> None:
    one_service(project, replicas=2)
    project.up()
    pids = [p.pid for p in service_procs(project.root)]
    assert len(pids) == 2
    engine = project.engine_pid()
    assert engine
    os.kill(engine, signal.SIGKILL)
    assert wait_for(lambda: not any(psutil.pid_exists(p) for p in pids), timeout=10), \
        "service processes outlived the engine"
    project.up()
    assert project.service("api")["state"] == "healthy"


def test_next_up_stops_leftovers_even_if_the_guardian_died_too(project: Project) -> None:
    one_service(project)
    project.up()
    (svc,) = service_procs(project.root)
    engine = psutil.Process(project.engine_pid())
    guardians = [child for child in engine.children()
                 if "devenv.runtime.guardian" in " ".join(child.cmdline())]
    assert guardians
    for guardian in guardians:
        guardian.kill()
    engine.kill()
    # whatever their end could set off (a parent-death signal, a closed pipe) has happened once
    # both are gone
    _, alive = psutil.wait_procs([engine, *guardians], timeout=10)
    assert alive == []
    assert svc.is_running() and svc.status() != psutil.STATUS_ZOMBIE, \
        "nothing should have stopped the service yet"
    project.up()
    assert not svc.is_running()
    assert project.service("api")["state"] == "healthy"


def test_scale_up_and_down_under_traffic_loses_no_request(project: Project) -> None:
    one_service(project)
    project.up()
    failures: list[str] = []
    done = threading.Event()
    served = [0]

    def hammer() -> None:
        while not done.is_set():
            try:
                code, _ = project.ingress("/slow?ms=20", "api.localhost")
                if code != 200:
                    failures.append(str(code))
                served[0] += 1
            except OSError as exc:
                failures.append(repr(exc))

    def more_served(n: int) -> None:
        """Wait until n more requests have been answered (traffic flows at this scale)."""
        mark = served[0]
        assert wait_for(lambda: served[0] >= mark + n, timeout=10), failures

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        more_served(20)
        project.devenv("scale", "api=3", check=True)
        assert project.service("api")["replicas"] == {"ready": 3, "desired": 3}
        more_served(20)
        project.devenv("scale", "api=1", check=True)
        more_served(10)
        project.devenv("scale", "api=2", check=True)
        more_served(20)
    finally:
        done.set()
        for t in threads:
            t.join()
    assert failures == []
    assert served[0] > 50
    assert project.service("api")["replicas"] == {"ready": 2, "desired": 2}
    assert len(service_procs(project.root)) == 2


def test_requests_are_held_while_a_service_restarts(project: Project) -> None:
    one_service(project)
    project.up()
    restart = project.popen("restart", "--service", "api")
    results = []
    deadline = time.monotonic() + 30  # (a hung restart fails below, it does not hang here)
    while (restart.poll() is None or not results) and time.monotonic() < deadline:
        results.append(project.ingress("/whoami", "api.localhost")[0])  # for the whole restart
    results.append(project.ingress("/whoami", "api.localhost")[0])  # and after it
    assert restart.wait(30) == 0
    assert set(results) == {200}
    assert project.service("api")["state"] == "healthy"


def test_concurrent_cli_calls_share_one_engine_and_state_stays_consistent(
        project: Project) -> None:
    one_service(project, replicas=1)
    ups = [project.popen("up") for _ in range(3)]
    codes = [p.wait(60) for p in ups]
    assert codes == [0, 0, 0], [p.stderr.read() for p in ups if p.stderr]
    def engines() -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["cmdline"])
                if "devenv.engine" in " ".join(p.info["cmdline"] or [])
                and str(project.root) in " ".join(p.info["cmdline"] or [])]

    # engines that lost the race for the lock exit at once; one serves
    assert wait_for(lambda: len(engines()) == 1, timeout=5), engines()
    calls = [project.popen("scale", "api=2"), project.popen("status", "--json"),
             project.popen("up"), project.popen("scale", "api=3"), project.popen("status")]
    assert [c.wait(60) for c in calls] == [0] * 5
    status = project.service("api")
    assert status["replicas"]["desired"] in (2, 3)
    assert status["replicas"]["ready"] == status["replicas"]["desired"]
    assert len(service_procs(project.root)) == status["replicas"]["desired"]
    during = json.loads(calls[1].communicate()[0])  # taken mid-change, still whole, valid JSON
    assert during["running"] and [s["name"] for s in during["services"]] == ["api"]


def test_stop_escalates_to_kill_for_a_service_that_ignores_term(project: Project) -> None:
    stubborn = ("import signal, time, os; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('ignoring TERM', flush=True); time.sleep(600)")
    project.services(f"""\
          stubborn:
            command: [python, -c, "{stubborn}"]
            stop_timeout: 1s
        """)
    project.up()
    pid = project.service("stubborn")["instances"][0]["id"].split("#")[1]
    t0 = time.monotonic()
    project.devenv("stop", check=True)
    took = time.monotonic() - t0
    assert not psutil.pid_exists(int(pid))
    assert 0.9 < took < 6


def test_unhealthy_replicas_leave_rotation_and_return_when_healthy(project: Project) -> None:
    flag = project.root / "unhealthy"
    one_service(project, replicas=2)
    text = (project.root / "devenv.yaml").read_text()
    (project.root / "devenv.yaml").write_text(text.replace(
        "stop_timeout: 3s", f"stop_timeout: 3s\n    env: {{UNHEALTHY_FILE: '{flag}'}}"))
    project.up()
    flag.write_text("")  # every replica's /healthz now answers 503
    # (unhealthy as soon as one replica fails its checks: wait for both)
    svc = wait_for(lambda: (s := project.service("api"))["replicas"]["ready"] == 0 and s,
                   timeout=5)
    assert svc, project.service("api")
    assert svc["state"] == "unhealthy" and svc["replicas"] == {"ready": 0, "desired": 2}
    assert "failed health checks" in svc["detail"]
    assert svc["restarts"] == 0  # unhealthy is not a crash: nothing was killed
    flag.unlink()
    assert wait_for(lambda: project.service("api")["replicas"]["ready"] == 2, timeout=5)
    assert project.ingress("/whoami", "api.localhost")[0] == 200
