"""Loading SQL dataset files into one PostgreSQL database: statement by statement, inside
one transaction that commits only when every target of the load has staged."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devenv.config.load import read_text
from devenv.data.base import DatasetError

if TYPE_CHECKING:
    import psycopg

HINT = "nothing was loaded; fix the file and run the load again"
TRANSACTION_CONTROL = {"BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT"}


@dataclass(frozen=True)
class Statement:
    line: int  # where the statement starts in its file (1-based)
    text: str


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


class SqlLoad:
    """One database's part of a load: its statements run in one transaction at stage()."""

    prepared = True

    def __init__(self, url: str, files: list[tuple[str, Path]]):
        self.url = url
        self.items = [(name, st) for name, path in files
                      for st in split_sql(read_text(path, name))]
        self.conn: psycopg.AsyncConnection[Any] | None = None
        for name, st in self.items:
            words = st.text.split(None, 2)
            first = words[0].upper().rstrip(";") if words else ""
            if first in TRANSACTION_CONTROL or (
                    first == "PREPARE" and len(words) > 1 and words[1].upper() == "TRANSACTION"):
                raise DatasetError(
                    f"{name}:{st.line}: {first} is not allowed in a dataset: devenv runs each "
                    "database's files in one transaction, so that a load is all or nothing",
                    hint="remove the transaction statements (BEGIN, COMMIT, ROLLBACK, …); "
                    "nothing was loaded")

    async def stage(self) -> int:
        import psycopg

        self.conn = await psycopg.AsyncConnection.connect(self.url)
        for name, st in self.items:
            try:
                await self.conn.execute(st.text)
            except psycopg.Error as exc:
                raise DatasetError(_sql_error(name, st, exc), hint=_hint(exc)) from exc
        return len(self.items)

    async def commit(self) -> None:
        assert self.conn is not None
        await self.conn.commit()
        await self.conn.close()

    async def abort(self) -> None:
        if self.conn is not None and not self.conn.closed:
            await self.conn.rollback()
            await self.conn.close()


def _sql_error(name: str, st: Statement, exc: Exception) -> str:
    diag = getattr(exc, "diag", None)
    line = st.line
    position = getattr(diag, "statement_position", None)
    if position:
        line += st.text[: int(position) - 1].count("\n")
    message = (getattr(diag, "message_primary", None) or str(exc)).strip()
    return f"{name}:{line}: {message}"


def missing_extension(exc: Exception) -> str | None:
    """The extension a CREATE EXTENSION failed for because the server does not ship it."""
    diag = getattr(exc, "diag", None)
    message = getattr(diag, "message_primary", None) or str(exc)
    detail = getattr(diag, "message_detail", None) or ""
    found = re.search(r'extension "([^"]+)" is not available', message) or \
        re.search(r'extension control file "[^"]*/([^"/]+)\.control"', message + detail)
    return found.group(1) if found else None


def _hint(exc: Exception) -> str:
    name = missing_extension(exc)
    if name is None:
        return HINT
    return (f"the PostgreSQL in use does not ship the extension {name} (the bundled one lacks "
            "uuid-ossp and pgcrypto): set the service's bin_dir to one that does, e.g. "
            "Debian's (`apt install postgresql`, bin_dir: /usr/lib/postgresql/15/bin), and "
            f"list it in its `extensions:`; {HINT}")
