"""The hot path's compiled build (`devenv/native.py`): used only while it matches the sources
as they are, never an unfinished one, never when turned off, all of it or none; and, where a C
compiler and mypyc are present (as `make test` has them), the ingress the tests run is the
compiled one (`make test` runs the ingress's own tests interpreted as well)."""

from __future__ import annotations

import ast
import importlib
import os
import shutil
import sys
from pathlib import Path

import pytest

from devenv import native
from devenv.checks import machine_checks

SOURCES = (*native.MODULES, *native.DEPENDS, "native")


def _sources(tmp_path: Path) -> Path:
    """A package tree as devenv's: the compiled modules, those they rely on, the recipe."""
    here = tmp_path / "devenv"
    for name in SOURCES:
        path = here / f"{name}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# {name}\n")
    return here


def _built(here: Path) -> Path:
    folder = here / "_native" / native.digest(here)
    (folder / "devenv").mkdir(parents=True)
    (folder / "devenv" / f"{native.GROUP}{native.SUFFIX}").write_bytes(b"")
    (folder / native.BUILT).write_text(f"{native.SUFFIX}\n")
    return folder


@pytest.mark.parametrize("edited", ["engine/ingress/server", "engine/pool", "telemetry/counts",
                                    "telemetry/model", "native"])
def test_a_build_is_used_while_it_matches_the_sources(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edited: str) -> None:
    monkeypatch.delenv(native.OFF, raising=False)
    here = _sources(tmp_path)
    assert native.folder(here) is None  # nothing built
    folder = _built(here)
    assert native.folder(here) == folder
    (here / f"{edited}.py").write_text("# edited\n")  # a module, one it relies on, the recipe
    assert native.folder(here) is None
    folder = _built(here)  # (built again)
    assert native.folder(here) == folder


def test_an_unfinished_or_half_removed_build_or_a_turned_off_one_is_not_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(native.OFF, raising=False)
    here = _sources(tmp_path)
    folder = _built(here)
    group = folder / "devenv" / f"{native.GROUP}{native.SUFFIX}"
    (folder / native.BUILT).unlink()  # (killed before it finished)
    assert native.folder(here) is None
    (folder / native.BUILT).write_text("\n")
    assert native.folder(here) == folder
    group.unlink()  # (a build being removed)
    assert native.folder(here) is None
    group.write_bytes(b"")
    monkeypatch.setenv(native.OFF, "1")
    assert native.folder(here) is None
    monkeypatch.setenv(native.OFF, "0")  # (not turned off)
    assert native.folder(here) == folder


def test_the_finder_loads_all_the_compiled_modules_from_the_build_or_none(
        tmp_path: Path) -> None:
    asked: list[int] = []

    def where() -> Path:
        asked.append(1)
        return tmp_path

    finder = native.Finder(where)
    for name in native.NAMES:
        spec = finder.find_spec(name)
        assert spec is not None and spec.origin == str(
            tmp_path / f"{name.replace('.', '/')}{native.SUFFIX}")
    assert finder.find_spec("devenv.telemetry.model") is None  # (not compiled)
    assert finder.find_spec("devenv.engine.ingress") is None  # (its package: as it is)
    assert len(asked) == 1  # (the digest: once a process)
    none = native.Finder(lambda: None)
    assert all(none.find_spec(name) is None for name in native.NAMES)


def test_the_compiled_modules_rely_on_no_other_module_of_devenv() -> None:
    """What a compiled module imports from devenv is compiled with it or in DEPENDS (its
    types are checked in the compiled code, so the digest must cover it)."""
    covered = {f"devenv.{name.replace('/', '.')}" for name in (*native.MODULES,
                                                               *native.DEPENDS)}
    for name in native.MODULES:
        tree = ast.parse((native.HERE / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("devenv"):
                module = node.module or ""
                assert module in covered or all(f"{module}.{a.name}" in covered
                                                for a in node.names), (name, module)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("devenv") or alias.name in covered


def test_the_hot_path_runs_compiled_where_it_can_be_built() -> None:
    if native.off():
        pytest.skip(f"{native.OFF} is set: this run tests the interpreted ingress")
    if shutil.which("cc") is None:
        pytest.skip("no C compiler here: the ingress runs interpreted (make native says so)")
    compiled, said, _ = native.describe()
    assert compiled, f"the ingress should run compiled after `make native`: {said}"
    folder = native.folder()
    assert folder is not None
    for name in native.NAMES:
        spec = importlib.import_module(name).__spec__
        assert spec is not None and spec.origin and spec.origin.startswith(str(folder)), name
    assert sys.modules["devenv.telemetry.model"].__file__.endswith(".py")  # type: ignore[union-attr]


def test_doctor_says_how_the_ingress_runs(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """(`make test` runs this file compiled, then interpreted: both answers are checked.)"""
    monkeypatch.delenv("DEVENV_EVENT_LOOP", raising=False)
    check = {c.name: c for c in machine_checks(tmp_path)}["ingress"]
    if native.compiled():
        assert (check.status, check.message) == ("ok", "compiled (mypyc), on uvloop")
        monkeypatch.setenv("DEVENV_EVENT_LOOP", "asyncio")
        check = {c.name: c for c in machine_checks(tmp_path)}["ingress"]
        assert (check.status, check.message) == (
            "ok", "compiled (mypyc), on asyncio's own loop (DEVENV_EVENT_LOOP=asyncio asks "
            "for it)")
    else:
        assert check.status == "warn" and check.message.startswith("interpreted: ")
        assert ("unset DEVENV_INTERPRETED" if os.environ.get(native.OFF) else
                "make native") in check.fix
