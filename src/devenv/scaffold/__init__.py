"""`devenv init`: find the services in a folder and write a commented devenv.yaml.

`detect` walks the project (its root and two levels of folders), asks `node` and `python`
what each folder runs, then `wire` finds the data services they use; `render` writes the
YAML, every guess with its `why`."""

from __future__ import annotations

import re
from pathlib import Path

from devenv.scaffold import node, python
from devenv.scaffold.found import DataFound, Found, Scan, service_name
from devenv.scaffold.render import render
from devenv.scaffold.source import Source, analyse
from devenv.scaffold.wire import wire

SKIP = {"node_modules", ".git", ".venv", "venv", "env", "__pycache__", ".devenv", "dist",
        "build", "tests", "test", "migrations", "site-packages", "static", "public"}
MAX_DEPTH = 2


def detect(root: Path) -> Scan:
    procfile = root / "Procfile"
    scan = Scan(_procfile(procfile) if procfile.is_file() else _walk(root))
    wire(root, scan)
    return scan


def _walk(root: Path) -> list[Found]:
    found: list[Found] = []
    modules = _modules(root)
    queue = [(root, 0)]
    while queue:
        folder, depth = queue.pop(0)
        rel = "." if folder == root else folder.relative_to(root).as_posix()
        label = "" if folder == root else f"{rel}/"
        here = node.detect(folder, rel, label) + python.detect(folder, rel, label, modules)
        default = service_name(root.name if folder == root else folder.name)
        for item in here:
            if not item.named and (len(here) == 1 or not item.name):
                item.name = default
            item.name = service_name(item.name)
        found += here
        if depth < MAX_DEPTH and (folder == root or not here) \
                and not (folder / "package.json").is_file():
            queue += [(sub, depth + 1) for sub in _subfolders(folder)]
    _unique(found)
    return found


def _modules(root: Path) -> dict[str, Source]:
    """The project's Python modules by name, analysed (what a service may import from a
    shared folder); the first found of a name wins."""
    out: dict[str, Source] = {}
    folders = [root]
    for _ in range(MAX_DEPTH):
        folders += [sub for f in folders for sub in _subfolders(f) if sub not in folders]
    for folder in folders:
        for path in sorted(folder.glob("*.py")):
            if path.stem not in out and path.is_file():
                out[path.stem] = analyse(path.relative_to(root).as_posix(),
                                         path.read_text(errors="replace"))
    return out


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name not in SKIP
                  and not p.name.startswith((".", "_")))


def _unique(found: list[Found]) -> None:
    seen: set[str] = set()
    for item in found:
        base, n = item.name, 2
        while item.name in seen:
            item.name, n = f"{base}-{n}", n + 1
        seen.add(item.name)


def _procfile(path: Path) -> list[Found]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        match = re.match(r"^([A-Za-z0-9_-]+):\s*(.+)$", line.strip())
        if match:
            name, command = service_name(match.group(1)), match.group(2)
            listens = "$PORT" in command or name == "web"
            out.append(Found(name, command, ".", f"Procfile line '{match.group(1)}'",
                             listens=listens, port_why="Procfile commands listen on $PORT"))
    _unique(out)
    return out


__all__ = ["DataFound", "Found", "Scan", "detect", "render"]
