"""The project's operation lock (core/oplock.py): while `devenv migrate --confirm` holds it,
the commands that change the environment, and another migrate, refuse saying who holds it;
read-only ones work; a holder killed with kill -9 leaves no stale lock."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import ENV, Project, free_ports, wait_for
from devenv.core import oplock
from devenv.core.errors import DevenvError

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


def test_the_lock_is_owner_only_and_names_its_holder(tmp_path: Path) -> None:
    root = tmp_path
    oplock.free(root)  # never held: nothing refuses
    with oplock.hold(root, "migrate"):
        mode = stat.S_IMODE(oplock.path(root).stat().st_mode)
        assert mode == 0o600
        with pytest.raises(oplock.Busy) as busy, oplock.shared(root):
            pass
        assert re.fullmatch(rf"a migrate is in progress \(pid {os.getpid()}, started "
                            r"\d\d:\d\d:\d\d\); wait for it to finish", busy.value.message)
        with pytest.raises(oplock.Busy), oplock.hold(root, "migrate"):  # even in this process
            pass
    oplock.free(root)  # given back
    with oplock.shared(root), oplock.shared(root):  # commands never wait on each other
        with pytest.raises(oplock.Running) as running:
            oplock.free(root)
        assert running.value.message.startswith("another devenv command is running: ")
    with oplock.hold(root, "migrate"):
        pass


def test_a_linked_state_folder_is_refused_and_left_untouched(tmp_path: Path) -> None:
    """devenv as root in a hostile user's project: a link in place of .devenv/run must not
    make it chmod the link's target or write a lock there."""
    root, elsewhere = tmp_path / "p", tmp_path / "elsewhere"
    (root / ".devenv").mkdir(parents=True)
    elsewhere.mkdir(mode=0o755)
    os.chmod(elsewhere, 0o755)
    (root / ".devenv" / "run").symlink_to(elsewhere)
    for take in (lambda: oplock.shared(root).__enter__(), lambda: oplock.free(root)):
        with pytest.raises(DevenvError) as refused:
            take()
        assert f"refusing to use {root}/.devenv/run: it is a symbolic link" in \
            refused.value.message
        assert "remove" in (refused.value.hint or "")
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o755 and not list(elsewhere.iterdir())
    (root / ".devenv" / "run").unlink()
    (root / ".devenv").rename(root / "real")
    (root / ".devenv").symlink_to(root / "real")  # .devenv itself a link
    with pytest.raises(DevenvError, match=r"\.devenv: it is a symbolic link"):
        oplock.free(root)


def test_a_fifo_or_a_link_as_the_lock_file_is_refused_at_once(tmp_path: Path) -> None:
    run = tmp_path / ".devenv" / "run"
    run.mkdir(parents=True)
    os.mkfifo(run / oplock.NAME, 0o600)
    outcome: list[BaseException] = []

    def take() -> None:
        try:
            with oplock.shared(tmp_path):
                pass
        except BaseException as exc:
            outcome.append(exc)

    taker = threading.Thread(target=take, daemon=True)
    taker.start()
    taker.join(5)
    if taker.is_alive():  # blocked in open(): let it go before failing
        os.close(os.open(run / oplock.NAME, os.O_RDWR | os.O_NONBLOCK))
    assert outcome and isinstance(outcome[0], DevenvError), outcome
    assert outcome[0].message.startswith(f"refusing to use {run / oplock.NAME}: it is not a "
                                         "regular file")
    (run / oplock.NAME).unlink()
    (run / oplock.NAME).symlink_to(tmp_path / "target")
    with pytest.raises(DevenvError, match="it is not a regular file"):
        oplock.free(tmp_path)
    assert not (tmp_path / "target").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make another user's folder")
