"""Unit tests of the ingress's pure parts: which hosts it answers (DNS rebinding), route
matching on decoded path segments with the raw rest forwarded, data services, and the
headers it forwards (hop-by-hop ones never); and, in-process with a stub instance, its edge
spans and the trace context it passes on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from conftest import free_ports
from devenv.engine.ingress import (
    Framing,
    Ingress,
    NoHttp,
    RouteSpec,
    Target,
    build_routes,
    end_to_end,
    framing,
    host_name,
    request_head,
    response_head,
    split_path,
)
from devenv.engine.ingress.server import ClientConnection
from devenv.engine.pool import Backend, NoBackend, Pool
from devenv.telemetry.context import parse
from devenv.telemetry.model import INGRESS_SERVICE, Hub, RequestSeen, Span, edge_span
from devenv.telemetry.sampling import RateSampler
from fakes import now, run_virtual

ROUTES = build_routes([
    RouteSpec("api", path="/api", strip_prefix=True),
    RouteSpec("v2", path="/api/v2/"),
    RouteSpec("web", host="Shop.Test"),
    RouteSpec("site", path="/"),
    RouteSpec("db", host="pg.localhost", path="/db", data_kind="postgres", port=5433),
    RouteSpec("idle", host="idle.test", path="/idle", running=False),
])

pytestmark = pytest.mark.usefixtures("both_loops")  # (as the engine runs it: uvloop)


@pytest.mark.parametrize(("header", "name"), [
    ("localhost", "localhost"), ("LOCALHOST.:7700", "localhost"), ("127.0.0.1:80", "127.0.0.1"),
    ("[::1]", "[::1]"), ("[::1]:7700", "[::1]"), ("api.localhost:1", "api.localhost"),
    ("shop.test", "shop.test"), ("", None), (":80", None), ("a:b", None), ("[::1", None),
    ("[::1]x", None), ("::1", None), ("a:80:90", None),
])
def test_host_name(header: str, name: str | None) -> None:
    assert host_name(header) == name


@pytest.mark.parametrize("host", ["localhost", "a.b.localhost", "127.0.0.1", "[::1]",
                                  "shop.test", "idle.test", "pg.localhost"])
def test_local_and_declared_hosts_are_allowed(host: str) -> None:
    assert ROUTES.allows(host)


@pytest.mark.parametrize("host", ["evil.example.com", "localhost.evil.com", "127.0.0.2",
                                  "0.0.0.0", "x", "shop.test.evil.com", None])
def test_any_other_host_is_not(host: str | None) -> None:
    assert not ROUTES.allows(host)


def route(host: str, raw_path: str) -> tuple[str, str] | Target | NoHttp | None:
    raw, decoded = split_path(raw_path)
    target = ROUTES.match(host, decoded)
    return (target.service, target.forward(raw)) if isinstance(target, Target) else target


@pytest.mark.parametrize(("raw_path", "expected"), [
    ("/api/x", ("api", "/x")),
    ("/%61pi/x%20y", ("api", "/x%20y")),  # matched decoded, forwarded raw
    ("/api", ("api", "/")),
    ("/api/", ("api", "/")),
    ("/apix", ("site", "/apix")),  # whole segments only
    ("/api%2Fx", ("site", "/api%2Fx")),  # an encoded slash is not a separator
    ("/api/v2/x", ("v2", "/api/v2/x")),  # longest prefix first; not stripped
    ("/api/v%32", ("v2", "/api/v%32")),
    ("/x/../api/y", ("api", "/y")),  # dot segments resolved before matching
    ("/api/%2e%2e/y", ("site", "/y")),
    ("/api/./y", ("api", "/y")),
    ("/api/y/..", ("api", "/")),
    ("/", ("site", "/")),
    ("/db/x", ("site", "/db/x")),  # a data service's prefix is not routed
    ("/idle/x", ("site", "/idle/x")),  # nor one of a service that does not run
])
def test_path_routes_match_decoded_segments_and_forward_the_raw_rest(
        raw_path: str, expected: tuple[str, str]) -> None:
    assert route("localhost", raw_path) == expected


def test_host_routes_come_first_and_data_services_are_named_not_routed() -> None:
    assert route("web.localhost", "/api/x") == ("web", "/api/x")
    assert route("shop.test", "/api/x") == ("web", "/api/x")
    for host in ("db.localhost", "pg.localhost"):
        refusal = route(host, "/")
        assert isinstance(refusal, NoHttp)
        assert "postgres" in refusal.message() and "127.0.0.1:5433" in refusal.message()
    assert "db" not in {t.service for _, t in ROUTES.prefixes}
    assert "idle.localhost" not in ROUTES.hosts


def test_hop_by_hop_headers_and_those_connection_names_are_not_forwarded() -> None:
    headers = CIMultiDict([
        ("Connection", "keep-alive, X-Hop"), ("connection", "x-other-hop"),
        ("X-Hop", "1"), ("X-Other-Hop", "2"), ("Keep-Alive", "timeout=5"), ("TE", "trailers"),
        ("Transfer-Encoding", "chunked"), ("Upgrade", "h2c"), ("Proxy-Connection", "close"),
        ("Host", "a"), ("Cookie", "a=1"), ("Cookie", "b=2"), ("X-Keep", "yes"),
    ])
    assert list(end_to_end(headers).items()) == [("Cookie", "a=1"), ("Cookie", "b=2"),
                                                 ("X-Keep", "yes")]


def _raw(*headers: tuple[bytes, bytes]) -> list[tuple[bytes, bytes, bytes]]:
    return [(n.lower(), n, v) for n, v in headers]


def test_the_forwarded_request_head_keeps_end_to_end_headers_and_says_who_asked() -> None:
    head = request_head(b"POST", b"/x%20y?q=1", _raw(
        (b"Host", b"api.localhost:7700"), (b"Connection", b"keep-alive, X-Hop"),
        (b"X-Hop", b"1"), (b"Expect", b"100-continue"), (b"Cookie", b"a=1"),
        (b"Cookie", b"b=2"), (b"X-Forwarded-For", b"10.0.0.1"), (b"X-Forwarded-Host", b"x"),
        (b"traceparent", b"00-old"), (b"tracestate", b"old=1"), (b"Content-Length", b"5")),
        b"api.localhost:7700", b"127.0.0.1", traceparent=b"00-new", tracestate=None,
        length=5)
    assert head == (b"POST /x%20y?q=1 HTTP/1.1\r\nHost: api.localhost:7700\r\n"
                    b"Cookie: a=1\r\nCookie: b=2\r\n"
                    b"X-Forwarded-Host: api.localhost:7700\r\nX-Forwarded-Proto: http\r\n"
                    b"X-Forwarded-For: 10.0.0.1, 127.0.0.1\r\ntraceparent: 00-new\r\n"
                    b"Content-Length: 5\r\n\r\n")
    # without edge spans the trace headers pass as they are; a streamed body is re-chunked
    head = request_head(b"GET", b"/", _raw((b"traceparent", b"00-old"),
                                           (b"Transfer-Encoding", b"chunked")),
                        b"127.0.0.1", b"::1", chunked=True)
    assert b"traceparent: 00-old\r\n" in head and head.count(b"chunked") == 1
    assert b"X-Forwarded-For: ::1\r\n" in head
    head = request_head(b"GET", b"/ws", _raw((b"Connection", b"Upgrade"),
                                             (b"Upgrade", b"websocket"),
                                             (b"Sec-WebSocket-Key", b"k")),
                        b"a.localhost", b"127.0.0.1", websocket=True)
    assert head.endswith(b"Sec-WebSocket-Key: k\r\nX-Forwarded-Host: a.localhost\r\n"
                         b"X-Forwarded-Proto: http\r\nX-Forwarded-For: 127.0.0.1\r\n"
                         b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n")


@pytest.mark.parametrize(("http11", "head", "status", "length", "expected"), [
    (True, False, 200, True, Framing.LENGTH),
    (True, False, 200, False, Framing.CHUNKED),  # chunked or ended by a close: re-chunked
    (False, False, 200, False, Framing.CLOSE),  # HTTP/1.0 knows no chunks: raw, then close
    (False, False, 200, True, Framing.LENGTH),
    (True, True, 200, True, Framing.NONE),  # HEAD
    (False, True, 200, False, Framing.NONE),
    (True, False, 204, False, Framing.NONE),
    (True, False, 304, True, Framing.NONE),
])
def test_how_a_response_body_is_framed_for_the_client(
        http11: bool, head: bool, status: int, length: bool, expected: Framing) -> None:
    assert framing(http11=http11, head=head, status=status, length=length) is expected


def test_the_relayed_response_head_drops_hop_by_hop_headers_and_says_how_it_ends() -> None:
    upstream = _raw((b"Content-Type", b"text/plain"), (b"Transfer-Encoding", b"chunked"),
                    (b"Connection", b"X-Resp-Hop"), (b"X-Resp-Hop", b"1"),
                    (b"Keep-Alive", b"timeout=5"), (b"Set-Cookie", b"a=1"))
    kept = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\r\n"
    assert response_head(200, b"OK", upstream, Framing.CHUNKED, keep_alive=True,
                         http11=True) == kept + b"Transfer-Encoding: chunked\r\n\r\n"
    assert response_head(200, b"OK", upstream, Framing.CLOSE, keep_alive=False,
                         http11=False) == kept + b"\r\n"
    assert response_head(200, b"OK", upstream, Framing.LENGTH, keep_alive=True,
                         http11=False) == kept + b"Connection: keep-alive\r\n\r\n"
    assert response_head(200, b"OK", upstream, Framing.LENGTH, keep_alive=False,
                         http11=True) == kept + b"Connection: close\r\n\r\n"


def test_connection_cannot_name_away_the_framing_the_ingress_writes() -> None:
    # dropping Content-Length while sending the body would smuggle the body as a request
    request = request_head(b"POST", b"/", _raw((b"Connection", b"content-length, host"),
                                               (b"Content-Length", b"12")),
                           b"localhost", b"127.0.0.1", length=12)
    assert request.count(b"Content-Length: 12\r\n") == 1
    assert request.startswith(b"POST / HTTP/1.1\r\nHost: localhost\r\n")
    response = response_head(200, b"OK", _raw((b"Connection", b"Content-Length"),
                                              (b"Content-Length", b"5")),
                             Framing.LENGTH, keep_alive=True, http11=True)
    assert response == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"


def test_a_pick_can_wait_less_than_the_hold_timeout() -> None:
    """The ingress shares one hold deadline among a request's attempts."""

    async def scenario() -> float:
        pool = Pool("web", hold_timeout=15.0)
        pool.add(Backend("web-1", "127.0.0.1", 1))
        with pytest.raises(NoBackend):
            await pool.pick(exclude={"web-1"}, timeout=2.0)
        return now()

    assert run_virtual(scenario()) == pytest.approx(2.0)


