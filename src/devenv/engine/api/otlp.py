"""The OTLP/HTTP receiver on the telemetry address (see engine/telemetry.py).

`POST /v1/traces` takes an export request in protobuf or OTLP JSON (gzipped or not) from a
holder of the engine's token, publishes its spans to the Hub (the trace store, the
dashboard) and answers an ExportTraceServiceResponse in the request's encoding. What it
refuses (no token: 401; malformed: 400; too large: 413; another encoding: 415) is counted in
`env.traces.counters.rejected` and answered with a short message. `POST /v1/metrics` is
checked the same way and feeds `env.otlp_metrics` (re-exposed on the engine's /metrics);
`/v1/logs` is accepted and answered with success so that SDKs log no errors.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from aiohttp import web

from devenv.telemetry import otlp, otlp_metrics

T = TypeVar("T")

if TYPE_CHECKING:
    from devenv.engine.app import Environment

DECODE_INLINE = 64 * 1024  # larger bodies are decoded on a thread


def add_routes(app: web.Application, env: Environment, token: str) -> None:
    expected = f"Bearer {token}"

    def refuse(status: int, message: str) -> web.Response:
        env.traces.reject()
        return web.Response(status=status, text=message + "\n")

    def authorized(request: web.Request) -> bool:
        given = request.headers.get("Authorization", "")
        return secrets.compare_digest(given.encode(), expected.encode())

    async def receive(request: web.Request, decode: Callable[[bytes, str], T]
                      ) -> tuple[str, T] | web.Response:
        """The request's body decoded (its media type with it), or the refusal to answer."""
        if not authorized(request):
            return refuse(401, "a bearer token is required: the one devenv gives each service "
                               "in OTEL_EXPORTER_OTLP_HEADERS")
        try:
            kind = otlp.media_type(request.content_type)
            body = await request.read()
            if len(body) > DECODE_INLINE:
                return kind, await asyncio.to_thread(decode, body, kind)
            return kind, decode(body, kind)
        except otlp.Rejected as exc:
            return refuse(exc.status, str(exc))
        except web.HTTPRequestEntityTooLarge:
            return refuse(413, f"payload over {otlp.MAX_BODY // (1024 * 1024)} MiB")
        except web.HTTPException:
            raise
        except Exception as exc:  # e.g. a body that fails to inflate: the sender's fault
            return refuse(400, f"unreadable request: {type(exc).__name__}")

    async def traces(request: web.Request) -> web.Response:
        got = await receive(request, otlp.decode)
        if isinstance(got, web.Response):
            return got
        kind, decoded = got
        if decoded.spans:
            env.engine.ctx.hub.spans(decoded.spans)
        return web.Response(body=otlp.response(kind, decoded.rejected, decoded.reason),
                            content_type=kind)

    async def metrics(request: web.Request) -> web.Response:
        got = await receive(request, otlp_metrics.decode)
        if isinstance(got, web.Response):
            return got
        kind, decoded = got
        dropped = env.otlp_metrics.add(decoded)
        reason = "over devenv's series cap for this instance" if dropped else ""
        return web.Response(body=otlp_metrics.response(kind, dropped, reason),
                            content_type=kind)

    async def accepted(request: web.Request) -> web.Response:
        """OTLP logs: accepted, not kept (so SDKs log no export errors)."""
        if not authorized(request):
            return refuse(401, "a bearer token is required")
        await request.read()
        json = (request.content_type or "").startswith(otlp.JSON)
        return web.Response(body=b"{}" if json else b"",
                            content_type=otlp.JSON if json else otlp.PROTOBUF)

    app.router.add_post("/v1/traces", traces)
    app.router.add_post("/v1/metrics", metrics)
    app.router.add_post("/v1/logs", accepted)
