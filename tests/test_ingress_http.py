"""The ingress's HTTP/1.1 at the byte level, in-process against raw-socket clients and raw
stub instances: message framing it writes itself (no smuggling through `Connection`), bytes
an instance sends past its response, flow control for a client that never reads, refused
websockets, `h2c` upgrades, header size limits, `Host` rules, malformed chunked bodies, idle
upstream connections, the upstream timeout while an upload progresses, trailers, a client
that leaves or half-closes, transfer codings and absolute-form targets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from conftest import free_ports
from devenv import native
from devenv.engine.ingress import Ingress, RouteSpec, build_routes
from devenv.engine.ingress import server as server_mod
from devenv.engine.ingress import upstream as upstream_mod
from devenv.engine.pool import Backend, Pool

Handler = Callable[["Stub", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

pytestmark = pytest.mark.usefixtures("both_loops")  # (as the engine runs it: uvloop)


@dataclass
class Stub:
    """A raw instance: `handler` per connection; what it read, request by request."""

    handler: Handler
    seen: list[tuple[bytes, bytes]] = field(default_factory=list)  # (head, body)
    conns: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.conns += 1
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await self.handler(self, reader, writer)
        writer.close()

    async def read(self, reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = await reader.readexactly(length) if length else b""
        self.seen.append((head, body))
        self.arrived.set()
        return head, body


@dataclass
class Setup:
    stub: Stub
    ingress: Ingress
    pool: Pool
    backend: Backend


@contextlib.asynccontextmanager
async def ingress(handler: Handler, **options: float) -> AsyncIterator[Setup]:
    stub = Stub(handler)
    app_port, port = free_ports(2)
    server = await asyncio.start_server(stub.serve, "127.0.0.1", app_port)
    pool = Pool("api", hold_timeout=1.0)
    backend = Backend("api-1", "127.0.0.1", app_port)
    pool.add(backend)
    ing = Ingress(port, {"api": pool}.get, **options)  # type: ignore[arg-type]
    ing.routes = build_routes([RouteSpec("api", path="/")])
    await ing.start()
    try:
        yield Setup(stub, ing, pool, backend)
    finally:
        await ing.close()
        server.close()


async def exchange(ing: Ingress, data: bytes, timeout: float = 3.0, *,
                   half_close: bool = False) -> bytes:
    """Send `data` on a new connection (then shut its sending side, `half_close`, as
    `nc -N` does); what comes back until the ingress closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", ing.port)
    writer.write(data)
    if half_close:
        writer.write_eof()
    try:
        async with asyncio.timeout(timeout):
            return await reader.read(-1)
    finally:
        writer.close()


def get(path: bytes = b"/", extra: bytes = b"", close: bool = True) -> bytes:
    return (b"GET %s HTTP/1.1\r\nHost: localhost\r\n%s%s\r\n"
            % (path, extra, b"Connection: close\r\n" if close else b""))


async def echo_path(stub: Stub, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
    while True:
        head, _ = await stub.read(reader)
        path = head.split(b" ")[1]
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path))
        await writer.drain()


async def slow_client(ing: Ingress) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection whose receive buffer is small, so that the ingress's writes back up."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", ing.port))
    return await asyncio.open_connection(sock=sock, limit=1 << 20)


async def until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


# ---- 1. framing is the ingress's own: `Connection` cannot drop it


def test_connection_naming_content_length_does_not_smuggle_a_request() -> None:
    async def scenario() -> None:
        async with ingress(echo_path) as s:
            smuggled = b"GET /smuggled HTTP/1.1\r\nHost: evil\r\n\r\n"
            out = await exchange(s.ingress, b"POST /a HTTP/1.1\r\nHost: localhost\r\n"
                                 b"Connection: content-length, close\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(smuggled), smuggled))
            assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"/a")
            assert [(h.split(b"\r\n")[0], b) for h, b in s.stub.seen] == \
                [(b"POST /a HTTP/1.1", smuggled)]

    asyncio.run(scenario())


