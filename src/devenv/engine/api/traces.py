"""The traces handlers: recent traces (newline-delimited JSON, with `follow=1` then each new
trace once it has been quiet for `SETTLE` seconds) and one trace by id or id prefix."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

from aiohttp import web
from multidict import MultiMapping

from devenv.core.errors import UsageError
from devenv.engine.api.stream import answer, open_stream, send
from devenv.engine.app import Environment
from devenv.telemetry import store
from devenv.wire import TraceSummary

SETTLE = 0.5  # a trace is shown by follow once no span came for it this long
POLL = 0.25
MAX_LIMIT = 10_000


def routes(router: web.UrlDispatcher, env: Environment) -> None:
    traces = env.traces

    async def listing(request: web.Request) -> web.StreamResponse:
        q = request.query
        query = store.Query(
            services=tuple(s for s in q.getall("service", []) if s),
            since=_number(q, "since"), min_duration=_number(q, "min_duration"),
            errors=q.get("errors") == "1", limit=int(_number(q, "limit") or 20))
        if not 0 < query.limit <= MAX_LIMIT:
            raise UsageError(f"limit {query.limit}: give 1 to {MAX_LIMIT}")
        spans = q.get("spans") == "1"
        await asyncio.to_thread(traces.flush, 2.0)  # what arrived before the question
        cursor = time.time()
        found = await asyncio.to_thread(_read, traces.path, query, spans)
        response = await open_stream(request)
        for item in found:
            await send(response, item)
        while q.get("follow") == "1" and not env.shutdown.is_set():
            try:
                await asyncio.wait_for(env.shutdown.wait(), POLL)
                break
            except TimeoutError:
                pass
            until = time.time() - SETTLE
            found = await asyncio.to_thread(_read, traces.path, replace(
                query, since=None, limit=MAX_LIMIT, received_after=cursor,
                received_before=until), spans)
            cursor = max(cursor, until)
            for item in found:
                await send(response, item)
        await response.write_eof()
        return response

    async def one(request: web.Request) -> web.Response:
        given = request.match_info["id"]
        await asyncio.to_thread(traces.flush, 2.0)
        found = await asyncio.to_thread(store.lookup, traces.path, given, traces.max_age,
                                        traces.max_bytes)
        return answer(found)

    router.add_get("/v1/traces", listing)
    router.add_get("/v1/traces/{id}", one)


def _read(path: Path, query: store.Query, spans: bool) -> list[TraceSummary]:
    found = store.recent(path, query)
    if not spans:
        return found
    return [t for t in (store.trace(path, s.trace_id) for s in found) if t is not None]


def _number(q: MultiMapping[str], key: str) -> float | None:
    value = q.get(key)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"{key}={value!r}: not a number") from None