def test_another_users_state_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".devenv" / "run").mkdir(parents=True)
    os.chown(tmp_path / ".devenv" / "run", 65534, 65534)
    with pytest.raises(DevenvError, match=r"run: it belongs to uid 65534, not to devenv's "
                       r"user \(uid 0\)"):
        oplock.free(tmp_path)
    os.chown(tmp_path / ".devenv" / "run", 0, 0)
    (tmp_path / ".devenv" / "run" / oplock.NAME).touch()
    os.chown(tmp_path / ".devenv" / "run" / oplock.NAME, 65534, 65534)
    with pytest.raises(DevenvError, match="lock: it belongs to uid 65534"):
        oplock.free(tmp_path)


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
    for args in (("status",), ("audit",), ("config", "show"), ("migrate", "--dry-run")):
        done = project.devenv(*args)
        assert "in progress" not in done.stderr, (args, done.stderr)
    audit = project.devenv("audit", "--json", check=True).stdout
    assert '"command": "up"' in audit and "a migrate is in progress" in audit  # recorded
    # killed (kill -9): the kernel gives the lock back, nothing stale is left
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    done = project.devenv("config", "set", "services.api.replicas", "2")
    assert done.returncode == 0, done.stderr
    oplock.free(project.root)


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


def _holders(root: Path) -> tuple[bool, list[str]]:
    fd = os.open(oplock.path(root), os.O_RDONLY)
    try:
        return oplock.holders(fd)
    finally:
        os.close(fd)


def test_a_command_holds_the_project_for_its_whole_run_and_its_engine_does_not(
        project: Project) -> None:
    """`up --attach` runs on: a migrate refuses, naming it; once it ends, the engine it
    started (which inherits nothing of it) does not block a migrate."""
    project.services(f"api: {{command: [python, svc.py], port: {free_ports(1)[0]}}}")
    up = project.popen("up", "--attach")
    assert wait_for(lambda: oplock.path(project.root).exists()
                    and any("devenv up --attach" in h for h in _holders(project.root)[1]),
                    timeout=30)
    assert wait_for(lambda: any(s["state"] == "healthy" for s in project.status()["services"]),
                    timeout=30)
    done = project.devenv("migrate", "--confirm")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"another devenv command is running: devenv up --attach (pid {up.pid})" in \
        " ".join(done.stderr.split()), done.stderr
    assert "version: 1" in (project.root / "devenv.yaml").read_text()  # not migrated
    up.send_signal(signal.SIGINT)  # (stops the environment, then ends)
    assert up.wait(30) == 0
    project.up()  # the engine started by this `up` outlives it, holding nothing
    assert _holders(project.root) == (False, [])
    assert project.devenv("migrate", "--dry-run").returncode == 0
    done = project.devenv("migrate", "--confirm", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "version: 2" in (project.root / "devenv.yaml").read_text()


def test_the_engine_holds_the_project_while_it_migrates_even_when_the_cli_is_gone(
        project: Project) -> None:
    api = free_ports(1)[0]
    (project.root / "slow.py").write_text(  # once `slow` is there, 8 s to start: the
        "import os, runpy, time\n"  # migration's `up` waits for it
        "time.sleep(8 if os.path.exists('slow') else 0)\n"
        "runpy.run_path('svc.py', run_name='__main__')\n")
    project.write(f"""\
        version: 1
        ingress: {{enabled: false}}
        services:
          api:
            command: [python, slow.py]
            port: {api}
            health: {{http: /healthz}}
        """)
    project.up()
    (project.root / "slow").touch()
    engine = project.status()["engine"]["pid"]
    migrate = project.popen("migrate", "--confirm")
    assert wait_for(lambda: _holders(project.root)[0], timeout=30)  # taken exclusively
    assert json.loads(oplock.path(project.root).read_text())["pid"] == engine
    migrate.send_signal(signal.SIGINT)  # Ctrl-C: the CLI goes, the migration goes on
    _, stderr = migrate.communicate(timeout=30)
    assert migrate.returncode == 130, stderr
    assert "the engine goes on migrating" in stderr and "Traceback" not in stderr, stderr
    done = project.devenv("config", "set", "services.api.replicas", "2")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"a migrate is in progress (pid {engine}, started " in done.stderr, done.stderr
    plan = project.devenv("migrate", "--dry-run")  # read-only: not refused, and not misread
    assert plan.returncode == 1 and "a migrate is in progress" in plan.stdout, plan.stdout
    assert wait_for(lambda: _holders(project.root) == (False, []), timeout=60)
    assert "version: 2" in (project.root / "devenv.yaml").read_text()
    assert project.service("api")["state"] == "healthy"
