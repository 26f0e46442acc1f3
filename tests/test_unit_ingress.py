"""Unit tests of the ingress's pure parts: which hosts it answers (DNS rebinding), route
matching on decoded path segments with the raw rest forwarded, data services, and the
headers it forwards (hop-by-hop ones never)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from devenv.engine.ingress import (
    NoHttp,
    RouteSpec,
    Target,
    build_routes,
    end_to_end,
    host_name,
    split_path,
)
from devenv.engine.pool import Backend, NoBackend, Pool
from fakes import now, run_virtual

ROUTES = build_routes([
    RouteSpec("api", path="/api", strip_prefix=True),
    RouteSpec("v2", path="/api/v2/"),
    RouteSpec("web", host="Shop.Test"),
    RouteSpec("site", path="/"),
    RouteSpec("db", host="pg.localhost", path="/db", data_kind="postgres", port=5433),
    RouteSpec("idle", host="idle.test", path="/idle", running=False),
])


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


def test_a_pick_can_wait_less_than_the_hold_timeout() -> None:
    """The ingress shares one hold deadline among a request's attempts."""

    async def scenario() -> float:
        pool = Pool("web", hold_timeout=15.0)
        pool.add(Backend("web-1", "127.0.0.1", 1))
        with pytest.raises(NoBackend):
            await pool.pick(exclude={"web-1"}, timeout=2.0)
        return now()

    assert run_virtual(scenario()) == pytest.approx(2.0)
