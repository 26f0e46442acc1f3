"""Loading Redis dataset files: one command per line (redis-cli quoting, `#` comments),
queued in one MULTI/EXEC that runs when the whole load commits."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from devenv.config.load import read_text
from devenv.data.base import DatasetError

HINT = "nothing was loaded; fix the file and run the load again"


def parse_redis(path: Path, shown: str) -> list[tuple[int, list[str]]]:
    """A Redis dataset file: one command per line, e.g. `HSET product:1 name "Green tea"`."""
    commands = []
    for number, raw in enumerate(read_text(path, shown).splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise DatasetError(f"{shown}:{number}: cannot read the command: {exc}") from exc
        commands.append((number, argv))
    return commands


class RedisLoad:
    """The commands are queued at stage() and run at commit(), as one transaction; that is
    where they can fail, so this load commits before the prepared ones."""

    prepared = False

    def __init__(self, url: str, files: list[tuple[str, Path]]):
        self.url = url
        self.items = [(name, cmd) for name, path in files for cmd in parse_redis(path, name)]
        self.client: Any = None
        self.pipe: Any = None

    async def stage(self) -> int:
        import redis.asyncio as aioredis

        self.client = aioredis.from_url(self.url)
        self.pipe = self.client.pipeline(transaction=True)
        for _, (_, argv) in self.items:
            self.pipe.execute_command(*argv)
        return len(self.items)

    async def commit(self) -> None:
        from redis.exceptions import RedisError

        try:
            await self.pipe.execute(raise_on_error=True)
        except RedisError as exc:
            raise DatasetError(_redis_error(self.items, exc), hint=HINT) from exc
        finally:
            await self.abort()

    async def abort(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await client.aclose()


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
