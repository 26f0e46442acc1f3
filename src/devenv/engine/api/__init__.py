"""The engine's control API: JSON over HTTP on an owner-only Unix socket.

Handlers only parse requests and write answers; the work is the application layer's
(`engine/app.py`). Progress (`up`) and logs (`follow`) stream as newline-delimited JSON.
Errors come back as {"error": message, "hint": ..., "details": [...], "exit_code": n}.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from devenv.core.errors import DevenvError
from devenv.engine.api import data, logs, profile, services, traces
from devenv.engine.app import Environment

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ENV = web.AppKey("env", Environment)


def make_app(env: Environment) -> web.Application:
    app = web.Application(middlewares=[_errors, _migrating])
    app[ENV] = env
    for module in (services, data, logs, traces, profile):
        module.routes(app.router, env)
    return app


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except DevenvError as exc:
        return web.json_response({"error": exc.message, "hint": exc.hint,
                                  "details": exc.details, "exit_code": exc.exit_code}, status=400)


# what may still be asked while `migrate --confirm` runs here (its own caller may be gone:
# killed, it no longer holds the operation lock, but the engine goes on migrating)
WHILE_MIGRATING = frozenset({"/v1/migrate", "/v1/validate", "/v1/profile"})


@web.middleware
async def _migrating(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method == "POST" and request.path not in WHILE_MIGRATING \
            and request.app[ENV].migrating:
        raise DevenvError("a migrate is in progress in this environment's engine; wait for "
                          "it to finish", hint="`devenv status` and `devenv logs` work meanwhile")
    return await handler(request)
