"""Handler for `devenv profile`: the profile streams a tick a second while the sampler runs,
then the result. A caller that goes away (Ctrl-C) cancels it, which stops the sampler."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web

from devenv.core.errors import DevenvError, UsageError
from devenv.engine.api.stream import open_stream, send
from devenv.engine.app import Environment
from devenv.wire import ErrorInfo, ProfileTick


def routes(router: web.UrlDispatcher, env: Environment) -> None:
    async def profile(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        service, replica, seconds = body.get("service"), body.get("replica"), body.get("seconds")
        if not isinstance(service, str) or not isinstance(seconds, int | float) or \
                not (replica is None or isinstance(replica, int)):
            raise UsageError("profile takes a service, seconds and an optional replica")
        queue: asyncio.Queue[ProfileTick] = asyncio.Queue()
        task: asyncio.Task[Any] = asyncio.create_task(env.sample(
            service, replica, float(seconds), list(body.get("formats") or ["speedscope",
                                                                             "flamegraph"]),
            bool(body.get("memory")), queue.put_nowait, bool(body.get("allow_root"))))
        response: web.StreamResponse | None = None
        gone = False
        try:
            while not task.done():
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait([getter, task], return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    continue
                if request.transport is None or request.transport.is_closing():
                    gone = True
                    break
                response = response or await open_stream(request)
                await send(response, getter.result())
        except ConnectionResetError:
            gone = True
        finally:
            if not task.done():  # the caller went away (or the server stops): stop the sampler
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, DevenvError):
                    await task
        if gone:
            return response or web.Response()
        if task.cancelled():
            raise DevenvError("the profile was stopped (the environment is stopping)")
        try:
            result = task.result()
        except DevenvError as exc:
            if response is None:
                raise
            await send(response, {"type": "error", "error": ErrorInfo(
                exc.message, exc.details, exc.hint, exc.exit_code)})
            await response.write_eof()
            return response
        response = response or await open_stream(request)
        await send(response, result)
        await response.write_eof()
        return response

    router.add_post("/v1/profile", profile)
