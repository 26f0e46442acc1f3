"""The interpolation engine (devenv.config.interpolate): Compose's syntax, case by case."""

from __future__ import annotations

from pathlib import Path

import pytest

from devenv.config import load
from devenv.config.interpolate import RequiredError, TemplateError, substitute
from devenv.plan import service_plan

ENV = {"SET": "value", "EMPTY": "", "OTHER": "other", "PORT": "8000"}


def sub(text: str, bare: bool = True, env: dict[str, str] | None = None) -> str:
    return substitute(text, (ENV if env is None else env).get, bare=bare)


@pytest.mark.parametrize(("text", "expected"), [
    ("plain text", "plain text"),
    ("${SET}", "value"),
    ("$SET", "value"),
    ("a${SET}b$SET.c", "avaluebvalue.c"),
    ("$SET_more", ""),  # the longest name: SET_more, unset
    ("${SET}_more", "value_more"),
    # defaults: `:-` when unset or empty, `-` only when unset
    ("${MISSING:-d}", "d"), ("${EMPTY:-d}", "d"), ("${SET:-d}", "value"),
    ("${MISSING-d}", "d"), ("${EMPTY-d}", ""), ("${SET-d}", "value"),
    ("${MISSING:-}", ""), ("${MISSING:-a b:c/d}", "a b:c/d"),
    # alternatives: `:+` when set and not empty, `+` when set
    ("${SET:+alt}", "alt"), ("${EMPTY:+alt}", ""), ("${MISSING:+alt}", ""),
    ("${SET+alt}", "alt"), ("${EMPTY+alt}", "alt"), ("${MISSING+alt}", ""),
    # required ones that are there
    ("${SET:?need it}", "value"), ("${SET?need it}", "value"), ("${EMPTY?need it}", ""),
    # nested: the default is a template itself
    ("${MISSING:-${SET}}", "value"), ("${MISSING:-${ALSO_MISSING:-deep}}", "deep"),
    ("${MISSING:-x${SET}y}", "xvaluey"), ("${MISSING:-$SET}", "value"),
    ("${SET:+[${OTHER}]}", "[other]"),
    ("${MISSING:-{braces}}", "{braces}"),  # braces in a default are counted, as Compose
    # $$ is a literal $, also before a brace or a name
    ("$$", "$"), ("$${SET}", "${SET}"), ("$$SET", "$SET"), ("a$$$SET", "a$value"),
    ("${MISSING:-$$}", "$"),
    # a $ that starts no reference is kept
    ("$", "$"), ("cost: 5$", "cost: 5$"), ("$1 $- $ x", "$1 $- $ x"),
])
def test_compose_forms(text: str, expected: str) -> None:
    assert sub(text) == expected


def test_bare_names_can_be_left_for_the_shell() -> None:
    assert sub("--port $PORT ${PORT}", bare=False) == "--port $PORT 8000"
    assert sub("${MISSING:-$PORT}", bare=False) == "$PORT"
    assert sub("$$PORT", bare=False) == "$PORT"


def test_unset_plain_references_are_reported_not_defaulted_ones() -> None:
    unset: set[str] = set()
    substitute("${A} $B ${C:-x} ${D-x} ${E:+x} ${F:-${G}}", {}.get, unset=unset)
    assert unset == {"A", "B", "G"}


@pytest.mark.parametrize(("text", "reason"), [
    ("${TOKEN:?need a token}",
     "TOKEN is required: set it in your shell or .env (message: need a token)"),
    ("${TOKEN?need a token}",
     "TOKEN is required: set it in your shell or .env (message: need a token)"),
    ("${TOKEN:?}", "TOKEN is required: set it in your shell or .env"),
    ("${TOKEN?}", "TOKEN is required: set it in your shell or .env"),
    ("${EMPTY:?may not be empty}",
     "EMPTY is required but empty: set it in your shell or .env (message: may not be empty)"),
    ("${TOKEN:?token for ${SET}}",  # the message is interpolated too
     "TOKEN is required: set it in your shell or .env (message: token for value)"),
    ("${MISSING:-${TOKEN:?inner}}",
     "TOKEN is required: set it in your shell or .env (message: inner)"),
])
def test_a_missing_required_variable_is_an_error(text: str, reason: str) -> None:
    with pytest.raises(RequiredError) as info:
        sub(text)
    assert info.value.reason == reason


def test_a_required_variable_in_an_unused_default_is_not_needed() -> None:
    assert sub("${SET:-${TOKEN:?never asked}}") == "value"
    assert sub("${MISSING:+${TOKEN:?never asked}}") == ""


@pytest.mark.parametrize("text", ["${", "${SET", "${SET:-x", "${1}", "${}", "${SET%x}",
                                  "${SE T}", "${MISSING:-${SET}", "a ${-x}"])
def test_malformed_references_are_errors_that_say_how_to_write_a_dollar(text: str) -> None:
    with pytest.raises(TemplateError) as info:
        sub(text)
    assert "is not a valid ${VAR} reference" in info.value.reason
    assert "write $$ for a literal $" in info.value.reason
    assert not isinstance(info.value, RequiredError)


def test_values_are_not_interpolated_twice() -> None:
    assert sub("${X}", env={"X": "${SET} $SET $$"}) == "${SET} $SET $$"


def test_port_in_devenv_yaml_is_each_instances_own_not_the_callers(tmp_path: Path) -> None:
    (tmp_path / "devenv.yaml").write_text(
        "version: 1\nservices:\n"
        "  api: {command: [python, -m, http.server, '${PORT}'], port: 21001}\n")
    loaded = load(tmp_path, environ={"PORT": "9999"})  # a PORT exported in the shell
    assert service_plan(loaded, "api").command == ("python", "-m", "http.server", "${PORT}")
    assert not loaded.warnings  # not "PORT is not set"
