"""Loading datasets all-or-nothing, with errors that name the file and line.

SQL files run statement by statement inside one transaction per database; Redis files (one
command per line, redis-cli quoting, `#` comments) are queued in one MULTI/EXEC. Nothing is
committed until every file of every service has run.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devenv.core.errors import DevenvError


@dataclass(frozen=True)
class Statement:
    line: int  # where the statement starts in its file (1-based)
    text: str


class DatasetError(DevenvError):
    pass


def split_sql(text: str) -> Iterator[Statement]:
    """Top-level statements of a SQL script: quotes, dollar quotes and comments respected."""
    i, n, line = 0, len(text), 1
    start, start_line = 0, 1
    seen_code = False
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        if c == "-" and text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if c == "/" and text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            line += text.count("\n", i, end)
            i = end
            continue
        if not seen_code and not c.isspace():
            seen_code, start, start_line = True, i, line
        if c in ("'", '"'):
            end = i + 1
            while end < n:
                if text[end] == c:
                    if end + 1 < n and text[end + 1] == c:
                        end += 2
                        continue
                    break
                end += 1
            line += text.count("\n", i, end)
            i = end + 1
            continue
        if c == "$":
            tag_end = text.find("$", i + 1)
            tag = text[i:tag_end + 1] if tag_end > 0 else ""
            if tag and (tag == "$$" or tag[1:-1].replace("_", "a").isalnum()):
                end = text.find(tag, tag_end + 1)
                end = n if end < 0 else end + len(tag)
                line += text.count("\n", i, end)
                i = end
                continue
        if c == ";":
            if seen_code:
                yield Statement(start_line, text[start:i])
            seen_code = False
        i += 1
    if seen_code and text[start:].strip():
        yield Statement(start_line, text[start:])


def parse_redis(path: Path, shown: str) -> list[tuple[int, list[str]]]:
    """A Redis dataset file: one command per line, e.g. `HSET product:1 name "Green tea"`."""
    commands = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise DatasetError(f"{shown}:{number}: cannot read the command: {exc}") from exc
        commands.append((number, argv))
    return commands


@dataclass(frozen=True)
class Target:
    service: str
    kind: str
    url: str  # reaching the running server


async def load_files(root: Path, files: dict[str, list[str]],
                     targets: dict[str, Target]) -> dict[str, int]:
    """Load every file; all or nothing. Returns how many statements/commands per target."""
    import psycopg
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    plans: list[tuple[str, Target, list[tuple[str, Any]]]] = []
    for key, names in files.items():
        target = targets[key]
        items: list[tuple[str, Any]] = []
        for name in names:
            path = root / name
            if target.kind == "postgres":
                items += [(name, st) for st in split_sql(path.read_text())]
            else:
                items += [(name, cmd) for cmd in parse_redis(path, name)]
        plans.append((key, target, items))

    connections: list[Any] = []
    pipelines: list[Any] = []
    counts: dict[str, int] = {}
    try:
        for key, target, items in plans:
            if target.kind == "postgres":
                conn = await psycopg.AsyncConnection.connect(target.url)
                connections.append(conn)
                for name, st in items:
                    try:
                        await conn.execute(st.text)
                    except psycopg.Error as exc:
                        raise DatasetError(_sql_error(name, st, exc),
                                           hint="nothing was loaded; fix the file and run "
                                           "the load again") from exc
            else:
                client = aioredis.from_url(target.url)
                pipe = client.pipeline(transaction=True)
                pipelines.append((client, pipe, items, key))
                for _, (_, argv) in items:
                    pipe.execute_command(*argv)
            counts[key] = len(items)
        for _client, pipe, items, _key in pipelines:
            try:
                await pipe.execute(raise_on_error=True)
            except RedisError as exc:
                raise DatasetError(_redis_error(items, exc),
                                   hint="nothing was loaded; fix the file and run the load "
                                   "again") from exc
        for conn in connections:
            await conn.commit()
    finally:
        for conn in connections:
            if not conn.closed:
                await conn.rollback()
                await conn.close()
        for client, *_ in pipelines:
            await client.aclose()
    return counts


def _sql_error(name: str, st: Statement, exc: Exception) -> str:
    diag = getattr(exc, "diag", None)
    line = st.line
    position = getattr(diag, "statement_position", None)
    if position:
        line += st.text[: int(position) - 1].count("\n")
    message = (getattr(diag, "message_primary", None) or str(exc)).strip()
    return f"{name}:{line}: {message}"


def _redis_error(items: list[tuple[str, tuple[int, list[str]]]], exc: Exception) -> str:
    text = str(exc)
    # redis-py names the failing command's position: "Command # 3 (...) of pipeline ..."
    marker = "Command # "
    if marker in text:
        index = int(text.split(marker, 1)[1].split()[0]) - 1
        if 0 <= index < len(items):
            name, (line, argv) = items[index]
            reason = text.split(" of pipeline caused error: ", 1)[-1]
            return f"{name}:{line}: {argv[0]}: {reason}"
    return f"redis: {text}"
