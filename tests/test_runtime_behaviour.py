"""What must behave the same on every runtime, run on each (`-k docker`: the docker ones;
they skip, saying why, when no Docker Engine can run here; `-k kube`: the kubernetes ones).
The same devenv.yaml runs as processes (`up --runtime local`) or as containers of the test
image (`up --runtime docker`): the image holds the same svc.py the project folder does. On
kubernetes (`runtime: kubernetes` on `cluster: {provider: existing}`) it runs against the
FAKE API server (tests/fake_kube_api.py, its controller on): its pods do not run the
service's command but a tiny HTTP server answering with the pod's name, so what it proves is
devenv's side (the stable address, the ingress, scale, a restart, stop); what only the
program could show skips there, saying so."""

from __future__ import annotations

import os
import signal
import textwrap
from dataclasses import dataclass
from typing import Any

import psutil
import pytest
from test_kube_registry import existing  # noqa: F401  (the fixture: the fake as `office`)

import docker_env
from conftest import Project, free_ports, procs_in, wait_for
from devenv.kube.render import NAME_LABEL, project_selector
from docker_env import _checked, api, containers, docker_engine, image  # noqa: F401
from fake_kube_api import FakeKubeApi, _matches

KUBE_NS = "kbeh"  # the project's name and its namespace
NOT_RUN_ON_THE_FAKE = "the fake API server's pods do not run the service's command"


@dataclass
class Runtime:
    """One runtime as the tests drive it: its name, how to see and kill its instances."""

    name: str
    project: Project
    client: Any = None  # docker-py's, on the docker runtime
    fake: FakeKubeApi | None = None  # the fake API server, on the kubernetes runtime

    def up(self, *args: str) -> None:
        if self.fake is not None:  # (the runtime is the devenv.yaml's)
            self.project.up(*args)
        else:
            self.project.up("--runtime", self.name, *args)

    def only_where_the_program_runs(self) -> None:
        if self.fake is not None:
            pytest.skip(NOT_RUN_ON_THE_FAKE)

    def instances(self, service: str) -> list[Any]:
        if self.fake is not None:
            return self.fake.pods(service)
        if self.client is not None:
            return containers(self.client, self.project.root, service)
        return [p for p in _served(self.project) if _env(p).get("DEVENV_SERVICE") == service]

    def kill_one(self, service: str) -> None:
        victim = self.instances(service)[0]
        if self.fake is not None:  # its container killed: the kubelet restarts it
            self.fake.kill(victim)
        elif self.client is not None:
            self.client.kill(victim["Id"])
        else:
            os.killpg(os.getpgid(victim.pid), signal.SIGKILL)  # (its process group)

    def answered(self, body: dict[str, Any]) -> tuple[str, str]:
        """(service, replica) of the instance that answered /whoami (on the fake: its pod)."""
        if self.fake is None:
            return body["service"], body["replica"]
        pod = next(v for k, v in self.fake.objects.items()
                   if "/pods/" in k and v["metadata"]["name"] == body["pod"])
        return pod["metadata"]["labels"][NAME_LABEL], body["pod"]

    def replicas(self, service: str, n: int) -> set[str]:
        """What `answered` names the n replicas of a service."""
        if self.fake is None:
            return {str(i) for i in range(1, n + 1)}
        return set(self.fake.pods(service))

    def leftovers(self) -> list[Any]:
        if self.fake is not None:  # what devenv made, by the project's labels, but the
            # Namespace: it stays, by design (on a cluster that exists it may hold what others
            # put there; tests/test_kube_runtime_up.py asserts it stays)
            return [k for k, v in self.fake.objects.items()
                    if _matches(v, project_selector(KUBE_NS)) and v.get("kind") != "Namespace"]
        if self.client is not None:
            label = f"devenv.project={self.project.root}"
            return (self.client.containers(all=True, filters={"label": label})
                    + self.client.networks(filters={"label": label}))
        return _served(self.project)


def _served(project: Project) -> list[psutil.Process]:
    """The project's `python3 serve.py` processes on this machine."""
    found = []
    for proc in procs_in(project.root):
        try:
            if proc.name().startswith("python") and "serve.py" in proc.cmdline():
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _env(proc: psutil.Process) -> dict[str, str]:
    try:
        return proc.environ()
    except psutil.Error:
        return {}


@pytest.fixture(params=["local", "docker", "kubernetes"], ids=["local", "docker", "kube"])
def runtime(request: pytest.FixtureRequest, project: Project) -> Runtime:
    if request.param == "local":
        return Runtime("local", project)
    if request.param == "kubernetes":
        return Runtime("kubernetes", project, fake=request.getfixturevalue("existing"))
    request.getfixturevalue("image")  # (skips, saying why, with no Docker Engine)
    return Runtime("docker", project, request.getfixturevalue("api"))


