"""The cluster API's streams over a websocket (`v4.channel.k8s.io`): a pod's port-forward
and exec. aiohttp's websocket client on the engine's own loop, with the official client's
configuration (host, bearer token, TLS files), so no thread sits on each connection.

The channel protocol, as the API server speaks it: every binary frame starts with its channel
byte. exec: 0 stdin, 1 stdout, 2 stderr, 3 the end (a JSON Status: success, or the exit code in
its details). portforward (one port per websocket): 0 data, 1 error; the first frame on each
channel carries the port (two bytes, little-endian) and no data.

Verified only against tests/fake_kube_api.py, a fake API server speaking this protocol: no
real API server could run where this was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from devenv.core.errors import DevenvError

PROTOCOLS = ("v4.channel.k8s.io",)
STDIN, STDOUT, STDERR, STATUS = 0, 1, 2, 3
HEARTBEAT = 30.0  # an exec pings the API this often: a dead connection fails within 45 s
CHUNK = 65536
HALF_CLOSED_WAIT = 30.0  # a caller that stopped sending still gets its answer this long


@dataclass(frozen=True)
class Link:
    """How to reach the API server for streams: its URL, headers (the bearer token) and TLS."""

    base: str
    headers: dict[str, str]
    ssl: ssl.SSLContext | bool

    @classmethod
    def of(cls, configuration: Any) -> Link:
        """From the official client's Configuration (what its kubeconfig loader made)."""
        headers = {}
        for setting in configuration.auth_settings().values():
            if setting.get("in") == "header" and setting.get("value"):
                headers[str(setting["key"])] = str(setting["value"])
        base = str(configuration.host).rstrip("/")
        context: ssl.SSLContext | bool = True
        if base.startswith("https"):
            made = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
            if configuration.cert_file:
                made.load_cert_chain(configuration.cert_file, configuration.key_file)
            if not configuration.verify_ssl:
                made.check_hostname = False
                made.verify_mode = ssl.CERT_NONE
            context = made
        return cls(base, headers, context)

    def url(self, path: str, query: list[tuple[str, str]]) -> str:
        ws = "wss" + self.base[5:] if self.base.startswith("https") else "ws" + self.base[4:]
        text = "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in query)
        return f"{ws}{path}?{text}" if text else f"{ws}{path}"


def pod_path(namespace: str, pod: str, what: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}/{what}"


async def _connect(session: aiohttp.ClientSession, link: Link, path: str,
                   query: list[tuple[str, str]], heartbeat: float | None = None
                   ) -> aiohttp.ClientWebSocketResponse:
    try:
        return await session.ws_connect(link.url(path, query), protocols=PROTOCOLS,
                                        headers=link.headers, ssl=link.ssl,
                                        max_msg_size=0, autoping=True, heartbeat=heartbeat)
    except aiohttp.WSServerHandshakeError as exc:
        raise DevenvError(f"the Kubernetes API refused {path}: {exc.status} {exc.message}"
                          ) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise DevenvError(f"cannot reach the Kubernetes API at {link.base}: {exc}") from exc


# ---- exec


def exit_status(text: str) -> int:
    """The exit code an exec's Status (channel 3) says: 0 on success."""
    if not text:  # (the stream closed first: a lost connection, an unanswered heartbeat)
        raise DevenvError("exec failed: the stream ended without the command's exit status "
                          "(the connection to the Kubernetes API was lost)")
    try:
        status = json.loads(text)
    except ValueError:
        return 1
    if status.get("status") == "Success":
        return 0
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            with contextlib.suppress(ValueError):
                return int(cause.get("message", "1"))
    raise DevenvError(f"exec failed: {status.get('message') or text}")


async def exec_in(session: aiohttp.ClientSession, link: Link, namespace: str, pod: str,
                  container: str, argv: tuple[str, ...], on_output: Callable[[int, bytes], None],
                  stdin: asyncio.Queue[bytes | None] | None = None, tty: bool = False) -> int:
    """Run `argv` in the pod's container; its output to `on_output(channel, bytes)` as it
    comes; its exit code. `stdin` (None at the end) feeds its standard input."""
    query = [("command", a) for a in argv] + [
        ("container", container), ("stdout", "true"), ("stderr", "false" if tty else "true"),
        ("stdin", "true" if stdin is not None else "false"), ("tty", "true" if tty else "false")]
    ws = await _connect(session, link, pod_path(namespace, pod, "exec"), query,
                        heartbeat=HEARTBEAT)
    feeder = asyncio.create_task(_feed(ws, stdin)) if stdin is not None else None
    status = ""
    try:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY and msg.data:
                channel, data = msg.data[0], msg.data[1:]
            elif msg.type == aiohttp.WSMsgType.TEXT and msg.data:
                channel, data = ord(msg.data[0]), msg.data[1:].encode()
            else:
                continue
            if channel == STATUS:
                status += data.decode(errors="replace")
            elif data:
                on_output(channel, data)
    finally:
        if feeder:
            feeder.cancel()
        await ws.close()
    return exit_status(status)


async def _feed(ws: aiohttp.ClientWebSocketResponse, stdin: asyncio.Queue[bytes | None]
                ) -> None:
    while (chunk := await stdin.get()) is not None:
        await ws.send_bytes(bytes([STDIN]) + chunk)


# ---- port-forward


class Forwarder:
    """127.0.0.1:<a free port> → the pod's `port`, through the API's portforward: one
    websocket per connection. `pod()` says which pod, asked at each connection (an instance
    that moves to another pod keeps its address)."""

    def __init__(self, session: aiohttp.ClientSession, link: Link, namespace: str,
                 pod: Callable[[], str], port: int):
        self.session, self.link, self.namespace = session, link, namespace
        self.pod, self.port = pod, port
        self.local_port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def open(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.local_port = int(self._server.sockets[0].getsockname()[1])
        return self.local_port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.wait(self._conns, timeout=2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            try:
                path = pod_path(self.namespace, self.pod(), "portforward")
                ws = await _connect(self.session, self.link, path, [("ports", str(self.port))])
            except DevenvError:
                writer.close()
                return
            await forward(ws, reader, writer)
        except asyncio.CancelledError:  # `close`: the connection ends here (not re-raised:
            writer.close()  # Python 3.11's asyncio.streams asks the task for its exception,
            # and a cancelled one raises in that callback, logged as an error)
        finally:
            self._conns.discard(task)


async def forward(ws: aiohttp.ClientWebSocketResponse, reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> None:
    """Splice a TCP connection and a portforward websocket until either side ends."""
    async def upstream() -> None:
        while chunk := await reader.read(CHUNK):
            await ws.send_bytes(b"\x00" + chunk)

    async def downstream() -> None:
        seen: set[int] = set()
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.BINARY or not msg.data:
                continue
            channel, data = msg.data[0], msg.data[1:]
            if channel not in seen:  # (its first frame names the port)
                seen.add(channel)
                data = data[2:]
            if channel == 0 and data:
                if writer.is_closing():  # the caller is gone (on uvloop a write would raise)
                    return
                writer.write(data)
                await writer.drain()
            elif channel == 1 and data:
                return  # (an error: the pod does not listen there, or it went away)

    up, down = asyncio.create_task(upstream()), asyncio.create_task(downstream())
    tasks = [up, down]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if down not in done:  # the caller sent all it had: its answer may still come
            await asyncio.wait([down], timeout=HALF_CLOSED_WAIT)
    except asyncio.CancelledError:
        pass
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await ws.close()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
