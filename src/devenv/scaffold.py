"""`devenv init`: find the services in a folder and write a commented devenv.yaml."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

FIRST_PORT = 8000
SKIP = {"node_modules", ".git", ".venv", "venv", "__pycache__", ".devenv", "dist", "build"}


@dataclass
class Found:
    name: str
    command: str
    path: str
    why: str
    port: bool = True
    env: dict[str, str] = field(default_factory=dict)


def detect(root: Path) -> list[Found]:
    procfile = root / "Procfile"
    if procfile.is_file():
        return _procfile(procfile)
    found: list[Found] = []
    for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir() and p.name not in SKIP
                                 and not p.name.startswith("."))]:
        rel = "." if folder == root else folder.name
        name = _name(root.name if folder == root else folder.name)
        item = _node(folder, name, rel) or _python(folder, name, rel)
        if item:
            found.append(item)
    return found


def _name(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "app"


def _procfile(path: Path) -> list[Found]:
    out = []
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_-]+):\s*(.+)$", line.strip())
        if match:
            name, command = _name(match.group(1)), match.group(2)
            out.append(Found(name, command, ".", "Procfile",
                             port="$PORT" in command or name == "web"))
    return out


def _node(folder: Path, name: str, rel: str) -> Found | None:
    pkg = folder / "package.json"
    if not pkg.is_file():
        return None
    try:
        data = json.loads(pkg.read_text())
    except ValueError:
        return None
    scripts = data.get("scripts", {})
    if "dev" in scripts:
        command = "npm run dev"
    elif "start" in scripts:
        command = "npm start"
    elif data.get("main"):
        command = f"node {data['main']}"
    else:
        return None
    return Found(_name(data.get("name", name).split("/")[-1]), command, rel,
                 "package.json")


def _python(folder: Path, name: str, rel: str) -> Found | None:
    if (folder / "manage.py").is_file():
        return Found(name, "python manage.py runserver 127.0.0.1:$PORT", rel, "Django manage.py")
    for entry in ("main.py", "app.py", "server.py"):
        path = folder / entry
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        module = entry.removesuffix(".py")
        if "FastAPI(" in text:
            return Found(name, f"uvicorn {module}:app --host 127.0.0.1 --port $PORT", rel,
                         f"FastAPI app in {entry}")
        if "Flask(" in text:
            return Found(name, f"flask --app {module} run --port $PORT", rel,
                         f"Flask app in {entry}")
        return Found(name, f"python {entry}", rel, f"Python {entry}",
                     port="PORT" in text)
    return None


def render(project: str, found: list[Found]) -> str:
    lines = [
        f"# devenv.yaml for {project}: every service, declared once.",
        "# Start everything with `devenv up`; check this file with `devenv config validate`.",
        "# Editor completion: `devenv config schema > .devenv-schema.json`.",
        "version: 1",
        f"name: {project}",
        "",
        "services:",
    ]
    if not found:
        lines[-1:] = [
            "# No services were detected. Declare them like this:",
            "#   api:",
            "#     command: python app.py     # must listen on $PORT",
            "#     port: 8000                 # the service's stable address",
            "#     health: {http: /healthz}",
            "services: {}",
        ]
        return "\n".join(lines) + "\n"
    port = FIRST_PORT
    for item in found:
        lines.append(f"  {item.name}:  # found: {item.why}")
        lines.append(f"    command: {json.dumps(item.command)}")
        if item.path != ".":
            lines.append(f"    path: {item.path}")
        if item.port:
            lines.append(f"    port: {port}  # stable address; the process listens on $PORT")
            lines.append("    # health: {http: /healthz}  # default: TCP check on the port")
            port += 1
        lines.append("    # depends_on: [other-service]  # started first; gives OTHER_SERVICE_URL")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