def test_a_content_length_with_spaces_around_it_is_forwarded_with_its_body() -> None:
    # llhttp reads a 16-byte body for `Content-Length: 16 `; forwarded without it, the
    # instance would take the next client's request on its kept-alive connection as the body
    async def scenario() -> None:
        async with ingress(echo_path) as s:
            body = b"GET /x HTTP/1.1\r"  # 16 bytes
            first = await exchange(s.ingress, b"GET /attacker HTTP/1.1\r\nHost: localhost\r\n"
                                   b"Content-Length: 16 \r\nConnection: close\r\n\r\n" + body)
            second = await exchange(s.ingress, get(b"/victim"))
            assert first.endswith(b"/attacker") and second.endswith(b"/victim")
            assert [(h.split(b"\r\n")[0], b) for h, b in s.stub.seen] == \
                [(b"GET /attacker HTTP/1.1", body), (b"GET /victim HTTP/1.1", b"")]

    asyncio.run(scenario())


def test_a_failure_routing_a_request_is_answered_500_not_left_hanging() -> None:
    async def scenario() -> None:
        async with ingress(echo_path) as s:
            assert (await exchange(s.ingress, get(b"/warm"))).endswith(b"/warm")
            pools = s.ingress.pools

            def broken(name: str) -> Pool | None:
                raise RuntimeError("a bug")

            s.ingress.pools = broken  # (a kept-alive instance connection is ready: fast path)
            out = await exchange(s.ingress, get(b"/x", close=False))
            assert out.startswith(b"HTTP/1.1 500") and b"the ingress failed" in out
            s.ingress.pools = pools
            assert (s.backend.inflight, s.backend.busy) == (0, 0)
            assert (await exchange(s.ingress, get(b"/after"))).endswith(b"/after")

    asyncio.run(scenario())


def test_requests_on_new_client_connections_take_turns_between_instances() -> None:
    async def scenario() -> None:
        async with ingress(echo_path) as s:
            (other_port,) = free_ports(1)
            other = Stub(echo_path)
            server = await asyncio.start_server(other.serve, "127.0.0.1", other_port)
            try:
                s.pool.add(Backend("api-2", "127.0.0.1", other_port))
                for i in range(8):
                    assert (await exchange(s.ingress, get(b"/%d" % i))).endswith(b"/%d" % i)
                assert (len(s.stub.seen), len(other.seen)) == (4, 4)
            finally:
                server.close()

    asyncio.run(scenario())


