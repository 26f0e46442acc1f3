"""A small Debug Adapter Protocol client over a TCP socket (what VS Code speaks to debugpy):
Content-Length framed JSON; a reader thread files responses and events as they come."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from typing import Any


class DapClient:
    def __init__(self, host: str, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(None)
        self._seq = 0
        self._messages: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def send(self, command: str, **arguments: Any) -> int:
        self._seq += 1
        body = json.dumps({"seq": self._seq, "type": "request", "command": command,
                           "arguments": arguments}).encode()
        self.sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        return self._seq

    def request(self, command: str, timeout: float = 10.0, **arguments: Any) -> Any:
        """Send a request and wait for its response's body (AssertionError when it failed)."""
        seq = self.send(command, **arguments)
        return self.response(seq, timeout)

    def response(self, seq: int, timeout: float = 10.0) -> Any:
        msg = self._wait(lambda m: m.get("type") == "response" and m.get("request_seq") == seq,
                         timeout, f"response to request {seq}")
        assert msg.get("success"), msg
        return msg.get("body", {})

    def event(self, name: str, timeout: float = 10.0) -> Any:
        return self._wait(lambda m: m.get("type") == "event" and m.get("event") == name,
                          timeout, f"event {name}").get("body", {})

    def _wait(self, match: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, msg in enumerate(self._messages):
                    if match(msg):
                        return self._messages.pop(i)
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [m.get("event") or m.get("command") for m in self._messages]
                    raise AssertionError(f"no {what} within {timeout}s; got {seen}")
                self._cond.wait(left)

    def _read(self) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length"))
                while len(buf) < length:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                body, buf = buf[:length], buf[length:]
                with self._cond:
                    self._messages.append(json.loads(body))
                    self._cond.notify_all()
        except OSError:
            return