# ---- edge spans (a real ingress on 127.0.0.1, a stub instance behind it)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = "00f067aa0ba902b7"


class Edge:
    """An ingress routing `/api` (and app.localhost) to a stub instance that answers with the
    trace headers it received; every span and request it publishes, captured."""

    def __init__(self, ingress: Ingress, pool: Pool, session: aiohttp.ClientSession):
        self.ingress, self.pool, self.session = ingress, pool, session
        self.spans: list[Span] = []
        self.seen: list[RequestSeen] = []

    async def get(self, path: str, host: str = "127.0.0.1", **headers: str
                  ) -> tuple[int, dict[str, str]]:
        async with self.session.get(f"{self.ingress.url}{path}",
                                    headers={"Host": host, **headers}) as resp:
            body = await resp.json() if resp.content_type == "application/json" else {}
            return resp.status, body


@contextlib.asynccontextmanager
async def edge(instances: int = 1, hold: float = 1.0) -> AsyncIterator[Edge]:
    async def trace(request: web.Request) -> web.Response:
        return web.json_response({k: request.headers.get(k, "")
                                  for k in ("traceparent", "tracestate")})

    async def boom(request: web.Request) -> web.Response:
        return web.Response(status=500, text="oops")

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        await sock.send_str(request.headers.get("traceparent", ""))
        await sock.close()
        return sock

    app_port, ingress_port, closed_port = free_ports(3)
    app = web.Application()
    app.router.add_get("/api/trace", trace)
    app.router.add_get("/api/boom", boom)
    app.router.add_get("/api/ws", ws)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", app_port).start()
    pool, empty = Pool("api", hold_timeout=hold), Pool("idle", hold_timeout=hold)
    for i in range(instances):
        pool.add(Backend(f"api-{i + 1}", "127.0.0.1", app_port if i == 0 else closed_port))
    hub = Hub()
    ingress = Ingress(ingress_port, {"api": pool, "idle": empty}.get, hub=hub)
    ingress.routes = build_routes([RouteSpec("api", path="/api"),
                                   RouteSpec("idle", path="/idle")])
    await ingress.start()
    try:
        async with aiohttp.ClientSession() as session:
            out = Edge(ingress, pool, session)
            hub.request_sinks.append(out.seen.extend)  # each with its edge span
            hub.request_sinks.append(lambda batch: out.spans.extend(map(edge_span, batch)))
            yield out
    finally:
        await ingress.close()
        await runner.cleanup()


