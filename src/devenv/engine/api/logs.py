"""The logs handler: stored lines, then (with follow) new ones from the event stream."""

from __future__ import annotations

import asyncio

from aiohttp import web

from devenv.core.errors import UsageError
from devenv.engine import logstore
from devenv.engine.api.stream import open_stream
from devenv.engine.app import Environment
from devenv.engine.events import Logged


def routes(router: web.UrlDispatcher, env: Environment) -> None:
    store = env.engine.ctx.logs

    async def logs(request: web.Request) -> web.StreamResponse:
        q = request.query
        tail = q.get("tail")
        if tail is not None and not (tail.isascii() and tail.isdigit()):
            raise UsageError(f"-n {tail}: not a count of lines", hint="e.g. -n 100")
        services = q.getall("service", []) or logstore.logged_services(store.folder)
        verbose = q.get("verbose") == "1"
        with env.engine.ctx.events.subscribe(Logged) as sub:  # before reading: no gap
            store.flush()
            lines = logstore.query(
                store.folder, services, since=float(q["since"]) if "since" in q else None,
                tail=int(tail) if tail is not None else None, startup=q.get("startup") == "1",
                verbose=verbose, starts=starts(env, past=q.get("all") == "1"))
            response = await open_stream(request)
            for line in lines:
                await response.write(logstore.json_line(line))
            last = lines[-1].ts if lines else 0.0
            closing = asyncio.ensure_future(env.shutdown.wait())
            while q.get("follow") == "1" and not closing.done():
                getter = asyncio.ensure_future(sub.get())
                await asyncio.wait([getter, closing], return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    break
                event = getter.result()
                assert isinstance(event, Logged)
                line = event.line
                if line.service in services and line.ts > last and (
                        verbose or line.stream != "devenv"):
                    await response.write(logstore.json_line(line))
            closing.cancel()
        await response.write_eof()
        return response

    router.add_get("/v1/logs", logs)


def starts(env: Environment, *, past: bool) -> logstore.Starts:
    """What the engine knows of start-ups: the instances running now, the one-shots, the
    services that are healthy as soon as they start (no health check, no port)."""
    runners = env.engine.runners
    return logstore.Starts(
        current=frozenset((name, rep.instance.id) for name, runner in runners.items()
                          for rep in runner.replicas if rep.instance is not None),
        past=past,
        one_shots=frozenset(n for n, r in runners.items() if r.plan.job),
        unchecked=frozenset(n for n, r in runners.items()
                            if r.plan.port is None and r.plan.health is None))
