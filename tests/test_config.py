"""devenv.yaml loading and validation: every error names file:line and key path."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest

from devenv.config import load
from devenv.config.model import Project
from devenv.core.errors import ConfigError
from devenv.plan import make_plan

REPO = Path(__file__).resolve().parents[1]


def write(root: Path, text: str, name: str = "devenv.yaml") -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def problems(root: Path, profile: str | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(root, profile)
    return info.value.details


def test_every_problem_is_reported_at_once_with_file_line_and_path(tmp_path: Path) -> None:
    write(tmp_path, """\
        version: 1
        services:
          api:
            command: python app.py
            prot: 8000
          order:
            command: python order.py
            restart: sometimes
            health:
              http: /healthz
              interval: soon
          web:
            port: 8002
        """)
    found = problems(tmp_path)
    assert "devenv.yaml:5 services.api.prot: unknown key (did you mean 'port'?)" in found
    assert any(p.startswith("devenv.yaml:8 services.order.restart: expected one of") and
               "'sometimes'" in p for p in found)
    assert any(p.startswith("devenv.yaml:11 services.order.health.interval: expected a "
                            "duration") for p in found)
    assert "devenv.yaml:12 services.web: missing required key 'command'" in found
    assert len(found) == 4


def test_structural_and_reference_errors_come_together(tmp_path: Path) -> None:
    write(tmp_path, """\
        version: 1
        services:
          api:
            command: x
            port: 8000
            depends_on: [ordr]
          order:
            command: x
            port: 8000
          broken:
            command: x
            replicas: many
          web:
            command: x
            depends_on: [broken]
        """)
    found = problems(tmp_path)
    assert "devenv.yaml:12 services.broken.replicas: expected an integer, got 'many'" in found
    assert ("devenv.yaml:6 services.api.depends_on.ordr: unknown service 'ordr' (did you mean "
            "'order'?)") in found
    assert any(p.startswith("devenv.yaml:9 services.order.port: port 8000 is already used")
               for p in found)
    assert not any("services.web" in p for p in found)  # 'broken' exists, it is just broken
    assert len(found) == 3


def test_unknown_dependency_suggests_the_close_name(tmp_path: Path) -> None:
    write(tmp_path, """\
        version: 1
        services:
          order: {command: x, port: 8001}
          api:
            command: x
            depends_on:
              - ordr
        """)
    assert problems(tmp_path) == [
        "devenv.yaml:7 services.api.depends_on.ordr: unknown service 'ordr' "
        "(did you mean 'order'?)"]


def test_cycles_duplicate_ports_and_health_without_port(tmp_path: Path) -> None:
    write(tmp_path, """\
        version: 1
        services:
          a: {command: x, port: 9001, depends_on: [b]}
          b: {command: x, port: 9001, depends_on: [c]}
          c:
            command: x
            depends_on: [a]
            health: {http: /healthz}
        """)
    found = problems(tmp_path)
    assert any("devenv.yaml:4 services.b.port: port 9001 is already used by service 'a'" in p
               for p in found)
    assert any("dependency cycle: a -> b -> c -> a" in p for p in found)
    assert any(p.startswith("devenv.yaml:8 services.c.health.http: checks the service's port")
               for p in found)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    write(tmp_path, "version: 1\nservices:\n  api:\n    command: [unclosed\n    port: 1\n")
    (found,) = problems(tmp_path)
    assert found.startswith("devenv.yaml:") and "YAML syntax" in found


def test_local_overrides_merge_and_their_errors_point_at_local_yaml(tmp_path: Path) -> None:
    write(tmp_path, "version: 1\nservices:\n  api: {command: x, port: 8000, replicas: 1}\n")
    write(tmp_path, "services:\n  api:\n    replicas: 4\n", ".devenv/local.yaml")
    assert load(tmp_path).project.services["api"].replicas == 4
    write(tmp_path, "services:\n  api:\n    replicas: many\n", ".devenv/local.yaml")
    assert problems(tmp_path) == [
        ".devenv/local.yaml:3 services.api.replicas: expected an integer, got 'many'"]


def test_profiles_select_and_override_and_their_errors_point_at_the_profile(
        tmp_path: Path) -> None:
    write(tmp_path, """\
        version: 1
        services:
          db: {command: x, port: 8000}
          api: {command: x, port: 8001, depends_on: [db]}
          web: {command: x, port: 8002, depends_on: [api]}
        profiles:
          ci:
            services: [api]
            env: {MODE: ci}
            overrides:
              api: {replicas: 3}
          broken:
            overrides:
              api:
                replicas: lots
        """)
    loaded = load(tmp_path, "ci")
    plan = make_plan(loaded)
    assert plan.selected == ("db", "api")
    assert plan.services["api"].replicas == 3
    assert plan.services["db"].env["MODE"] == "ci"
    assert problems(tmp_path, "broken") == [
        "devenv.yaml:15 services.api.replicas: expected an integer, got 'lots'"]
    (unknown,) = problems(tmp_path, "cii")
    assert "no profile 'cii' (did you mean 'ci'?)" in unknown


def test_interpolation_from_environment_and_dotenv(tmp_path: Path) -> None:
    write(tmp_path, """\
        version: 1
        services:
          api:
            command: x
            env:
              A: ${FROM_ENV}
              B: ${FROM_DOTENV}
              C: ${MISSING:-fallback}
              D: $${LITERAL}
        """)
    (tmp_path / ".env").write_text("FROM_DOTENV=dotenv-value\nFROM_ENV=loses\n")
    env = load(tmp_path, environ={"FROM_ENV": "env-value"}).project.services["api"].env
    assert env == {"A": "env-value", "B": "dotenv-value", "C": "fallback", "D": "${LITERAL}"}


def test_config_hash_ignores_replicas_but_not_env(tmp_path: Path) -> None:
    base = "version: 1\nservices:\n  api: {command: x, port: 8000, replicas: %d, env: {A: '%s'}}\n"
    write(tmp_path, base % (1, "x"))
    first = make_plan(load(tmp_path)).services["api"].config_hash
    write(tmp_path, base % (5, "x"))
    assert make_plan(load(tmp_path)).services["api"].config_hash == first
    write(tmp_path, base % (1, "y"))
    assert make_plan(load(tmp_path)).services["api"].config_hash != first


def test_dependencies_get_urls_of_their_stable_address(tmp_path: Path) -> None:
    write(tmp_path, """\
        version: 1
        services:
          order-api: {command: x, port: 8100}
          web: {command: x, port: 8101, depends_on: [order-api]}
        """)
    env = make_plan(load(tmp_path)).services["web"].env
    assert env["ORDER_API_URL"] == "http://127.0.0.1:8100"


def test_generated_schema_accepts_the_example_and_rejects_typos() -> None:
    out = subprocess.run([sys.executable, "-m", "devenv", "config", "schema"], check=True,
                         capture_output=True, text=True).stdout
    schema = json.loads(out)
    from ruamel.yaml import YAML

    example = YAML(typ="safe").load((REPO / "examples/hello/devenv.yaml").read_text())
    jsonschema.validate(example, schema)
    example["services"]["api"]["prot"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(example, schema)
    assert schema["properties"]["services"]["additionalProperties"]["properties"]["port"][
        "description"]


def test_model_declares_every_key_with_a_description() -> None:
    def walk(schema: dict, path: str) -> None:
        for key, sub in schema.get("properties", {}).items():
            assert sub.get("description"), f"{path}.{key} has no description"
            for option in sub.get("anyOf", [sub]):
                walk(option, f"{path}.{key}")
            if isinstance(sub.get("additionalProperties"), dict):
                walk(sub["additionalProperties"], f"{path}.{key}.*")

    from devenv.cli.commands.config import schema

    doc = schema()
    walk(doc, "")
    # the file itself is described by hand: without a docstring, a dataclass's __doc__ (so
    # this description) would be its generated signature, "Project(version: int = ...)"
    assert doc["description"] and not doc["description"].startswith(f"{Project.__name__}(")


def test_personal_overrides_win_over_the_profile(tmp_path: Path) -> None:
    write(tmp_path, """\
        version: 1
        services:
          api: {command: x, env: {MODE: base}}
        profiles:
          ci: {env: {MODE: ci}}
        """)
    assert load(tmp_path, "ci").project.services["api"].env["MODE"] == "ci"
    write(tmp_path, "services:\n  api:\n    env: {MODE: mine}\n", ".devenv/local.yaml")
    assert load(tmp_path, "ci").project.services["api"].env["MODE"] == "mine"
