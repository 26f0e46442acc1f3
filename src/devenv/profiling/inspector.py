"""Sample a running Node process's CPU through its inspector, without restarting it.

Run as a tool against a process (`python -m devenv.profiling.inspector PID SECONDS`): it
finds the process's inspector (already open: a listening port of that process whose
/json/list names a `ws://127.0.0.1:<that port>/…` target; else SIGUSR1 opens one, on the
port the process was given with --inspect-port, 9229 by default), checks over the
DevTools protocol that the inspector is the process's own (`process.pid`), starts the V8
CPU profiler, stops it after SECONDS (or at SIGINT/SIGTERM), writes the .cpuprofile JSON to
stdout, and closes the inspector again when it was the one that opened it: whatever
happened (`finally`), then checks that the port stopped listening.

An open inspector lets anyone on this machine run code in the service as its user, so the
tool says on stderr, as they happen, `inspector: opened 127.0.0.1:PORT` and
`inspector: closed 127.0.0.1:PORT`; when it could not close it, `inspector: STILL OPEN …`
and exit code 3. `--close PID PORT` closes an inspector a killed run left open (the same
checks). The process is signalled through a pidfd: the one the runtime passes in
$DEVENV_PIDFD (taken when it checked the target), else one taken at the tool's start, with
the process's start time checked against the tool's own. It needs no ptrace: only the
right to signal the process (the same user).
"""

from __future__ import annotations

import os
import signal
import sys

PIDFD_VAR = "DEVENV_PIDFD"
EXIT_LEFT_OPEN = 3


def _take_pidfd(pid: int) -> int | None:
    """A pidfd of `pid`, taken before anything slow (the process cannot change under it)."""
    given = os.environ.get(PIDFD_VAR, "")
    if given.isdigit():
        return int(given)
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1].isdigit():
    _PIDFD = _take_pidfd(int(sys.argv[1]))  # first, before the imports below
else:
    _PIDFD = None

import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import urllib.parse  # noqa: E402
from typing import Any  # noqa: E402

import aiohttp  # noqa: E402
import psutil  # noqa: E402

OPEN_TIMEOUT = 5.0
CLOSE_WAIT = 1.5  # seconds the port may take to stop listening after the close
SAMPLING_US = 5000  # V8 samples every 5 ms (1 ms cost the service a third of its throughput)
MAX_LIST = 64 * 1024  # bytes of /json/list read
MAX_MESSAGE = 256 * 1024 * 1024  # bytes of one DevTools message (an hour's profile fits)
# (evaluated in the service, after we disconnect: close the inspector SIGUSR1 opened)
CLOSE = ("setTimeout(() => { try { (process.getBuiltinModule ? process.getBuiltinModule("
         "'node:inspector') : process.mainModule.require('inspector')).close() } catch {} }"
         ", 200)")


class Failed(Exception):
    pass


class LeftOpen(Failed):
    """The inspector this tool opened still listens."""


def listening(pid: int) -> set[int]:
    try:
        return {c.laddr.port for c in psutil.Process(pid).net_connections("tcp")
                if c.status == psutil.CONN_LISTEN}
    except psutil.Error as exc:
        raise Failed(f"cannot see process {pid}'s sockets: {exc}") from exc


def trusted_url(url: Any, port: int) -> str | None:
    """`url` if it is a websocket on this machine's loopback at the port that was asked
    (a service may answer /json/list with any address: never follow it elsewhere)."""
    if not isinstance(url, str):
        return None
    try:
        parts = urllib.parse.urlsplit(url)
        ok = (parts.scheme == "ws" and parts.hostname == "127.0.0.1" and parts.port == port
              and parts.path.startswith("/") and not parts.username and not parts.password)
    except ValueError:
        return None
    return url if ok else None


async def _targets(session: aiohttp.ClientSession, port: int) -> list[str]:
    try:
        async with session.get(f"http://127.0.0.1:{port}/json/list", allow_redirects=False,
                               timeout=aiohttp.ClientTimeout(total=1)) as resp:
            body = await resp.content.read(MAX_LIST + 1)
        if len(body) > MAX_LIST:
            return []
        doc = json.loads(body)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return []
    urls = [trusted_url(t.get("webSocketDebuggerUrl"), port) for t in doc
            if isinstance(t, dict)] if isinstance(doc, list) else []
    return [u for u in urls if u]


async def _candidates(session: aiohttp.ClientSession, pid: int,
                      ports: set[int] | None = None) -> list[tuple[int, str]]:
    out = []
    for port in sorted(listening(pid) if ports is None else ports):
        out += [(port, url) for url in await _targets(session, port)]
    return out


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

    async def pid(self) -> Any:
        got = await self.call("Runtime.evaluate", {"expression": "process.pid",
                                                   "returnByValue": True})
        return (got.get("result") or {}).get("value") if isinstance(got, dict) else None


