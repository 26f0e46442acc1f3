"""Handlers for the environment and its services: ping, status, up, restart, scale, stop,
exec, debug."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aiohttp import web

from devenv import __version__
from devenv.core.errors import DevenvError, UsageError
from devenv.engine.api.stream import answer, open_stream, send
from devenv.engine.app import Environment
from devenv.wire import ErrorInfo, Progress, UpResult, to_json


def routes(router: web.UrlDispatcher, env: Environment) -> None:
    tasks: set[asyncio.Task[Any]] = set()  # work that outlives a disconnected client

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({"pid": os.getpid(), "root": str(env.root),
                                  "version": __version__})

    async def status(request: web.Request) -> web.Response:
        return answer(await env.status(request.query.get("resources") == "1"))

    async def up(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        queue: asyncio.Queue[Progress] = asyncio.Queue()
        task = asyncio.create_task(env.up(body.get("services") or [], body.get("profile"),
                                          body.get("environ"), bool(body.get("watch", True)),
                                          queue.put_nowait, body.get("rerun") or []))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        response: web.StreamResponse | None = None
        while not task.done() or not queue.empty():
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait([getter, task], return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                response = response or await open_stream(request)
                await send(response, getter.result())
            else:
                getter.cancel()
        try:
            if task.cancelled():
                raise DevenvError("the environment was stopped while it came up (`devenv stop`)")
            result: UpResult = task.result()
        except DevenvError as exc:
            if response is None:  # nothing streamed yet (a bad config): a plain error answer
                raise
            result = UpResult(ok=False, services=[], error=ErrorInfo(
                exc.message, exc.details, exc.hint, exc.exit_code))
        response = response or await open_stream(request)
        await send(response, result)
        await response.write_eof()
        return response

    async def restart(request: web.Request) -> web.Response:
        return answer(await env.restart((await request.json()).get("services") or []))

    async def scale(request: web.Request) -> web.Response:
        counts = (await request.json()).get("counts")
        if not isinstance(counts, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in counts.values()):
            raise UsageError("scale takes SERVICE=N counts", hint="e.g. devenv scale api=3")
        return answer(await env.scale(counts))

    async def stop(request: web.Request) -> web.Response:
        body = await request.json()
        snapshot = body.get("snapshot", True) is not False
        if not snapshot:
            from devenv.candidate import is_copy

            if not is_copy(env.root):  # (an environment's data is never lost unsaved)
                raise UsageError("stop without a snapshot is only for the copy of a "
                                 "`devenv validate`; this environment's data is snapshotted "
                                 "before it goes",
                                 hint="`devenv stop` (a snapshot first), or "
                                 "`devenv stop --persist-data`")
        return answer(await env.stop(bool(body.get("persist_data")), snapshot=snapshot))

    async def exec_target(request: web.Request) -> web.Response:
        runtime, spec = env.exec_target(request.match_info["service"])
        return web.json_response({"runtime": runtime, "spec": to_json(spec)})

    async def debug(request: web.Request) -> web.Response:
        body = await request.json()
        return answer(await env.debug(request.match_info["service"], bool(body.get("wait")),
                                      bool(body.get("off")), bool(body.get("allow_root"))))

    async def validate(request: web.Request) -> web.Response:
        body = await request.json()
        timeout = body.get("timeout")
        return answer(await env.validate(body.get("services") or [], float(timeout)
                                         if isinstance(timeout, int | float) else None))

    router.add_get("/v1/ping", ping)
    router.add_post("/v1/validate", validate)

    async def migrate(request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("environ") is not None:
            env.environ = body["environ"]
        return answer(await env.migrate())

    router.add_post("/v1/migrate", migrate)
    router.add_get("/v1/status", status)
    router.add_post("/v1/up", up)
    router.add_post("/v1/restart", restart)
    router.add_post("/v1/scale", scale)
    router.add_post("/v1/stop", stop)
    router.add_get("/v1/exec/{service}", exec_target)
    router.add_post("/v1/debug/{service}", debug)
