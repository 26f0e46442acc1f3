"""devenv's hot path compiled to C (mypyc), used when a build matches its sources.

What is compiled (`MODULES`): the ingress's data plane and what it calls for every request it
proxies (the pool's counting, the trace context and sampler, the request counts). They are
plain, fully typed Python, and mypyc compiles them as they are. Compiled, they cost about
half the interpreted CPU of the ingress's own work a request (`bench/bench_ingress.py`).

`main()` builds them (mypyc, from the `mypy` package, and a C compiler; `make native` runs it)
into `_native/<digest>/` beside this file. `install()` (from `devenv/__init__`) puts a finder
first on `sys.meta_path` that loads each of them from there while the digest matches: their
sources and those whose types they rely on (`DEPENDS`), this file (how they are built), the
interpreter's extension ABI. It is all of them or none (compiled, they call each other
directly): an edited module is never shadowed by an older build, they all run interpreted
until built again. The digest is computed once a process, when the first of them is imported.
Without a compiler (or with `DEVENV_INTERPRETED=1`) they run interpreted, behaving the same;
`devenv doctor` says which.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from importlib.machinery import EXTENSION_SUFFIXES, ModuleSpec
from importlib.util import spec_from_file_location
from pathlib import Path
from types import ModuleType

MODULES = ("engine/ingress/edge", "engine/ingress/messages", "engine/ingress/outbox",
           "engine/ingress/routes", "engine/ingress/server", "engine/ingress/upstream",
           "engine/pool", "telemetry/context", "telemetry/sampling", "telemetry/counts")
# what they import from devenv besides each other (not compiled, its classes pickled to the
# trace writer): the types mypyc takes from it are checked in the compiled code, so a change
# there needs a new build too; tests/test_unit_native.py keeps this list complete
DEPENDS = ("telemetry/model",)
HERE = Path(__file__).resolve().parent  # the package `devenv`
BUILT = "BUILT"  # written last: a folder without it is an unfinished build
OFF = "DEVENV_INTERPRETED"
GROUP = "native_group__mypyc"  # the compiled modules' shared library, without which none loads
SUFFIX = EXTENSION_SUFFIXES[0]  # this interpreter's extension ABI (version, debug, machine)
STALE = 3600.0  # seconds: a temporary build folder this old was left by a killed build
NAMES = frozenset([f"devenv.{m.replace('/', '.')}" for m in MODULES] + [f"devenv.{GROUP}"])


def off() -> bool:
    return os.environ.get(OFF, "") not in ("", "0")


def digest(here: Path = HERE) -> str:
    """What a build is for: these sources and those they rely on, this recipe, this
    interpreter's ABI."""
    import hashlib  # (here: every command imports devenv, few import the compiled modules)

    h = hashlib.sha256(f"{SUFFIX} {sys.platform}".encode())
    for name in (*MODULES, *DEPENDS, "native"):
        h.update((here / f"{name}.py").read_bytes())
    return h.hexdigest()[:20]


def folder(here: Path = HERE) -> Path | None:
    """The finished build for the sources as they are now, if there is one and it is wanted."""
    if off():
        return None
    try:
        found = here / "_native" / digest(here)
    except OSError:
        return None
    whole = (found / BUILT).is_file() and any(found.glob(f"devenv/{GROUP}*"))  # (being removed?)
    return found if whole else None


class Finder:
    """Loads the compiled modules from a build (`where()`, asked once, when the first of them
    is imported); any other module, or all of them without a build, the usual way."""

    def __init__(self, where: Callable[[], Path | None]):
        self.where = where
        self._found: list[Path | None] = []

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if name not in NAMES:
            return None
        if not self._found:
            self._found.append(self.where())
        found = self._found[0]
        if found is None:
            return None
        return spec_from_file_location(name, found / f"{name.replace('.', '/')}{SUFFIX}")


def install(where: Callable[[], Path | None] = folder) -> Finder:
    """Put a finder for the compiled modules first on `sys.meta_path` (once per `where`)."""
    for finder in sys.meta_path:
        if isinstance(finder, Finder) and finder.where is where:
            return finder
    finder = Finder(where)
    sys.meta_path.insert(0, finder)
    return finder


def compiled() -> bool:
    """Whether the modules running in this process are the compiled ones."""
    from devenv.engine.ingress import server
    return not (server.__file__ or "").endswith(".py")


def describe() -> tuple[bool, str, str]:
    """(compiled, what to tell a user, how to make it compiled) for `devenv doctor`."""
    if compiled():
        return True, "compiled (mypyc)", ""
    if off():
        return False, f"interpreted: {OFF} is set", f"unset {OFF}"
    return False, "interpreted: not built for these sources", (
        "in devenv's checkout: `make native` (a C compiler and the mypy package; `make "
        "demo` and `make test` build it too); elsewhere: python -c 'from devenv import "
        "native; native.main()'")


