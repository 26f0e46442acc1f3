"""The project's operation lock (core/oplock.py): while `devenv migrate --confirm` holds it,
the commands that change the environment, and another migrate, refuse saying who holds it;
read-only ones work; a holder killed with kill -9 leaves no stale lock."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys

import pytest

from conftest import ENV, Project, free_ports
from devenv.core import oplock

HOLDER = """\
import sys, time
from pathlib import Path
from devenv.core import oplock
with oplock.hold(Path(sys.argv[1]), "migrate"):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(project: Project) -> subprocess.Popen[str]:
    """Another process holding the project as a running `migrate --confirm` does."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(project.root)], env=ENV,
                            stdout=subprocess.PIPE, text=True)
    project.started.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_the_lock_is_owner_only_and_names_its_holder(tmp_path: os.PathLike[str]) -> None:
    root = tmp_path
    oplock.check(root)  # never held: no file, no refusal
    with oplock.hold(root, "migrate"):
        mode = stat.S_IMODE(oplock.path(root).stat().st_mode)
        assert mode == 0o600
        with pytest.raises(oplock.Busy) as busy:
            oplock.check(root)
        assert re.fullmatch(rf"a migrate is in progress \(pid {os.getpid()}, started "
                            r"\d\d:\d\d:\d\d\); wait for it to finish", busy.value.message)
        with pytest.raises(oplock.Busy), oplock.hold(root, "migrate"):  # even in this process
            pass
    oplock.check(root)  # given back
    with oplock.hold(root, "migrate"):
        pass


def test_state_changing_commands_refuse_while_a_migrate_holds_the_project(
        project: Project) -> None:
    project.services(f"api: {{command: [python, svc.py], port: {free_ports(1)[0]}}}")
    holder = _holder(project)
    said = f"a migrate is in progress (pid {holder.pid}, started "
    for args in (("up",), ("stop",), ("scale", "api=2"), ("restart",),
                 ("data", "reset"), ("snapshot", "save", "s1"),
                 ("config", "set", "services.api.replicas", "2"),
                 ("migrate", "--confirm")):
        done = project.devenv(*args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert said in done.stderr and "wait for it to finish" in done.stderr, \
            (args, done.stderr)
    assert not (project.root / ".devenv" / "run" / "engine.sock").exists()  # none started
    local = project.root / ".devenv" / "local.yaml"
    assert not local.exists() or "replicas" not in local.read_text()
    # read-only commands still answer
    for args in (("status",), ("audit",), ("config", "show")):
        done = project.devenv(*args)
        assert "in progress" not in done.stderr, (args, done.stderr)
    audit = project.devenv("audit", "--json", check=True).stdout
    assert '"command": "up"' in audit and "a migrate is in progress" in audit  # recorded
    # killed (kill -9): the kernel gives the lock back, nothing stale is left
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    done = project.devenv("config", "set", "services.api.replicas", "2")
    assert done.returncode == 0, done.stderr
    oplock.check(project.root)


def test_the_engine_refuses_changes_while_it_migrates() -> None:
    """A migrate whose CLI was killed still runs in the engine: the engine itself refuses
    what would change the environment under it, and answers the rest."""
    import asyncio
    from types import SimpleNamespace

    from aiohttp.test_utils import TestClient, TestServer

    from devenv.engine.api import make_app
    from devenv.wire import EnvironmentStatus

    async def main() -> None:
        async def up(*args: object, **kwargs: object) -> None:
            raise AssertionError("up ran while migrating")

        async def status(resources: bool) -> EnvironmentStatus:
            return EnvironmentStatus(project="demo", running=True, ingress=None, services=[])

        ctx = SimpleNamespace(logs=None, events=None)
        env = SimpleNamespace(migrating=True, up=up, status=status, traces=None,
                              engine=SimpleNamespace(ctx=ctx, runners={}))
        async with TestClient(TestServer(make_app(env))) as client:  # type: ignore[arg-type]
            for path in ("/v1/up", "/v1/stop", "/v1/scale", "/v1/data/reset"):
                answer = await client.post(path, json={})
                body = await answer.json()
                assert answer.status == 400 and "a migrate is in progress" in body["error"]
            answer = await client.get("/v1/status")  # reading is answered
            assert answer.status == 200 and (await answer.json())["project"] == "demo"
            env.migrating = False
            answer = await client.post("/v1/scale", json={"counts": "x"})
            assert "a migrate is in progress" not in (await answer.json())["error"]

    asyncio.run(main())
