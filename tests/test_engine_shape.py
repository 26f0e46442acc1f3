"""The engine's shape, seen from outside: one slow service blocks no other, addresses are
taken before anything starts, exec goes through the running environment, and an engine
whose project is gone stops."""

from __future__ import annotations

import os
import shutil
import socket

import psutil

from conftest import FIXTURES, Project, free_ports, service_procs, wait_for
from test_reload import answer, edit_version, make


def test_a_slow_build_of_one_service_blocks_nothing_else(project: Project) -> None:
    shutil.copy(FIXTURES / "gate.py", project.root / "gate.py")
    make(project, {"slow": "watch: {action: rebuild, build: python ../gate.py}",
                   "other": "", "third": ""})
    project.up()
    edit_version(project, "slow", "v2")
    assert wait_for(lambda: (project.root / "building").exists(), timeout=10), "no build"

    # while slow's build runs: status, scaling another service, another service's reload
    assert project.status()["services"]
    scaled = project.devenv("scale", "other=2", timeout=20)
    assert scaled.returncode == 0, scaled.stderr
    assert project.service("other")["replicas"] == {"ready": 2, "desired": 2}
    edit_version(project, "third", "v2")
    assert wait_for(lambda: project.service("third")["reloads"] == 1, timeout=15)
    assert answer(project, "third").startswith("v2|")

    assert (project.root / "building").exists(), "the build ended before the checks did"
    assert project.service("slow")["reloads"] == 0
    assert answer(project, "slow").startswith("v1|")  # still served while it builds
    (project.root / "release").touch()
    assert wait_for(lambda: project.service("slow")["reloads"] == 1, timeout=20)
    assert answer(project, "slow").startswith("v2|")


def test_a_taken_port_fails_up_at_once_naming_it_and_its_holder(project: Project) -> None:
    free, taken = free_ports(2)
    project.services(f"""\
        first: {{command: python svc.py, port: {free}}}
        second: {{command: python svc.py, port: {taken}}}
        """)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", taken))
        blocker.listen()
        result = project.devenv("up", timeout=30)
        assert result.returncode == 2, result.stderr
        assert f"second: port {taken} is already in use by pid {os.getpid()}" in result.stderr
        assert "nothing was started" in result.stderr
        assert not service_procs(project.root)
        assert project.status()["services"] == []
        with socket.socket() as probe:  # what this `up` took, it gave back
            probe.bind(("127.0.0.1", free))
    project.up()
    assert {s["name"]: s["state"] for s in project.status()["services"]} == {
        "first": "healthy", "second": "healthy"}


def test_exec_runs_as_the_service_runs_now_or_from_the_config(project: Project) -> None:
    (port,) = free_ports(1)
    project.write(f"""\
        version: 1
        ingress: {{port: {project.ingress_port}}}
        services:
          api: {{command: python svc.py, port: {port}, env: {{MODE: plain}}}}
        profiles:
          special: {{env: {{MODE: profiled}}}}
        """)
    script = "import os; print(os.environ['MODE'], os.environ['SERVICE_URL'])"
    stopped = project.devenv("exec", "api", "--", "python", "-c", script, check=True)
    assert stopped.stdout.split() == ["plain", f"http://127.0.0.1:{port}"]
    project.up("--profile", "special")
    running = project.devenv("exec", "api", "--", "python", "-c", script, check=True)
    assert running.stdout.split() == ["profiled", f"http://127.0.0.1:{port}"]
    missing = project.devenv("exec", "apj", "--", "true")
    assert missing.returncode == 2 and "did you mean 'api'" in missing.stderr


def test_an_engine_whose_project_folder_is_deleted_stops_everything(project: Project) -> None:
    (port,) = free_ports(1)
    project.services(f"api: {{command: python svc.py, port: {port}, replicas: 2}}\n")
    project.up()
    engine = psutil.Process(project.engine_pid())
    services = service_procs(project.root)
    assert len(services) == 2
    shutil.rmtree(project.root)
    assert wait_for(lambda: not engine.is_running() or engine.status() == psutil.STATUS_ZOMBIE,
                    timeout=15), "the engine outlived its project"
    assert wait_for(lambda: not any(p.is_running() for p in services), timeout=10)
    assert not project.root.exists()  # nothing was written back into the deleted folder
    with socket.socket() as probe:  # its address was given back
        probe.bind(("127.0.0.1", port))
