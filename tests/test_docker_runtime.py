# ruff: noqa: F811  (the docker fixtures are imported from docker_env, then requested)
"""The docker runtime, end to end on a real Docker Engine (`pytest -k docker`).

The session's engine comes from tests/docker_env.py (started here when missing, as root;
otherwise these tests skip with the reason). The image is built locally: no registry.
"""

from __future__ import annotations

import contextlib
import os
import signal
import textwrap
from pathlib import Path
from typing import Any

import psutil
import pytest

import docker_env
from conftest import Project, free_ports, wait_for
from devenv.config.load import load
from devenv.core.errors import ConfigError
from devenv.plan import make_plan
from devenv.runtime.base import Container, InstanceSpec
from devenv.runtime.docker_spec import (
    PROJECT_LABEL,
    LineSplitter,
    container_name,
    create_args,
    exit_code,
    network_name,
    resources_from,
)
from docker_env import (  # noqa: F401  (the fixtures)
    _checked,
    api,
    containers,
    docker_engine,
    image,
)

# ---- pure parts: no Docker Engine needed


def _spec(**over: Any) -> InstanceSpec:
    base: dict[str, Any] = dict(
        service="api", replica=1, command=("python3", "app.py", "--port", "${PORT}"),
        env={"GREETING": "hi"}, workdir=".", wants_port=True, stop_signal="INT",
        container=Container(image="img:1", alias="api", port=8000))
    return InstanceSpec(**{**base, **over})


def test_docker_create_args_from_a_spec() -> None:
    root = Path("/work/my shop")
    args = create_args(root, _spec(), "img:1", "abcdef0123", 7)
    assert args.image == "img:1"
    assert args.command == ["python3", "app.py", "--port", "8000"]  # ${PORT}: the inner port
    assert args.environment == {"GREETING": "hi", "DEVENV_REPLICA": "1",
                                "PYTHONUNBUFFERED": "1", "PORT": "8000"}
    assert args.publish == {8000: ("127.0.0.1", None)}  # on loopback only, any host port
    assert args.aliases == ["api"] and args.network == network_name(root)
    assert args.labels[PROJECT_LABEL] == str(root)
    assert args.labels["devenv.service"] == "api" and args.labels["devenv.replica"] == "1"
    assert args.stop_signal == "SIGINT"
    # no command: the image's own; no port: nothing published
    bare = create_args(root, _spec(command=(), wants_port=False), "img:1", "abcdef0123", 8)
    assert bare.command is None and bare.publish == {} and "PORT" not in bare.environment


def test_docker_names_are_per_project_and_unique() -> None:
    a, b = Path("/x/shop"), Path("/y/shop")
    assert network_name(a) != network_name(b)  # same folder name, different projects
    assert network_name(a).startswith("devenv-shop-")
    names = {container_name(a, _spec(), "tok123", n) for n in range(3)}
    assert len(names) == 3


def test_docker_exit_codes_and_lines() -> None:
    assert exit_code(0) == 0 and exit_code(3) == 3
    assert exit_code(137) == -9 and exit_code(143) == -15  # killed by a signal
    split = LineSplitter()
    assert split.feed(b"one\ntw") == ["one"]
    assert split.feed(b"o\r\nthree") == ["two"]
    assert split.end() == ["three"]


def test_docker_resources_from_stats() -> None:
    stats = {"cpu_stats": {"cpu_usage": {"total_usage": 3_000_000_000}},
             "memory_stats": {"usage": 50_000_000, "stats": {"inactive_file": 10_000_000}}}
    res, kept = resources_from(stats, 12.0, (10.0, 2.0))
    assert res.cpu_percent == 50.0  # one CPU second over two: half a core
    assert res.rss_bytes == 40_000_000 and res.cpu_seconds == 3.0 and kept == (12.0, 3.0)
    v1 = {"memory_stats": {"usage": 8, "stats": {"cache": 3}}}  # cgroup v1's page cache
    assert resources_from(v1, 1.0, (0.0, 0.0))[0].rss_bytes == 5


def _write(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "devenv.yaml").write_text(textwrap.dedent(text))
    return root


