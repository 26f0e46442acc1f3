"""VS Code's `.vscode/launch.json`: devenv's attach configurations merged into the user's.

Pure (text in, text out). The file is JSONC: `//` and `/* */` comments and trailing commas
are read. devenv's entries are named `devenv: <service>`; merging replaces those in place and
leaves every other entry, and every other key, as it was. A file that cannot be read is
refused, never overwritten. Comments cannot be carried over into the rewritten JSON:
`merge` says when it drops some, so the caller can keep a copy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from devenv.core.errors import DevenvError

PREFIX = "devenv: "


@dataclass(frozen=True)
class Merged:
    text: str
    dropped_comments: bool
    changed: bool  # False: the file already says the same (nothing to write)


def entry(service: str, language: str, host: str, port: int, workdir: str) -> dict[str, Any]:
    """The attach configuration for a debugged service (paths are the same on both sides:
    the service runs here, in `workdir`)."""
    if language == "python":
        return {"name": PREFIX + service, "type": "debugpy", "request": "attach",
                "connect": {"host": host, "port": port},
                "pathMappings": [{"localRoot": workdir, "remoteRoot": workdir}],
                "justMyCode": False}
    return {"name": PREFIX + service, "type": "node", "request": "attach", "address": host,
            "port": port, "localRoot": workdir, "remoteRoot": workdir, "restart": True,
            "skipFiles": ["<node_internals>/**"]}


def parse(text: str | None, where: str = "launch.json") -> dict[str, Any]:
    """The document in `text` (None or blank: a new one). DevenvError when it cannot be read
    (not JSONC, or not an object with a `configurations` list)."""
    if text is None or not text.strip():
        return {"version": "0.2.0", "configurations": []}
    hint = "fix it (or move it away) and run the command again, or pass --no-launch-json"
    try:
        doc = json.loads(strip_jsonc(text)[0])
    except ValueError as exc:
        raise DevenvError(f"cannot read {where}: {exc}; it was left as it is",
                          hint=hint) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("configurations", []), list):
        raise DevenvError(f"cannot read {where}: not an object with a `configurations` "
                          "list; it was left as it is", hint=hint)
    return doc


def merge(text: str | None, entries: list[dict[str, Any]], where: str = "launch.json"
          ) -> Merged:
    """`text` (None: no file yet) with `entries` put in: an entry of the same name is
    replaced where it stands, a new one is added at the end."""
    doc = parse(text, where)
    before = json.dumps(doc, sort_keys=True)
    configs: list[Any] = doc.setdefault("configurations", [])
    doc.setdefault("version", "0.2.0")
    for new in entries:
        at = next((i for i, c in enumerate(configs)
                   if isinstance(c, dict) and c.get("name") == new["name"]), None)
        if at is None:
            configs.append(new)
        else:
            configs[at] = new
    changed = text is None or not text.strip() or json.dumps(doc, sort_keys=True) != before
    comments = text is not None and strip_jsonc(text)[1]
    return Merged(json.dumps(doc, indent=4, ensure_ascii=False) + "\n", comments, changed)


def strip_jsonc(text: str) -> tuple[str, bool]:
    """JSON from JSONC: comments, then trailing commas, removed (strings left alone); and
    whether there were comments."""
    bare = "".join(_scan(text, comments=True))
    return "".join(_scan(bare, comments=False)), bare != text


def _scan(text: str, comments: bool) -> list[str]:
    """The pieces of `text` kept: without comments (`comments`), else without commas that
    end an array or object."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif comments and text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif comments and text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif not comments and ch == "," and text[i + 1:].lstrip().startswith(("]", "}")):
            i += 1
        else:
            out.append(ch)
            i += 1
    return out
