"""The ingress's compiled build (`engine/ingress/native.py`): used only while it matches the
sources as they are, never an unfinished one, never when turned off; and, where a C compiler
and mypyc are present (as `make test` has them), the ingress the tests run is the compiled one
(`make test` runs the ingress's own tests interpreted as well)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from devenv.checks import machine_checks
from devenv.engine.ingress import native


def _sources(tmp_path: Path) -> Path:
    """A package tree as devenv's: the ingress's modules and those it imports."""
    here = tmp_path / "devenv/engine/ingress"
    for path in [here / f"{name}.py" for name in native.MODULES] + [
            tmp_path / "devenv" / d for d in native.DEPENDS]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# {path.name}\n")
    return here


def _built(here: Path) -> Path:
    folder = here / "_native" / native.digest(here)
    folder.mkdir(parents=True)
    (folder / f"{native.GROUP}.so").write_bytes(b"")
    (folder / native.BUILT).write_text("\n")
    return folder


def test_a_build_is_used_while_it_matches_the_sources(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(native.OFF, raising=False)
    here = _sources(tmp_path)
    assert native.folder(here) is None  # nothing built
    folder = _built(here)
    path = [str(here)]
    assert native.activate(path, here) == folder
    assert native.activate(path, here) == folder
    assert path == [str(folder), str(here)]  # first, once

    (here / "server.py").write_text("# server, edited\n")  # an edit: the build is older
    assert native.folder(here) is None
    assert native.activate([str(here)], here) is None
    folder = _built(here)
    (here.parent / "pool.py").write_text("# a type the compiled code relies on, edited\n")
    assert native.folder(here) is None


def test_an_unfinished_or_half_removed_build_or_a_turned_off_one_is_not_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(native.OFF, raising=False)
    here = _sources(tmp_path)
    folder = _built(here)
    (folder / native.BUILT).unlink()  # (killed before it finished)
    assert native.folder(here) is None
    (folder / native.BUILT).write_text("\n")
    assert native.folder(here) == folder
    (folder / f"{native.GROUP}.so").unlink()  # (a build being removed)
    assert native.folder(here) is None
    (folder / f"{native.GROUP}.so").write_bytes(b"")
    monkeypatch.setenv(native.OFF, "1")
    assert native.folder(here) is None


def test_the_ingress_runs_compiled_where_it_can_be_built() -> None:
    if os.environ.get(native.OFF):
        pytest.skip(f"{native.OFF} is set: this run tests the interpreted ingress")
    if shutil.which("cc") is None:
        pytest.skip("no C compiler here: the ingress runs interpreted (make native says so)")
    compiled, said, _ = native.describe()
    assert compiled, f"the ingress should run compiled after `make native`: {said}"
    assert native.folder() is not None


def test_doctor_says_how_the_ingress_runs(tmp_path: Path) -> None:
    """(`make test` runs this file compiled, then interpreted: both answers are checked.)"""
    check = {c.name: c for c in machine_checks(tmp_path)}["ingress"]
    if native.compiled():
        assert (check.status, check.message) == ("ok", "compiled (mypyc)")
    else:
        assert check.status == "warn" and check.message.startswith("interpreted: ")
        assert ("unset DEVENV_INTERPRETED" if os.environ.get(native.OFF) else
                "make native") in check.fix