def test_docker_plan_discovery_uses_alias_between_containers(tmp_path: Path) -> None:
    root = _write(tmp_path / "p", """\
        version: 1
        runtime: docker
        services:
          api: {image: "img:1", port: 8000}
          web: {image: "img:1", port: 8001, depends_on: [api, migrate]}
          migrate: {command: "python3 m.py", restart: "no"}
          local: {command: "python3 l.py", depends_on: [api]}
        """)
    plan = make_plan(load(root))
    web, local = plan.services["web"], plan.services["local"]
    assert web.runtime == "docker" and web.container == Container("img:1", "web", 8001)
    assert web.env["API_URL"] == "http://api:8000"  # container to container: by alias
    assert web.env["API_HOST"] == "api"
    assert plan.services["migrate"].runtime == "local"  # (a job: nothing to reach)
    assert local.runtime == "local" and local.env["API_URL"] == "http://127.0.0.1:8000"
    # the same file on the local runtime: image-only services cannot run there
    with pytest.raises(ConfigError, match="2 problems"):
        load(root, environ={**os.environ, "DEVENV_RUNTIME": "local"})


def test_docker_container_depending_on_a_local_server_is_refused(tmp_path: Path) -> None:
    root = _write(tmp_path / "p", """\
        version: 1
        runtime: docker
        services:
          web:
            image: "img:1"
            command: "python3 web.py"
            depends_on: [worker]
          worker: {command: "python3 w.py", port: 8002}
        """)
    with pytest.raises(ConfigError) as caught:
        load(root)
    problem = str(caught.value.problems[0])
    assert "devenv.yaml:7 services.web.depends_on.worker" in problem, problem
    assert "listens on 127.0.0.1 only" in problem
    assert "give worker an `image:` or `build:`, or run web locally" in problem
    # the same file on the local runtime is fine: both are processes
    assert load(root, environ={**os.environ, "DEVENV_RUNTIME": "local"}) is not None


def test_docker_config_errors(tmp_path: Path) -> None:
    root = _write(tmp_path / "p", """\
        version: 1
        services:
          api: {image: "img:1", port: 8000}
        """)
    with pytest.raises(ConfigError) as caught:
        load(root)
    assert "services.api: has no `command` to run on the local runtime" in str(
        caught.value.problems[0])
    with pytest.raises(ConfigError) as caught:
        load(root, environ={**os.environ, "DEVENV_RUNTIME": "nomad"})
    assert "no runtime 'nomad'" in str(caught.value.problems[0])
    assert load(root, environ={**os.environ, "DEVENV_RUNTIME": "docker"}).project.runtime \
        == "docker"


# ---- on a real Docker Engine


def _services(project: Project, image: str, body: str) -> None:
    project.write(f"version: 1\nruntime: docker\ningress: {{port: {project.ingress_port}}}\n"
                  "services:\n" + textwrap.indent(textwrap.dedent(body).replace(
                      "IMAGE", image), "  "))


def test_docker_replicas_behind_stable_address_and_ingress(project: Project, image: str,
                                                           api: Any) -> None:
    port = free_ports(1)[0]
    _services(project, image, f"""\
        api:
          image: "IMAGE"
          port: {port}
          replicas: 2
          health: {{http: /healthz}}
          env: {{GREETING: from-docker}}
        """)
    project.up()
    svc = project.service("api")
    assert svc["state"] == "healthy"
    running = containers(api, project.root, "api")
    assert len(running) == 2
    for c in running:  # published on 127.0.0.1 only
        assert [(p["IP"], p["PrivatePort"]) for p in c["Ports"]] == [("127.0.0.1", port)]
    code, body = project.ingress("/whoami", host="api.localhost")
    assert code == 200 and body["greeting"] == "from-docker"
    assert body["pid"] < 50  # (in the container's own PID namespace)
    seen = set()
    for _ in range(20):  # the stable address spreads callers over both containers
        code, body = project.get(f"http://127.0.0.1:{port}/whoami")
        assert code == 200
        seen.add(body["replica"])
    assert len(seen) == 2


