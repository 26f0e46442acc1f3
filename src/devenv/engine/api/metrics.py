"""Routes of the telemetry address for metrics (see engine/telemetry.py).

GET /metrics          Prometheus exposition (text 0.0.4): public, as Prometheus scrapes it
                      without a token; it carries names, states, counts and durations only.
GET /metrics/summary  `devenv metrics`' rows as JSON: each service's state, replicas,
                      restarts, reloads, CPU, memory, request rate, p95 latency, error rate
                      (with the engine's token: it names what runs and what failed)

What feeds the registry (request counts, reload durations, the scraper of services' own
metrics) runs while this server does: it starts and stops with the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from typing import TYPE_CHECKING

from aiohttp import web

from devenv.engine.events import Reloaded, StateChanged
from devenv.engine.reconciler import Engine
from devenv.telemetry.metrics import CONTENT_TYPE, EngineMetrics
from devenv.telemetry.scrape import Scraper
from devenv.wire import State, to_json

if TYPE_CHECKING:
    from devenv.engine.app import Environment

METRICS = web.AppKey("metrics", EngineMetrics)


def add_routes(app: web.Application, env: Environment, token: str) -> None:
    engine = env.engine
    metrics = EngineMetrics(engine, engine.ctx.hub, Scraper(engine),
                            traces=getattr(env, "traces", None),
                            otlp=getattr(env, "otlp_metrics", None))
    app[METRICS] = metrics

    async def exposition(request: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(),
                            headers={"Content-Type": CONTENT_TYPE})

    async def summary(request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            return web.json_response({"error": "this needs the engine's token: use "
                                      "`devenv metrics`"}, status=401)
        status = to_json(await env.status(resources=True))
        return web.json_response({"project": status["project"],
                                  "services": metrics.summary(status["services"])})

    following: list[asyncio.Task[None]] = []

    async def start(app: web.Application) -> None:
        metrics.start()
        following.append(asyncio.create_task(_follow(engine, metrics), name="metrics-events"))

    async def stop(app: web.Application) -> None:
        for task in following:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        following.clear()
        await metrics.stop()

    app.router.add_get("/metrics", exposition)
    app.router.add_get("/metrics/summary", summary)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)


async def _follow(engine: Engine, metrics: EngineMetrics) -> None:
    """Reload durations into the histogram; a scrape as soon as an instance serving its own
    metrics is healthy. Waits on the event stream: no work while nothing happens."""
    with engine.ctx.events.subscribe(Reloaded, StateChanged) as sub:
        async for event in sub:
            if isinstance(event, Reloaded):
                total = event.record.phases.get("total")
                if total is not None:
                    metrics.observe_reload(event.service, float(total))
            elif isinstance(event, StateChanged) and event.state == State.HEALTHY:
                runner = engine.runners.get(event.service)
                if runner is not None and runner.plan.metrics_path and metrics.scraper:
                    metrics.scraper.poke()
