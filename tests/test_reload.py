"""Hot reload with real files and processes: edits are served, breakage never takes the
running instance away, bursts coalesce, ignored paths do nothing."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from conftest import FIXTURES, Project, free_ports, wait_for


def make(project: Project, services: dict[str, str]) -> dict[str, int]:
    """services: name -> extra YAML lines for that service (one per line)."""
    ports = dict(zip(services, free_ports(len(services)), strict=True))
    lines = []
    for name, extra in services.items():
        folder = project.root / name
        folder.mkdir(exist_ok=True)
        shutil.copy(FIXTURES / "versioned.py", folder / "app.py")
        lines += [f"{name}:", "  command: python app.py", f"  path: {name}",
                  f"  port: {ports[name]}"]
        lines += [f"  {line}" for line in extra.splitlines() if line.strip()]
    project.services("\n".join(lines) + "\n")
    return ports


def answer(project: Project, service: str) -> str:
    code, body = project.ingress("/", f"{service}.localhost")
    assert code == 200, body
    return str(body)


def edit_version(project: Project, service: str, version: str) -> None:
    app = project.root / service / "app.py"
    text = app.read_text()
    start = text.index('VERSION = "') + len('VERSION = "')
    app.write_text(text[:start] + version + text[text.index('"', start):])


def last_reload(project: Project, service: str) -> dict:
    return project.service(service)["last_reload"] or {}


def reloaded(project: Project, service: str, count: int) -> dict:
    """The service's status once it has done `count` reloads (or more: the caller checks)."""
    svc = wait_for(lambda: (s := project.service(service))["reloads"] >= count and s,
                   timeout=10)
    assert svc, project.service(service)
    return dict(svc)


def test_an_edit_is_served_through_the_ingress_and_timed(project: Project) -> None:
    make(project, {"api": "replicas: 2"})
    project.up()
    assert answer(project, "api").startswith("v1|")
    edit_version(project, "api", "v2")
    assert wait_for(lambda: project.service("api")["reloads"] == 1, timeout=10)
    assert all(answer(project, "api").startswith("v2|") for _ in range(6))  # both replicas
    svc = project.service("api")
    assert svc["reloads"] == 1 and svc["restarts"] == 0
    reload = svc["last_reload"]
    assert reload["ok"] and reload["action"] == "replace" and reload["files"] == ["api/app.py"]
    assert {"detect", "started", "healthy", "switched", "total"} <= set(reload["phases"])
    assert "reloaded in" in project.devenv("status", check=True).stdout


def test_a_breaking_edit_keeps_the_old_instance_serving(project: Project) -> None:
    make(project, {"api": ""})
    project.up()
    failures: list[str] = []
    answers: list[str] = []
    done = threading.Event()

    def hammer() -> None:
        while not done.is_set():
            try:
                answers.append(answer(project, "api"))
            except (AssertionError, OSError) as exc:
                failures.append(repr(exc))

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        app = project.root / "api/app.py"
        good = app.read_text()
        app.write_text(good + "\ndef broken(:\n")
        assert wait_for(lambda: last_reload(project, "api").get("ok") is False, timeout=10)
        # the old one still serves: the next 10 answers after the failure all come from it
        seen = len(answers)
        assert wait_for(lambda: len(answers) >= seen + 10, timeout=10), failures
        assert all(a.startswith("v1|") for a in answers[seen:])
        assert answer(project, "api").startswith("v1|")
        reload = last_reload(project, "api")
        assert "previous instance keeps serving" in reload["error"]
        assert any("SyntaxError" in line for line in reload["logs"])
        logs = project.devenv("logs", "api", check=True).stdout
        assert "reload failed" in logs and "SyntaxError" in logs
        assert "last reload failed" in project.devenv("status", check=True).stdout
        app.write_text(good.replace('VERSION = "v1"', 'VERSION = "v3"'))
        assert wait_for(lambda: answer(project, "api").startswith("v3|"), timeout=10)
    finally:
        done.set()
        thread.join()
    assert failures == [] and len(answers) > 20
    assert project.service("api")["restarts"] == 0


def test_a_burst_of_writes_gives_one_reload(project: Project) -> None:
    make(project, {"api": ""})
    project.up()
    for i in range(12):
        (project.root / f"api/module_{i}.py").write_text(f"X = {i}\n")
    svc = reloaded(project, "api", 1)
    assert svc["reloads"] == 1 and svc["last_reload"]["changed"] == 12
    # and nothing of the burst comes later: a reload for it would come before (or with) the
    # one for a later edit, which is the second reload and has that edit alone
    (project.root / "api/after_the_burst.py").write_text("Y = 1\n")
    svc = reloaded(project, "api", 2)
    assert svc["reloads"] == 2 and svc["last_reload"]["files"] == ["api/after_the_burst.py"]