def test_a_request_with_a_traceparent_continues_its_trace_and_the_instance_is_a_child(
) -> None:
    async def scenario() -> None:
        async with edge() as e:
            status, got = await e.get("/api/trace?q=1", "localhost:7700",
                                      traceparent=f"00-{TRACE}-{CALLER}-01",
                                      tracestate="congo=t61rcWkgMzE")
            assert status == 200
            (span,), (seen,) = e.spans, e.seen
            assert (span.trace_id, span.parent_id) == (TRACE, CALLER)
            assert (span.service, span.kind, span.name) == (INGRESS_SERVICE, "server", "GET /api")
            assert span.status == "unset" and span.end_ns > span.start_ns
            assert span.attributes == {
                "http.request.method": "GET", "url.path": "/api/trace",
                "http.response.status_code": 200, "server.address": "localhost",
                "devenv.route": "/api", "devenv.service": "api", "devenv.instance": "api-1"}
            # the instance's parent is the edge span, in the same trace; tracestate passes
            upstream = parse(got["traceparent"])
            assert upstream is not None
            assert (upstream.trace_id, upstream.span_id, upstream.flags) == \
                (TRACE, span.span_id, "01")
            assert got["tracestate"] == "congo=t61rcWkgMzE"
            assert seen == RequestSeen("/api", "api", "api-1", "GET", "/api/trace", 200,
                                       span.start_ns, seen.duration_s, TRACE, span.span_id,
                                       CALLER, "localhost")
            assert 0 < seen.duration_s < 5

    asyncio.run(scenario())


