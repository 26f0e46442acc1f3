"""A service's environment: what devenv injects for its dependencies (FOO_URL, FOO_HOST,
FOO_PORT, libpq's PG*), env files read as Compose reads them, Compose's interpolation with
required variables, and warnings when a user's value replaces an injected one."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from conftest import Project, free_ports
from devenv.config import load
from devenv.core.errors import ConfigError
from devenv.data.postgres import _bundled
from devenv.plan import make_plan

PRINT_ENV = ["python", "-c", "import os, json; print(json.dumps(dict(os.environ)))"]


def write(root: Path, text: str, name: str = "devenv.yaml") -> None:
    (root / name).write_text(textwrap.dedent(text))


def problems(root: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(root, environ=environ or {})
    return info.value.details


# ---- item 6: what dependencies give

DEPS = """\
    version: 1
    services:
      db: {kind: postgres, port: 5000, databases: [app, other], password: pg-secret}
      cache: {kind: redis, port: 5001, password: ""}
      queue: {kind: redis, port: 5002}
      order-api: {command: x, port: 5003}
      worker:
        command: x
        depends_on:
          db: {database: other}
          cache: healthy
          order-api: started
      jobs: {command: x, depends_on: [queue]}
    """


def test_dependencies_get_host_and_port_beside_the_url_and_postgres_gets_libpq_vars(
        tmp_path: Path) -> None:
    write(tmp_path, DEPS)
    env = make_plan(load(tmp_path, environ={})).services["worker"].env
    url = "postgresql://devenv:pg-secret@127.0.0.1:5000/other"
    assert env["DATABASE_URL"] == env["DB_URL"] == url
    assert (env["DB_HOST"], env["DB_PORT"]) == ("127.0.0.1", "5000")
    assert {k: env[k] for k in ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE")} == {
        "PGHOST": "127.0.0.1", "PGPORT": "5000", "PGUSER": "devenv", "PGPASSWORD": "pg-secret",
        "PGDATABASE": "other"}
    assert env["REDIS_URL"] == env["CACHE_URL"] == "redis://127.0.0.1:5001/0"
    assert (env["CACHE_HOST"], env["CACHE_PORT"]) == ("127.0.0.1", "5001")
    assert (env["REDIS_HOST"], env["REDIS_PORT"]) == ("127.0.0.1", "5001")
    assert "REDIS_PASSWORD" not in env  # a password-less Redis: no empty password variable
    assert env["ORDER_API_URL"] == "http://127.0.0.1:5003"
    assert (env["ORDER_API_HOST"], env["ORDER_API_PORT"]) == ("127.0.0.1", "5003")
    jobs = make_plan(load(tmp_path, environ={})).services["jobs"].env
    assert (jobs["QUEUE_HOST"], jobs["QUEUE_PORT"], jobs["REDIS_PORT"]) == (
        "127.0.0.1", "5002", "5002")
    assert jobs["REDIS_PASSWORD"] == "devpass"
    assert "PGHOST" not in jobs and "DATABASE_URL" not in jobs


def test_exec_into_a_data_service_gets_its_real_url_and_client_variables(
        project: Project) -> None:
    db, cache = free_ports(2)
    project.services(f"""\
        db: {{kind: postgres, port: {db}, databases: [app]}}
        cache: {{kind: redis, port: {cache}}}
        """)
    env = json.loads(project.devenv("exec", "db", "--", *PRINT_ENV, check=True).stdout)
    assert env["SERVICE_URL"] == f"postgresql://devenv:devpass@127.0.0.1:{db}/app"
    assert {k: env[k] for k in ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE")} == {
        "PGHOST": "127.0.0.1", "PGPORT": str(db), "PGUSER": "devenv", "PGPASSWORD": "devpass",
        "PGDATABASE": "app"}
    env = json.loads(project.devenv("exec", "cache", "--", *PRINT_ENV, check=True).stdout)
    assert env["SERVICE_URL"] == f"redis://:devpass@127.0.0.1:{cache}/0"
    assert (env["REDIS_HOST"], env["REDIS_PORT"]) == ("127.0.0.1", str(cache))


def test_psql_with_no_arguments_works_in_a_dependent_and_in_exec(project: Project) -> None:
    db, api = free_ports(2)
    project.services(f"""\
        db: {{kind: postgres, port: {db}, databases: [app, other]}}
        api: {{command: python svc.py, port: {api}, depends_on: {{db: {{database: other}}}}}}
        """)
    project.up()
    psql = str(_bundled() / "psql")  # type: ignore[operator]
    query = "SELECT current_user || ' ' || current_database()"
    for service, expected in (("api", "devenv other"), ("db", "devenv app")):
        got = project.devenv("exec", service, "--", psql, "-tAc", query, check=True)
        assert got.stdout.strip() == expected, got.stderr


# ---- item 8: Compose's interpolation in devenv.yaml

def test_a_missing_required_variable_is_a_config_error_at_its_line(tmp_path: Path) -> None:
    write(tmp_path, """\
        version: 1
        services:
          api:
            command: x
            env:
              HOME_DIR: ${HOME_DIR:-/home}
              TOKEN: ${TOKEN:?need a token}
              KEY: "${KEY?}"
              NAME: "${NAME:?}"
        """)
    assert problems(tmp_path, {"NAME": ""}) == [
        "devenv.yaml:7 services.api.env.TOKEN: TOKEN is required: set it in your shell or .env "
        "(message: need a token)",
        "devenv.yaml:8 services.api.env.KEY: KEY is required: set it in your shell or .env",
        "devenv.yaml:9 services.api.env.NAME: NAME is required but empty: set it in your shell "
        "or .env"]
    (tmp_path / ".env").write_text("TOKEN=from-dotenv\nKEY=\n")
    env = load(tmp_path, environ={"NAME": "n"}).project.services["api"].env
    assert env == {"HOME_DIR": "/home", "TOKEN": "from-dotenv", "KEY": "", "NAME": "n"}


def test_compose_forms_in_devenv_yaml_and_a_bare_dollar_name_left_for_the_shell(
        tmp_path: Path) -> None:
    write(tmp_path, """\
        version: 1
        services:
          api:
            command: uvicorn app:app --port $PORT --root ${ROOT:-${HOME_DIR:-/srv}}
            env:
              ALT: ${DEBUG:+--debug}
              UNSET_ONLY: ${EMPTY-kept-empty}
              LITERAL: $${NOT_ME}
        """)
    loaded = load(tmp_path, environ={"HOME_DIR": "/h", "DEBUG": "1", "EMPTY": "", "PORT": "1"})
    api = loaded.project.services["api"]
    assert api.command == "uvicorn app:app --port $PORT --root /h"
    assert api.env == {"ALT": "--debug", "UNSET_ONLY": "", "LITERAL": "${NOT_ME}"}


def test_a_malformed_reference_is_a_config_error(tmp_path: Path) -> None:
    write(tmp_path, "version: 1\nservices:\n  api:\n    command: echo ${1}\n")
    (found,) = problems(tmp_path)
    assert found.startswith("devenv.yaml:4 services.api.command: '${1}' is not a valid ${VAR}")
    assert found.endswith("write $$ for a literal $")


def test_up_with_a_missing_required_variable_exits_2_naming_file_and_line(
        project: Project) -> None:
    (port,) = free_ports(1)
    project.services(f"""\
        api:
          command: python svc.py
          port: {port}
          env: {{TOKEN: "${{API_TOKEN:?ask the team for one}}"}}
        """)
    result = project.devenv("up")
    assert result.returncode == 2, result.stderr
    assert ("devenv.yaml:7 services.api.env.TOKEN: API_TOKEN is required: set it in your "
            "shell or .env (message: ask the team for one)") in result.stderr
    assert project.engine_pid() is None  # nothing started


# ---- item 7: env files as Compose reads them; a user's value over an injected one

ENV_FILE = """\
    # the template's .env
    POSTGRES_PASSWORD=changethis
    DATABASE_URL=postgresql://app:${POSTGRES_PASSWORD}@db/app
    export FROM_SHELL="${SHELL_ONLY}!"
    SINGLE='${POSTGRES_PASSWORD} $$ stays'
    DOUBLE="tab\\there \\"quoted\\" \\$HOME"
    MULTI="first
    second"
    BARE=$POSTGRES_PASSWORD # a comment
    HASH=a#b
    DOLLARS=$$x
    INHERITED
    DEFAULTED=${NOPE:-fallback}
    """


def test_env_files_are_interpolated_as_compose_does(tmp_path: Path) -> None:
    write(tmp_path, "version: 1\nservices:\n  api: {command: x, env_file: [.env, more.env]}\n")
    write(tmp_path, ENV_FILE, ".env")
    write(tmp_path, "FROM_EARLIER_FILE=${POSTGRES_PASSWORD}-2\nMISSING=${UNSET_ONE}\n",
          "more.env")
    loaded = load(tmp_path, environ={"SHELL_ONLY": "sh", "INHERITED": "inh"})
    env = make_plan(loaded).services["api"].env
    assert env["DATABASE_URL"] == "postgresql://app:changethis@db/app"
    assert env["FROM_SHELL"] == "sh!"
    assert env["SINGLE"] == "${POSTGRES_PASSWORD} $$ stays"
    assert env["DOUBLE"] == 'tab\there "quoted" $HOME'
    assert env["MULTI"] == "first\nsecond"
    assert env["BARE"] == "changethis"
    assert (env["HASH"], env["DOLLARS"]) == ("a#b", "$x")
    assert env["INHERITED"] == "inh"
    assert env["DEFAULTED"] == "fallback"
    assert env["FROM_EARLIER_FILE"] == "changethis-2"
    assert env["MISSING"] == ""
    assert "${UNSET_ONE} is not set (in more.env); using an empty string" in loaded.warnings


def test_a_missing_required_variable_in_an_env_file_names_its_line(
        tmp_path: Path, project: Project) -> None:
    write(tmp_path, "version: 1\nservices:\n  api: {command: x, env_file: [api.env]}\n")
    write(tmp_path, "A=1\n\nSECRET=${API_SECRET:?see the wiki}\nB=\"open\nC=${D\n", "api.env")
    assert problems(tmp_path) == [
        "api.env:3 SECRET: API_SECRET is required: set it in your shell or .env (message: see "
        "the wiki)",
        "api.env:4 B: the \" that opens the value is never closed; close it, or write \\\" "
        "for a quote inside"]
    write(tmp_path, "SECRET=${API_SECRET:?see the wiki}\nbad line\n", "api.env")
    assert problems(tmp_path) == [
        "api.env:1 SECRET: API_SECRET is required: set it in your shell or .env (message: see "
        "the wiki)",
        "api.env:2: expected KEY=VALUE, found 'bad line'"]
    # through the CLI: exit 2 before anything starts
    (port,) = free_ports(1)
    project.services(f"api: {{command: python svc.py, port: {port}, env_file: [api.env]}}\n")
    (project.root / "api.env").write_text("TOKEN=${API_TOKEN:?}\n")
    result = project.devenv("up")
    assert result.returncode == 2
    assert ("api.env:1 TOKEN: API_TOKEN is required: set it in your shell or .env"
            in result.stderr)


OVERRIDE = """\
    version: 1
    services:
      db: {kind: postgres, port: 5000, databases: [app], password: pg-secret}
      api:
        command: x
        env_file: [.env]
        env:
          DB_HOST: localhost
          PGPORT: "5000"
        depends_on: [db]
    """


def test_a_user_value_over_an_injected_one_wins_and_is_warned_about(tmp_path: Path) -> None:
    write(tmp_path, OVERRIDE)
    write(tmp_path, "POSTGRES_PASSWORD=changethis\n"
          "DATABASE_URL=postgresql://app:${POSTGRES_PASSWORD}@db/app\nPGPASSWORD=other\n", ".env")
    loaded = load(tmp_path, environ={})
    env = make_plan(loaded).services["api"].env
    assert env["DATABASE_URL"] == "postgresql://app:changethis@db/app"  # their choice
    assert (env["DB_HOST"], env["PGPASSWORD"]) == ("localhost", "other")
    assert env["DB_URL"] == "postgresql://devenv:pg-secret@127.0.0.1:5000/app"
    warnings = [w for w in loaded.warnings if "overrid" in w]
    assert warnings == [
        "services.api.env_file .env sets DATABASE_URL (line 2), overriding the URL devenv "
        "injects for dependency db (postgresql://devenv:***@127.0.0.1:5000/app); remove it "
        "from .env or rename it",
        "devenv.yaml:8 services.api.env.DB_HOST overrides the value devenv injects for "
        "dependency db (127.0.0.1); remove it or rename it",
        "services.api.env_file .env sets PGPASSWORD (line 3), overriding the value devenv "
        "injects for dependency db (********); remove it from .env or rename it"]
    assert not any("pg-secret" in w or "changethis" in w for w in loaded.warnings)


def test_validate_and_doctor_show_the_override_warning(project: Project) -> None:
    write(project.root, OVERRIDE.replace("5000", str(free_ports(1)[0])))
    (project.root / ".env").write_text("DATABASE_URL=postgresql://app:pw@db/app\n")
    expected = "services.api.env_file .env sets DATABASE_URL (line 1), overriding the URL"
    validate = project.devenv("config", "validate")
    assert validate.returncode == 0 and expected in validate.stderr, validate.stderr
    assert "pg-secret" not in validate.stderr
    doctor = project.devenv("doctor", "--json")
    checks = json.loads(doctor.stdout)["checks"]
    assert any(c["status"] == "warn" and expected in c["message"] for c in checks), checks