@contextlib.asynccontextmanager
async def _connect(http: aiohttp.ClientSession, url: str, pid: int) -> Any:
    """A DevTools session on `url`, checked to be process `pid`'s own."""
    async with http.ws_connect(url, max_msg_size=MAX_MESSAGE) as ws:
        session = _Session(ws)
        owner = await session.pid()
        if owner != pid:
            raise Failed(f"the inspector at {url} is process {owner}'s, not {pid}'s")
        yield session


def _signal(pid: int, pidfd: int | None) -> None:
    """SIGUSR1 to the process itself, never to a process that took its number since."""
    if pidfd is not None:
        signal.pidfd_send_signal(pidfd, signal.SIGUSR1)
        return
    try:
        target = psutil.Process(pid)
        if target.create_time() > psutil.Process().create_time():
            raise Failed(f"process {pid} started after this tool: not the process to profile")
    except psutil.Error as exc:
        raise Failed(f"process {pid} is gone: {exc}") from exc
    os.kill(pid, signal.SIGUSR1)


async def _open(http: aiohttp.ClientSession, pid: int, pidfd: int | None
                ) -> tuple[int, str, bool]:
    """The inspector's port and websocket URL, and whether this tool opened it."""
    before = listening(pid)
    found = await _candidates(http, pid, before)
    if found:
        return found[0][0], found[0][1], False
    _signal(pid, pidfd)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + OPEN_TIMEOUT
    while loop.time() < deadline:
        await asyncio.sleep(0.1)
        new = listening(pid) - before
        if new:
            _say(f"opened 127.0.0.1:{min(new)}")  # (so a run killed now is closed after)
            found = await _candidates(http, pid, new)
            if found:
                return found[0][0], found[0][1], True
    raise Failed(f"node process {pid} opened no inspector within {OPEN_TIMEOUT:g}s of SIGUSR1 "
                 "(is its inspector port, 9229 unless --inspect-port says otherwise, taken by "
                 "another process? is it run with --disable-sigusr1?)")


async def close(http: aiohttp.ClientSession, pid: int, port: int) -> None:
    """Close the inspector on `port` (process `pid`'s) and wait for the port to stop
    listening; LeftOpen if it does not."""
    with contextlib.suppress(Failed, aiohttp.ClientError, TimeoutError, OSError):
        for _, url in await _candidates(http, pid, {port}):
            async with _connect(http, url, pid) as session:
                await session.call("Runtime.evaluate", {"expression": CLOSE})
            break
    deadline = time.monotonic() + CLOSE_WAIT + 0.2
    while True:
        try:
            still = port in listening(pid)
        except Failed:
            still = False  # (the process is gone: so is its inspector)
        if not still:
            _say(f"closed 127.0.0.1:{port}")
            return
        if time.monotonic() > deadline:
            raise LeftOpen(f"STILL OPEN 127.0.0.1:{port}: process {pid}'s inspector did not "
                           "close; anyone on this machine can run code in it as its user "
                           "until it restarts")
        await asyncio.sleep(0.1)


async def profile(pid: int, seconds: float, stop: asyncio.Event,
                  pidfd: int | None = None) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        port, url, opened = await _open(http, pid, pidfd)
        try:
            async with _connect(http, url, pid) as session:
                await session.call("Profiler.enable")
                await session.call("Profiler.setSamplingInterval", {"interval": SAMPLING_US})
                await session.call("Profiler.start")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), seconds)
                result = await session.call("Profiler.stop")
                await session.call("Profiler.disable")
        finally:
            if opened:
                await asyncio.shield(close(http, pid, port))
        profile_doc: dict[str, Any] = result["profile"]
        return profile_doc


def _say(text: str) -> None:
    print(f"inspector: {text}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "--close" and argv[1].isdigit() and argv[2].isdigit():
        pid, port = int(argv[1]), int(argv[2])

        async def shut() -> None:
            async with aiohttp.ClientSession() as http:
                await close(http, pid, port)

        try:
            asyncio.run(shut())
        except LeftOpen as exc:
            _say(str(exc))
            return EXIT_LEFT_OPEN
        return 0
    if len(argv) != 2 or not argv[0].isdigit():
        print("usage: python -m devenv.profiling.inspector PID SECONDS\n"
              "       python -m devenv.profiling.inspector --close PID PORT", file=sys.stderr)
        return 2
    pid, seconds = int(argv[0]), float(argv[1])

    async def run() -> dict[str, Any]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await profile(pid, seconds, stop, _PIDFD if _PIDFD is not None
                             else _take_pidfd(pid))

    try:
        doc = asyncio.run(run())
    except LeftOpen as exc:
        _say(str(exc))
        return EXIT_LEFT_OPEN
    except (Failed, OSError, aiohttp.ClientError) as exc:
        _say(str(exc))
        return 1
    sys.stdout.write(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
