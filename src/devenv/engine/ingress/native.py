"""The ingress's data plane compiled to C (mypyc), used when a build matches its sources.

Its modules (`MODULES`) are plain, fully typed Python; mypyc compiles them as they are.
Compiled, their Python costs about two thirds of the interpreted CPU a request, which takes
0.25-0.3 ms off what the ingress adds at 32 connections on 2 cores (`bench/bench_ingress.py`).

`native.main()` builds them (mypyc, from the `mypy` package, and a C compiler; `make native`
runs it) into `_native/<digest>/` beside them. The package puts that folder first on its path
(`ingress/__init__.py`, `activate`), so `server`, `upstream`, … import from it. The digest
covers the sources and those whose types they rely on (`DEPENDS`), the interpreter's
extension ABI and mypy's version: an edited module is never shadowed by an older build, it
runs interpreted until built again. Without a compiler
(or with `DEVENV_INTERPRETED=1`) the same modules run interpreted, behaving the same; `devenv
doctor` says which it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from importlib import metadata
from pathlib import Path

MODULES = ("edge", "messages", "outbox", "routes", "server", "upstream")
# what they import from devenv (not compiled): the types mypyc takes from them are checked in
# the compiled code, so a change there needs a new build too (paths from the package `devenv`)
DEPENDS = ("engine/pool.py", "telemetry/context.py", "telemetry/model.py",
           "telemetry/sampling.py")
HERE = Path(__file__).resolve().parent
BUILT = "BUILT"  # written last: a folder without it is an unfinished build
OFF = "DEVENV_INTERPRETED"
GROUP = "native_group__mypyc"  # the compiled modules' shared library, without which none loads
STALE = 3600.0  # seconds: a temporary build folder this old was left by a killed build


def digest(here: Path = HERE) -> str:
    """What a build is for: these sources and those they import, this interpreter, this
    mypyc."""
    abi = sysconfig.get_config_var("EXT_SUFFIX")  # (version, debug or free-threaded, machine)
    h = hashlib.sha256(f"{abi} {sys.platform} {_mypy()}".encode())
    for path in [here / f"{name}.py" for name in MODULES] + [here.parents[1] / d
                                                             for d in DEPENDS]:
        h.update(path.read_bytes())
    return h.hexdigest()[:20]


def folder(here: Path = HERE) -> Path | None:
    """The finished build for the sources as they are now, if there is one and it is wanted."""
    if os.environ.get(OFF):
        return None
    try:
        found = here / "_native" / digest(here)
    except OSError:
        return None
    whole = (found / BUILT).is_file() and any(found.glob(f"{GROUP}*"))  # (being removed?)
    return found if whole else None


def activate(path: list[str], here: Path = HERE) -> Path | None:
    """Put the matching build first on the package's `path` (its `__path__`); which, if any."""
    found = folder(here)
    if found is not None and str(found) not in path:
        path.insert(0, str(found))
    return found


def compiled() -> bool:
    """Whether the ingress running in this process is the compiled one."""
    from devenv.engine.ingress import server
    return not (server.__file__ or "").endswith(".py")


def describe() -> tuple[bool, str, str]:
    """(compiled, what to tell a user, how to make it compiled) for `devenv doctor`."""
    if compiled():
        return True, "compiled (mypyc)", ""
    if os.environ.get(OFF):
        return False, f"interpreted: {OFF} is set", f"unset {OFF}"
    return False, "interpreted: not built for these sources", (
        "in devenv's checkout: `make native` (a C compiler and the mypy package; `make "
        "demo` and `make test` build it too)")


def build(here: Path = HERE) -> tuple[bool, str]:
    """Compile the modules into `_native/<digest>/` unless done already; (ok, what happened).
    Older builds are removed; a build runs in a temporary folder, moved in when it imports."""
    target = here / "_native" / digest(here)
    if (target / BUILT).is_file():
        return True, f"up to date ({target.name})"
    if not _mypy():
        return False, "mypy (with mypyc) is not installed"
    if shutil.which(os.environ.get("CC", "cc")) is None:
        return False, "no C compiler (cc) on PATH"
    (here / "_native").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=here / "_native"))
    try:
        out = work / "out"
        run = subprocess.run(
            [sys.executable, "-c", _SETUP, str(work), str(out),
             *(f"devenv/engine/ingress/{m}.py" for m in MODULES)],
            cwd=here.parents[2], capture_output=True, text=True, timeout=900,
            env={**os.environ, "MYPY_CACHE_DIR": str(work / "cache")})
        if run.returncode != 0:
            return False, "mypyc failed: " + (run.stderr or run.stdout).strip()[-2000:]
        check = subprocess.run([sys.executable, "-c", _CHECK, str(out)], capture_output=True,
                               text=True, timeout=60, env={**os.environ, OFF: ""})
        if check.returncode != 0:
            return False, "the compiled modules do not import: " + check.stderr.strip()[-2000:]
        (out / BUILT).write_text(target.name + "\n")
        try:
            out.rename(target)
        except OSError:  # another build finished first
            if not (target / BUILT).is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for old in (here / "_native").iterdir():  # older builds, and ones killed midway
        with contextlib.suppress(OSError):  # (another build's, removed meanwhile)
            if old.name.startswith(".build-"):
                if time.time() - old.stat().st_mtime > STALE:
                    shutil.rmtree(old)
            elif old != target:  # renamed first: never seen half removed
                gone = old.rename(old.with_name(f".build-old-{old.name}"))
                shutil.rmtree(gone)
    return True, f"built ({target.name})"


def _mypy() -> str:
    try:
        return metadata.version("mypy")
    except metadata.PackageNotFoundError:
        return ""


# Run in a child (mypyc works in the current directory, the source root): the C and the
# extensions go to the build folder, the group's shared library inside the package.
_SETUP = """
import os
import sys
from pathlib import Path
from mypyc.build import mypycify
from setuptools import setup
work, out, *paths = sys.argv[1:]
exts = mypycify(["--config-file", os.devnull, *paths], opt_level="3",  # (no config found
                group_name="devenv.engine.ingress.native_group",  # above: its plugins run)
                target_dir=str(Path(work) / "c"))
setup(name="devenv-ingress-native", ext_modules=exts, script_args=[
    "-q", "build_ext", "--build-lib", str(Path(work) / "lib"),
    "--build-temp", str(Path(work) / "temp")])
lib = Path(work) / "lib" / "devenv" / "engine" / "ingress"
Path(out).mkdir()
for so in lib.iterdir():
    so.rename(Path(out) / so.name)
"""

# The built modules must import, compiled, before the build counts.
_CHECK = """
import sys, types
import devenv.engine
package = types.ModuleType("devenv.engine.ingress")  # (its __init__ would import them first)
package.__path__ = [sys.argv[1], *(p + "/ingress" for p in devenv.engine.__path__)]
sys.modules[package.__name__] = package
from devenv.engine.ingress import server, upstream
assert not server.__file__.endswith(".py"), server.__file__
"""


def main() -> int:
    try:
        ok, said = build()
    except (OSError, subprocess.SubprocessError) as exc:  # (a read-only install, a hung cc)
        ok, said = False, str(exc)
    print(f"the ingress, compiled: {said}" if ok else
          f"note: the ingress runs interpreted (slower): {said}")
    return 0
