"""`devenv exec` on `runtime: kubernetes` through the real `kubectl` on PATH (what it runs
when kubectl is there): kubectl's discovery, its GET of the pod and its websocket exec,
against the FAKE API server (tests/fake_kube_api.py), whose exec runs the command as a local
process. The pod is put there by the test (no `devenv up`: exec without an engine reads the
project's config)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import conftest
from conftest import Project, free_ports
from devenv.kube.render import selector
from fake_kube_api import FakeKubeApi

NS = "kctl"
WEBSOCKET_EXEC = (1, 31)  # kubectl's exec speaks websockets by default from 1.31


def _kubectl() -> str:
    """kubectl as devenv finds it, new enough for the fake's exec; else the test skips."""
    found = shutil.which("kubectl", path=conftest.ENV.get("PATH"))
    if found is None:
        pytest.skip("no kubectl on PATH (the API's exec stream is tested without it)")
    said = subprocess.run([found, "version", "--client", "-o", "json"], capture_output=True,
                          text=True, timeout=30)
    version = json.loads(said.stdout or "{}").get("clientVersion", {}).get("gitVersion", "")
    match = re.match(r"v(\d+)\.(\d+)", version)
    if match is None or (int(match[1]), int(match[2])) < WEBSOCKET_EXEC:
        pytest.skip(f"kubectl {version or '(version unknown)'} speaks SPDY for exec (websockets "
                    "from 1.31), which the fake API server does not serve")
    return found


@pytest.fixture
def office(project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
           ) -> Iterator[FakeKubeApi]:
    """The fake API server as the kubeconfig's context `office`, with one running pod of the
    project's `api` (another, not running, sorts first: exec skips it)."""
    _kubectl()
    fake = FakeKubeApi().start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "elsewhere",
        "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
        "users": [{"name": "fake", "user": {}}],
        "contexts": [{"name": "office", "context": {"cluster": "fake", "user": "fake"}},
                     {"name": "elsewhere", "context": {"cluster": "none", "user": "fake"}}]}))
    monkeypatch.setitem(conftest.ENV, "KUBECONFIG", str(kubeconfig))
    labels = selector("kctl-shop", "api")
    for pod, state in (("api-0aaaa", {"waiting": {"reason": "ContainerCreating"}}),
                       ("api-1bbbb", {"running": {"startedAt": "2026-01-01T00:00:00Z"}})):
        fake.add_pod(NS, pod, labels)
        fake.set_status(f"/api/v1/namespaces/{NS}/pods/{pod}", phase="Running",
                        containerStatuses=[{"name": "api", "ready": "running" in state,
                                            "restartCount": 0, "state": state}])
    (port,) = free_ports(1)
    project.write(f"""\
        version: 1
        name: kctl-shop
        runtime: kubernetes
        cluster: {{provider: existing, context: office, namespace: {NS}}}
        ingress: {{port: {project.ingress_port}}}
        services:
          api: {{image: example/api:1, port: {port}}}
        """)
    try:
        yield fake
    finally:
        fake.stop()


def test_kube_exec_runs_kubectl_exec_in_the_running_pod_with_its_exit_code(
        project: Project, office: FakeKubeApi) -> None:
    fake = office
    # kubectl's output, its stdin reaching the command, the command's exit code
    done = project.devenv("exec", "api", "--", sys.executable, "-c",
                          "import sys; print('in the pod:', input().upper()); sys.exit(3)",
                          input="hello\n", timeout=60)
    assert done.returncode == 3, done.stderr
    assert "in the pod: HELLO" in done.stdout, done.stderr
    done = project.devenv("exec", "api", "--", sys.executable, "-c", "print('fine')",
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "fine", done.stderr
    # it was kubectl (its discovery, its User-Agent) in the running pod, the context named
    execs = [(p, q) for m, p, q in fake.requests if p.endswith("/exec")]
    assert [p for p, _ in execs] == [f"/api/v1/namespaces/{NS}/pods/api-1bbbb/exec"] * 2
    assert all(q["container"] == "api" and q["stdin"] == "true" for _, q in execs), execs
    agents = fake.agents("/exec")
    assert len(agents) == 2 and all(a.startswith("kubectl/") for a in agents), agents
    assert {"/version", "/api", "/apis", "/api/v1"} <= {p for _, p, _ in fake.requests}