def test_connection_naming_content_length_in_a_response_keeps_its_framing() -> None:
    async def handler(stub: Stub, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        while True:
            await stub.read(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: content-length\r\n"
                         b"Content-Length: 5\r\n\r\nhello")
            await writer.drain()

    async def scenario() -> None:
        async with ingress(handler) as s:
            out = await exchange(s.ingress, get(close=False) + get())
            assert out.count(b"Content-Length: 5\r\n") == 2
            assert out.count(b"hello") == 2 and b"chunked" not in out

    asyncio.run(scenario())


# ---- 2. bytes past a response are never the next response


def test_bytes_an_instance_sends_past_its_response_are_not_a_response_to_the_next() -> None:
    async def handler(stub: Stub, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await stub.read(reader)
            if b"/extra" in head:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                             b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nINJECT")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")
            await writer.drain()

    async def scenario() -> None:
        async with ingress(handler) as s:
            out = await exchange(s.ingress, get(b"/extra", close=False) + get(b"/b"))
            assert b"INJECT" not in out
            assert out.endswith(b"real")
            assert len(s.stub.seen) == 2
            assert s.stub.conns == 2  # the connection that lied was not kept for /b

    asyncio.run(scenario())


def test_a_client_that_half_closes_as_its_response_comes_still_gets_it() -> None:
    """The instance answers and the client shuts its sending side in the same moment: at the
    ingress both are read in one turn of its loop, the answer first, and the answer (held to
    the turn's end) still reaches the client before the connection closes."""
    client = socket.socket()
    go: asyncio.Future[None]

    async def handler(stub: Stub, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await stub.read(reader)
        await go
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        client.shutdown(socket.SHUT_WR)  # (at once: both reach the ingress together)
        await reader.read()

    async def scenario() -> None:
        nonlocal go
        loop = asyncio.get_running_loop()
        go = loop.create_future()
        async with ingress(handler) as s:
            client.setblocking(False)
            await loop.sock_connect(client, ("127.0.0.1", s.ingress.port))
            await loop.sock_sendall(client, get())
            async with asyncio.timeout(3):
                await s.stub.arrived.wait()
            go.set_result(None)
            out = b""
            async with asyncio.timeout(3):
                while data := await loop.sock_recv(client, 65536):
                    out += data
            assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nok")

    try:
        asyncio.run(scenario())
    finally:
        client.close()


# ---- 3. a client that never reads


def test_a_client_that_never_reads_stops_every_instance_it_is_answered_by() -> None:
    body = b"x" * 100_000

    async def handler(stub: Stub, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        while True:
            await stub.read(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    async def scenario() -> None:
        async with ingress(handler, response_timeout=2.0) as s:
            _, writer = await slow_client(s.ingress)
            try:
                writer.write(get(close=False) * 300)
                await until(lambda: len(s.ingress.server.open) == 1)
                (client,) = s.ingress.server.open
                # it is answered until its buffers are full, then no more (not 300 x 100 kB)
                await until(lambda: client.writable is not None)
                assert client.transport is not None
                assert client.transport.get_write_buffer_size() < 2 * 1024 * 1024
                assert len(s.stub.seen) < 100
                # another client is answered at once, by a connection that is reading
                out = await exchange(s.ingress, get())
                assert out.startswith(b"HTTP/1.1 200") and out.endswith(body)
                for conn in s.ingress.upstreams.idle.get(s.backend, []):
                    assert conn.transport is not None and conn.transport.is_reading()
            finally:
                writer.close()
            assert client.transport.get_write_buffer_size() < 2 * 1024 * 1024
            assert len(client.queue) <= 64 + 1  # pipelining is bounded

    asyncio.run(scenario())


def test_past_64_pipelined_requests_the_first_64_are_answered_then_the_connection_closes(
) -> None:
    async def scenario() -> None:
        async with ingress(echo_path) as s:
            out = await exchange(s.ingress, get(close=False) * 300)
            assert out.count(b"HTTP/1.1 200 OK\r\n") == 64 == len(s.stub.seen)
            assert out.endswith(b"Connection: close\r\n\r\n/")

    asyncio.run(scenario())


# ---- 4. a refused websocket


WS = (b"GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def test_a_refused_websocket_gets_the_instances_answer_unframed_by_earlier_requests() -> None:
    async def handler(stub: Stub, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await stub.read(reader)
            if b"websocket" in head.lower():
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n"
                             b"WWW-Authenticate: x\r\n\r\nDENIED")
                await writer.drain()
                return
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"2\r\nok\r\n0\r\n\r\n")
            await writer.drain()

    async def scenario() -> None:
        async with ingress(handler) as s:
            out = await exchange(s.ingress, get(close=False) + WS)
            first, _, second = out.partition(b"0\r\n\r\n")
            assert first.startswith(b"HTTP/1.1 200")
            assert second.startswith(b"HTTP/1.1 403 Forbidden\r\n")
            assert b"WWW-Authenticate: x\r\n" in second and b"Connection: close\r\n" in second
            assert second.endswith(b"\r\n\r\nDENIED")

    asyncio.run(scenario())


# ---- 5. h2c


def test_an_h2c_upgrade_with_a_body_is_a_plain_request() -> None:
    async def scenario() -> None:
        async with ingress(echo_path, body_timeout=2.0) as s:
            out = await exchange(s.ingress, b"POST /p HTTP/1.1\r\nHost: localhost\r\n"
                                 b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                                 b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
                                 b"Content-Length: 5\r\n\r\nhello")
            assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"/p")
            ((head, body),) = s.stub.seen
            assert body == b"hello"
            assert b"upgrade" not in head.lower() and b"http2-settings" not in head.lower()

    asyncio.run(scenario())


def test_an_h2c_upgrade_with_a_chunked_body_is_a_plain_request() -> None:
    async def handler(stub: Stub, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        body = await reader.readuntil(b"0\r\n\r\n")
        stub.seen.append((head, body))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async def scenario() -> None:
        async with ingress(handler) as s:
            out = await exchange(s.ingress, b"POST /p HTTP/1.1\r\nHost: localhost\r\n"
                                 b"Connection: Upgrade\r\nUpgrade: h2c\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n"
                                 b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"ok")
            ((_, body),) = s.stub.seen
            assert body.replace(b"\r\n", b"").endswith(b"0")
            assert b"abc" in body and b"de" in body

    asyncio.run(scenario())


# ---- 6. header size limits


def test_a_request_head_over_64_kib_is_refused_with_431() -> None:
    async def scenario() -> None:
        async with ingress(echo_path) as s:
            big = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(80))
            out = await exchange(s.ingress, get(extra=big))
            assert out.startswith(b"HTTP/1.1 431 ")
            assert s.stub.seen == []

    asyncio.run(scenario())


def test_a_header_line_that_never_ends_is_refused_before_it_is_a_megabyte() -> None:
    async def scenario() -> None:
        async with ingress(echo_path) as s:
            reader, writer = await asyncio.open_connection("127.0.0.1", s.ingress.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Pad: ")
            out = b""
            with contextlib.suppress(ConnectionError):
                for _ in range(100):  # up to 10 MB, or until the ingress closes
                    writer.write(b"a" * 100_000)
                    await writer.drain()
                async with asyncio.timeout(3.0):
                    out = await reader.read(-1)
            writer.close()
            assert out == b"" or out.startswith(b"HTTP/1.1 431 ")
            assert s.stub.seen == [] and s.ingress.server.open == set()

    asyncio.run(scenario())


def test_a_response_head_over_64_kib_is_a_502() -> None:
    async def handler(stub: Stub, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await stub.read(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 70_000 + b"\r\n"
                     b"Content-Length: 2\r\n\r\nok")
        await writer.drain()

    async def scenario() -> None:
        async with ingress(handler) as s:
            out = await exchange(s.ingress, get())
            assert out.startswith(b"HTTP/1.1 502 ")
            assert b"aaaa" not in out

    asyncio.run(scenario())


# ---- 7. Host


def test_an_http11_request_without_exactly_one_host_is_a_400() -> None:
    async def scenario() -> None:
        async with ingress(echo_path) as s:
            none = await exchange(s.ingress, b"GET /nohost HTTP/1.1\r\n"
                                  b"Connection: close\r\n\r\n")
            two = await exchange(s.ingress, b"GET /two HTTP/1.1\r\nHost: localhost\r\n"
                                 b"Host: evil.com\r\nConnection: close\r\n\r\n")
            assert none.startswith(b"HTTP/1.1 400 ") and b"Host" in none
            assert two.startswith(b"HTTP/1.1 400 ") and b"Host" in two
            assert s.stub.seen == []
            old = await exchange(s.ingress, b"GET /old HTTP/1.0\r\n\r\n")
            assert old.startswith(b"HTTP/1.1 200") and old.endswith(b"/old")

    asyncio.run(scenario())


# ---- 8. a chunked body that turns malformed


def test_a_chunked_body_that_turns_malformed_is_aborted_with_400() -> None:
    async def handler(stub: Stub, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        stub.seen.append((await reader.readuntil(b"\r\n\r\n"), b""))
        stub.arrived.set()
        await reader.read(-1)  # waits for the rest of the body
        stub.seen.append((b"closed", b""))

    async def scenario() -> None:
        async with ingress(handler, response_timeout=5.0) as s:
            reader, writer = await asyncio.open_connection("127.0.0.1", s.ingress.port)
            writer.write(b"POST /up HTTP/1.1\r\nHost: localhost\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
            await s.stub.arrived.wait()
            writer.write(b"zz-not-hex\r\n\r\n")
            async with asyncio.timeout(2.0):
                out = await reader.read(-1)
            writer.close()
            assert out.startswith(b"HTTP/1.1 400 ")
            await until(lambda: len(s.stub.seen) == 2)  # the instance's connection: closed

    asyncio.run(scenario())


# ---- 9. idle connections to instances


def test_idle_connections_to_an_instance_are_closed_when_it_leaves_its_pool() -> None:
    async def scenario() -> None:
        async with ingress(echo_path) as s:
            out = await exchange(s.ingress, get())
            assert out.endswith(b"/")
            await until(lambda: bool(s.ingress.upstreams.idle.get(s.backend)))
            (kept,) = s.ingress.upstreams.idle[s.backend]
            s.pool.remove(s.backend)
            assert kept.closed
            assert s.backend not in s.ingress.upstreams.idle

    asyncio.run(scenario())


def test_idle_connections_older_than_keepalive_are_swept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream_mod, "KEEPALIVE", 0.2)

    async def scenario() -> None:
        async with ingress(echo_path) as s:
            await exchange(s.ingress, get())
            await until(lambda: bool(s.ingress.upstreams.idle.get(s.backend)))
            (kept,) = s.ingress.upstreams.idle[s.backend]
            await until(lambda: kept.closed, timeout=2.0)
            assert s.backend not in s.ingress.upstreams.idle

    asyncio.run(scenario())


# ---- 10. the upstream timeout and a streamed upload


def test_an_upload_that_progresses_is_not_cut_by_the_response_timeout() -> None:
    async def handler(stub: Stub, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = await reader.readuntil(b"0\r\n\r\n")
        stub.seen.append((b"", body))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
        await writer.drain()

    async def scenario() -> None:
        async with ingress(handler, response_timeout=0.3) as s:
            reader, writer = await asyncio.open_connection("127.0.0.1", s.ingress.port)
            writer.write(b"POST /up HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            for _ in range(8):  # 0.8 s in all, a chunk every 0.1 s
                writer.write(b"1\r\nx\r\n")
                await asyncio.sleep(0.1)
            writer.write(b"0\r\n\r\n")
            async with asyncio.timeout(2.0):
                out = await reader.read(-1)
            writer.close()
            assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"done")

    asyncio.run(scenario())


# ---- 12. trailers: a chunked message's fields after its body


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A chunked body, its chunks joined (what follows the last chunk is read and dropped)."""
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return body
        body += (await reader.readexactly(size + 2))[:-2]


def test_a_chunked_upload_over_64_kib_with_a_trailer_is_forwarded_whole() -> None:
    async def handler(stub: Stub, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        body = await read_chunked(reader)
        stub.seen.append((head, body))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d" % (
            len(str(len(body))), len(body)))
        await writer.drain()

    async def scenario() -> None:
        async with ingress(handler) as s:
            part = b"a" * 10_000
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for _ in range(10))
            out = await exchange(s.ingress, b"POST /up HTTP/1.1\r\nHost: localhost\r\n"
                                 b"Transfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n"
                                 b"Connection: close\r\n\r\n%s0\r\nX-Checksum: abc\r\n\r\n"
                                 % chunks)
            assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"\r\n\r\n100000"), out
            ((_, body),) = s.stub.seen
            assert body == part * 10

    asyncio.run(scenario())


def _chunked_with_trailers(trailers: bytes) -> Handler:
    async def handler(stub: Stub, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await stub.read(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n0\r\n" + trailers + b"\r\n")
        await writer.drain()
        await reader.read(-1)
    return handler


def test_an_instances_trailers_end_its_response_and_are_not_relayed() -> None:
    async def scenario() -> None:
        async with ingress(_chunked_with_trailers(b"X-Checksum: abc\r\n")) as s:
            out = await exchange(s.ingress, get())
            assert out.startswith(b"HTTP/1.1 200 ") and b"X-Checksum" not in out
            assert out.endswith(b"5\r\nhello\r\n0\r\n\r\n")

    asyncio.run(scenario())


def test_an_instances_trailers_over_64_kib_cut_the_response_short() -> None:
    async def scenario() -> None:
        pad = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(80))
        async with ingress(_chunked_with_trailers(pad)) as s:
            out = await exchange(s.ingress, get())
            assert out.startswith(b"HTTP/1.1 200 ") and b"hello" in out
            assert not out.endswith(b"0\r\n\r\n")  # cut: the client does not take it as whole
            assert s.ingress.upstreams.idle.get(s.backend, []) == []

    asyncio.run(scenario())


def test_a_requests_trailers_over_64_kib_are_refused_and_its_body_not_sent_whole() -> None:
    async def handler(stub: Stub, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        stub.seen.append((b"", await reader.read(-1)))  # all it got, until it was closed

    async def scenario() -> None:
        pad = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(80))
        async with ingress(handler) as s:
            out = await exchange(s.ingress, b"POST /up HTTP/1.1\r\nHost: localhost\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n%s\r\n"
                                 % pad)
            assert out.startswith(b"HTTP/1.1 400 ") and b"trailers are over 64 KiB" in out
            await until(lambda: s.stub.conns == 0 or len(s.stub.seen) == s.stub.conns)
            assert not any(got.endswith(b"0\r\n\r\n") for _, got in s.stub.seen)

    asyncio.run(scenario())


# ---- 13. a client's leaving, half-closing, and what its connection is left with


async def stalled_mid_body(stub: Stub, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
    """Half a body, then silence (an event stream that has nothing to say)."""
    await stub.read(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf.")
    await writer.drain()
    await reader.read()  # until the ingress closes it


@pytest.mark.parametrize("sent", [
    b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\nNOT HTTP\r\n\r\n",
], ids=["h2c-upgrade", "then-garbage"])
def test_a_client_leaving_mid_answer_is_noticed_after_an_upgrade_or_garbage(sent: bytes
                                                                           ) -> None:
    async def scenario() -> None:
        async with ingress(stalled_mid_body) as s:
            reader, writer = await asyncio.open_connection("127.0.0.1", s.ingress.port)
            writer.write(sent)
            async with asyncio.timeout(3):
                assert (await reader.readuntil(b"half.")).startswith(b"HTTP/1.1 200 ")
            writer.close()  # the user gives up (Ctrl-C)
            await until(lambda: not s.ingress.server.open and s.backend.busy == 0)
            await until(lambda: s.stub.conns == 1 and s.backend.inflight == 0)

    asyncio.run(scenario())


def test_a_client_that_half_closes_after_asking_is_answered_then_closed() -> None:
    async def scenario() -> None:
        async with ingress(echo_path) as s:
            for request, answers in (
                    (get(b"/a", close=False), 1),
                    (b"POST /b HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\nhi", 1),
                    (get(b"/c", close=False) + b"NOT HTTP\r\n\r\n", 1),
                    (get(b"/d", b"Connection: Upgrade\r\nUpgrade: h2c\r\n", close=False), 1),
                    (get(b"/e", close=False) * 3, 3)):  # (pipelined: every one answered)
                out = await exchange(s.ingress, request, half_close=True)
                assert out.count(b"HTTP/1.1 200 ") == answers, out
                assert out.count(b"Connection: close") == 1
            assert [h.split(b" ")[1] for h, _ in s.stub.seen] == \
                [b"/a", b"/b", b"/c", b"/d", b"/e", b"/e", b"/e"]

    asyncio.run(scenario())


def test_a_connection_paused_for_a_slow_instance_reads_its_next_request() -> None:
    """The instance fell behind the body sent to it (the transport's high-water mark: the
    client's reading paused), then answered: the client's next request on that connection is
    read and answered, not left unread until the idle timeout."""
    go = asyncio.Event()

    async def handler(stub: Stub, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await stub.read(reader)
            if head.startswith(b"POST"):
                await go.wait()
            path = head.split(b" ")[1]
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path))
            await writer.drain()

    async def scenario() -> None:
        async with ingress(handler, idle_timeout=5.0) as s:
            reader, writer = await asyncio.open_connection("127.0.0.1", s.ingress.port)
            size = 2 * 1024 * 1024  # (over the replay limit: streamed to the instance)
            writer.write(b"POST /up HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n"
                         % size + b"x" * size)
            await s.stub.arrived.wait()  # the whole body went through
            (client,) = s.ingress.server.open
            assert client.upstream is not None and client.queue[0].complete
            client.upstream.pause_writing()  # (as asyncio calls it past the high-water mark)
            assert "upstream" in client.paused
            go.set()
            async with asyncio.timeout(3):
                assert (await reader.readuntil(b"/up")).startswith(b"HTTP/1.1 200 ")
            writer.write(get(b"/next"))
            async with asyncio.timeout(3):
                out = await reader.read(-1)
            writer.close()
            assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"/next")

    asyncio.run(scenario())


def test_a_stalled_upload_past_the_replay_limit_is_a_408_not_the_instances_504() -> None:
    async def handler(stub: Stub, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        stub.seen.append((await reader.readuntil(b"\r\n\r\n"), b""))
        await reader.read()

    async def scenario() -> None:
        async with ingress(handler, response_timeout=0.5) as s:
            # 50 kB of 3 MB, then nothing: the client stalled
            out = await exchange(s.ingress, b"POST /up HTTP/1.1\r\nHost: localhost\r\n"
                                 b"Content-Length: 3000000\r\n\r\n" + b"x" * 50_000)
            assert out.startswith(b"HTTP/1.1 408 ") and b"stopped arriving" in out

    asyncio.run(scenario())


def test_a_pipelined_requests_malformed_chunked_body_is_refused_at_once() -> None:
    async def scenario() -> None:
        async with ingress(echo_path, response_timeout=5.0) as s:
            out = await exchange(s.ingress, get(b"/a", close=False) + b"POST /b HTTP/1.1\r\n"
                                 b"Host: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 b"3\r\nabc\r\nzz-not-hex\r\n\r\n", timeout=2)
            assert out.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 400 " in out
            assert [h.split(b" ")[1] for h, _ in s.stub.seen] == [b"/a"]  # /b never sent

    asyncio.run(scenario())


def test_long_targets_are_routed_without_being_remembered() -> None:
    async def scenario() -> None:
        async with ingress(echo_path) as s:
            for i in range(3):
                out = await exchange(s.ingress, get(b"/q?%d=%s" % (i, b"a" * 5000)))
                assert out.startswith(b"HTTP/1.1 200 ")
            long_host = await exchange(s.ingress, b"GET / HTTP/1.1\r\nHost: %s\r\n"
                                       b"Connection: close\r\n\r\n" % (b"h" * 5000))
            assert long_host.startswith(b"HTTP/1.1 421 ")
            await exchange(s.ingress, get(b"/short"))
            assert [t for _, t in s.ingress.routed] == [b"/short"]

    asyncio.run(scenario())


def test_transfer_codings_besides_chunked_are_refused_not_dropped() -> None:
    async def gzip_chunked(stub: Stub, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        await stub.read(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                     b"3\r\n\x1f\x8b\x08\r\n0\r\n\r\n")
        await writer.drain()

    async def scenario() -> None:
        async with ingress(gzip_chunked) as s:
            out = await exchange(s.ingress, b"POST / HTTP/1.1\r\nHost: localhost\r\n"
                                 b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n")
            assert out.startswith(b"HTTP/1.1 501 ") and b"transfer coding gzip" in out
            assert s.stub.seen == []
            out = await exchange(s.ingress, get())
            assert out.startswith(b"HTTP/1.1 502 ") and b"transfer coding gzip" in out

    asyncio.run(scenario())


def test_an_absolute_form_target_is_routed_by_its_authority() -> None:
    async def scenario() -> None:
        async with ingress(echo_path) as s:
            out = await exchange(s.ingress, b"GET http://localhost/hello?x=1 HTTP/1.1\r\n"
                                 b"Host: evil.example\r\nConnection: close\r\n\r\n")
            assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"/hello?x=1")
            out = await exchange(s.ingress, b"GET http://evil.example/ HTTP/1.1\r\n"
                                 b"Host: localhost\r\nConnection: close\r\n\r\n")
            assert out.startswith(b"HTTP/1.1 421 ")  # (the authority is what is checked)

    asyncio.run(scenario())


def test_a_half_closed_clients_answer_is_not_cut_when_its_reading_resumes() -> None:
    """The EOF was taken while the request waited; the instance's writes then back up and
    drain (the client's reading paused and resumed): the EOF, read again, does not cut the
    answer under way."""
    go = asyncio.Event()

    async def handler(stub: Stub, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await stub.read(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf.")
        await writer.drain()
        await go.wait()
        writer.write(b"rest.")
        await writer.drain()
        await reader.read()

    async def scenario() -> None:
        async with ingress(handler) as s:
            reader, writer = await asyncio.open_connection("127.0.0.1", s.ingress.port)
            writer.write(b"POST /p HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\nhi")
            writer.write_eof()
            async with asyncio.timeout(3):
                await reader.readuntil(b"half.")
            (client,) = s.ingress.server.open
            assert client.ended and client.upstream is not None
            client.upstream.pause_writing()  # (as asyncio calls them at the high-water mark
            client.upstream.resume_writing()  # and below the low one)
            await asyncio.sleep(0.1)  # (a turn of the loop for the EOF to be read again)
            go.set()
            async with asyncio.timeout(3):
                rest = await reader.read(-1)
            writer.close()
            assert rest == b"rest."

    asyncio.run(scenario())


def test_an_answer_before_the_upload_ends_says_the_connection_closes() -> None:
    async def handler(stub: Stub, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        stub.seen.append((await reader.readuntil(b"\r\n\r\n"), b""))
        writer.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 3\r\n\r\nbig")
        await writer.drain()
        await reader.read()

    async def scenario() -> None:
        async with ingress(handler) as s:
            reader, writer = await asyncio.open_connection("127.0.0.1", s.ingress.port)
            writer.write(b"POST /up HTTP/1.1\r\nHost: localhost\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
            async with asyncio.timeout(3):
                head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in head
            writer.write(b"0\r\n\r\n")
            async with asyncio.timeout(3):
                assert await reader.read(-1) == b"big"  # then closed, as it said
            writer.close()

    asyncio.run(scenario())


def test_a_failure_of_the_ingress_own_while_reading_is_a_500_and_logged(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a 400 blaming the client: what a parser callback of the ingress raised (a bug; as
    compiled code's type checks would raise) is logged, and the client told it is devenv's."""
    if native.compiled():
        pytest.skip("a compiled class cannot be patched: `make test` runs this interpreted")

    def on_url(self: object, url: bytes) -> None:
        raise TypeError("str object expected; got bytes")

    monkeypatch.setattr(server_mod.ClientConnection, "on_url", on_url)

    async def scenario() -> None:
        logged: list[dict[str, object]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: logged.append(ctx))
        async with ingress(echo_path) as setup:
            out = await exchange(setup.ingress, get())
        assert out.startswith(b"HTTP/1.1 500"), out
        assert b"this is a bug of devenv's" in out and b"TypeError" in out
        assert [str(ctx["exception"]) for ctx in logged] == ["str object expected; got bytes"]

    asyncio.run(scenario())