def build(here: Path = HERE) -> tuple[bool, str]:
    """Compile the modules into `_native/<digest>/` unless done already (with this mypyc,
    when there is one); (ok, what happened). A build runs in a temporary folder, moved in
    once it imports; other builds for this extension ABI are removed, but for one matching
    the sources as they are by then. (A process that has loaded some of the modules from a
    build removed meanwhile fails to load the rest: it loads them in one burst at start.)"""
    import shlex
    import shutil
    import subprocess
    import tempfile
    import time

    target, mypy = here / "_native" / digest(here), _mypy()
    stamp = f"{SUFFIX}\nmypy {mypy}\n"
    with contextlib.suppress(OSError):
        if (target / BUILT).read_text() == stamp or not mypy:
            return True, f"up to date ({target.name})"
    if not mypy:
        return False, "mypy (with mypyc) is not installed"
    compiler = (shlex.split(os.environ.get("CC", "")) or ["cc"])[0]
    if shutil.which(compiler) is None:
        return False, f"no C compiler ({compiler}) on PATH"
    (here / "_native").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=here / "_native"))
    try:
        # a snapshot is compiled, and named by its own digest: a file saved meanwhile is not
        # built under a digest it does not match
        snapshot = work / "src"
        shutil.copytree(here, snapshot / "devenv", ignore=shutil.ignore_patterns(
            "_native", "__pycache__", "*.so", "*.pyc"))
        target = here / "_native" / digest(snapshot / "devenv")
        out = work / "out"
        run = subprocess.run(
            [sys.executable, "-c", _SETUP, str(work), str(out),
             *(f"devenv/{m}.py" for m in MODULES)],
            cwd=snapshot, capture_output=True, text=True, timeout=900,
            env={**os.environ, "MYPY_CACHE_DIR": str(work / "cache")})
        if run.returncode != 0:
            return False, "mypyc failed: " + (run.stderr or run.stdout).strip()[-2000:]
        check = subprocess.run([sys.executable, "-c", _CHECK, str(out)], capture_output=True,
                               text=True, timeout=60, env={**os.environ, OFF: ""})
        if check.returncode != 0:
            return False, "the compiled modules do not import: " + check.stderr.strip()[-2000:]
        (out / BUILT).write_text(stamp)
        with contextlib.suppress(OSError):
            if (target / BUILT).read_text() != stamp:  # an older mypyc's build of the same
                target.rename(target.with_name(f".build-old-{target.name}-{work.name}"))
        try:  # (an identical one, finished meanwhile by another build, is left as it is)
            out.rename(target)
        except OSError:  # another build finished first
            if not (target / BUILT).is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    keep = {target, here / "_native" / digest(here)}  # (the sources may be back as they were)
    for old in (here / "_native").iterdir():  # older builds, and ones killed midway
        with contextlib.suppress(OSError):  # (another build's, removed meanwhile)
            if old.name.startswith(".build-"):
                if old.name.startswith(".build-old-") or \
                        time.time() - old.stat().st_mtime > STALE:
                    shutil.rmtree(old)
            elif old not in keep and (old / BUILT).read_text().startswith(f"{SUFFIX}\n"):
                # (another interpreter's build is its own; renamed first: never half seen)
                shutil.rmtree(old.rename(old.with_name(f".build-old-{old.name}")))
    return True, f"built ({target.name})"


def _mypy() -> str:
    from importlib import metadata
    try:
        return metadata.version("mypy")
    except metadata.PackageNotFoundError:
        return ""


# Run in a child, in the source root (mypyc works in the current directory): the C and the
# extensions go to the build folder, laid out as the package is.
_SETUP = """
import os
import sys
from pathlib import Path
from mypyc.build import mypycify
from setuptools import setup
work, out, *paths = sys.argv[1:]
exts = mypycify(["--config-file", os.devnull, *paths], opt_level="3",  # (no config found
                group_name="devenv.native_group",  # above: its plugins would run)
                target_dir=str(Path(work) / "c"))
setup(name="devenv-native", ext_modules=exts, script_args=[
    "-q", "build_ext", "--build-lib", str(Path(work) / "lib"),
    "--build-temp", str(Path(work) / "temp")])
(Path(work) / "lib").rename(out)
"""

# The built modules must import, compiled, before the build counts.
_CHECK = """
import importlib, sys
from pathlib import Path
from devenv import native
native.install(lambda: Path(sys.argv[1]))
for name in sorted(native.NAMES):
    origin = importlib.import_module(name).__spec__.origin or ""
    assert origin.startswith(sys.argv[1]) and not origin.endswith(".py"), origin
"""


def main() -> int:
    import subprocess
    try:
        ok, said = build()
    except (OSError, subprocess.SubprocessError) as exc:  # (a read-only install, a hung cc)
        ok, said = False, str(exc)
    print(f"the hot path, compiled: {said}" if ok else
          f"note: the ingress runs interpreted (slower): {said}")
    return 0
