"""exec, logs, ingress streaming and websockets, config editing, init and doctor."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp

from conftest import Lines, Project, free_ports, wait_for


def api_and_web(project: Project, **env: str) -> tuple[int, int]:
    api, web = free_ports(2)
    env_yaml = "".join(f"\n              {k}: '{v}'" for k, v in env.items())
    (project.root / "web").mkdir(exist_ok=True)
    project.services(f"""\
          api:
            command: python svc.py
            port: {api}
            health: {{http: /healthz}}
            env:
              DB_PASSWORD: 's3cr3t-value'{env_yaml}
          web:
            command: python ../svc.py
            path: web
            port: {web}
            depends_on: [api]
        """)
    return api, web


def test_exec_runs_with_the_service_environment_and_passes_the_exit_code(
        project: Project) -> None:
    api, _ = api_and_web(project)
    script = "import os,sys; print(os.getcwd()); print(os.environ['API_URL']); sys.exit(7)"
    result = project.devenv("exec", "web", "--", "python", "-c", script)
    assert result.returncode == 7
    cwd, url = result.stdout.split()
    assert cwd == str(project.root / "web") and url == f"http://127.0.0.1:{api}"
    missing = project.devenv("exec", "wbe", "--", "true")
    assert missing.returncode == 2 and "did you mean 'web'" in missing.stderr


def test_logs_are_merged_filtered_followed_and_mask_secrets(project: Project) -> None:
    api, _ = api_and_web(project, PRINT_SECRET="1")
    project.up()
    project.get(f"http://127.0.0.1:{api}/whoami")
    text = project.devenv("logs", check=True).stdout
    assert "api-1 | api listening on" in text and "web-1 | web listening on" in text
    assert "api GET /whoami" in text
    assert "s3cr3t-value" not in text and "using password ********" in text
    assert "s3cr3t-value" not in (project.root / ".devenv/logs/api.log").read_text()

    lines = [json.loads(ln) for ln in project.devenv("logs", "api", "--json",
                                                      check=True).stdout.splitlines()]
    assert lines and {ln["service"] for ln in lines} == {"api"}
    assert {"ts", "time", "service", "replica", "stream", "text"} <= set(lines[0])
    # `--since 1s` is about the clock, so the clock is what to wait for: until the newest line
    # `logs` would show is more than a second old; then it shows nothing
    newest = max(json.loads(ln)["ts"]
                 for ln in project.devenv("logs", "--json", check=True).stdout.splitlines())
    assert wait_for(lambda: time.time() > newest + 1.0, timeout=5)
    assert project.devenv("logs", "--since", "1s", check=True).stdout.strip() == ""
    startup = project.devenv("logs", "api", "--startup", check=True).stdout
    assert "listening on" in startup and "GET /whoami" not in startup

    follower = project.popen("logs", "api", "--follow", "--since", "1s")
    followed = Lines(follower.stdout)

    def following() -> bool:
        """A request logged now shows up once the follower is connected (the engine takes a
        follower on before it sends the lines it asked for)."""
        project.get(f"http://127.0.0.1:{api}/whoami?marker=ping")
        return "marker=ping" in followed.text

    try:
        assert wait_for(following, timeout=15), followed.text
        project.get(f"http://127.0.0.1:{api}/whoami?marker=followed")  # only following shows it
        assert wait_for(lambda: "marker=followed" in followed.text, timeout=5), followed.text
    finally:
        follower.kill()
        follower.wait(10)

    project.devenv("stop", check=True)
    after_stop = project.devenv("logs", "api", check=True).stdout
    assert "api GET /whoami" in after_stop  # persisted, readable with no engine


def test_ingress_streams_bodies_and_passes_websockets(project: Project) -> None:
    api, ws = free_ports(2)
    project.services(f"""\
          api: {{command: python svc.py, port: {api}}}
          chat: {{command: [{sys.executable}, ws.py], port: {ws}, health: {{http: /healthz}}}}
        """)
    project.up()
    request = urllib.request.Request(f"http://127.0.0.1:{project.ingress_port}/stream?n=6",
                                     headers={"Host": "api.localhost"})
    arrivals = []
    with urllib.request.urlopen(request, timeout=10) as resp:
        for _line in resp:
            arrivals.append(time.monotonic())
    assert len(arrivals) == 6
    assert arrivals[-1] - arrivals[0] > 0.15  # chunks arrived as sent, not all at the end
    body = b"x" * 3_000_000
    post = urllib.request.Request(f"http://127.0.0.1:{project.ingress_port}/echo", data=body,
                                  headers={"Host": "api.localhost"}, method="POST")
    with urllib.request.urlopen(post, timeout=10) as resp:
        assert resp.read() == body

    async def talk() -> list[str]:
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"http://127.0.0.1:{project.ingress_port}/ws",
                headers={"Host": "chat.localhost"}) as ws_conn:
            replies = []
            for word in ("one", "two"):
                await ws_conn.send_str(word)
                replies.append((await ws_conn.receive()).data)
            return replies

    assert asyncio.run(talk()) == ["echo: one", "echo: two"]


def test_config_set_get_unset_keep_comments_and_refuse_bad_values(project: Project) -> None:
    api_and_web(project)
    original = (project.root / "devenv.yaml").read_text()
    (project.root / "devenv.yaml").write_text("# team config\n" + original)
    set_local = project.devenv("config", "set", "services.api.replicas", "3", check=True)
    assert set_local.stdout.strip() == "set services.api.replicas in .devenv/local.yaml"
    assert project.devenv("config", "get", "services.api.replicas", check=True).stdout == "3\n"
    assert "replicas: 3" in (project.root / ".devenv/local.yaml").read_text()
    assert "replicas" not in (project.root / "devenv.yaml").read_text()

    bad = project.devenv("config", "set", "services.api.port", "not-a-port")
    assert bad.returncode == 2 and ".devenv/local.yaml" in bad.stderr
    assert "port: not-a-port" not in (project.root / ".devenv/local.yaml").read_text()

    project.devenv("config", "set", "services.web.replicas", "2", "--project", check=True)
    text = (project.root / "devenv.yaml").read_text()
    assert text.startswith("# team config\n") and "replicas: 2" in text
    project.devenv("config", "unset", "services.api.replicas", check=True)
    assert project.devenv("config", "get", "services.api.replicas", check=True).stdout == "1\n"
    shown = project.devenv("config", "show", "--json", check=True).stdout
    assert "s3cr3t-value" not in shown and "********" in shown
    valid = project.devenv("config", "validate")
    assert valid.returncode == 0 and "ok: 2 services" in valid.stderr, valid.stderr


def test_init_scaffolds_from_procfile_and_project_folders(tmp_path: Path) -> None:
    from conftest import Project as P

    proj = P(tmp_path, 0)
    (tmp_path / "Procfile").write_text("web: python -m http.server $PORT\nworker: python w.py\n")
    proj.devenv("init", check=True)
    text = (tmp_path / "devenv.yaml").read_text()
    assert "web:" in text and "worker:" in text and text.count("port:") == 1
    assert proj.devenv("config", "validate").returncode == 0
    assert "already exists" in proj.devenv("init", check=True).stdout

    other = tmp_path / "mono"
    (other / "front").mkdir(parents=True)
    (other / "front/package.json").write_text('{"name": "front", "scripts": {"dev": "vite"}}')
    (other / "api").mkdir()
    (other / "api/main.py").write_text("from fastapi import FastAPI\napp = FastAPI()\n")
    P(other, 0).devenv("init", check=True)
    text = (other / "devenv.yaml").read_text()
    assert "npm run dev" in text and "uvicorn main:app" in text
    assert P(other, 0).devenv("config", "validate").returncode == 0


def test_doctor_reports_a_port_conflict_with_a_fix(project: Project) -> None:
    api, _ = api_and_web(project)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", api))
        blocker.listen()
        result = project.devenv("doctor", "--json")
        up = project.devenv("up")
    assert result.returncode == 1
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["services.api.port"]["status"] == "fail"
    assert "devenv config set services.api.port" in checks["services.api.port"]["fix"]
    assert checks["config"]["status"] == "ok"
    assert up.returncode == 2 and f"port {api} is already in use" in up.stderr


def test_up_attach_streams_logs_and_sigterm_stops_the_environment(project: Project) -> None:
    import signal as sig

    api, _ = api_and_web(project)
    attached = project.popen("up", "--attach")
    out, err = Lines(attached.stdout), Lines(attached.stderr)
    assert wait_for(lambda: project.engine_pid() and any(
        s["name"] == "web" and s["state"] == "healthy" for s in project.status()["services"]),
        timeout=20), err.text
    project.get(f"http://127.0.0.1:{api}/whoami?attached=1")
    assert wait_for(lambda: "whoami?attached=1" in out.text, timeout=10), out.text
    attached.send_signal(sig.SIGTERM)
    attached.wait(30)
    out.wait()
    err.wait()
    assert project.engine_pid() is None, err.text
