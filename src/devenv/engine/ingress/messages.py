"""What the ingress writes, pure and in bytes: the head of a request it forwards (end-to-end
headers only, X-Forwarded-*, a child `traceparent`), the head of the response it relays, how
that response's body is framed for the client, and the answers it makes itself
(`IngressError`, the route page, the refusal of a foreign host)."""

from __future__ import annotations

import html
from collections.abc import Mapping
from enum import Enum
from http import HTTPStatus
from urllib.parse import unquote

from multidict import CIMultiDict

from devenv.engine.ingress.routes import host_name

# Headers that describe one connection, never forwarded (RFC 9110 §7.6.1), besides those a
# message's own `Connection` header names. `host` is set anew by the ingress.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate",
                        "proxy-authorization", "te", "trailer", "trailers",
                        "transfer-encoding", "upgrade", "host", "http2-settings"})
_HOP_BY_HOP = frozenset(h.encode() for h in HOP_BY_HOP)
# set anew on a forwarded request: the ingress answers `Expect`, and X-Forwarded-For is
# extended with the peer
_SET_ON_REQUEST = _HOP_BY_HOP | {b"expect", b"x-forwarded-host", b"x-forwarded-proto",
                                 b"x-forwarded-for", b"content-length"}
# A message's framing, which the ingress always writes itself (never dropped because a
# `Connection` header names it: that would turn a body into a smuggled message).
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"host"})
_TRACE = frozenset({b"traceparent", b"tracestate"})

# A header as the parser gave it: (lowercased name, name, value).
Header = tuple[bytes, bytes, bytes]


