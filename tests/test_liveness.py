"""Liveness: `stop` always finishes and leaves nothing behind, a `stop` racing an `up` is
never lost, `restart` rolls with no gap, and what devenv refuses it says at once."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time

import psutil

from conftest import ENV, Project, free_ports, procs_in, wait_for
from test_reload import edit_version, make


def _gone(pids: list[int]) -> bool:
    return not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                   for p in pids)


def test_stop_cancels_an_up_that_waits_on_a_long_start(project: Project) -> None:
    (port,) = free_ports(1)
    project.services(f"""\
        slow:
          command: python svc.py
          port: {port}
          health: {{http: /never, start_period: 300s}}
          stop_timeout: 2s
        """)
    up = project.popen("up")
    assert wait_for(lambda: project.engine_pid() and any(
        s["state"] == "starting" for s in project.status()["services"]), timeout=20)
    began = time.monotonic()
    stopped = project.devenv("stop", timeout=30)
    assert stopped.returncode == 0 and "stopped 1 service" in stopped.stdout, stopped.stderr
    assert time.monotonic() - began < 15
    _, err = up.communicate(timeout=15)
    assert up.returncode == 1 and "stopped while it came up" in err
    assert wait_for(lambda: not procs_in(project.root), timeout=10)


def test_sigterm_stops_an_engine_busy_starting_services(project: Project) -> None:
    (port,) = free_ports(1)
    project.services(f"slow: {{command: python svc.py, port: {port}, "
                     "health: {http: /never, start_period: 300s}, stop_timeout: 2s}\n")
    up = project.popen("up")
    assert wait_for(lambda: project.engine_pid() and any(
        s["state"] == "starting" for s in project.status()["services"]), timeout=20)
    engine = psutil.Process(project.engine_pid())
    engine.send_signal(signal.SIGTERM)
    engine.wait(timeout=15)
    up.communicate(timeout=15)
    assert wait_for(lambda: not procs_in(project.root), timeout=10)


def test_stop_leaves_no_process_a_service_detached(project: Project) -> None:
    project.services("""\
        spawner:
          command: "setsid sleep 997 & exec sleep 998"
          stop_timeout: 2s
        """)
    project.up()
    detached = wait_for(lambda: [p.pid for p in procs_in(project.root)
                                 if p.cmdline()[-2:] == ["sleep", "997"]], timeout=10)
    assert detached, "the detached child did not start"
    assert os.getsid(detached[0]) == detached[0]  # its own session: outside every group
    began = time.monotonic()
    project.devenv("stop", check=True, timeout=30)
    assert time.monotonic() - began < 10
    assert wait_for(lambda: _gone(detached), timeout=5), "a detached child outlived stop"


def test_kill_9_of_the_engine_takes_detached_children_too(project: Project) -> None:
    project.services('spawner: {command: "setsid sleep 996 & exec sleep 995"}\n')
    project.up()
    detached = wait_for(lambda: [p.pid for p in procs_in(project.root)
                                 if p.cmdline()[-2:] == ["sleep", "996"]], timeout=10)
    assert detached
    os.kill(project.engine_pid() or 0, signal.SIGKILL)
    assert wait_for(lambda: _gone(detached), timeout=15), "a detached child outlived the engine"


def test_a_stop_racing_an_up_is_never_lost(project: Project) -> None:
    (port,) = free_ports(1)
    project.services(f"api: {{command: python svc.py, port: {port}}}\n")
    for _ in range(3):
        up = project.popen("up")
        assert wait_for(lambda: (project.root / ".devenv/run/starting").exists()
                        or project.engine_pid(), timeout=20, interval=0.005)
        stopped = project.devenv("stop", timeout=60)
        assert stopped.returncode == 0, stopped.stderr
        assert "nothing is running" not in stopped.stdout
        up.communicate(timeout=30)
        assert wait_for(lambda: project.engine_pid() is None and not procs_in(project.root),
                        timeout=15), "the environment came up after the stop"


def test_restart_rolls_new_instances_in_before_old_ones_leave(project: Project) -> None:
    (port,) = free_ports(1)
    project.services(f"""\
        api:
          command: python svc.py
          port: {port}
          replicas: 2
          env: {{START_DELAY: "1.5"}}
          health: {{http: /healthz, interval: 200ms}}
        """)
    project.up()
    before = {i["id"] for i in project.service("api")["instances"]}
    restart = project.popen("restart", "--service", "api")
    slowest = 0.0
    while restart.poll() is None:
        t0 = time.monotonic()
        code, _ = project.get(f"http://127.0.0.1:{port}/whoami")
        slowest = max(slowest, time.monotonic() - t0)
        assert code == 200
    assert restart.returncode == 0
    after = {i["id"] for i in project.service("api")["instances"]}
    assert not before & after  # every instance is new
    assert slowest < 1.0, f"a request waited {slowest:.1f}s: the service had a gap"


def test_a_data_service_cannot_be_scaled(project: Project) -> None:
    (port,) = free_ports(1)
    project.services(f"cache: {{kind: redis, port: {port}}}\n")
    project.up()
    result = project.devenv("scale", "cache=2")
    assert result.returncode == 2 and "cannot scale cache to 2" in result.stderr, result.stderr
    assert project.service("cache")["replicas"] == {"ready": 1, "desired": 1}


def test_a_portless_service_in_a_crash_loop_is_never_shown_healthy(project: Project) -> None:
    project.services('flaky: {command: "sleep 0.3; exit 1"}\n')
    project.devenv("up")
    assert wait_for(lambda: "crash loop" in project.service("flaky")["detail"], timeout=30)
    seen = set()
    restarted = project.service("flaky")["restarts"]
    until = None  # watch the next start's whole run (0.3 s) and its crash
    deadline = time.monotonic() + 30
    while until is None or time.monotonic() < until:
        assert time.monotonic() < deadline, "it was not restarted"
        svc = project.service("flaky")
        seen.add(svc["state"])
        assert "crash loop" in svc["detail"], svc
        if until is None and svc["restarts"] > restarted:
            until = time.monotonic() + 1.0
    assert seen == {"crashed"}


def test_services_keep_the_usual_open_files_limit(project: Project) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    soft = min(1024, hard)
    project.services('files: {command: "python -c \\"import resource, time; '
                     'print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], flush=True); '
                     'time.sleep(600)\\""}\n')
    subprocess.run([sys.executable, "-m", "devenv", "up"], cwd=project.root, env=ENV,
                   check=True, capture_output=True, timeout=60,
                   preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))
    assert wait_for(lambda: project.devenv("logs", "files").stdout.strip(), timeout=10)
    assert project.devenv("logs", "files").stdout.split()[-1] == str(soft)
    engine = psutil.Process(project.engine_pid())
    assert engine.rlimit(psutil.RLIMIT_NOFILE)[0] == hard  # the engine's own is raised


def test_a_failed_one_shot_fails_up_and_its_dependents_at_once(project: Project) -> None:
    (port,) = free_ports(1)
    project.services(f"""\
        job: {{command: "echo migrating; sleep 0.2; exit 1", restart: "no"}}
        web:
          command: python svc.py
          port: {port}
          depends_on: {{job: completed}}
        """)
    began = time.monotonic()
    result = project.devenv("up", timeout=60)
    assert result.returncode == 1, result.stderr
    assert "dependency 'job' failed: exited with code 1" in result.stderr
    assert time.monotonic() - began < 20
    states = {s["name"]: s["state"] for s in project.status()["services"]}
    assert states == {"job": "failed", "web": "stopped"}  # web never started
    assert "migrating" in result.stderr  # the job's last lines say why
    stopped = project.devenv("stop", timeout=30)
    assert stopped.returncode == 0


def test_a_build_that_leaves_a_detached_child_neither_hangs_nor_leaks_it(
        project: Project) -> None:
    make(project, {"api": 'watch: {action: rebuild, build: "setsid sleep 991 & echo built"}'})
    project.up()
    edit_version(project, "api", "v2")
    assert wait_for(lambda: project.service("api")["reloads"] == 1, timeout=20)
    assert project.service("api")["last_reload"]["ok"]
    assert not [p for p in procs_in(project.root) if p.cmdline()[-2:] == ["sleep", "991"]]
