"""Dev servers that reload themselves get watch action none; one-shot jobs are not watched
unless asked (issue 9.3). Pure: detection from a command, and the plan made from a config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devenv.config import load
from devenv.devservers import reloads_itself
from devenv.plan import service_plan


@pytest.mark.parametrize(("command", "tool"), [
    ("vite", "vite"),
    ("npx vite --port $PORT", "vite"),
    ("node_modules/.bin/vite dev", "vite"),
    ("next dev -p $PORT", "next dev"),
    ("nodemon server.js", "nodemon"),
    ("node --watch server.js", "node --watch"),
    ("uvicorn app:app --port $PORT --reload", "uvicorn --reload"),
    (["python", "-m", "uvicorn", "main:app", "--reload"], "uvicorn --reload"),
    ("flask --app api run --debug", "flask --reload"),
    ("python manage.py runserver 0:$PORT", "django runserver"),
    ("webpack serve --mode development", "webpack serve"),
    ("fastapi dev main.py", "fastapi dev"),
])
def test_a_server_that_reloads_itself_is_recognised(command: str | list[str], tool: str,
                                                    tmp_path: Path) -> None:
    assert reloads_itself(command, tmp_path) == tool


@pytest.mark.parametrize("command", [
    "vite build", "vite preview --port $PORT", "uvicorn app:app --port $PORT",
    "python manage.py runserver --noreload", "node server.js", "python -m http.server $PORT",
    "npm run build", "flask --app api run",
])
def test_a_server_without_its_own_reload_is_not(command: str, tmp_path: Path) -> None:
    assert reloads_itself(command, tmp_path) is None


def test_an_npm_script_is_looked_up_in_package_json(tmp_path: Path) -> None:
    (tmp_path / "package.json").write_text(json.dumps(
        {"scripts": {"dev": "vite --host 127.0.0.1", "start": "node dist/server.js"}}))
    assert reloads_itself("npm run dev", tmp_path) == "vite"
    assert reloads_itself("pnpm dev", tmp_path) == "vite"
    assert reloads_itself("npm run start", tmp_path) is None


def test_flask_debug_in_the_environment_counts(tmp_path: Path) -> None:
    assert reloads_itself("flask run", tmp_path, {"FLASK_DEBUG": "1"}) == "flask --debug"


def test_the_plan_resolves_watch_for_dev_servers_jobs_and_explicit_choices(
        tmp_path: Path) -> None:
    (tmp_path / "devenv.yaml").write_text("""\
version: 1
name: p
services:
  front: {command: "npx vite --port $PORT", port: 21001}
  front-forced: {command: "npx vite --port $PORT", port: 21002, watch: {action: replace}}
  api: {command: "python api.py", port: 21003}
  build: {command: "npm run build", restart: "no"}
  watched-build: {command: "npm run build", restart: "no", watch: true}
""")
    loaded = load(tmp_path)
    mode = {name: service_plan(loaded, name).watch_mode for name in loaded.project.services}
    assert mode == {
        "front": "none (vite reloads itself)",
        "front-forced": "replace",
        "api": "replace",
        "build": "off (one-shot job)",
        "watched-build": "replace",
    }
    assert service_plan(loaded, "build").job and not service_plan(loaded, "api").job