def end_to_end(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """The headers to forward: every one but the hop-by-hop ones, and those the message's
    `Connection` header names (RFC 9110 §7.6.1). Repeated headers stay repeated."""
    named: set[str] = set()
    getall = getattr(headers, "getall", None)
    connection = getall("Connection", []) if getall else [headers.get("Connection", "")]
    for value in connection:
        named.update(token.strip().lower() for token in value.split(",") if token.strip())
    drop = HOP_BY_HOP | named
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


def connection_named(headers: list[Header]) -> frozenset[bytes]:
    """The (lowercased) headers a message's `Connection` headers name."""
    named = [token.strip().lower() for lname, _, value in headers if lname == b"connection"
             for token in value.split(b",")]
    return frozenset(t for t in named if t)


def _kept(headers: list[Header], drop: frozenset[bytes]) -> list[bytes]:
    named = connection_named(headers) - _FRAMING
    return [b"%s: %s\r\n" % (name, value) for lname, name, value in headers
            if lname not in drop and lname not in named]


_SET_TRACED = _SET_ON_REQUEST | _TRACE


def request_head(method: bytes, target: bytes, headers: list[Header], host: bytes,
                 peer: bytes, *, traceparent: bytes | None = None,
                 tracestate: bytes | None = None, chunked: bool = False,
                 length: int | None = None, websocket: bool = False) -> bytes:
    """The head of the request sent to an instance: `target` as given (still encoded), the
    client's end-to-end headers, `Host` and `X-Forwarded-Host` the host it asked for,
    `X-Forwarded-For` extended with its address; with `traceparent`, the trace headers
    replaced (no `tracestate` when it is None). The framing is the ingress's own: chunked,
    or `length` (the body length the parser read, never the client's header again)."""
    drop = _SET_TRACED if traceparent is not None else _SET_ON_REQUEST
    out = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, target, host)]
    prior = b""
    named = b""
    for lname, name, value in headers:  # (one pass: every request's)
        if lname not in drop:
            out.append(b"%s: %s\r\n" % (name, value))
        elif lname == b"x-forwarded-for":
            prior = prior + b", " + value if prior else value
        elif lname == b"connection":
            named = named + b"," + value if named else value
    if named and named.lower() not in _DROPPED_ANYWAY:
        out = _without_named(out, headers, drop)
    out.append(b"X-Forwarded-Host: %s\r\nX-Forwarded-Proto: http\r\nX-Forwarded-For: %s\r\n"
               % (host, prior + b", " + peer if prior else peer))
    if traceparent is not None:
        out.append(b"traceparent: %s\r\n" % traceparent)
        if tracestate is not None:
            out.append(b"tracestate: %s\r\n" % tracestate)
    if chunked:
        out.append(b"Transfer-Encoding: chunked\r\n")
    elif length is not None:
        out.append(b"Content-Length: %d\r\n" % length)
    if websocket:
        out.append(b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
    out.append(b"\r\n")
    return b"".join(out)


# `Connection` values naming only headers never forwarded (what nearly every one says)
_DROPPED_ANYWAY = frozenset({b"keep-alive", b"close", b"upgrade"})


def _without_named(out: list[bytes], headers: list[Header], drop: frozenset[bytes]
                   ) -> list[bytes]:
    """`out` (a first line, then the lines of `headers` not in `drop`) without the headers
    the message's `Connection` headers name, when it names any not dropped already."""
    named = connection_named(headers) - _FRAMING - drop
    if not named:  # (`keep-alive`, `close`: most often)
        return out
    return [out[0], *(b"%s: %s\r\n" % (name, value) for lname, name, value in headers
                      if lname not in drop and lname not in named)]


_LENGTH = frozenset({b"content-length"})


class Framing(Enum):
    """How a relayed response's body goes to the client."""

    NONE = "none"  # no body (HEAD, 1xx, 204, 304)
    LENGTH = "length"  # as the instance sent it, its Content-Length forwarded
    CHUNKED = "chunked"  # re-chunked: the instance's chunks, or a body it ended by closing
    CLOSE = "close"  # raw, ended by closing the connection (an HTTP/1.0 client)


def codings_besides_chunked(value: bytes) -> str:
    """The transfer codings of a Transfer-Encoding value other than chunked ("" when none):
    re-chunking a body, the ingress would drop them."""
    codings = [c.strip().split(b";")[0].strip().lower() for c in value.split(b",")]
    return ", ".join(c.decode("latin-1") for c in codings
                     if c and c not in (b"chunked", b"identity"))  # (identity: none, RFC 2616)


def framing(*, http11: bool, head: bool, status: int, length: bool) -> Framing:
    """How to send a response's body to the client: as the instance framed it when it gave a
    length; otherwise chunked to an HTTP/1.1 client, or raw then closed to an HTTP/1.0 one
    (which knows no chunks)."""
    if head or status < 200 or status in (204, 304):
        return Framing.NONE
    if length:
        return Framing.LENGTH
    return Framing.CHUNKED if http11 else Framing.CLOSE


_RESPONSE_DROP = _HOP_BY_HOP | _LENGTH


def response_head(status: int, reason: bytes, headers: list[Header], framed: Framing, *,
                  keep_alive: bool, http11: bool) -> bytes:
    """The head of a relayed response: the instance's status and end-to-end headers, framed
    for the client (`framing`), and whether its connection stays open."""
    drop = _RESPONSE_DROP
    out = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    length = -1
    named = b""
    for lname, name, value in headers:  # (one pass: every response's)
        if lname not in drop:
            out.append(b"%s: %s\r\n" % (name, value))
        elif lname == b"content-length":
            if length < 0 and value.strip().isdigit():
                length = int(value)
        elif lname == b"connection":
            named = named + b"," + value if named else value
    if named and named.lower() not in _DROPPED_ANYWAY:
        out = _without_named(out, headers, drop)
    if framed is Framing.CHUNKED:
        out.append(b"Transfer-Encoding: chunked\r\n")
    elif status >= 200 and status != 204 and length >= 0:
        # (a HEAD's or a 304's describes the resource)
        out.append(b"Content-Length: %d\r\n" % length)
    if not keep_alive:
        if http11:
            out.append(b"Connection: close\r\n")
    elif not http11:
        out.append(b"Connection: keep-alive\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def switching_head(reason: bytes, headers: list[Header]) -> bytes:
    """The head of a websocket's 101 from the instance, for the client: its own headers
    (`Sec-WebSocket-Accept`, the subprotocol it chose) and the upgrade."""
    return b"".join([b"HTTP/1.1 101 %s\r\n" % (reason or b"Switching Protocols"),
                     *_kept(headers, _HOP_BY_HOP),
                     b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"])


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


# ---- answers of the ingress's own


def answer(status: int, body: bytes, content_type: bytes, *, keep_alive: bool = True,
           http11: bool = True) -> bytes:
    reason = HTTPStatus(status).phrase.encode() if status in HTTPStatus._value2member_map_ \
        else b"Unknown"
    connection = b"" if keep_alive and http11 else \
        b"Connection: keep-alive\r\n" if keep_alive else b"Connection: close\r\n"
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status, reason, content_type, len(body), connection, body)


class IngressError:
    """A response the ingress made itself, with what went wrong."""

    __slots__ = ("message", "status")

    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message

    @property
    def text(self) -> str:
        return f"devenv ingress: {self.message}\n"

    def render(self, *, keep_alive: bool = True, http11: bool = True) -> bytes:
        return answer(self.status, self.text.encode(), b"text/plain; charset=utf-8",
                      keep_alive=keep_alive, http11=http11)

    def __repr__(self) -> str:
        return f"IngressError({self.status}, {self.message!r})"


class NoRoute(IngressError):
    """The 404 page: nothing is routed there, and what is."""

    def __init__(self, host: str, raw_path: str, routes: list[str]):
        super().__init__(404, "no route")
        items = "".join(f"<li>{html.escape(r)}</li>" for r in routes)
        self.page = (f"<h1>devenv: no route</h1><p>Nothing is routed for host "
                     f"<code>{html.escape(host)}</code> and path "
                     f"<code>{html.escape(unquote(raw_path))}</code>.</p><p>Routes:</p>"
                     f"<ul>{items}</ul>")

    def render(self, *, keep_alive: bool = True, http11: bool = True) -> bytes:
        return answer(404, self.page.encode(), b"text/html; charset=utf-8",
                      keep_alive=keep_alive, http11=http11)


def misdirected(host: str) -> IngressError:
    name = host_name(host) or "NAME"
    return IngressError(421, f"the host {host!r} is not served here.\n"
                        "The ingress answers only localhost, *.localhost, 127.0.0.1 and [::1] "
                        "(on any port) and the hosts services declare, so that a web page on "
                        "another site cannot reach your services through a name it points at "
                        "127.0.0.1 (DNS rebinding).\nTo serve this name, declare it on a "
                        f"service in devenv.yaml:  ingress: {{host: {name}}}")


def span_error(status: int, error: IngressError | None) -> str | None:
    """The error an edge span records for this answer: every 5xx, and the ingress's own
    refusals of a misdirected request (421); None for the rest."""
    if error is not None and not isinstance(error, NoRoute) and (status >= 500
                                                                  or status == 421):
        return error.message.split("\n", 1)[0]
    if status >= 500:
        return f"HTTP {status}"
    return None
