"""Nonsense values are refused as the configuration is read: every problem at once, each with
file:line and key path, exit 2; the JSON Schema shows the same bounds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from conftest import ENV
from devenv.config import load
from devenv.config.load import read_dotenv
from devenv.core.errors import ConfigError
from test_config import problems, write


def devenv(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devenv", *args], cwd=root, env=ENV,
                          capture_output=True, text=True, timeout=60)


def test_numbers_out_of_range_are_refused_all_at_once(tmp_path: Path) -> None:
    write(tmp_path, """\
        version: 1
        snapshots: {keep_automatic: 0}
        ingress: {port: 70000}
        services:
          api:
            command: x
            replicas: 100000000000000000000
          web:
            command: x
            port: 0
            health:
              command: "true"
              retries: -5
          job:
            command: x
            replicas: -1
            health: {command: "true", retries: 0}
          idle:
            command: x
            replicas: 0
        """)
    found = problems(tmp_path)
    assert found == [
        "devenv.yaml:2 snapshots.keep_automatic: 0 is too small: give at least 1",
        "devenv.yaml:3 ingress.port: 70000 is out of range: give 1 to 65535",
        "devenv.yaml:7 services.api.replicas: 100000000000000000000 is out of range: "
        "give 0 to 100",
        "devenv.yaml:10 services.web.port: 0 is out of range: give 1 to 65535",
        "devenv.yaml:13 services.web.health.retries: -5 is too small: give at least 1",
        "devenv.yaml:16 services.job.replicas: -1 is out of range: give 0 to 100",
        "devenv.yaml:17 services.job.health.retries: 0 is too small: give at least 1",
    ]


def test_durations_must_be_more_than_zero(tmp_path: Path) -> None:
    write(tmp_path, """\
        version: 1
        ingress: {hold_timeout: -1}
        services:
          api:
            command: x
            stop_timeout: 0
            health:
              command: "true"
              start_period: 0
              interval: -2
              timeout: 0ms
          web:
            command: x
            health: {command: "true", interval: .inf, timeout: 500ms, start_period: 2m}
        """)
    found = problems(tmp_path)
    assert len(found) == 6, found
    for line, key, value in [(2, "ingress.hold_timeout", "-1"),
                             (6, "services.api.stop_timeout", "0"),
                             (9, "services.api.health.start_period", "0"),
                             (10, "services.api.health.interval", "-2"),
                             (11, "services.api.health.timeout", "'0ms'"),
                             (14, "services.web.health.interval", "inf")]:
        assert (f"devenv.yaml:{line} {key}: must be more than 0 (a duration like 5s or 500ms), "
                f"got {value}") in found


def test_commands_must_say_what_to_run(tmp_path: Path) -> None:
    write(tmp_path, """\
        version: 1
        services:
          api:
            command: []
          web:
            command: ["", "app.py"]
            health: {command: []}
            watch: {action: rebuild, build: " "}
        datasets:
          seed: {script: []}
        """)
    assert problems(tmp_path) == [
        "devenv.yaml:4 services.api.command: is an empty list; say what to run, e.g. "
        "[python, app.py]",
        "devenv.yaml:6 services.web.command[0]: is empty; the first item is the program to run",
        "devenv.yaml:7 services.web.health.command: is an empty list; say what to run, e.g. "
        "[python, app.py]",
        "devenv.yaml:8 services.web.watch.build: is empty; say what to run",
        "devenv.yaml:10 datasets.seed.script: is an empty list; say what to run, e.g. "
        "[python, app.py]",
    ]


def test_environment_variable_and_service_names(tmp_path: Path) -> None:
    long_name = "a" * 300
    write(tmp_path, f"""\
        version: 1
        services:
          api:
            command: x
            env: {{"A=B": x, 1X: y, OK_1: z, "my var": w}}
          {long_name}:
            command: x
          Web_App:
            command: x
          -api:
            command: x
          ok-2:
            command: x
        profiles:
          ci:
            env: {{"BAD-NAME": x}}
        """)
    found = problems(tmp_path)
    env_rule = ("is not a valid name; environment variable names are letters, digits and "
                "'_', not starting with a digit")
    assert f"devenv.yaml:5 services.api.env.A=B: {env_rule}" in found
    assert f"devenv.yaml:5 services.api.env.1X: {env_rule}" in found
    assert f"devenv.yaml:5 services.api.env.my var: {env_rule}" in found
    assert f"devenv.yaml:16 profiles.ci.env.BAD-NAME: {env_rule}" in found
    assert (f"devenv.yaml:6 services.{long_name}: is 300 characters long; service names are "
            "up to 63 lower-case letters, digits and '-', starting and ending with a letter "
            "or digit (each becomes the host <name>.localhost and names files)") in found
    assert any(p.startswith("devenv.yaml:8 services.Web_App: is not a valid name; service "
                            "names are up to 63") for p in found)
    assert any(p.startswith("devenv.yaml:10 services.-api: is not a valid name")
               for p in found)
    assert len(found) == 7, found
    write(tmp_path, f"version: 1\nservices:\n  {'a' * 63}: {{command: x}}\n")
    assert list(load(tmp_path).project.services) == ["a" * 63]


def test_paths_must_stay_inside_the_project(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    (root / "web").mkdir(parents=True)
    (root / "shop.env").write_text("A=1\n")
    (tmp_path / "outside.env").write_text("A=1\n")
    (tmp_path / "outside.sql").write_text("SELECT 1;\n")
    write(root, """\
        version: 1
        services:
          api:
            command: x
            path: /etc
          web:
            command: x
            path: ../../..
          job:
            command: x
            path: web/../web
            env_file: [/etc/hostname, ../outside.env, shop.env]
            watch: {paths: [/etc, ../, web/.., ../proj-other]}
          db: {kind: redis, port: 8001}
        datasets:
          demo:
            files: {db: [/etc/passwd, ../outside.sql]}
        """)
    assert problems(root) == [
        "devenv.yaml:5 services.api.path: '/etc' is not inside the project; give a folder "
        "relative to the project",
        "devenv.yaml:8 services.web.path: '../../..' leads outside the project; give a folder "
        "inside it",
        "devenv.yaml:12 services.job.env_file[0]: '/etc/hostname' is not inside the project; "
        "give a file relative to the project",
        "devenv.yaml:12 services.job.env_file[1]: '../outside.env' leads outside the project; "
        "give a file inside it",
        "devenv.yaml:13 services.job.watch.paths[0]: '/etc' is not inside the project; give a "
        "path relative to the project",
        "devenv.yaml:13 services.job.watch.paths[1]: '../' leads outside the project; give a "
        "path inside it",
        "devenv.yaml:13 services.job.watch.paths[3]: '../proj-other' leads outside the "
        "project; give a path inside it",
        "devenv.yaml:17 datasets.demo.files.db[0]: '/etc/passwd' is not inside the project; "
        "give a file relative to the project",
        "devenv.yaml:17 datasets.demo.files.db[1]: '../outside.sql' leads outside the "
        "project; give a file inside it",
    ]


def test_data_services_run_one_replica_also_through_profiles_and_local_overrides(
        tmp_path: Path) -> None:
    write(tmp_path, """\
        version: 1
        services:
          cache: {kind: redis, port: 8001}
          api: {command: x, replicas: 2}
        profiles:
          big:
            overrides:
              cache:
                replicas: 2
        """)
    assert list(load(tmp_path).project.services) == ["cache", "api"]
    assert problems(tmp_path, "big") == [
        "devenv.yaml:9 services.cache.replicas: a redis service runs exactly one replica"]
    validated = devenv(tmp_path, "config", "validate")
    assert validated.returncode == 2
    assert "devenv.yaml:9 services.cache.replicas: a redis service runs exactly one replica" \
        in validated.stderr
    write(tmp_path, "services:\n  cache:\n    replicas: 3\n", ".devenv/local.yaml")
    assert problems(tmp_path) == [
        ".devenv/local.yaml:3 services.cache.replicas: a redis service runs exactly one replica"]


def test_files_that_are_not_utf8_are_config_errors_naming_them(tmp_path: Path) -> None:
    (tmp_path / "devenv.yaml").write_bytes(
        b"version: 1\nservices:\n  api: {command: 'caf\xe9'}\n")
    result = devenv(tmp_path, "config", "validate")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "devenv.yaml:3: not UTF-8 text (byte 0xe9); save the file as UTF-8" in result.stderr
    assert devenv(tmp_path, "up").returncode == 2

    write(tmp_path, "version: 1\nservices:\n  api: {command: x, env_file: [api.env]}\n")
    (tmp_path / "api.env").write_bytes(b"A=1\nB=\xff\xfe\n")
    assert problems(tmp_path) == [
        "devenv.yaml:3 services.api.env_file[0]: file 'api.env' is not UTF-8 text (byte 0xff "
        "on line 2); save it as UTF-8"]
    # where the plan reads it (in the engine), the same file is a config error, not a crash
    with pytest.raises(ConfigError) as info:
        read_dotenv(tmp_path / "api.env")
    assert info.value.details == ["api.env:2: not UTF-8 text (byte 0xff); save the file as "
                                  "UTF-8"]
    (tmp_path / ".env").write_bytes(b"\xff")
    assert problems(tmp_path) == [".env:1: not UTF-8 text (byte 0xff); save the file as UTF-8"]


def test_config_set_with_a_broken_local_yaml_names_it(tmp_path: Path) -> None:
    write(tmp_path, "version: 1\nservices:\n  api: {command: x, port: 8000}\n")
    local = tmp_path / ".devenv/local.yaml"
    local.parent.mkdir()
    for text, expected in [
            (b"services:\n  api: [\n", ".devenv/local.yaml:3: YAML syntax: expected the node "
             "content, but found '<stream end>'"),
            (b"- a list\n", ".devenv/local.yaml:1: the file must be a mapping of keys"),
            (b"services:\n  api:\n    port: 80\xff\n", ".devenv/local.yaml:3: not UTF-8 text "
             "(byte 0xff); save the file as UTF-8")]:
        local.write_bytes(text)
        result = devenv(tmp_path, "config", "set", "services.api.port", "8001")
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert expected in result.stderr
        assert local.read_bytes() == text  # nothing written
    local.unlink()
    (tmp_path / "devenv.yaml").write_bytes(b"version: 1\nservices: [\n")
    result = devenv(tmp_path, "config", "set", "--project", "services.api.port", "8001")
    assert result.returncode == 2 and "devenv.yaml:3: YAML syntax" in result.stderr


def test_schema_shows_the_bounds_and_name_rules() -> None:
    from devenv.cli.commands.config import schema

    doc = schema()
    service = doc["properties"]["services"]["additionalProperties"]["properties"]
    assert (service["replicas"]["minimum"], service["replicas"]["maximum"]) == (0, 100)
    assert (service["port"]["minimum"], service["port"]["maximum"]) == (1, 65535)
    assert doc["properties"]["snapshots"]["properties"]["keep_automatic"]["minimum"] == 1
    assert doc["properties"]["ingress"]["properties"]["port"]["maximum"] == 65535
    retries = service["health"]["anyOf"][0]["properties"]["retries"]
    assert retries["minimum"] == 1

    def valid(value: object) -> bool:
        try:
            jsonschema.validate(value, doc)
            return True
        except jsonschema.ValidationError:
            return False

    def project(**svc: object) -> dict[str, object]:
        return {"version": 1, "services": {"api": {"command": "x", **svc}}}

    assert valid(project(replicas=3, stop_timeout="5s", env={"A_1": "x"}))
    assert not valid(project(replicas=101))
    assert not valid(project(stop_timeout=0))
    assert not valid(project(stop_timeout="0s"))
    assert valid(project(stop_timeout="0.5s"))
    assert not valid(project(env={"A=B": "x"}))
    assert not valid({"version": 1, "services": {"a" * 64: {"command": "x"}}})
    assert not valid({"version": 1, "snapshots": {"keep_automatic": 0}})
    overrides = doc["properties"]["profiles"]["additionalProperties"]["properties"][
        "overrides"]["additionalProperties"]["properties"]
    assert overrides["replicas"]["maximum"] == 100
    json.dumps(doc)  # (plain data)
