"""`devenv init`: what it detects in varied layouts (fast, on files), and one polyglot project
(Node with no package.json, a stdlib API speaking RESP, a worker, a ledger API) scaffolded,
validated and brought up for real."""

from __future__ import annotations

import json
import shutil
import textwrap
import urllib.request
from pathlib import Path

import pytest

from conftest import FIXTURES, Project, free_ports, wait_for
from devenv.scaffold import detect, render
from devenv.scaffold.data import var_kind
from devenv.scaffold.source import PortUse, analyse, port_use

POLYGLOT = FIXTURES / "polyglot"


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


# ---- pure detection


def test_polyglot_layout_gives_four_services_and_their_data(tmp_path: Path) -> None:
    shutil.copytree(POLYGLOT, tmp_path / "p")
    scan = detect(tmp_path / "p")
    apps = {f.name: f for f in scan.services}
    assert sorted(apps) == ["api", "ledger", "web", "worker"]
    assert {d.name: d.kind for d in scan.data} == {"db": "postgres", "redis": "redis"}
    assert {n: set(f.depends_on) for n, f in apps.items()} == {
        "api": {"redis"}, "ledger": {"db"}, "worker": {"db", "redis"}, "web": set()}
    assert apps["web"].command == "node server.js" and apps["web"].path == "web"
    assert (apps["api"].port, apps["ledger"].port, apps["web"].port) == (8001, 8002, 3000)
    assert not apps["worker"].listens
    # the ledger reads LEDGER_PORT and LEDGER_DATABASE_URL: its command sets both
    assert apps["ledger"].command == ('LEDGER_DATABASE_URL="$DATABASE_URL" '
                                      'LEDGER_PORT="$PORT" python ledger.py')
    text = render("p", scan)
    assert "api.py reads REDIS_URL; devenv sets REDIS_URL" in text
    assert "requirements.txt lists psycopg" in text
    # every service, port, health check and dependency says why
    guesses = [ln for ln in text.splitlines() if ln.startswith("  ") and not ln.startswith(
        ("    command:", "    path:", "    depends_on:", "    kind:", "    #"))]
    assert len(guesses) == 6 + 5 + 3 + 4 and all("# why: " in ln for ln in guesses), text


@pytest.mark.parametrize(("code", "expected"), [
    ('port = int(os.environ.get("PORT", "8001"))', PortUse("PORT", 8001)),
    ('port = int(os.getenv("PORT") or 5000)', PortUse("PORT", 5000)),
    ('const port = process.env.PORT || 3000;', PortUse("PORT", 3000)),
    ('const port = process.env["PORT"] ?? 4000;', PortUse("PORT", 4000)),
    ('p = os.environ["API_PORT"]', PortUse("API_PORT", None)),
    ('p = os.environ["REDIS_PORT"]\napp.listen(3001)', PortUse(None, 3001)),
    ('uvicorn.run(app, host="0.0.0.0", port=8080)', PortUse(None, 8080)),
    ('HTTPServer(("", 9000), H).serve_forever()', PortUse(None, 9000)),
    ("print('hello')", None),
])
def test_the_port_a_program_uses(code: str, expected: PortUse | None) -> None:
    assert port_use(code, analyse("x.py", code).reads) == expected


@pytest.mark.parametrize(("var", "kind"), [
    ("REDIS_URL", "redis"), ("CACHE_REDIS_URL", "redis"), ("DATABASE_URL", "postgres"),
    ("LEDGER_DATABASE_URL", "postgres"), ("PG_DSN", "postgres"), ("POSTGRES_URL", "postgres"),
    ("REDIS_PORT", None), ("PORT", None), ("API_URL", None),
])
def test_which_data_a_variable_names(var: str, kind: str | None) -> None:
    assert var_kind(var) == kind


def test_several_services_in_one_folder_and_modules_that_are_not(tmp_path: Path) -> None:
    scan = detect(tree(tmp_path / "proj", {
        "app.py": "from flask import Flask\nimport helpers\napp = Flask(__name__)\n",
        "helpers.py": "def add(a, b):\n    return a + b\n",
        "consumer.py": "import time\nif __name__ == '__main__':\n    while True:\n"
                       "        time.sleep(1)\n",
        "migrate.py": "if __name__ == '__main__':\n    print('migrated')\n",
        "test_app.py": "import app\nwhile True: pass\n",
        "svc/main.py": "from fastapi import FastAPI\n\napi = FastAPI()\n",
    }))
    apps = {f.name: f for f in scan.services}
    assert sorted(apps) == ["app", "consumer", "svc"]
    assert apps["app"].command == "flask --app app:app run --port $PORT"
    assert apps["svc"].command == "uvicorn main:api --host 127.0.0.1 --port $PORT"
    assert apps["svc"].path == "svc" and not apps["consumer"].listens
    assert scan.data == []


def test_node_with_a_manifest_and_its_data_dependencies(tmp_path: Path) -> None:
    scan = detect(tree(tmp_path / "proj", {
        "front/package.json": json.dumps({"name": "@acme/front", "scripts": {"dev": "vite"}}),
        "back/package.json": json.dumps({"name": "back", "main": "src/index.js",
                                         "dependencies": {"knex": "3", "pg": "8"}}),
        "back/src/index.js": "const Redis = require('ioredis');\n"
                             "require('http').createServer(h).listen(process.env.PORT || 4000)",
        "jobs/index.js": "const {Worker} = require('bullmq');\nrequire('./server');\n"
                         "new Worker('q', async () => {});\n",
        "jobs/server.js": "require('http').createServer(h).listen(5000)\n",
    }))
    apps = {f.name: f for f in scan.services}
    assert apps["front"].command == "npm run dev"
    assert apps["back"].command == "node src/index.js" and apps["back"].port == 4000
    assert set(apps["back"].depends_on) == {"db", "redis"}
    # index.js requires server.js: one service (a worker: bullmq), wired to Redis
    assert sorted(apps) == ["back", "front", "jobs"] and not apps["jobs"].listens
    assert set(apps["jobs"].depends_on) == {"redis"}