def test_docker_discovery_logs_and_exec(project: Project, image: str, api: Any) -> None:
    api_port, web_port = free_ports(2)
    _services(project, image, f"""\
        api:
          image: "IMAGE"
          port: {api_port}
          health: {{http: /healthz}}
        web:
          image: "IMAGE"
          command: ["/bin/sh", "-c", "echo web says hello; exec python3 /app/serve.py"]
          port: {web_port}
          health: {{http: /healthz}}
          depends_on: [api]
        """)
    project.up()
    # web reaches api by its alias on the project's network
    code, env = project.get(f"http://127.0.0.1:{web_port}/env")
    assert env["API_URL"] == f"http://api:{api_port}"
    code, body = project.get(f"http://127.0.0.1:{web_port}/call/API_URL")
    assert code == 200 and body["service"] == "api"
    # its output is in the logs
    logs = wait_for(lambda: (out := project.devenv("logs", "web").stdout)
                    and "web says hello" in out and out, timeout=10)
    assert logs, project.devenv("logs", "web").stdout
    # exec runs in the service's container (not a tty here)
    result = project.devenv("exec", "api", "--", "python3", "-c",
                            "import os; print('port', os.environ['PORT'], os.getcwd())")
    assert result.returncode == 0, result.stderr
    assert f"port {api_port} /app" in result.stdout
    result = project.devenv("exec", "api", "--", "/bin/sh", "-c", "exit 7")
    assert result.returncode == 7


def test_docker_scale_and_restart_after_kill(project: Project, image: str, api: Any) -> None:
    port = free_ports(1)[0]
    _services(project, image, f"""\
        api:
          image: "IMAGE"
          port: {port}
          health: {{http: /healthz, interval: 1s}}
        """)
    project.up()
    project.devenv("scale", "api=2", check=True)
    assert wait_for(lambda: len(containers(api, project.root, "api")) == 2, timeout=20)
    project.devenv("scale", "api=1", check=True)
    assert wait_for(lambda: len(containers(api, project.root, "api")) == 1, timeout=20)
    victim = containers(api, project.root, "api")[0]["Id"]
    api.kill(victim)  # the container dies: the supervisor starts another, after a backoff
    assert wait_for(lambda: (s := project.service("api"))["restarts"] >= 1
                    and s["state"] == "healthy", timeout=30), project.service("api")
    now = containers(api, project.root, "api")
    assert len(now) == 1 and now[0]["Id"] != victim
    assert not api.containers(all=True, filters={"id": victim})  # the dead one is removed
    assert project.get(f"http://127.0.0.1:{port}/whoami")[0] == 200


def test_docker_stop_removes_containers_and_network(project: Project, image: str,
                                                    api: Any) -> None:
    port = free_ports(1)[0]
    _services(project, image, f"""\
        api: {{image: "IMAGE", port: {port}, health: {{http: /healthz}}, stop_timeout: 30s}}
        """)
    project.up()
    assert containers(api, project.root)
    assert api.networks(names=[network_name(project.root)])
    project.devenv("stop", check=True)
    label = f"{PROJECT_LABEL}={project.root}"
    assert not api.containers(all=True, filters={"label": label})
    assert not api.networks(filters={"label": label})


def test_docker_killed_engine_leftovers_removed_by_next(project: Project, image: str,
                                                        api: Any) -> None:
    port = free_ports(1)[0]
    _services(project, image, f"""\
        api: {{image: "IMAGE", port: {port}, health: {{http: /healthz}}}}
        """)
    project.up()
    before = {c["Id"] for c in containers(api, project.root)}
    pid = project.engine_pid()
    assert pid
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(10)
    assert {c["Id"] for c in containers(api, project.root)} == before  # still running
    project.up()  # a new engine: recovers first
    after = {c["Id"] for c in containers(api, project.root)}
    assert after and not after & before
    assert not api.containers(all=True, filters={"id": next(iter(before))})


def test_docker_build_from_a_dockerfile(project: Project, image: str, api: Any) -> None:
    port = free_ports(1)[0]
    (project.root / "api").mkdir()
    (project.root / "api" / "Dockerfile").write_text(
        f"FROM {image}\nCOPY greeting.txt /app/\nENV GREETING=built\n")
    (project.root / "api" / "greeting.txt").write_text("hello\n")
    _services(project, image, f"""\
        api:
          build: ./api
          port: {port}
          health: {{http: /healthz}}
        """)
    project.up()
    code, body = project.get(f"http://127.0.0.1:{port}/whoami")
    assert code == 200 and body["greeting"] == "built"
    result = project.devenv("exec", "api", "--", "python3", "-c",
                            "print(open('/app/greeting.txt').read())")
    assert "hello" in result.stdout, result.stderr


