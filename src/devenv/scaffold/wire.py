"""Data services from what the app services import, read and list, wired to their users;
then every service's stable port."""

from __future__ import annotations

from pathlib import Path

from devenv.scaffold.data import (
    DATA,
    URL_VARS,
    django_postgres,
    module_kinds,
    pyproject_names,
    python_kinds,
    requirement_names,
    var_kind,
)
from devenv.scaffold.found import DataFound, Found, Scan

FIRST_PORT = 8000


def wire(root: Path, scan: Scan) -> None:
    listed: dict[str, list[str]] = {}  # kind -> why (manifests)
    for f in scan.services:
        _code_uses(f)
        if f.command.startswith("python manage.py") and django_postgres(root / f.path):
            f.uses.setdefault("postgres", f"{_label(f.path)}settings.py names postgresql")
    for folder, manifest, kinds in _python_manifests(root, scan):
        scope = [f for f in scan.services if _python(f) and _under(f.path, folder)]
        for kind, package in kinds.items():
            why = f"{manifest} lists {package}"
            listed.setdefault(kind, []).append(why)
            if not any(kind in f.uses for f in scope):  # no file says which: all of them
                for f in scope:
                    f.uses[kind] = f"{why} (no file shows which service uses it)"
    for f in scan.services:  # (package.json: the service's own dependencies)
        for kind, why in f.uses.items():
            if "package.json" in why:
                listed.setdefault(kind, []).append(why)
    taken = {f.name for f in scan.services}
    for kind in DATA:
        users = [f for f in scan.services if kind in f.uses]
        if not users and kind not in listed:
            continue
        name = next(n for n in (DATA[kind][0], kind, f"{kind}-data") if n not in taken)
        taken.add(name)
        reasons = list(dict.fromkeys(listed.get(kind, [])))
        if users:
            reasons.append("used by " + ", ".join(f.name for f in users))
        scan.data.append(DataFound(kind, name, DATA[kind][1], reasons))
        for f in users:
            _depend(f, kind, name)
    _app_dependencies(scan)
    _ports(scan)


def _app_dependencies(scan: Scan) -> None:
    """A service that reads API_URL depends on the service `api` (devenv sets API_URL)."""
    servers = {f.name.upper().replace("-", "_") + "_URL": f for f in scan.services if f.listens}
    for f in scan.services:
        for var in f.reads:
            target = servers.get(var)
            if target is not None and target is not f and target.name not in f.depends_on \
                    and not _reaches(scan, target.name, f.name):  # (no cycle)
                source = next(s.name for s in f.sources if var in s.reads)
                f.depends_on[target.name] = f"{source} reads {var}, which devenv sets"


def _reaches(scan: Scan, start: str, goal: str) -> bool:
    deps = {f.name: f.depends_on for f in scan.services}
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name == goal:
            return True
        if name not in seen:
            seen.add(name)
            todo += list(deps.get(name, {}))
    return False


def _code_uses(f: Found) -> None:
    for s in f.sources:
        for kind, module in module_kinds(s.imports, s.name.endswith(".py")).items():
            f.uses.setdefault(kind, f"{s.name} imports {module}")
        for var in s.reads:
            if (named := var_kind(var)) is not None:
                f.uses.setdefault(named, f"{s.name} reads {var}")


def _depend(f: Found, kind: str, name: str) -> None:
    """depends_on the data service; a URL variable the code reads that devenv does not set
    is set by the command from the one it does."""
    given = {URL_VARS[kind], name.upper().replace("-", "_") + "_URL"}
    why = f.uses[kind]
    for var in f.reads:
        if var_kind(var) != kind or not var.endswith(("_URL", "_DSN", "_URI")):
            continue
        if var in given:
            why += f"; devenv sets {var}"
        else:
            f.command = f'{var}="${URL_VARS[kind]}" {f.command}'
            why += f"; it reads {var}, which the command sets from {URL_VARS[kind]}"
    f.depends_on[name] = why


def _python_manifests(root: Path, scan: Scan) -> list[tuple[str, str, dict[str, str]]]:
    out = []
    for folder in sorted({"."} | {f.path for f in scan.services}):
        base = root / folder
        for path in sorted(base.glob("requirements*.txt")) + [base / "pyproject.toml"]:
            if not path.is_file():
                continue
            text = path.read_text(errors="replace")
            names = pyproject_names(text) if path.suffix == ".toml" else requirement_names(text)
            kinds = python_kinds(names)
            if kinds:
                out.append((folder, f"{_label(folder)}{path.name}", kinds))
    return out


def _python(f: Found) -> bool:
    return f.command.startswith(("python", "uvicorn", "flask")) or \
        any(s.name.endswith(".py") for s in f.sources) or "Procfile" in f.why


def _under(path: str, folder: str) -> bool:
    return folder == "." or path == folder or path.startswith(folder + "/")


def _label(folder: str) -> str:
    return "" if folder == "." else f"{folder}/"


def _ports(scan: Scan) -> None:
    used = {d.port for d in scan.data}
    wanted = [f for f in scan.services if f.listens]
    for f in wanted:  # the code's own defaults first, so they win over assigned ones
        if f.port is not None and f.port not in used:
            used.add(f.port)
        elif f.port is not None:
            f.port_why += f"; its default {f.port} is taken by another service here"
            f.port = None
    port = FIRST_PORT
    for f in wanted:
        if f.port is None:
            while port in used:
                port += 1
            f.port = port
            used.add(port)
