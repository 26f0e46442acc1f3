"""Python services in one folder: Django's manage.py, FastAPI/Flask apps, any script that
serves or loops under `if __name__ == "__main__"` (one service per file), pyproject scripts."""

from __future__ import annotations

import tomllib
from pathlib import Path

from devenv.scaffold.found import Found, port_plan
from devenv.scaffold.source import TOP_LEVEL_RUN, Source, analyse, app_variable

ENTRY_NAMES = ("main", "app", "api", "server")
NOT_SERVICES = {"setup", "conftest", "manage", "settings", "urls", "wsgi", "asgi",
                "__init__", "__main__", "noxfile", "fabfile", "tasks"}
EXAMPLE = 'int(os.environ.get("PORT", {n}))'


def detect(folder: Path, rel: str, label: str,
           modules: dict[str, Source] | None = None) -> list[Found]:
    """`label`: how the folder is shown in a `why` ('' at the project's root); `modules`:
    the project's other Python modules by name (a shared lib/ on PYTHONPATH)."""
    out: list[Found] = []
    if (folder / "manage.py").is_file():
        out.append(Found("", "python manage.py runserver 127.0.0.1:$PORT", rel,
                         f"{label}manage.py: a Django project", port_why="runserver on $PORT"))
    texts = {p.stem: p.read_text(errors="replace") for p in sorted(folder.glob("*.py"))
             if _candidate(p)}
    sources = {stem: analyse(f"{label}{stem}.py", text) for stem, text in texts.items()}
    imported = {m for s in sources.values() for m in s.imports if m in sources}
    for stem, source in sources.items():
        local = tuple((sources.get(m) or (modules or {})[m]) for m in sorted(source.imports)
                      if m != stem and (m in sources or m in (modules or {})))
        found = _classify(stem, texts[stem], source, local, rel, stem in imported)
        if found:
            found.sources = (source, *local)
            out.append(found)
    out += _scripts(folder, rel, label)
    return out


def _candidate(path: Path) -> bool:
    stem = path.stem
    return path.is_file() and stem not in NOT_SERVICES and not stem.startswith("test_") \
        and not stem.endswith("_test")


def _classify(stem: str, text: str, s: Source, helpers: tuple[Source, ...], rel: str,
              imported: bool) -> Found | None:
    """`helpers`: the modules it imports, which may choose the port (a shared app class)."""
    runs = s.main_guard or bool(TOP_LEVEL_RUN.search(text))
    if imported and not s.main_guard:
        return None  # a module another file here imports
    module, file = stem, f"{stem}.py"
    p = next((x for x in (s, *helpers) if x.port), s)
    health = s.health or next((x.health for x in helpers if x.health), None)
    runs_itself = s.main_guard and p.port is not None and p.port.var is not None
    for factory, cli in (("FastAPI", "uvicorn {m}:{v} --host 127.0.0.1 --port $PORT"),
                         ("Flask", "flask --app {m}:{v} run --port $PORT")):
        if f"{factory}(" in text and not runs_itself:
            var = app_variable(text, factory)
            return Found(stem, cli.format(m=module, v=var), rel,
                         f"{s.name}: a {factory} app ({var} = {factory}())",
                         port_why=f"{cli.split()[0]} listens on $PORT", health=health)
    if s.listener and (runs or stem in ENTRY_NAMES):
        found = Found(stem, f"python {file}", rel,
                      f"{s.name}: {s.listener}" + (" under `if __name__ == \"__main__\"`"
                                                   if s.main_guard else ""), health=health)
        return port_plan(found, p, EXAMPLE)
    if s.loop and runs:
        return Found(stem, f"python {file}", rel,
                     f"{s.name}: a long-running worker ({s.loop}) with no listener",
                     listens=False)
    if stem in ENTRY_NAMES and s.main_guard:
        found = Found(stem, f"python {file}", rel, f"{s.name}: a Python entry point "
                      "(no listener found: check that it is a service)", listens=False)
        return port_plan(found, p, EXAMPLE) if p.port else found
    return None


def _scripts(folder: Path, rel: str, label: str) -> list[Found]:
    """[project.scripts] / [tool.poetry.scripts] whose module serves or loops."""
    path = folder / "pyproject.toml"
    if not path.is_file():
        return []
    try:
        data = tomllib.loads(path.read_text(errors="replace"))
    except tomllib.TOMLDecodeError:
        return []
    scripts = {**data.get("project", {}).get("scripts", {}),
               **data.get("tool", {}).get("poetry", {}).get("scripts", {})}
    out = []
    for name, target in scripts.items():
        module = str(target).partition(":")[0]
        file = _module_file(folder, module)
        if file is None:
            continue
        text = file.read_text(errors="replace")
        s = analyse(f"{label}{file.relative_to(folder)}", text)
        if not (s.listener or s.loop):
            continue
        what = s.listener or f"a long-running worker ({s.loop})"
        found = Found(name, name, rel, f"{label}pyproject.toml script {name} = {target}: "
                      f"{what} (installed by `pip install -e .`)", listens=bool(s.listener),
                      named=True, health=s.health, sources=(s,))
        out.append(port_plan(found, s, EXAMPLE) if s.listener else found)
    return out


def _module_file(folder: Path, module: str) -> Path | None:
    parts = module.split(".")
    for base in (folder, folder / "src"):
        for path in (base.joinpath(*parts).with_suffix(".py"),
                     base.joinpath(*parts, "__init__.py")):
            if path.is_file():
                return path
    return None
