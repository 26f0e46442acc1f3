"""A minimal HTTP/1.1 keep-alive client for the generator's hot loop: requests encoded
once, responses framed by Content-Length or chunked encoding straight from the bytes."""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from dataclasses import dataclass

NO_BODY = -2  # HEAD, 1xx, 204, 304
UNTIL_CLOSE = -1
CHUNKED = -3


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 we can frame."""


def encode(method: str, path: str, host: str, headers: dict[str, str] | None = None,
           body: bytes = b"") -> bytes:
    """A request's bytes. A path's spaces and characters past ASCII are percent-encoded
    (as UTF-8, as a browser does: `/search?q=日本`), header values sent as UTF-8."""
    if not _PLAIN.fullmatch(path):  # (a % that starts no escape is one itself: %25)
        path = urllib.parse.quote(_STRAY.sub("%25", path), safe=_KEPT)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "replace") + body


_PLAIN = re.compile(r"[\x21-\x7e]*")  # printable ASCII, no space: sent as it is
_KEPT = "!#$%&'()*+,/:;=?@[]~"  # what percent-encoding a path leaves (a % already there too)
_STRAY = re.compile(r"%(?![0-9A-Fa-f]{2})")


def head(buf: bytes | bytearray, head_only: bool = False) -> tuple[int, int, int, bool] | None:
    """(status, end of the header block, body length or CHUNKED/UNTIL_CLOSE/NO_BODY, whether
    the server closes) of a response at the start of `buf`, or None while incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > 65536:
            raise ProtocolError("response headers over 64 KiB")
        return None
    if buf[:5] != b"HTTP/":
        raise ProtocolError(f"not an HTTP response: {bytes(buf[:20])!r}")
    try:
        status = int(buf[9:12])
    except ValueError:
        raise ProtocolError(f"bad status line: {bytes(buf[:30])!r}") from None
    block = bytes(buf[:end]).lower()
    close = b"\r\nconnection: close" in block or buf[5:8] == b"1.0"
    if head_only or status < 200 or status in (204, 304):
        return status, end + 4, NO_BODY, close
    i = block.find(b"\r\ncontent-length:")
    if i >= 0:
        j = block.find(b"\r\n", i + 17)
        return status, end + 4, int(block[i + 17:j if j >= 0 else end]), close
    if b"\r\ntransfer-encoding:" in block and b"chunked" in block:
        return status, end + 4, CHUNKED, close
    return status, end + 4, UNTIL_CLOSE, True


def chunked_end(buf: bytes | bytearray, start: int) -> int:
    """Where a chunked body starting at `start` ends (after its last CRLF), or -1."""
    at = start
    while True:
        eol = buf.find(b"\r\n", at)
        if eol < 0:
            return -1
        size = int(bytes(buf[at:eol]).split(b";", 1)[0], 16)
        if size == 0:
            trailer = buf.find(b"\r\n\r\n", eol)
            if buf[eol + 2:eol + 4] == b"\r\n":
                return eol + 4
            return trailer + 4 if trailer >= 0 else -1
        at = eol + 2 + size + 2
        if at > len(buf):
            return -1


def dechunk(raw: bytes) -> bytes:
    out: list[bytes] = []
    at = 0
    while True:
        eol = raw.find(b"\r\n", at)
        size = int(raw[at:eol].split(b";", 1)[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(raw[eol + 2:eol + 2 + size])
        at = eol + 2 + size + 2


@dataclass
class Response:
    status: int
    headers: bytes  # the lower-cased header block
    body: bytes


class Connection(asyncio.Protocol):
    """One keep-alive connection: `await request(raw)` sends pre-encoded bytes and gives the
    framed response; a closed connection raises ConnectionError (the caller reconnects)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[Response] | None = None
        self.head_only = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            parsed = head(self.buf, self.head_only) if self.buf else None
            if parsed and parsed[2] == UNTIL_CLOSE:  # the body ran to the close
                waiter.set_result(Response(parsed[0], bytes(self.buf[:parsed[1]]).lower(),
                                           bytes(self.buf[parsed[1]:])))
            else:
                waiter.set_exception(ConnectionResetError("the server closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        try:
            parsed = head(self.buf, self.head_only)
            if parsed is None:
                return
            status, start, length, close = parsed
            if length >= 0:
                end = start + length
                if len(self.buf) < end:
                    return
                body = bytes(self.buf[start:end])
            elif length == NO_BODY:
                end, body = start, b""
            elif length == CHUNKED:
                end = chunked_end(self.buf, start)
                if end < 0:
                    return
                body = dechunk(bytes(self.buf[start:end]))
            else:
                return  # until close
        except (ProtocolError, ValueError) as exc:
            self.waiter = None
            waiter.set_exception(ProtocolError(str(exc)))
            self.abort()
            return
        headers = bytes(self.buf[:start]).lower()
        del self.buf[:end]
        self.waiter = None
        waiter.set_result(Response(status, headers, body))
        if close:
            self.abort()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    async def request(self, raw: bytes, head_only: bool = False) -> Response:
        if self.closed or self.transport is None:
            raise ConnectionResetError("connection closed")
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        self.head_only = head_only
        self.transport.write(raw)
        return await self.waiter