def test_a_request_without_a_valid_traceparent_starts_a_new_trace() -> None:
    async def scenario() -> None:
        async with edge() as e:
            _, plain = await e.get("/api/trace")
            # an invalid one (all-zero trace id) is a new trace too, its tracestate dropped
            _, bad = await e.get("/api/trace", traceparent=f"00-{'0' * 32}-{CALLER}-01",
                                 tracestate="congo=t61rcWkgMzE")
            first, second = e.spans
            for span, got in ((first, plain), (second, bad)):
                upstream = parse(got["traceparent"])
                assert span.parent_id is None and span.trace_id != TRACE
                assert upstream is not None and upstream.sampled
                assert (upstream.trace_id, upstream.span_id) == (span.trace_id, span.span_id)
                assert got["tracestate"] == ""
            assert first.trace_id != second.trace_id

    asyncio.run(scenario())


def test_failures_the_ingress_answers_are_error_spans_saying_why() -> None:
    async def scenario() -> None:
        async with edge(instances=2, hold=0.2) as e:
            assert (await e.get("/idle/x"))[0] == 503  # no ready instance
            assert (await e.get("/api/boom"))[0] == 500  # the instance's own error
            assert (await e.get("/nowhere"))[0] == 404  # no route: not an error
            assert (await e.get("/api/trace", "evil.example"))[0] == 421
            statuses = [(s.attributes["http.response.status_code"], s.status) for s in e.spans]
            assert statuses == [(503, "error"), (500, "error"), (404, "unset"), (421, "error")]
            no_instance, boom, nowhere, foreign = e.spans
            assert "'idle' has no ready instance" in no_instance.status_message
            assert "devenv.instance" not in no_instance.attributes
            assert boom.status_message == "HTTP 500"
            assert nowhere.name == "GET" and nowhere.status_message == ""
            assert "'evil.example' is not served here" in foreign.status_message
            assert [(r.service, r.instance, r.status) for r in e.seen] == [
                ("idle", None, 503), ("api", "api-1", 500), ("", None, 404), ("", None, 421)]

            # an instance that refuses the connection: 502 once no other takes it
            e.pool.remove(next(b for b in e.pool.ready if b.id == "api-1"))
            assert (await e.get("/api/trace"))[0] == 502
            refused = e.spans[-1]
            assert refused.status == "error" and "no instance took the connection" in \
                refused.status_message
            assert e.seen[-1].instance is None

    asyncio.run(scenario())