def test_python_manifests_frameworks_and_scripts(tmp_path: Path) -> None:
    scan = detect(tree(tmp_path / "proj", {
        "pyproject.toml": """\
            [project]
            name = "shop"
            dependencies = ["asyncpg>=0.29", "celery[redis]>=5"]
            [project.scripts]
            shop-serve = "shop.web:main"
            shop-tool = "shop.cli:main"
            """,
        "src/shop/__init__.py": "",
        "src/shop/web.py": "from aiohttp import web\ndef main():\n"
                           "    web.run_app(app, port=int(os.environ['PORT']))\n",
        "src/shop/cli.py": "def main():\n    print('hi')\n",
        "lib/tasks.py": "import time\nwhile True:\n    time.sleep(1)\n",
    }))
    # the cli script neither serves nor loops; tasks.py is not a service (a task module)
    (serve,) = scan.services
    assert serve.name == "shop-serve" and serve.command == "shop-serve"
    # the pyproject lists asyncpg and celery[redis]; no file says which service uses them
    assert set(serve.depends_on) == {"db", "redis"}
    assert "pyproject.toml lists celery[redis]" in render("proj", scan)

    django = detect(tree(tmp_path / "django", {
        "manage.py": "import django\n",
        "site/settings.py": "DATABASES = {'default': {'ENGINE': "
                            "'django.db.backends.postgresql'}}\n",
    }))
    (site,) = django.services
    assert site.name == "django"
    assert site.command == "python manage.py runserver 127.0.0.1:$PORT"
    assert "settings.py names postgresql" in site.depends_on["db"]


def test_a_fixed_port_is_said_and_not_given_an_address(tmp_path: Path) -> None:
    scan = detect(tree(tmp_path / "proj", {
        "server.js": "require('http').createServer(h).listen(3000)\n"}))
    (web,) = scan.services
    assert not web.listens and "fixed port 3000" in web.note
    assert "process.env.PORT || 3000" in render("proj", scan)


# ---- through the CLI, for real


def test_init_scaffolds_the_polyglot_project_and_up_brings_it_up(project: Project) -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed (`make node` installs it)")
    root = project.root
    for name in ("svc.py", "ws.py"):
        (root / name).unlink()
    shutil.copytree(POLYGLOT, root, dirs_exist_ok=True)
    result = project.devenv("init", check=True)
    assert "6 services: db, redis, api, ledger, worker, web" in result.stdout
    assert project.devenv("config", "validate").returncode == 0
    ingress, *ports = free_ports(6)
    for key, port in zip(["ingress.port", "services.db.port", "services.redis.port",
                          "services.api.port", "services.ledger.port", "services.web.port"],
                         [ingress, *ports], strict=True):
        project.devenv("config", "set", key, str(port), "--project", check=True)
    project.ingress_port = ingress
    project.up()
    assert {s["name"]: s["state"] for s in project.status()["services"]} == {
        n: "healthy" for n in ("db", "redis", "api", "ledger", "worker", "web")}
    request = urllib.request.Request(
        f"http://127.0.0.1:{ingress}/items", data=json.dumps({"item": "apple"}).encode(),
        headers={"Host": "api.localhost", "Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 202 and json.loads(resp.read())["queued"] == "apple"
    moved = wait_for(lambda: project.ingress("/entries", "ledger.localhost")[1].get("entries")
                     == ["apple"], timeout=10)
    assert moved, project.devenv("logs", "worker").stdout
    status, page = project.ingress("/", "web.localhost")
    assert status == 200 and "polyglot front end" in page


def test_a_shared_module_and_the_services_a_service_calls(tmp_path: Path) -> None:
    scan = detect(tree(tmp_path / "proj", {
        "lib/common.py": "import os, redis\nclass App:\n    def run(self):\n"
                         "        serve(('127.0.0.1', int(os.environ['PORT'])))\n",
        "users/app.py": "from common import App\nimport hooks\napp = App()\n"
                        "if __name__ == '__main__':\n    app.run()\n",
        "orders/app.py": "import os\nfrom common import App\nUSERS = os.environ['USERS_URL']\n"
                         "app = App()\nif __name__ == '__main__':\n    app.run()\n",
        "users/hooks.py": "import os\nORDERS = os.environ['ORDERS_URL']\n",  # (a cycle)
    }))
    apps = {f.name: f for f in scan.services}
    assert sorted(apps) == ["orders", "users"]
    assert apps["users"].listens and "lib/common.py reads PORT" in apps["users"].port_why
    assert set(apps["users"].depends_on) == {"redis"}  # not orders: that would be a cycle
    assert apps["orders"].depends_on["users"] == "orders/app.py reads USERS_URL, which devenv sets"


def test_odd_manifests_and_procfiles_are_read_not_crashed_on(tmp_path: Path) -> None:
    root = tree(tmp_path / "proj", {
        "a/package.json": json.dumps({"name": "a", "scripts": None, "main": 3}),
        "a/server.js": "require('http').createServer(h).listen(process.env.PORT || 3000)\n",
        "b/package.json": "[1, 2]",
    })
    apps = {f.name: f for f in detect(root).services}
    assert apps["a"].command == "node server.js"
    (root / "Procfile").write_bytes(b"web: python app.py --name \xff\n")  # not UTF-8
    assert [f.name for f in detect(root).services] == ["web"]
