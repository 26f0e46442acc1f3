"""A small Chrome DevTools Protocol client (what chrome://inspect speaks to node --inspect):
the target's websocket from http://HOST:PORT/json/list, then JSON commands and events."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp


class CdpClient:
    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse):
        self.session, self.ws = session, ws
        self._id = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, host: str, port: int) -> CdpClient:
        session = aiohttp.ClientSession()
        try:
            async with session.get(f"http://{host}:{port}/json/list") as resp:
                targets = await resp.json(content_type=None)
            ws = await session.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0)
        except BaseException:
            await session.close()
            raise
        return cls(session, ws)

    async def close(self) -> None:
        self._reader.cancel()
        await self.ws.close()
        await self.session.close()

    async def call(self, method: str, timeout: float = 10.0, **params: Any) -> Any:
        self._id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[self._id] = future
        await self.ws.send_str(json.dumps({"id": self._id, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, timeout)
        assert "error" not in reply, reply
        return reply.get("result", {})

    async def event(self, method: str, timeout: float = 10.0) -> Any:
        async def find() -> Any:
            while True:
                msg = await self._events.get()
                if msg["method"] == method:
                    return msg.get("params", {})
        return await asyncio.wait_for(find(), timeout)

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self._pending:
                self._pending.pop(data["id"]).set_result(data)
            elif "method" in data:
                self._events.put_nowait(data)