def test_ignored_paths_trigger_nothing(project: Project) -> None:
    make(project, {"api": "watch: {ignore: ['docs/']}"})
    (project.root / ".gitignore").write_text("*.log\n")
    (project.root / "api/.gitignore").write_text("build/\n")
    project.up()
    api = project.root / "api"
    for rel in ("server.log", "build/out.js", "__pycache__/app.cpython-311.pyc",
                ".app.py.swp", "app.py~", "node_modules/x/index.js", ".git/HEAD",
                "docs/guide.md"):
        (api / rel).parent.mkdir(parents=True, exist_ok=True)
        (api / rel).write_text("x")
    (project.root / "notes.txt").write_text("outside every service's folder")
    # A reload for any of these would come before (or with) the one for a later edit: the
    # first reload is that edit's, with that file alone.
    edit_version(project, "api", "v2")
    svc = reloaded(project, "api", 1)
    assert svc["reloads"] == 1 and svc["last_reload"]["files"] == ["api/app.py"], svc
    assert svc["last_reload"]["changed"] == 1
    assert answer(project, "api").startswith("v2|")


def test_no_watch_and_watch_false_turn_reloading_off(project: Project) -> None:
    make(project, {"api": "", "web": "watch: false"})
    project.up("--no-watch")
    assert project.status()["watching"] is False
    pid = answer(project, "api").split("|")[3]
    edit_version(project, "api", "v2")  # not watched: neither served now nor later
    project.up()  # watching from here on (api only)
    assert project.status()["watching"] is True
    again = answer(project, "api")
    assert again.startswith("v1|") and again.split("|")[3] == pid  # not restarted by `up`
    # A reload for the edit made while not watching would come before (or with) the one for a
    # later edit: the first reload is that edit's alone, and the new instance serves the
    # source as it is now.
    edit_version(project, "web", "v2")  # watch: false
    (project.root / "api/extra.py").write_text("X = 1\n")
    svc = reloaded(project, "api", 1)
    assert svc["reloads"] == 1 and svc["last_reload"]["files"] == ["api/extra.py"], svc
    assert answer(project, "api").startswith("v2|")
    # A reload of web for its edit would have been queued for the engine's lock before the
    # next reload of api: once that is done, web's would be done too.
    edit_version(project, "api", "v3")
    assert reloaded(project, "api", 2)["reloads"] == 2
    assert answer(project, "api").startswith("v3|")
    assert answer(project, "web").startswith("v1|")
    assert project.service("web")["reloads"] == 0


def test_rebuild_restart_and_a_shared_library(project: Project) -> None:
    lib = project.root / "lib"
    lib.mkdir()
    (lib / "shared.txt").write_text("lib-1")
    make(project, {
        "builder": "watch: {action: rebuild, build: python build.py, "
                   "ignore: [builder/built.txt]}",
        "plain": "watch: {action: restart, paths: [plain, lib]}",
        "other": "watch: {paths: [other, lib]}",
    })
    (project.root / "builder/build.py").write_text(
        "import shutil, sys\n"
        "from pathlib import Path\n"
        "if not Path('src.txt').exists():\n"
        "    sys.exit('build error: src.txt is missing')\n"
        "shutil.copy('src.txt', 'built.txt')\n")
    (project.root / "builder/src.txt").write_text("build-1")
    (project.root / "builder/built.txt").write_text("build-1")
    project.up()
    assert answer(project, "builder").split("|")[1] == "build-1"
    pid = answer(project, "builder").split("|")[3]
    (project.root / "builder/src.txt").write_text("build-2")
    # the old instance reads built.txt too: wait for the reload, not for the new text
    assert wait_for(lambda: project.service("builder")["reloads"] == 1, timeout=10)
    assert answer(project, "builder").split("|")[1] == "build-2"
    assert answer(project, "builder").split("|")[3] != pid
    assert "build" in last_reload(project, "builder")["phases"]

    pids = {s: answer(project, s).split("|")[3] for s in ("plain", "other")}
    (lib / "shared.txt").write_text("lib-2")
    assert wait_for(lambda: all(project.service(s)["reloads"] == 1 for s in pids), timeout=10)
    for service, pid in pids.items():  # both services that use the library were reloaded
        assert answer(project, service).split("|")[3] != pid
    assert last_reload(project, "plain")["action"] == "restart"
    assert last_reload(project, "other")["action"] == "replace"
    assert project.service("builder")["reloads"] == 1  # the library is not builder's

    Path(project.root / "builder/src.txt").unlink()  # a build that fails keeps serving
    assert wait_for(lambda: last_reload(project, "builder").get("ok") is False, timeout=10)
    failed = last_reload(project, "builder")
    assert "build failed" in failed["error"]
    assert any("src.txt is missing" in line for line in failed["logs"])
    assert answer(project, "builder").split("|")[1] == "build-2"


def test_editing_devenv_yaml_is_left_to_up(project: Project) -> None:
    (port,) = free_ports(1)
    shutil.copy(FIXTURES / "versioned.py", project.root / "app.py")
    project.services(f"""\
          root-app: {{command: python app.py, port: {port}}}
        """)
    project.up()
    (project.root / "devenv.yaml").write_text((project.root / "devenv.yaml").read_text()
                                              + "# a comment\n")
    # a reload for devenv.yaml would come before (or with) the one for the source edit
    edit_version(project, ".", "v2")
    svc = reloaded(project, "root-app", 1)
    assert svc["reloads"] == 1 and svc["last_reload"]["files"] == ["app.py"], svc