def test_a_websocket_is_one_span_from_upgrade_to_close() -> None:
    async def scenario() -> None:
        async with edge() as e:
            async with e.session.ws_connect(
                    f"{e.ingress.url}/api/ws",
                    headers={"traceparent": f"00-{TRACE}-{CALLER}-01"}) as sock:
                upstream = parse((await sock.receive()).data)
                await sock.receive()  # the close
            await asyncio.wait_for(_until(lambda: bool(e.spans)), 5)
            (span,) = e.spans
            assert span.trace_id == TRACE and span.attributes["http.response.status_code"] == 101
            assert upstream is not None and upstream.span_id == span.span_id

    asyncio.run(scenario())


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


def test_over_its_trace_rate_the_ingress_counts_requests_but_does_not_trace_them() -> None:
    async def scenario() -> None:
        async with edge() as e:
            clock = [0.0]
            e.ingress.sampler = RateSampler(2, clock=lambda: clock[0])
            flags = []
            for _ in range(4):  # two a second: the first two are traced
                status, got = await e.get("/api/trace")
                assert status == 200
                upstream = parse(got["traceparent"])
                assert upstream is not None
                flags.append(upstream.flags)
            # the instance is told (its SDK follows the flag); metrics still see every one
            assert flags == ["01", "01", "00", "00"]
            assert len(e.seen) == 4 and [s.trace_id is not None for s in e.seen] == [
                True, True, False, False]
            status, _ = await e.get("/api/boom")  # a failure is always traced
            assert status == 500 and e.seen[-1].trace_id is not None
            # a caller's sampled traceparent is followed, whatever the rate
            _, got = await e.get("/api/trace", traceparent=f"00-{TRACE}-{CALLER}-01")
            assert e.seen[-1].trace_id == TRACE and got["traceparent"].endswith("-01")
            clock[0] = 1.0  # a second later: two more
            await e.get("/api/trace")
            assert e.seen[-1].trace_id is not None
            assert e.ingress.hub is not None and e.ingress.hub.unsampled == 2

    asyncio.run(scenario())


def test_the_rate_sampler_admits_its_rate_a_second_and_none_means_every_one() -> None:
    clock = [100.0]
    sampler = RateSampler(10, clock=lambda: clock[0])
    assert sum(sampler.admit() for _ in range(15)) == 10  # a second's worth at once
    clock[0] += 0.5
    assert sum(sampler.admit() for _ in range(15)) == 5
    clock[0] += 60  # a quiet minute does not bank more than a second's worth
    assert sum(sampler.admit() for _ in range(100)) == 10
    sampler.rate = None
    assert all(sampler.admit() for _ in range(1000))


def test_a_wait_armed_as_its_connections_timer_fires_early_and_arms_again_is_timed() -> None:
    """uvloop's clock is in whole milliseconds: a response timeout's timer may fire a little
    before its time, and is armed again for the rest; a handle armed under 0.5 ms ahead has
    no `when()`. The connection's next wait, armed just then, once failed its request with a
    500 (`AttributeError`) 1 time in 10 on uvloop. Every wait here is armed and timed."""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        ingress = Ingress(free_ports(1)[0], lambda name: None)
        for i in range(200):
            conn = ClientConnection(ingress)
            conn._arm(0.003 + (i % 5) * 0.0003)
            next_wait = loop.create_future()

            def arm_the_next(conn: ClientConnection = conn,
                             done: asyncio.Future[None] = next_wait) -> None:
                try:  # (right after the timer fired, before what it queued runs)
                    conn._stop_timer()
                    conn._arm(60.0)
                except Exception as exc:
                    done.set_exception(exc)
                else:
                    done.set_result(None)

            loop.call_at(conn.progress + conn.allowed, arm_the_next)
            await next_wait
            assert conn.timed and conn.deadline is not None
            conn.deadline.cancel()
            conn.timed = False

    asyncio.run(scenario())
