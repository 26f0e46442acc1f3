"""Dev servers that reload themselves: devenv leaves their reloads to them.

Restarting a server that already hot-reloads (vite's HMR, next dev, nodemon, uvicorn --reload)
only costs its start-up and its browser page's state, so their watch action defaults to none.
`reloads_itself` reads the service's command (and a package.json script it runs) and names
the tool, or None.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

# (tool, pattern over the command's words joined by single spaces)
_SERVERS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern)) for name, pattern in (
        ("vite", r"(^|[ /])vite( (dev|serve)\b| --|$)(?!.*\b(build|preview)\b)"),
        ("next dev", r"(^|[ /])next dev\b"),
        ("nuxt dev", r"(^|[ /])nuxi? dev\b"),
        ("astro dev", r"(^|[ /])astro dev\b"),
        ("remix dev", r"(^|[ /])remix (vite:)?dev\b"),
        ("gatsby develop", r"(^|[ /])gatsby develop\b"),
        ("ng serve", r"(^|[ /])ng serve\b"),
        ("react-scripts start", r"(^|[ /])react-scripts start\b"),
        ("webpack serve", r"(^|[ /])webpack(-cli)? serve\b|(^|[ /])webpack-dev-server\b"),
        ("nodemon", r"(^|[ /])nodemon\b"),
        ("node --watch", r"(^|[ /])(node|bun|deno) (run )?(.* )?--(watch|hot)\b"),
        ("tsx watch", r"(^|[ /])tsx watch\b"),
        ("ts-node-dev", r"(^|[ /])(ts-node-dev|tsnd)\b"),
        ("uvicorn --reload", r"(^|[ /])uvicorn\b.* --reload\b"),
        ("hypercorn --reload", r"(^|[ /])hypercorn\b.* --reload\b"),
        ("gunicorn --reload", r"(^|[ /])gunicorn\b.* --reload\b"),
        ("fastapi dev", r"(^|[ /])fastapi dev\b"),
        ("flask --reload", r"(^|[ /])flask\b.* (--reload|--debug)\b"),
        ("django runserver", r"(^|[ /])manage\.py runserver\b(?!.*--noreload)"),
        ("watchexec", r"(^|[ /])watchexec\b"),
        ("cargo watch", r"(^|[ /])cargo watch\b"),
        ("air", r"(^|[ /])air( |$)"),
        ("dotnet watch", r"(^|[ /])dotnet watch\b"),
    ))
_SCRIPT = re.compile(r"^(npm|pnpm|yarn|bun)( run)? ([\w:.-]+)$")


def reloads_itself(command: str | list[str] | tuple[str, ...] | None, folder: Path,
                   env: dict[str, str] | None = None) -> str | None:
    """The tool in `command` (run in `folder`) that reloads on its own, or None."""
    if not command:
        return None
    words = command if isinstance(command, (list, tuple)) else _split(command)
    text = " ".join(words)
    if found := _match(text):
        return found
    if (env or {}).get("FLASK_DEBUG") == "1" and re.search(r"(^|[ /])flask\b.* run\b", text):
        return "flask --debug"
    if m := _SCRIPT.match(text):  # `npm run dev`: what the script runs
        script = _package_script(folder, m.group(3))
        if script and (found := _match(" ".join(_split(script)))):
            return found
    return None


def _match(text: str) -> str | None:
    return next((name for name, pattern in _SERVERS if pattern.search(text)), None)


def _split(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:
        return command.split()


def _package_script(folder: Path, name: str) -> str | None:
    try:
        scripts = json.loads((folder / "package.json").read_text(encoding="utf-8"))["scripts"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    script = scripts.get(name) if isinstance(scripts, dict) else None
    return script if isinstance(script, str) else None