def test_docker_up_runtime_flag_runs_the_same_file_locally_or_in_containers(
        project: Project, image: str, api: Any) -> None:
    port = free_ports(1)[0]
    (project.root / "serve.py").write_text(docker_env.SERVE)  # (the image has it in /app)
    project.services(f"""\
        api:
          image: "{image}"
          command: "python3 serve.py"
          port: {port}
          health: {{http: /healthz}}
        """)
    project.up()  # runtime local: the command, as a process
    assert not containers(api, project.root)
    assert project.get(f"http://127.0.0.1:{port}/whoami")[1]["pid"] != 1
    project.devenv("stop", check=True)
    project.up("--runtime", "docker")
    # the old container drained and removed
    assert wait_for(lambda: len(containers(api, project.root, "api")) == 1, timeout=20)
    assert project.get(f"http://127.0.0.1:{port}/whoami")[1]["pid"] != os.getpid()


def test_docker_missing_image_is_a_clear_failure(project: Project, docker_engine: Any,
                                                 api: Any) -> None:
    port = free_ports(1)[0]
    _services(project, "unused", f"""\
        api: {{image: "devenv-no-such-image:1", port: {port},
               health: {{http: /healthz, start_period: 3s}}}}
        """)
    result = project.devenv("up", timeout=120)
    assert result.returncode == 1
    said = result.stdout + result.stderr  # (the up's summary says why)
    assert "image 'devenv-no-such-image:1' is not on this machine and pulling it failed" \
        in said, said



def test_docker_build_context_change_rebuilds_and_replaces(project: Project, image: str,
                                                           api: Any) -> None:
    port = free_ports(1)[0]
    (project.root / "api").mkdir()
    (project.root / "api" / "Dockerfile").write_text(
        f"FROM {image}\nCOPY greeting.txt /app/\n")
    (project.root / "api" / "greeting.txt").write_text("first\n")
    _services(project, image, f"""\
        api:
          build: ./api
          command: ["/bin/sh", "-c",
                    "read G < /app/greeting.txt; GREETING=$$G exec python3 serve.py"]
          port: {port}
          health: {{http: /healthz}}
        """)
    project.up()
    assert project.get(f"http://127.0.0.1:{port}/whoami")[1]["greeting"] == "first"
    (project.root / "api" / "greeting.txt").write_text("second\n")
    assert wait_for(lambda: project.get(f"http://127.0.0.1:{port}/whoami")[1]["greeting"]
                    == "second", timeout=30)
    # the old container drained and removed
    assert wait_for(lambda: len(containers(api, project.root, "api")) == 1, timeout=20)


@pytest.mark.parametrize("action", ["restart", "replace"])
def test_docker_hot_reload_copies_changed_files_into_new_containers(
        project: Project, image: str, api: Any, action: str) -> None:
    port = free_ports(1)[0]
    app = project.root / "app"
    app.mkdir()
    source = (docker_env.FIXTURES / "svc.py").read_text()
    (app / "svc.py").write_text(source)  # (the image holds the same file in /app)
    _services(project, image, f"""\
        api:
          image: "IMAGE"
          path: app
          port: {port}
          health: {{http: /healthz}}
          watch: {{action: {action}}}
        """)
    project.up()
    first = containers(api, project.root, "api")
    assert project.get(f"http://127.0.0.1:{port}/whoami")[1]["service"] == "api"
    (app / "svc.py").write_text(source.replace(
        'NAME = os.environ.get("DEVENV_SERVICE", "svc")', 'NAME = "edited"'))
    assert wait_for(lambda: project.get(f"http://127.0.0.1:{port}/whoami")[1]["service"]
                    == "edited", timeout=30)
    assert wait_for(lambda: len(now := containers(api, project.root, "api")) == 1
                    and now[0]["Id"] != first[0]["Id"], timeout=20)
    # (counted once the reload is over: the old container's task ended after its removal)
    assert wait_for(lambda: project.service("api")["reloads"] == 1, timeout=10)


def test_docker_status_resources_from_container_stats(project: Project, image: str,
                                                      api: Any) -> None:
    port = free_ports(1)[0]
    _services(project, image, f"""\
        busy:
          image: "IMAGE"
          command: ["/bin/sh", "-c",
                    "python3 -c 'while True: pass' & exec python3 /app/serve.py"]
          port: {port}
          health: {{http: /healthz}}
        """)
    project.up()
    svc = project.status("--resources")["services"][0]
    assert svc["rss_bytes"] > 5_000_000, svc  # two Python processes
    assert svc["cpu_percent"] > 20, svc  # a busy loop: about one core
    text = project.devenv("status", "--resources", check=True).stdout
    assert "MiB" in text and "busy" in text
