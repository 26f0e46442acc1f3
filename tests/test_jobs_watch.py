"""One-shot jobs, watch settings changed on a running engine, and bounded draining, end to
end (issue 9: items 3, 9, 10, 14 and 15's failed-reload output)."""

from __future__ import annotations

import socket
import sys
import threading
import time
import urllib.request

from conftest import Project, free_ports, wait_for
from test_reload import edit_version, make, reloaded


def job_project(project: Project) -> None:
    (project.root / "job").mkdir()
    (project.root / "job" / "build.py").write_text(
        "from pathlib import Path\n"
        "with Path('../runs.log').open('a') as f:\n    f.write('run\\n')\n"
        "print('built')\n")
    (port,) = free_ports(1)
    project.services(f"""\
        job: {{command: [{sys.executable}, build.py], path: job, restart: "no"}}
        web: {{command: [{sys.executable}, svc.py], port: {port}, depends_on: {{job: completed}}}}
        """)


def runs(project: Project) -> int:
    return (project.root / "runs.log").read_text().count("run")


def test_a_job_shows_completed_and_is_not_rerun_until_asked_or_changed(
        project: Project) -> None:
    job_project(project)
    first = project.up()
    assert "completed (exit code 0 after" in first.stdout
    job = project.service("job")
    assert (job["state"], job["job"]) == ("completed", True)
    assert job["detail"].startswith("exit code 0 after")
    assert job["watch"] == "off (one-shot job)"
    row = next(ln for ln in project.devenv("status", check=True).stdout.splitlines()
               if ln.startswith("job "))
    assert row.split()[1:3] == ["completed", "-"]  # no "0/1 ready" for a job that is done
    project.devenv("stop", check=True)

    again = project.up()  # a new engine: nothing the job depends on changed
    assert runs(project) == 1
    assert "completed earlier" in project.service("job")["detail"]
    assert "devenv up --rerun job" in project.service("job")["detail"]
    assert "completed" in again.stdout

    project.up("--rerun", "job")
    assert runs(project) == 2
    (project.root / "job" / "build.py").write_text(
        (project.root / "job" / "build.py").read_text() + "# edited\n")
    project.devenv("stop", check=True)
    project.up()  # its file changed: it runs
    assert runs(project) == 3

    wrong = project.devenv("up", "--rerun", "web")
    assert wrong.returncode == 2
    assert "web is not a one-shot job" in wrong.stderr
    assert runs(project) == 3


def test_a_job_that_never_finishes_fails_up_at_its_run_timeout(project: Project) -> None:
    project.services(f"""\
        job: {{command: [{sys.executable}, -c, "print('stuck'); import time; time.sleep(999)"],
              restart: "no", run_timeout: 1.5}}
        """)
    began = time.monotonic()
    result = project.devenv("up", timeout=60)
    assert result.returncode == 1
    assert time.monotonic() - began < 15
    assert "did not finish within 1.5s (run_timeout)" in result.stderr
    assert "stuck" in result.stderr  # its last lines
    assert project.service("job")["state"] == "failed"


def test_turning_watch_off_on_a_running_engine_takes_effect(project: Project) -> None:
    make(project, {"api": "", "marker": "watch: {paths: [api]}"})
    project.up()
    api = project.service("api")
    assert api["watch"] == "replace"
    text = (project.root / "devenv.yaml").read_text()
    (project.root / "devenv.yaml").write_text(
        text.replace("  path: api\n", "  path: api\n    watch: false\n", 1))
    result = project.up()
    assert "settings updated" in result.stdout
    assert project.service("api")["watch"] == "off"
    edit_version(project, "api", "v2")  # one change, seen by both: only marker reloads
    reloaded(project, "marker", 1)
    after = project.service("api")
    assert after["reloads"] == 0
    assert after["instances"][0]["id"] == api["instances"][0]["id"]


def test_a_replaced_instance_does_not_wait_long_for_an_idle_keep_alive_connection(
        project: Project) -> None:
    ports = make(project, {"api": "drain_timeout: 1"})
    project.up()
    conn = socket.create_connection(("127.0.0.1", ports["api"]), timeout=10)
    try:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
        assert b"200" in conn.recv(4096)  # answered; the connection stays open, idle
        edit_version(project, "api", "v2")
        phases = reloaded(project, "api", 1)["last_reload"]["phases"]
    finally:
        conn.close()
    assert phases["drained"] - phases["switched"] < 4.0, phases  # not the 10 s it was


def test_a_failed_reload_shows_its_output_under_the_new_instance(project: Project) -> None:
    make(project, {"api": ""})
    project.up()
    app = project.root / "api" / "app.py"
    app.write_text("raise SystemExit('broken on purpose')\n" + app.read_text())
    svc = wait_for(lambda: (s := project.service("api"))["reloads"] >= 1 and s, timeout=20)
    assert not svc["last_reload"]["ok"]
    logs = project.devenv("logs", "api", check=True).stdout
    failing = [ln for ln in logs.splitlines() if "broken on purpose" in ln]
    assert any(ln.startswith("api-1(new) |") for ln in failing), logs
    assert not any(ln.startswith("api-1 |") for ln in failing), logs  # not the one serving


def test_a_migration_runs_again_whenever_its_database_is_new_or_restored(
        project: Project) -> None:
    (db,) = free_ports(1)
    (project.root / "migrate.py").write_text(
        "import os, psycopg\nfrom pathlib import Path\n"
        "with psycopg.connect(os.environ['DATABASE_URL']) as conn:\n"
        "    conn.execute('CREATE TABLE IF NOT EXISTS item (name text)')\n"
        "with Path('runs.log').open('a') as f:\n    f.write('run\\n')\n")
    project.services(f"""\
        db: {{kind: postgres, port: {db}}}
        migrate: {{command: [{sys.executable}, migrate.py], restart: "no", depends_on: [db],
                  watch: {{ignore: [runs.log]}}}}
        """)
    project.up()
    assert runs(project) == 1
    project.devenv("stop", "--persist-data", check=True)
    project.up()  # the same data: nothing to do
    assert runs(project) == 1
    project.devenv("stop", check=True)  # the data is discarded (after a snapshot)
    project.up()  # fresh, empty database: the migration runs
    assert runs(project) == 2
    project.devenv("snapshot", "save", "migrated", check=True)
    project.devenv("data", "reset", check=True)
    project.up()  # the same engine, fresh data again
    assert runs(project) == 3
    project.devenv("snapshot", "restore", "migrated", check=True)
    project.up()
    assert runs(project) == 4
    project.up()
    assert runs(project) == 4


def test_a_streamed_answer_on_the_service_port_is_not_cut_by_a_reload(
        project: Project) -> None:
    (port,) = free_ports(1)
    project.services(f"api: {{command: [{sys.executable}, svc.py], port: {port}, "
                     "drain_timeout: 1}\n")
    project.up()
    started, lines = threading.Event(), []

    def download() -> None:  # 60 chunks, 50 ms apart: 3 s, longer than the drain timeout
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stream?n=60", timeout=30) as r:
            for line in r:
                lines.append(line)
                started.set()

    reader = threading.Thread(target=download)
    reader.start()
    try:
        assert started.wait(10)
        project.devenv("restart", "api", check=True)  # the old instance drains meanwhile
    finally:
        reader.join(30)
    assert len(lines) == 60 and lines[-1].startswith(b"chunk 59")
