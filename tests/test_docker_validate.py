# ruff: noqa: F811  (the docker fixtures are imported from docker_env, then requested)
"""`devenv validate` on the docker runtime: the copy's data volumes go with the copy; the
running environment's stay, with their data (`pytest -k docker`)."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
import redis

from conftest import Project, free_ports
from devenv.data.container import PROJECT_LABEL, volume_name
from docker_env import _checked, api, data_image, docker_engine  # noqa: F401


def _copies(api: Any) -> set[str]:
    """Volumes of `validate` copies (labelled with the copy's folder) that exist now."""
    found = api.volumes(filters={"label": PROJECT_LABEL}).get("Volumes") or []
    return {v["Name"] for v in found
            if "/devenv-validate-" in (v.get("Labels") or {}).get(PROJECT_LABEL, "")}


@pytest.mark.timeout(240)
def test_docker_validate_removes_the_copys_volumes_and_keeps_the_environments(
        project: Project, data_image: str, api: Any) -> None:
    cache = free_ports(1)[0]
    project.write(textwrap.dedent(f"""\
        version: 1
        runtime: docker
        ingress: {{port: {project.ingress_port}}}
        services:
          cache:
            kind: redis
            image: "{data_image}"
            port: {cache}
        """))
    project.up()
    client = redis.Redis(port=cache, password="devpass", socket_timeout=5)
    client.set("kept", "yes")
    mine = volume_name(project.root, "cache")
    before = _copies(api)
    done = project.devenv("validate", "--all-services", "--ports",
                          ",".join(str(p) for p in free_ports(3)), timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _copies(api) <= before, sorted(_copies(api) - before)  # the copy's went
    assert api.inspect_volume(mine)["Name"] == mine  # the environment's stayed...
    assert client.get("kept") == b"yes"  # ...and it still serves its data
