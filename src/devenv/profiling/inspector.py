"""Sample a running Node process's CPU through its inspector, without restarting it.

Run as a tool against a process (`python -m devenv.profiling.inspector PID SECONDS`): it
finds the process's inspector (already open: a listening port that answers /json/list;
else SIGUSR1 opens one, on the port the process was given with --inspect-port, 9229 by
default), starts the V8 CPU profiler over the DevTools protocol (a websocket), stops it
after SECONDS (or at SIGINT/SIGTERM), writes the .cpuprofile JSON to stdout, and closes
the inspector again when it was the one that opened it. It needs no ptrace: only the
right to signal the process (the same user).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from typing import Any

import aiohttp
import psutil

OPEN_TIMEOUT = 5.0
SAMPLING_US = 5000  # V8 samples every 5 ms (1 ms cost the service a third of its throughput)
# (evaluated in the service, after we disconnect: close the inspector SIGUSR1 opened)
CLOSE = ("setTimeout(() => { try { (process.getBuiltinModule ? process.getBuiltinModule("
         "'node:inspector') : process.mainModule.require('inspector')).close() } catch {} }"
         ", 200)")


class Failed(Exception):
    pass


async def _websocket_url(session: aiohttp.ClientSession, pid: int) -> str | None:
    try:
        ports = sorted({c.laddr.port for c in psutil.Process(pid).net_connections("tcp")
                        if c.status == psutil.CONN_LISTEN})
    except psutil.Error as exc:
        raise Failed(f"cannot see process {pid}'s sockets: {exc}") from exc
    for port in ports:
        try:
            async with session.get(f"http://127.0.0.1:{port}/json/list",
                                   timeout=aiohttp.ClientTimeout(total=1)) as resp:
                targets = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            continue
        for target in targets if isinstance(targets, list) else []:
            url = target.get("webSocketDebuggerUrl") if isinstance(target, dict) else None
            if url:
                return str(url)
    return None


async def _open(session: aiohttp.ClientSession, pid: int) -> tuple[str, bool]:
    """The inspector's websocket URL, and whether we opened it."""
    url = await _websocket_url(session, pid)
    if url:
        return url, False
    os.kill(pid, signal.SIGUSR1)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + OPEN_TIMEOUT
    while loop.time() < deadline:
        await asyncio.sleep(0.1)
        url = await _websocket_url(session, pid)
        if url:
            return url, True
    raise Failed(f"node process {pid} opened no inspector within {OPEN_TIMEOUT:g}s of SIGUSR1 "
                 "(is its inspector port, 9229 unless --inspect-port says otherwise, taken by "
                 "another process? is it run with --disable-sigusr1?)")


class _Session:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params or {}})
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if data.get("id") == self.next_id:
                if "error" in data:
                    raise Failed(f"{method}: {data['error'].get('message')}")
                return data.get("result", {})
        raise Failed(f"the inspector closed the connection during {method}")


async def profile(pid: int, seconds: float, stop: asyncio.Event) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        url, opened = await _open(http, pid)
        async with http.ws_connect(url, max_msg_size=0) as ws:
            session = _Session(ws)
            await session.call("Profiler.enable")
            await session.call("Profiler.setSamplingInterval", {"interval": SAMPLING_US})
            await session.call("Profiler.start")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)
            result = await session.call("Profiler.stop")
            await session.call("Profiler.disable")
            if opened:
                await session.call("Runtime.evaluate", {"expression": CLOSE})
        profile_doc: dict[str, Any] = result["profile"]
        return profile_doc


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m devenv.profiling.inspector PID SECONDS", file=sys.stderr)
        return 2
    pid, seconds = int(argv[0]), float(argv[1])

    async def run() -> dict[str, Any]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await profile(pid, seconds, stop)

    try:
        doc = asyncio.run(run())
    except (Failed, OSError, aiohttp.ClientError) as exc:
        print(f"inspector: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
