"""Handlers for data: snapshots, dataset loads, reset."""

from __future__ import annotations

import asyncio

from aiohttp import web

from devenv.config.load import load
from devenv.engine.api.stream import answer
from devenv.engine.app import Environment


def routes(router: web.UrlDispatcher, env: Environment) -> None:
    async def snapshot_list(request: web.Request) -> web.Response:
        return answer([s.summary() for s in env.data.store.all()])

    async def snapshot_save(request: web.Request) -> web.Response:
        snap = await env.data.save((await request.json())["name"], env.project)
        return answer(snap.summary())

    async def snapshot_restore(request: web.Request) -> web.Response:
        return answer(await env.restore((await request.json())["name"]))

    async def data_load(request: web.Request) -> web.Response:
        body = await request.json()
        environ = body.get("environ") or env.environ
        loaded = await asyncio.to_thread(load, env.root, env.profile, environ=environ)
        return answer(await env.load(loaded, body["dataset"], environ))

    async def data_reset(request: web.Request) -> web.Response:
        return answer(await env.reset())

    router.add_get("/v1/snapshots", snapshot_list)
    router.add_post("/v1/snapshots", snapshot_save)
    router.add_post("/v1/snapshots/restore", snapshot_restore)
    router.add_post("/v1/data/load", data_load)
    router.add_post("/v1/data/reset", data_reset)
