"""The per-project engine process: one per project (a lock), owner-only control socket.

Start-up recovers anything a previous engine left behind; SIGTERM or `devenv stop` stops
every service, dependents first, and then the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import IO

from aiohttp import web

from devenv.core.paths import StateDir
from devenv.engine.api import Api
from devenv.engine.context import Context
from devenv.engine.ingress import Ingress, build_routes
from devenv.engine.logstore import LogStore
from devenv.engine.pool import Pool
from devenv.engine.reconciler import Engine
from devenv.runtime import get_runtime
from devenv.runtime.local import recover_orphans


async def serve(root: Path, state: StateDir) -> None:
    runtime = get_runtime("local", root)
    ctx = Context(root=root, runtime=runtime, logs=LogStore(state.logs))
    engine = Engine(ctx)
    shutdown = asyncio.Event()
    ingress: Ingress | None = None

    def pool_of(name: str) -> Pool | None:
        runner = engine.runners.get(name)
        return runner.pool if runner else None

    def refresh_routes() -> None:
        if ingress is None or engine.plan is None:
            return
        ingress.routes = build_routes([
            (p.name, p.route.host if p.route else None, p.route.path if p.route else None,
             p.route.strip_prefix if p.route else False)
            for p in engine.plan.services.values() if p.port and p.name in engine.runners])

    ingress_lock = asyncio.Lock()  # concurrent `up` calls must not both start one

    async def ensure_ingress(port: int | None) -> str | None:
        async with ingress_lock:
            return await _ensure_ingress(port)

    async def _ensure_ingress(port: int | None) -> str | None:
        nonlocal ingress
        if ingress is not None and ingress.port != port:
            await ingress.close()
            ingress = None
        if port is not None and ingress is None:
            candidate = Ingress(port, pool_of)
            try:
                await candidate.start()
            except OSError as exc:
                from devenv.core.errors import DevenvError

                await candidate.close()
                raise DevenvError(f"the ingress cannot listen on 127.0.0.1:{port}: "
                                  f"{exc.strerror}", hint="set another port with `devenv config "
                                  "set ingress.port N`, or stop what uses it") from exc
            ingress = candidate
        return ingress.url if ingress else None

    engine.on_routes_changed = refresh_routes
    api = Api(engine, root, shutdown, ensure_ingress)
    runner = web.AppRunner(api.app(), access_log=None, handle_signals=False,
                           shutdown_timeout=2.0)
    await runner.setup()
    state.socket.unlink(missing_ok=True)
    old_umask = os.umask(0o177)
    try:
        await web.UnixSite(runner, str(state.socket)).start()
    finally:
        os.umask(old_umask)
    os.chmod(state.socket, 0o600)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, shutdown.set)
    print(f"engine {os.getpid()} serving {root}", flush=True)
    await shutdown.wait()
    await engine.stop_all()
    if ingress:
        await ingress.close()
    await asyncio.sleep(0.05)  # let the answer to `stop` reach the client
    await runner.cleanup()
    await runtime.close()
    ctx.logs.close()
    state.socket.unlink(missing_ok=True)


def main(argv: list[str], lock: IO[str]) -> int:
    """Serve the project at argv[0]; `lock` is its engine lock, already held."""
    root = Path(argv[0]).resolve()
    state = StateDir(root)
    recovered = recover_orphans(state)
    if recovered:
        print(f"stopped {recovered} process group(s) left by a previous engine", flush=True)
    state.pidfile.write_text(str(os.getpid()))
    try:
        asyncio.run(serve(root, state))
    finally:
        state.pidfile.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            lock.close()
    return 0