def _services(runtime: Runtime, body: str) -> None:
    project = runtime.project
    (project.root / "svc.py").write_text((docker_env.FIXTURES / "svc.py").read_text())
    (project.root / "serve.py").write_text(docker_env.SERVE)
    image_tag = docker_env.test_image(runtime.client) if runtime.client else "example/svc:1"
    head = (f"name: {KUBE_NS}\nruntime: kubernetes\ncluster: {{provider: existing, "
            f"context: office, namespace: {KUBE_NS}}}\n") if runtime.fake is not None else ""
    project.write(f"version: 1\n{head}ingress: {{port: {project.ingress_port}}}\nservices:\n"
                  + textwrap.indent(textwrap.dedent(body).replace("IMAGE", image_tag), "  "))


def test_healthy_through_the_ingress_with_replicas_behind_the_stable_address(
        runtime: Runtime) -> None:
    port = free_ports(1)[0]
    _services(runtime, f"""\
        api:
          image: "IMAGE"
          command: "python3 serve.py"
          port: {port}
          replicas: 2
          health: {{http: /healthz}}
        """)
    runtime.up()
    project = runtime.project
    assert project.service("api")["state"] == "healthy"
    assert len(runtime.instances("api")) == 2
    code, body = project.ingress("/whoami", host="api.localhost")
    assert code == 200 and runtime.answered(body)[0] == "api", body
    seen = {runtime.answered(project.get(f"http://127.0.0.1:{port}/whoami")[1])[1]
            for _ in range(20)}
    assert seen == runtime.replicas("api", 2)


def test_discovery_and_logs(runtime: Runtime) -> None:
    runtime.only_where_the_program_runs()  # (the env it sees, the lines it writes)
    api_port, web_port = free_ports(2)
    _services(runtime, f"""\
        api:
          image: "IMAGE"
          command: "python3 serve.py"
          port: {api_port}
          health: {{http: /healthz}}
        web:
          image: "IMAGE"
          command: "echo web says hello; exec python3 serve.py"
          port: {web_port}
          health: {{http: /healthz}}
          depends_on: [api]
        """)
    runtime.up()
    project = runtime.project
    env = project.get(f"http://127.0.0.1:{web_port}/env")[1]
    assert env["API_URL"].endswith(f":{api_port}")  # (127.0.0.1 locally, the alias in docker)
    code, body = project.get(f"http://127.0.0.1:{web_port}/call/API_URL")
    assert code == 200 and body["service"] == "api"
    assert wait_for(lambda: "web says hello" in project.devenv("logs", "web").stdout,
                    timeout=10)


def test_scale_and_restart_after_a_kill(runtime: Runtime) -> None:
    port = free_ports(1)[0]
    _services(runtime, f"""\
        api:
          image: "IMAGE"
          command: "python3 serve.py"
          port: {port}
          health: {{http: /healthz, interval: 1s}}
        """)
    runtime.up()
    project = runtime.project
    project.devenv("scale", "api=2", check=True)
    assert wait_for(lambda: len(runtime.instances("api")) == 2, timeout=20)
    project.devenv("scale", "api=1", check=True)
    assert wait_for(lambda: len(runtime.instances("api")) == 1, timeout=20)
    runtime.kill_one("api")
    assert wait_for(lambda: (s := project.service("api"))["restarts"] >= 1
                    and s["state"] == "healthy", timeout=30), project.service("api")
    assert project.get(f"http://127.0.0.1:{port}/whoami")[0] == 200
    assert len(runtime.instances("api")) == 1


def test_stop_leaves_nothing(runtime: Runtime) -> None:
    port = free_ports(1)[0]
    _services(runtime, f"""\
        api:
          image: "IMAGE"
          command: "python3 serve.py"
          port: {port}
          replicas: 2
          health: {{http: /healthz}}
        """)
    runtime.up()
    assert runtime.leftovers()
    runtime.project.devenv("stop", check=True)
    assert wait_for(lambda: not runtime.leftovers(), timeout=10), runtime.leftovers()


def test_stop_gives_the_program_behind_a_shell_line_its_grace(runtime: Runtime) -> None:
    # `python3 serve.py` runs through /bin/sh; on stop the shell must not take the program
    # down with it before it finished (flushed, closed its connections)
    runtime.only_where_the_program_runs()  # (what it writes when TERM'd)
    port = free_ports(1)[0]
    _services(runtime, f"""\
        api:
          image: "IMAGE"
          command: "python3 serve.py"
          port: {port}
          env: {{GRACE: "0.5"}}
          stop_timeout: 5s
          health: {{http: /healthz}}
        """)
    runtime.up()
    runtime.project.devenv("stop", check=True)
    assert "finished after TERM" in runtime.project.devenv("logs", "api").stdout
    assert not runtime.leftovers()
