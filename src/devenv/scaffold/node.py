"""Node services in one folder: package.json's scripts (dev, start) or main, else the usual
entry files (server.js, index.js, app.js, main.js) that serve or loop."""

from __future__ import annotations

import json
import re
from pathlib import Path

from devenv.scaffold.data import module_kinds, node_kinds
from devenv.scaffold.found import Found, port_plan
from devenv.scaffold.source import Source, analyse

ENTRY_FILES = [f"{stem}{ext}" for stem in ("server", "index", "app", "main")
               for ext in (".js", ".mjs", ".cjs")]
EXAMPLE = "process.env.PORT || {n}"


def detect(folder: Path, rel: str, label: str) -> list[Found]:
    pkg = folder / "package.json"
    if pkg.is_file() and (found := _package(folder, pkg, rel, label)):
        return [found]  # (a package.json with nothing to run: its entry files, as npm does)
    sources = {f: analyse(f"{label}{f}", (folder / f).read_text(errors="replace"))
               for f in ENTRY_FILES if (folder / f).is_file()}
    kept = {f: s for f, s in sources.items() if s.listener or s.loop}
    required = {_local(m) for s in kept.values() for m in s.imports if m.startswith(".")}
    out = []
    for file, s in kept.items():
        if file in required or Path(file).stem in required:
            continue  # a module another entry file here requires
        if s.listener:
            found = port_plan(Found(Path(file).stem, f"node {file}", rel,
                                    f"{s.name}: {s.listener} (no package.json)",
                                    health=s.health, sources=(s,)), s, EXAMPLE)
        else:
            found = Found(Path(file).stem, f"node {file}", rel, f"{s.name}: a long-running "
                          f"worker ({s.loop}) with no listener", listens=False, sources=(s,))
        found.uses = _uses(s)
        out.append(found)
    return out


def _local(spec: str) -> str:
    return spec.removeprefix("./")


def _uses(s: Source) -> dict[str, str]:
    return {k: f"{s.name} imports {m}" for k, m in module_kinds(s.imports, False).items()}


def _package(folder: Path, pkg: Path, rel: str, label: str) -> Found | None:
    text = pkg.read_text(errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    scripts = data.get("scripts")
    scripts = {k: v for k, v in scripts.items() if isinstance(v, str)} \
        if isinstance(scripts, dict) else {}
    main = data.get("main") if isinstance(data.get("main"), str) else None
    if "dev" in scripts:
        command, why = "npm run dev", f"scripts.dev: {scripts['dev']}"
    elif "start" in scripts:
        command, why = "npm start", f"scripts.start: {scripts['start']}"
    elif main:
        command, why = f"node {main}", f"main: {main}"
    else:
        return None
    name = str(data.get("name") or folder.name).split("/")[-1]
    found = Found(name, command, rel, f"{label}package.json {why}",
                  port_why="npm scripts get PORT from devenv", named=True)
    entry = _entry(folder, scripts, main)
    if entry is not None:
        s = analyse(f"{label}{entry}", (folder / entry).read_text(errors="replace"))
        found.sources, found.health = (s,), s.health
        if s.loop and not s.listener:
            found.listens, found.why = False, found.why + f" (a worker: {s.loop})"
        elif command.startswith("node ") or re.fullmatch(r"node \S+", scripts.get("start", "")):
            port_plan(found, s, EXAMPLE)
        found.uses = _uses(s)
    found.uses = {k: f"{label}package.json depends on {m}"
                  for k, m in node_kinds(text).items()} | found.uses
    return found


def _entry(folder: Path, scripts: dict[str, str], main: str | None) -> str | None:
    """The file the package runs: `node X` in start or dev, else main, else the usual names."""
    for script in (scripts.get("start", ""), scripts.get("dev", "")):
        m = re.search(r"\bnode(?:mon)?\s+(?:--\S+\s+)*(\S+\.[cm]?js)\b", script)
        if m and (folder / m.group(1)).is_file():
            return m.group(1)
    if main and (folder / main).is_file():
        return str(main)
    return next((f for f in ENTRY_FILES if (folder / f).is_file()), None)
