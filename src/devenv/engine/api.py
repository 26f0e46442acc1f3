"""The engine's control API: JSON over HTTP on an owner-only Unix socket.

Progress (`up`) and logs (`follow`) stream as newline-delimited JSON. Errors come back as
{"error": message, "hint": ..., "details": [...], "exit_code": n}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from devenv import __version__
from devenv.config.load import load
from devenv.core.errors import DevenvError
from devenv.core.paths import StateDir
from devenv.engine import logstore
from devenv.engine.context import Event
from devenv.engine.dataops import DataOps
from devenv.engine.reconciler import Engine
from devenv.engine.reloader import Reloader
from devenv.engine.watch import Watcher, make_spec
from devenv.plan import make_plan

CPU_WINDOW = 0.25
WATCH_READY_TIMEOUT = 10.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Api:
    def __init__(self, engine: Engine, root: Path, shutdown: asyncio.Event,
                 ensure_ingress: Callable[[int | None], Awaitable[str | None]]):
        self.engine = engine
        self.data = DataOps(engine, StateDir(root))
        self.reloader = Reloader(engine)
        self.watcher = Watcher(self.reloader.trigger, engine.ctx.clock)
        self.root = root
        self.shutdown = shutdown
        self.ensure_ingress = ensure_ingress
        self.ingress_url: str | None = None
        self.profile: str | None = None  # of the last `up`
        self.environ: dict[str, str] | None = None  # the caller's, for ${VAR}
        self.watching = False
        self.started = time.time()
        self._tasks: set[asyncio.Task[Any]] = set()  # work that outlives a disconnected client

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_errors])
        app.router.add_get("/v1/ping", self.ping)
        app.router.add_get("/v1/status", self.status)
        app.router.add_post("/v1/up", self.up)
        app.router.add_post("/v1/restart", self.restart)
        app.router.add_post("/v1/scale", self.scale)
        app.router.add_post("/v1/stop", self.stop)
        app.router.add_get("/v1/logs", self.logs)
        app.router.add_get("/v1/snapshots", self.snapshot_list)
        app.router.add_post("/v1/snapshots", self.snapshot_save)
        app.router.add_post("/v1/snapshots/restore", self.snapshot_restore)
        app.router.add_post("/v1/data/load", self.data_load)
        app.router.add_post("/v1/data/reset", self.data_reset)
        return app

    async def ping(self, request: web.Request) -> web.Response:
        return web.json_response({"pid": os.getpid(), "root": str(self.root),
                                  "version": __version__})

    async def status(self, request: web.Request) -> web.Response:
        services = self.engine.status()
        if request.query.get("resources") == "1":
            for runner in self.engine.runners.values():  # CPU is measured over a short window
                for rep in runner.replicas:
                    if rep.instance:
                        rep.instance.resources()
            await asyncio.sleep(CPU_WINDOW)
            for svc in services:
                runner = self.engine.runners[svc["name"]]
                cpu, rss = 0.0, 0
                for rep in runner.replicas:
                    res = rep.instance.resources() if rep.instance else None
                    if res:
                        cpu, rss = cpu + res.cpu_percent, rss + res.rss_bytes
                svc["cpu_percent"], svc["rss_bytes"] = round(cpu, 1), rss
        plan = self.engine.plan
        return web.json_response({
            "project": plan.project if plan else self.root.name, "running": True,
            "engine": {"pid": os.getpid(), "uptime_s": round(time.time() - self.started, 1)},
            "ingress": self.ingress_url, "services": services, "watching": self.watching,
        })

    async def up(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.environ = body.get("environ")
        loaded = await asyncio.to_thread(load, self.root, body.get("profile"),
                                         environ=self.environ)
        plan = make_plan(loaded, body.get("services") or [])
        self.profile = loaded.profile
        self.ingress_url = await self.ensure_ingress(plan.ingress_port)
        response = await _ndjson(request)
        queue: asyncio.Queue[Event] = asyncio.Queue()
        task = asyncio.create_task(self.engine.up(plan, queue.put_nowait))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        while not task.done() or not queue.empty():
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait([getter, task], return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                await _send(response, {"type": "progress", **getter.result()})
            else:
                getter.cancel()
        result = task.result()
        watching = self._watch(bool(body.get("watch", True)))
        with contextlib.suppress(TimeoutError):  # return once edits will be seen
            await asyncio.wait_for(asyncio.shield(watching), WATCH_READY_TIMEOUT)
        datasets: list[str] = []
        if result["ok"]:
            try:
                datasets = await self.data.load_profile_datasets(loaded, self.environ)
            except DevenvError as exc:
                result["ok"] = False
                result["error"] = {"message": exc.message, "details": exc.details}
        await _send(response, {"type": "done", **result, "ingress": self.ingress_url,
                               "project": plan.project, "warnings": loaded.warnings,
                               "datasets_loaded": datasets})
        await response.write_eof()
        return response

    def _watch(self, enabled: bool) -> asyncio.Future[None]:
        """Watch the files of every running service that reloads (`up --no-watch`: none)."""
        specs = []
        for runner in self.engine.runners.values():
            watch = runner.plan.watch
            if enabled and watch.enabled:
                specs.append(make_spec(runner.name, self.root, runner.plan.workdir,
                                       watch.paths, watch.ignore))
        self.watching = enabled and bool(specs)
        return self.watcher.update(specs)

    async def restart(self, request: web.Request) -> web.Response:
        names = (await request.json()).get("services") or list(self.engine.runners)
        self._known(names)
        return web.json_response(await self.engine.restart(names))

    async def scale(self, request: web.Request) -> web.Response:
        counts = {k: int(v) for k, v in (await request.json())["counts"].items()}
        self._known(list(counts))
        return web.json_response(await self.engine.scale(counts))

    async def stop(self, request: web.Request) -> web.Response:
        body = await request.json()
        names = list(self.engine.runners)
        folders = [r.plan.data.folder for r in self.data.data_runners().values()
                   if r.plan.data is not None]
        data: dict[str, Any] = {"snapshot": None, "data": "kept" if folders else "none"}
        if folders and not body.get("persist_data"):
            keep = self.engine.plan.keep_automatic if self.engine.plan else 3
            async with self.engine.lock:
                data = await self.data.discard_for_stop(self._project(), keep)
        self.watcher.stop()
        await self.engine.stop_all()
        if data["data"] == "discarded":
            self.data.remove_data(folders)
        self.shutdown.set()
        return web.json_response({"ok": True, "stopped": names, **data})

    def _project(self) -> str:
        return self.engine.plan.project if self.engine.plan else self.root.name

    async def snapshot_list(self, request: web.Request) -> web.Response:
        return web.json_response([s.summary() for s in self.data.store.all()])

    async def snapshot_save(self, request: web.Request) -> web.Response:
        name = (await request.json())["name"]
        snap = await self.data.save(name, self._project())
        return web.json_response(snap.summary())

    async def snapshot_restore(self, request: web.Request) -> web.Response:
        snap = await self.data.restore((await request.json())["name"])
        return web.json_response(snap.summary())

    async def data_load(self, request: web.Request) -> web.Response:
        body = await request.json()
        environ = body.get("environ") or self.environ
        loaded = await asyncio.to_thread(load, self.root, self.profile, environ=environ)
        return web.json_response(await self.data.load(loaded, body["dataset"], environ))

    async def data_reset(self, request: web.Request) -> web.Response:
        return web.json_response({"reset": await self.data.reset()})

    async def logs(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        services = q.getall("service", []) or logstore.logged_services(self.engine.ctx.logs.folder)
        verbose = q.get("verbose") == "1"
        follow = q.get("follow") == "1"
        queue = self.engine.ctx.logs.follow() if follow else None
        try:
            self.engine.ctx.logs.flush()
            lines = logstore.query(
                self.engine.ctx.logs.folder, services, since=float(q["since"]) if "since" in q
                else None, tail=int(q["tail"]) if "tail" in q else None,
                startup=q.get("startup") == "1", verbose=verbose)
            response = await _ndjson(request)
            for line in lines:
                await _send(response, line.to_json())
            last = lines[-1].ts if lines else 0.0
            closing = asyncio.ensure_future(self.shutdown.wait())
            while queue is not None and not closing.done():
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait([getter, closing], return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    break
                line = getter.result()
                if line.service in services and line.ts > last and (
                        verbose or line.stream != "devenv"):
                    await _send(response, line.to_json())
            closing.cancel()
            await response.write_eof()
            return response
        finally:
            if queue is not None:
                self.engine.ctx.logs.unfollow(queue)

    def _known(self, names: list[str]) -> None:
        unknown = [n for n in names if n not in self.engine.runners]
        if unknown:
            running = ", ".join(self.engine.runners) or "none"
            raise DevenvError(f"not running: {', '.join(unknown)}", hint=f"running: {running}")


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except DevenvError as exc:
        return web.json_response({"error": exc.message, "hint": exc.hint,
                                  "details": exc.details, "exit_code": exc.exit_code}, status=400)


async def _ndjson(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    return response


async def _send(response: web.StreamResponse, item: dict[str, Any]) -> None:
    await response.write((json.dumps(item) + "\n").encode())
