"""What `logs` and `status` print through the real CLI: start-ups of services with no port
and of one-shots, `logs -f` starting from the last lines, and tables piped uncut."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

from conftest import ENV, FIXTURES, Lines, Project, free_ports, wait_for

# prints numbered lines as it starts, then answers HTTP, printing each path it is asked for
CHATTY = textwrap.dedent("""\
    import os, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer
    for i in range(int(os.environ.get("LINES", "0"))):
        print(f"line {i:03d}")
    sys.stdout.flush()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            print("hit " + self.path, flush=True)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
""")


def shown(text: str) -> list[str]:
    """The text of each line `logs` printed, without its `service-N |` label."""
    return [line.split(" | ", 1)[1] for line in text.splitlines() if " | " in line]


def test_startup_shows_portless_services_and_one_shots_of_current_replicas(
        project: Project) -> None:
    worker = ("import os, sys, time; n = os.environ['DEVENV_REPLICA']; "
              "print(f'worker {n} connecting', flush=True); time.sleep(0.3); "
              "print(f'worker {n} ready', flush=True); time.sleep(3600)")
    job = ("import time; print('migrating 1/2', flush=True); time.sleep(0.5); "
           "print('migrating 2/2', flush=True)")
    project.services(f"""\
        worker: {{command: [{sys.executable}, -c, "{worker}"], replicas: 2}}
        job: {{command: [{sys.executable}, -c, "{job}"], restart: "no"}}
    """)
    project.up()
    assert wait_for(lambda: shown(project.devenv("logs", "worker").stdout).count(
        "worker 2 ready"), timeout=10)
    assert wait_for(lambda: "migrating 2/2" in project.devenv("logs", "job").stdout, timeout=10)

    startup = shown(project.devenv("logs", "--startup", check=True).stdout)
    assert sorted(startup) == ["migrating 1/2", "migrating 2/2", "worker 1 connecting",
                               "worker 1 ready", "worker 2 connecting", "worker 2 ready"]

    project.devenv("scale", "worker=1", check=True)  # replica 2 leaves
    assert wait_for(lambda: project.service("worker")["replicas"]["desired"] == 1)
    assert shown(project.devenv("logs", "worker", "--startup", check=True).stdout) == [
        "worker 1 connecting", "worker 1 ready"]
    past = shown(project.devenv("logs", "worker", "--startup", "--all", check=True).stdout)
    assert sorted(past) == ["worker 1 connecting", "worker 1 ready", "worker 2 connecting",
                            "worker 2 ready"]
    alone = project.devenv("logs", "--all")
    assert alone.returncode == 2 and "--all goes with --startup" in alone.stderr


def test_follow_starts_from_the_last_100_lines_then_follows(project: Project) -> None:
    (project.root / "chatty.py").write_text(CHATTY)
    port = free_ports(1)[0]
    project.services(f"""\
        chatty: {{command: python chatty.py, port: {port}, env: {{LINES: "300"}}}}
    """)
    project.up()
    assert wait_for(lambda: shown(project.devenv("logs", "chatty", "-n", "1").stdout)
                    == ["line 299"], timeout=10)

    def follow(*args: str) -> Lines:
        return Lines(project.popen("logs", "-f", "chatty", *args).stdout)

    def hit(lines: Lines, marker: str) -> list[str]:
        """What the follower printed until the line this request logs (bounded wait)."""
        project.get(f"http://127.0.0.1:{port}/{marker}")
        assert wait_for(lambda: f"hit /{marker}" in lines.text, timeout=10), lines.text[-300:]
        return shown(lines.text)

    followed = follow()
    assert wait_for(lambda: len(shown(followed.text)) >= 100, timeout=10)
    assert hit(followed, "one") == [f"line {i:03d}" for i in range(200, 300)] + ["hit /one"]
    assert hit(followed, "two")[-2:] == ["hit /one", "hit /two"]  # it keeps following

    five = follow("-n", "5")
    assert wait_for(lambda: len(shown(five.text)) >= 5, timeout=10)
    assert hit(five, "three") == [
        "line 297", "line 298", "line 299", "hit /one", "hit /two", "hit /three"]

    project.devenv("stop", check=True)
    stopped = project.devenv("logs", "-f", "chatty", check=True)  # no engine: no following
    assert len(shown(stopped.stdout)) == 100 and "not running" in stopped.stderr


def test_piped_status_shows_whole_words_and_the_failed_reload(project: Project) -> None:
    name = "notification-dispatcher"
    folder = project.root / name
    folder.mkdir()
    shutil.copy(FIXTURES / "versioned.py", folder / "app.py")
    project.services(f"""\
        {name}: {{command: python app.py, path: {name}, port: {free_ports(1)[0]}}}
    """)
    project.up()
    app = folder / "app.py"
    app.write_text(app.read_text() + "\ndef broken(:\n")
    assert wait_for(lambda: (project.service(name)["last_reload"] or {}).get("ok") is False,
                    timeout=15)
    error = project.service(name)["last_reload"]["error"].splitlines()[0]

    for args in (["status"], ["status", "--resources"]):
        # a pipe, with a terminal's width in COLUMNS: still nothing is cut
        result = subprocess.run([sys.executable, "-m", "devenv", *args], cwd=project.root,
                                capture_output=True, text=True, timeout=30,
                                env={**ENV, "COLUMNS": "80"})
        assert result.returncode == 0, result.stderr
        header, row = result.stdout.splitlines()[:2]
        assert header.split()[:5] == ["SERVICE", "STATE", "READY", "RESTARTS", "URL"]
        assert row.startswith(f"{name}  ") and " healthy " in row
        assert row.endswith(f"last reload failed: {error}"), row
        assert "…" not in result.stdout and len(row) > 80


def test_a_service_that_writes_to_dev_stdout_and_dev_stderr_is_logged(project: Project) -> None:
    # nginx's `access_log /dev/stdout`, py-spy's `--output /dev/stdout`: a service's output
    # must be pipes (a socket cannot be opened by that name)
    job = ("open('/dev/stdout', 'w').write('to dev stdout' + chr(10)); "
           "open('/dev/stderr', 'w').write('to dev stderr' + chr(10))")
    project.services(f"""\
        job: {{command: [{sys.executable}, -c, "{job}"], restart: "no"}}
    """)
    project.up()
    assert wait_for(lambda: sorted(shown(project.devenv("logs", "job").stdout)) == [
        "to dev stderr", "to dev stdout"], timeout=10), project.devenv("logs", "job").stdout
