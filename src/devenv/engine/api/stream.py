"""Newline-delimited JSON answers, for what streams (`up` progress, `logs -f`)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from devenv.wire import to_json


async def open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    return response


async def send(response: web.StreamResponse, item: Any) -> None:
    await response.write((json.dumps(to_json(item)) + "\n").encode())


def answer(item: Any) -> web.Response:
    return web.json_response(to_json(item))
