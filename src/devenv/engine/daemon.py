"""The per-project engine process: one per project (a lock), owner-only control socket.

Start-up has every runtime stop what a previous engine left behind; SIGTERM, `devenv stop`
or the project folder disappearing stops every service, dependents first, and then the
engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
from pathlib import Path
from typing import IO

from aiohttp import web

from devenv.core import children, eventloop
from devenv.core.atomic import write_atomic
from devenv.core.paths import StateDir, socket_address
from devenv.engine.api import make_app
from devenv.engine.app import Environment
from devenv.engine.context import Context
from devenv.engine.logstore import LogStore
from devenv.engine.reconciler import Engine
from devenv.runtime import Runtimes
from devenv.runtime.base import CHILD_LIMIT_VAR

PROJECT_CHECK_INTERVAL = 2.0


async def serve(root: Path, state: StateDir, runtimes: Runtimes) -> None:
    ctx = Context(root=root, runtimes=runtimes, logs=LogStore(state.logs))
    engine = Engine(ctx)
    shutdown = asyncio.Event()
    env = Environment(engine, root, shutdown)
    runner = web.AppRunner(make_app(env), access_log=None, handle_signals=False,
                           shutdown_timeout=2.0)
    await runner.setup()
    state.socket.unlink(missing_ok=True)
    old_umask = os.umask(0o177)
    try:
        with socket_address(state.socket) as address:  # (a deep project: a shorter name)
            await web.UnixSite(runner, address).start()
    finally:
        os.umask(old_umask)
    os.chmod(state.socket, 0o600)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, shutdown.set)
    watchdog = asyncio.create_task(_while_project_exists(root, shutdown))
    print(f"engine {os.getpid()} serving {root}", flush=True)
    await shutdown.wait()
    watchdog.cancel()
    await env.halt()
    await env.routing.close()
    await asyncio.sleep(0.05)  # let the answer to `stop` reach the client
    await runner.cleanup()
    await runtimes.close()
    ctx.logs.close()
    state.socket.unlink(missing_ok=True)


async def _while_project_exists(root: Path, shutdown: asyncio.Event) -> None:
    """An engine whose project folder was deleted (or replaced) has nothing left to serve."""
    inode = os.stat(root).st_ino
    while True:
        await asyncio.sleep(PROJECT_CHECK_INTERVAL)
        try:
            same = os.stat(root).st_ino == inode
        except OSError:
            same = False
        if not same:
            print(f"the project folder {root} is gone; stopping", flush=True)
            shutdown.set()
            return


def raise_descriptor_limit() -> None:
    """Take the hard limit on open files as the soft one: the engine holds the ingress's and
    balancers' connections, its control socket, health probes and services' pipes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        os.environ[CHILD_LIMIT_VAR] = str(soft)  # what services get back (see the runtime)


def main(argv: list[str], lock: IO[str]) -> int:
    """Serve the project at argv[0]; `lock` is its engine lock, already held."""
    raise_descriptor_limit()
    children.keep_descriptors_private()
    root = Path(argv[0]).resolve()
    state = StateDir(root)
    runtimes = Runtimes(root)
    for name, count in runtimes.recover().items():
        print(f"stopped {count} instance(s) left on the {name} runtime by a previous engine",
              flush=True)
    write_atomic(state.pidfile, str(os.getpid()), mode=0o600)
    try:
        eventloop.run(serve(root, state, runtimes))
    finally:
        state.pidfile.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            lock.close()
    return 0
