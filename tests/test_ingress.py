"""The ingress at its edges, through a real engine: foreign hosts (DNS rebinding), encoded
paths, data services, hop-by-hop headers, websocket subprotocols, backends that hang up,
slow and idle connections by the thousand; and, in-process on real sockets, the upstream
timeout, the header timeout and the connection cap."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from http import client as httpc
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from aiohttp import web

from conftest import ENV, FIXTURES, Project, free_ports, wait_for
from devenv.engine import ingress as ingress_mod
from devenv.engine.ingress import Ingress, RouteSpec, build_routes
from devenv.engine.pool import Backend, Pool


def fixture(project: Project, name: str) -> None:
    shutil.copy(FIXTURES / name, project.root / name)


def send(port: int, path: str, host: str | None, method: str = "GET",
         headers: dict[str, str] | None = None, body: bytes | None = None,
         timeout: float = 10) -> tuple[int, httpc.HTTPMessage, bytes]:
    """One request with the path and headers sent exactly as given (urllib would
    add `Connection: close`)."""
    conn = httpc.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        sent = dict(headers or {})
        if host is not None:
            sent["Host"] = host
        conn.request(method, path, body=body, headers=sent)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


# ---- 5: DNS rebinding


def test_only_local_and_declared_hosts_are_served(project: Project) -> None:
    api, web_port = free_ports(2)
    fixture(project, "edge.py")
    project.services(f"""\
          api:
            command: python edge.py
            port: {api}
            ingress: {{path: /api, strip_prefix: true}}
          web:
            command: python edge.py
            port: {web_port}
            ingress: {{host: shop.test}}
        """)
    project.up()
    port = project.ingress_port

    # a page on another origin whose name resolves to 127.0.0.1 sends its own Host
    for foreign in ("evil.example.com", f"evil.example.com:{port}", "localhost.evil.com",
                    "127.0.0.2", "x"):
        code, _, body = send(port, "/api/whoami", foreign)
        assert code == 421, (foreign, code, body)
        text = body.decode()
        assert "localhost" in text and "ingress: {host:" in text, text
    code, _, body = send(port, "/whoami", "evil.example.com")  # host routes too
    assert code == 421

    for local in ("localhost", f"localhost:{port}", "127.0.0.1", f"127.0.0.1:{port}",
                  f"[::1]:{port}", "[::1]", f"API.LOCALHOST:{port}", "anything.localhost"):
        code, _, body = send(port, "/api/whoami", local)
        assert code == 200, (local, code, body)
    code, _, body = send(port, "/whoami", f"shop.test:{port}")  # a declared host
    assert code == 200 and json.loads(body)["pid"]
    # the service's own port (a plain TCP balancer) is not the ingress: not affected
    assert send(api, "/whoami", "evil.example.com")[0] == 200


# ---- 19: encoded paths, data services, hop-by-hop headers, websocket subprotocols


def test_an_encoded_prefix_routes_on_the_decoded_path_and_forwards_the_raw_rest(
        project: Project) -> None:
    svc, plain = free_ports(2)
    fixture(project, "edge.py")
    project.services(f"""\
          svc:
            command: python edge.py
            port: {svc}
            ingress: {{path: /svc, strip_prefix: true}}
          plain:
            command: python edge.py
            port: {plain}
            ingress: {{path: /plain}}
        """)
    project.up()
    port = project.ingress_port

    code, _, body = send(port, "/%73vc/a%20b/%2F?q=%20x", "localhost")
    assert code == 200, body
    assert json.loads(body)["target"] == "/a%20b/%2F?q=%20x"  # the rest, still encoded
    code, _, body = send(port, "/%73vc", "localhost")
    assert code == 200 and json.loads(body)["target"] == "/"
    code, _, body = send(port, "/pl%61in/x%3Fy", "localhost")  # no strip: forwarded as sent
    assert code == 200 and json.loads(body)["target"] == "/pl%61in/x%3Fy"
    code, _, body = send(port, "/other/../svc/x", "localhost")  # dot segments resolved
    assert code == 200 and json.loads(body)["target"] == "/x"
    assert send(port, "/svcx", "localhost")[0] == 404  # a prefix is whole segments


def test_a_data_service_has_no_ingress_route_and_says_so_at_once(project: Project) -> None:
    db, api = free_ports(2)
    fixture(project, "edge.py")
    project.services(f"""\
          db:
            kind: postgres
            port: {db}
            ingress: {{host: pg.localhost, path: /db}}
          api:
            command: python edge.py
            port: {api}
            ingress: {{path: /}}
        """)
    project.up()
    for host, path in (("db.localhost", "/"), ("pg.localhost", "/x"), ("localhost", "/db/x")):
        started = time.monotonic()
        code, _, body = send(project.ingress_port, path, host, timeout=10)
        took = time.monotonic() - started
        if path == "/db/x":  # a data service's path prefix is not routed: `/` takes it
            assert code == 200 and json.loads(body)["target"] == "/db/x", body
            continue
        assert code == 404, (host, code, body)
        assert took < 2
        text = body.decode()
        assert "db" in text and "postgres" in text and "not HTTP" in text, text
        assert f"127.0.0.1:{db}" in text
    assert project.service("db")["state"] == "healthy"


def test_headers_named_by_connection_are_not_forwarded(project: Project) -> None:
    api = free_ports(1)[0]
    fixture(project, "edge.py")
    project.services(f"""\
          api: {{command: python edge.py, port: {api}}}
        """)
    project.up()
    code, _, body = send(project.ingress_port, "/raw", "api.localhost", headers={
        "Connection": "keep-alive, X-Hop-One", "X-Hop-One": "secret", "X-Keep": "yes",
        "Keep-Alive": "timeout=5", "Proxy-Connection": "keep-alive"})
    assert code == 200
    seen = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert seen.get("x-keep") == "yes"
    for hop in ("x-hop-one", "keep-alive", "proxy-connection"):
        assert hop not in seen, (hop, seen)
    assert seen["host"] == "api.localhost"

    code, headers, _ = send(project.ingress_port, "/hop", "api.localhost")
    assert code == 200
    assert headers.get("X-Resp-Keep") == "yes"
    assert headers.get("X-Resp-Hop") is None


def test_the_websocket_subprotocol_is_the_one_the_backend_chose(project: Project) -> None:
    chooses, declines = free_ports(2)
    fixture(project, "ws.py")
    project.services(f"""\
          picky:
            command: [{sys.executable}, ws.py]
            port: {chooses}
            env: {{WS_PROTOCOLS: v2.chat}}
            health: {{http: /healthz}}
          plain:
            command: [{sys.executable}, ws.py]
            port: {declines}
            health: {{http: /healthz}}
        """)
    project.up()

    async def talk(host: str, protocols: tuple[str, ...]) -> tuple[str | None, str]:
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"http://127.0.0.1:{project.ingress_port}/ws", headers={"Host": host},
                protocols=protocols) as ws:
            await ws.send_str("hi")
            return ws.protocol, (await ws.receive()).data

    assert asyncio.run(talk("picky.localhost", ("v1.chat", "v2.chat"))) == (
        "v2.chat", "v2.chat: hi")
    assert asyncio.run(talk("plain.localhost", ("v1.chat",))) == (None, "echo: hi")


# ---- 9.2: a backend that hangs up without answering


def test_a_request_the_backend_dropped_is_not_replayed_and_fails_at_once(
        project: Project) -> None:
    api = free_ports(1)[0]
    fixture(project, "edge.py")
    hits = project.root / "hits.txt"
    project.services(f"""\
          api:
            command: python edge.py
            port: {api}
            replicas: 2
            env: {{HITS_FILE: {hits}}}
            health: {{http: /healthz}}
        """)
    project.up()
    for method, n in (("POST", 1), ("GET", 2)):
        started = time.monotonic()
        code, _, body = send(project.ingress_port, "/drop", "api.localhost", method=method,
                             body=b"pay once" if method == "POST" else None)
        took = time.monotonic() - started
        assert code == 502, (method, code, body)
        assert took < 3, took
        text = body.decode()
        assert "api" in text and "closed the connection without answering" in text, text
        assert len(hits.read_text().splitlines()) == n  # one instance got it, only once
    status = project.service("api")
    assert status["state"] == "healthy" and status["replicas"]["ready"] == 2


# ---- 17: a thousand slow connections


def _limits_of(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files limit")


SLOW = 1100


@contextlib.contextmanager
def fd_limit(at_least: int) -> Any:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < at_least:
        pytest.skip(f"the hard limit on open files ({hard}) is below {at_least}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, at_least), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_slow_connections_do_not_take_the_engine_down(project: Project) -> None:
    api = free_ports(1)[0]
    project.services(f"""\
          api:
            command: python svc.py
            port: {api}
            health: {{http: /healthz}}
        """)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < SLOW + 400:
        pytest.skip(f"the hard limit on open files ({hard}) is too low for this test")

    def low_limit() -> None:  # the engine starts with the common default soft limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))

    subprocess.run([sys.executable, "-m", "devenv", "up"], cwd=project.root, env=ENV,
                   preexec_fn=low_limit, check=True, capture_output=True, timeout=90)
    engine = project.engine_pid()
    assert engine is not None
    soft_now, hard_now = _limits_of(engine)
    assert soft_now == hard_now  # raised at start

    async def scenario() -> None:
        # each: its reader, writer, when it began to connect, when its bytes were sent
        opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float, float]] = []

        async def stall() -> None:
            began = time.monotonic()  # the engine's clock for it starts later, at its accept
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", project.ingress_port), 10)
            writer.write(b"GET /whoami HTTP/1.1\r\nHost: api.localhost\r\nX-Slow: ")
            await writer.drain()
            opened.append((reader, writer, began, time.monotonic()))

        results = await asyncio.gather(*(stall() for _ in range(SLOW)),
                                       return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        try:
            assert not failures, f"{len(failures)} connections failed: {failures[:3]}"

            def held() -> int:  # by the engine, once it accepted them all
                return sum(1 for c in psutil.Process(engine).net_connections("tcp")
                           if c.laddr and c.laddr.port == project.ingress_port
                           and c.status == psutil.CONN_ESTABLISHED)

            holding = await asyncio.to_thread(wait_for, lambda: held() >= SLOW, 5)
            assert holding, held()
            started = time.monotonic()
            status = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "devenv", "status", "--json", cwd=project.root,
                env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out, err = await asyncio.wait_for(status.communicate(), 30)
            status_s = time.monotonic() - started
            assert status.returncode == 0, err.decode()
            services = json.loads(out)["services"]  # none: "no environment is running"
            assert services and services[0]["state"] == "healthy", out

            started = time.monotonic()
            code, who = await asyncio.to_thread(project.ingress, "/whoami", "api.localhost")
            request_s = time.monotonic() - started
            assert code == 200 and who["service"] == "api"
            assert request_s < 3

            async def closed(reader: asyncio.StreamReader, since: float) -> float:
                with contextlib.suppress(ConnectionError):
                    while await reader.read(4096):
                        pass
                return time.monotonic() - since

            limit = ingress_mod.HEADER_TIMEOUT
            ends = await asyncio.wait_for(
                asyncio.gather(*(closed(r, 0.0) for r, _, _, _ in opened)), limit + 20)
            waits = [end - sent for end, (_, _, _, sent) in zip(ends, opened, strict=True)]
            assert max(waits) <= limit + 3, max(waits)
            earliest = min(end - began for end, (_, _, began, _) in zip(ends, opened,
                                                                         strict=True))
            assert earliest >= limit, earliest  # not before its time
            print(f"\nslowloris: {len(opened)} stalled connections held by the "
                  f"engine; status answered in {status_s:.2f}s, a request in "
                  f"{request_s:.2f}s; stalled connections closed after "
                  f"{min(waits):.1f}-{max(waits):.1f}s (header timeout {limit:g}s)")
        finally:
            for _, writer, _, _ in opened:
                writer.close()

    with fd_limit(SLOW + 400):
        asyncio.run(scenario())
    assert project.service("api")["state"] == "healthy"


# ---- in-process, on real sockets: the ingress's own timeouts and connection cap


ENDLESS_OVER = web.AppKey("endless_over", asyncio.Event)  # /endless stopped writing


@contextlib.asynccontextmanager
async def backend_app(port: int) -> AsyncIterator[web.Application]:
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(text="late")

    async def drip(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(6):
            await resp.write(f"chunk {i}\n".encode())
            await asyncio.sleep(0.25)
        await resp.write_eof()
        return resp

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    async def cut(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = 100
        await resp.prepare(request)
        await resp.write(b"x" * 10)
        assert request.transport is not None
        request.transport.abort()  # the instance dies mid-body
        return resp

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for part in (b"one ", b"two ", b"three"):
            await resp.write(part)
        await resp.write_eof()
        return resp

    async def count(request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        async for part in request.content.iter_any():
            digest.update(part)
            size += len(part)
        return web.json_response({"size": size, "sha256": digest.hexdigest(),
                                  "chunked": request.headers.get("Transfer-Encoding", "")})

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        try:
            while True:
                await resp.write(b"x" * 65536)
                await asyncio.sleep(0.01)
        finally:
            request.app[ENDLESS_OVER].set()

    async def cut_chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"partial")
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return resp

    app = web.Application()
    app[ENDLESS_OVER] = asyncio.Event()
    app.router.add_get("/chunked", chunked)
    app.router.add_post("/count", count)
    app.router.add_get("/endless", endless)
    app.router.add_get("/cut-chunked", cut_chunked)
    app.router.add_get("/hang", hang)
    app.router.add_get("/drip", drip)
    app.router.add_get("/hello", hello)
    app.router.add_post("/echo", echo)
    app.router.add_get("/cut", cut)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield app
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def ingress_to(app_ports: list[int], **options: Any) -> AsyncIterator[Ingress]:
    """An ingress routing app.localhost to instances on these ports."""
    pool = Pool("app", hold_timeout=1.0)
    for i, app_port in enumerate(app_ports):
        pool.add(Backend(f"app-{i + 1}", "127.0.0.1", app_port))
    ingress = Ingress(free_ports(1)[0], lambda name: pool if name == "app" else None,
                      **options)
    await ingress.start()
    ingress.routes = build_routes([RouteSpec("app", port=app_ports[0])])
    try:
        yield ingress
    finally:
        await ingress.close()


@contextlib.asynccontextmanager
async def ingress_to_app(**options: Any) -> AsyncIterator[Ingress]:
    app_port = free_ports(1)[0]
    async with backend_app(app_port), ingress_to([app_port], **options) as ingress:
        yield ingress


def test_an_upstream_that_does_not_answer_gets_504_but_a_flowing_stream_is_not_cut() -> None:
    async def scenario() -> None:
        async with ingress_to_app(response_timeout=0.5) as ingress, \
                aiohttp.ClientSession() as session:
            started = time.monotonic()
            async with session.get(f"{ingress.url}/hang",
                                   headers={"Host": "app.localhost"}) as resp:
                body = await resp.text()
            assert resp.status == 504, body
            assert time.monotonic() - started < 3
            assert "app" in body and "0.5s" in body
            async with session.get(f"{ingress.url}/drip",
                                   headers={"Host": "app.localhost"}) as resp:
                body = await resp.text()
            assert resp.status == 200
            assert body.splitlines() == [f"chunk {i}" for i in range(6)]  # 1.5 s, whole

    asyncio.run(scenario())


def test_slow_headers_and_idle_connections_are_dropped_and_a_full_ingress_makes_room() -> None:
    async def closed_after(reader: asyncio.StreamReader, since: float) -> float:
        with contextlib.suppress(ConnectionError):
            while await asyncio.wait_for(reader.read(4096), 10):
                pass
        return time.monotonic() - since

    async def scenario() -> None:
        async with ingress_to_app(header_timeout=1.0, idle_timeout=1.5,
                                  max_connections=20) as ingress:
            assert ingress.server is not None
            stalled = []
            for _ in range(30):
                reader, writer = await asyncio.open_connection("127.0.0.1", ingress.port)
                writer.write(b"GET /hello HTTP/1.1\r\nHost: app.localhost\r\n")
                stalled.append((reader, writer, time.monotonic()))
            try:
                # at the cap, the oldest stalled connections made room for the newest...
                evicted = [await closed_after(r, t) for r, _, t in stalled[:10]]
                assert max(evicted) < 0.7, evicted
                # ...and for a request, which is served
                async with aiohttp.ClientSession() as session, session.get(
                        f"{ingress.url}/hello", headers={"Host": "app.localhost"}) as resp:
                    assert resp.status == 200 and await resp.text() == "hello"
                # the others are closed once their header timeout is up
                timed_out = await asyncio.gather(*(closed_after(r, t) for r, _, t in stalled))
                assert 0.9 <= max(timed_out) < 2.5, timed_out
                assert ingress.server.evicted == 11 and ingress.server.timed_out == 19

                # a kept-alive connection idle (or slow with its next request) is closed too
                reader, writer = await asyncio.open_connection("127.0.0.1", ingress.port)
                stalled.append((reader, writer, 0))
                writer.write(b"GET /hello HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 200")
                assert await reader.readexactly(5) == b"hello"
                writer.write(b"GET /hello HTTP/1.1\r\n")
                idle = await closed_after(reader, time.monotonic())
                assert 1.4 <= idle < 3, idle
            finally:
                for _, writer, _ in stalled:
                    writer.close()

    asyncio.run(scenario())


def test_a_response_cut_by_the_instance_is_cut_for_the_client_too() -> None:
    async def scenario() -> None:
        async with ingress_to_app() as ingress, aiohttp.ClientSession() as session, \
                session.get(f"{ingress.url}/cut", headers={"Host": "app.localhost"}) as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(resp.read(), 5)

    asyncio.run(scenario())


def test_expect_100_continue_is_answered_before_the_body_is_sent() -> None:
    async def scenario() -> None:
        async with ingress_to_app() as ingress:
            reader, writer = await asyncio.open_connection("127.0.0.1", ingress.port)
            try:
                writer.write(b"POST /echo HTTP/1.1\r\nHost: app.localhost\r\n"
                             b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n")
                interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
                writer.write(b"hello")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 200")
                assert await reader.readexactly(5) == b"hello"
            finally:
                writer.close()

    asyncio.run(scenario())


def test_only_an_idempotent_request_on_a_kept_alive_connection_found_closed_is_resent() -> None:
    """The instance answers the first request of each connection and closes the connection
    on the second without answering, as one that closed an idle kept-alive connection just as
    the ingress sent on it. A refused connection is the only reason to try another instance."""
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            for n in range(2):
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), 0)
                await reader.readexactly(length)
                received.append(head.split(b" ")[0])
                if n == 1:
                    break
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        writer.close()

    async def scenario() -> None:
        app_port, dead_port = free_ports(2)
        server = await asyncio.start_server(serve, "127.0.0.1", app_port)
        try:
            # app-1 refuses (nothing listens): never received, so app-2 takes the request
            async with ingress_to([dead_port, app_port]) as ingress, \
                    aiohttp.ClientSession() as session:
                async def call(method: str) -> tuple[int, str]:
                    async with session.request(method, f"{ingress.url}/x", data=b"body",
                                               headers={"Host": "app.localhost"}) as resp:
                        return resp.status, await resp.text()

                # (the pool alternates: every other call meets app-1 first)
                assert await call("POST") == (200, "ok")  # a new connection, always
                assert await call("GET") == (200, "ok")  # a new kept-alive connection
                assert await call("GET") == (200, "ok")  # it was closed: sent again, anew
                assert received == [b"POST", b"GET", b"GET", b"GET"]
                assert await call("PUT") == (200, "ok")  # a new kept-alive connection
                assert await call("POST") == (200, "ok")  # not on it: on a new one
                assert received[4:] == [b"PUT", b"POST"]
                assert await call("DELETE") == (200, "ok")  # on PUT's: closed, sent again
                assert received[6:] == [b"DELETE", b"DELETE"]
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


# ---- streaming both ways, framing, pipelining, and either side going away


async def _exchange(ingress: Ingress, raw: bytes) -> tuple[asyncio.StreamReader,
                                                           asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", ingress.port)
    writer.write(raw)
    await writer.drain()
    return reader, writer


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    out = b""
    with contextlib.suppress(ConnectionError):
        while part := await asyncio.wait_for(reader.read(65536), 5):
            out += part
    return out


def test_an_http10_client_gets_a_chunked_response_unchunked_then_the_connection_closes(
) -> None:
    async def scenario() -> None:
        async with ingress_to_app() as ingress:
            reader, writer = await _exchange(
                ingress, b"GET /chunked HTTP/1.0\r\nHost: app.localhost\r\n\r\n")
            try:
                data = await _read_all(reader)  # to the close: that is how the body ends
            finally:
                writer.close()
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert b"transfer-encoding" not in head.lower()
            assert body == b"one two three"
            # an HTTP/1.1 client gets it chunked, on a connection that stays open
            reader, writer = await _exchange(
                ingress, b"GET /chunked HTTP/1.1\r\nHost: app.localhost\r\n\r\n"
                b"HEAD /hello HTTP/1.1\r\nHost: app.localhost\r\n\r\n"
                b"GET /hello HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert b"Transfer-Encoding: chunked" in head
                assert await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5) == \
                    b"4\r\none \r\n4\r\ntwo \r\n5\r\nthree\r\n0\r\n\r\n"
                # a HEAD's answer has its length but no body; the next one follows it
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 5" in head
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 200")
                assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
            finally:
                writer.close()

    asyncio.run(scenario())


def test_request_bodies_bigger_than_the_replay_limit_stream_to_the_instance_whole() -> None:
    size = ingress_mod.REPLAY_LIMIT * 3 + 12345
    payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    digest = hashlib.sha256(payload).hexdigest()

    async def scenario() -> None:
        async with ingress_to_app() as ingress, aiohttp.ClientSession() as session:
            async def parts() -> AsyncIterator[bytes]:  # chunked, as it comes
                for i in range(0, size, 100_000):
                    yield payload[i:i + 100_000]
                    await asyncio.sleep(0)

            for data, chunked in ((payload, ""), (parts(), "chunked")):
                async with session.post(f"{ingress.url}/count", data=data,
                                        headers={"Host": "app.localhost"}) as resp:
                    assert resp.status == 200, await resp.text()
                    got = await resp.json()
                assert got == {"size": size, "sha256": digest, "chunked": chunked}

    asyncio.run(scenario())


def test_pipelined_requests_are_answered_in_order_on_one_connection() -> None:
    async def scenario() -> None:
        async with ingress_to_app() as ingress:
            reader, writer = await _exchange(ingress, b"".join(
                b"POST /echo HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 6\r\n\r\n"
                b"body-%d" % i if i % 2 else
                b"GET /chunked HTTP/1.1\r\nHost: app.localhost\r\n\r\n"
                for i in range(1, 7)) + b"GET /hello HTTP/1.1\r\nHost: app.localhost\r\n"
                b"Connection: close\r\n\r\n")
            try:
                data = await _read_all(reader)
            finally:
                writer.close()
            assert data.count(b"HTTP/1.1 200") == 7
            bodies = [data.index(b) for b in (b"body-1", b"three\r\n", b"body-3", b"body-5",
                                              b"hello")]
            assert bodies == sorted(bodies)
            assert data.endswith(b"hello")

    asyncio.run(scenario())


def test_a_chunked_response_cut_by_the_instance_is_cut_for_the_client_too() -> None:
    async def scenario() -> None:
        async with ingress_to_app() as ingress:
            reader, writer = await _exchange(
                ingress, b"GET /cut-chunked HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
            try:
                data = await _read_all(reader)
            finally:
                writer.close()
            assert data.startswith(b"HTTP/1.1 200") and b"partial" in data
            assert not data.endswith(b"0\r\n\r\n")  # no last chunk: not a clean end

    asyncio.run(scenario())


def test_a_client_gone_mid_response_closes_its_instance_connection() -> None:
    async def scenario() -> None:
        app_port = free_ports(1)[0]
        async with backend_app(app_port) as app, ingress_to([app_port]) as ingress:
            reader, writer = await _exchange(
                ingress, b"GET /endless HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
            await asyncio.wait_for(reader.readexactly(100_000), 5)
            writer.close()  # mid-response
            # the instance sees its connection closed, which is not kept for another request
            await asyncio.wait_for(app[ENDLESS_OVER].wait(), 5)
            assert not any(ingress.upstreams.idle.values())
            async with aiohttp.ClientSession() as session, session.get(
                    f"{ingress.url}/hello", headers={"Host": "app.localhost"}) as resp:
                assert resp.status == 200 and await resp.text() == "hello"

    asyncio.run(scenario())
