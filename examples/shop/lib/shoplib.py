"""What every shop service shares: a JSON HTTP server, its database, its Redis, its callers,
and its traces (telemetry.py).

Each service reads the addresses devenv hands it: PORT, DATABASE_URL, REDIS_URL and
<DEPENDENCY>_URL, and the OTEL_* variables its traces go by. Database connections are per
thread and reconnect after a restart or a snapshot restore of the database.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import telemetry

NAME = os.environ.get("DEVENV_SERVICE", "service")
Handler = Callable[..., tuple[int, Any]]
_local = threading.local()
telemetry.setup()


def log(message: str) -> None:
    print(f"{NAME}: {message}", flush=True)


# ---- PostgreSQL


def db() -> Any:
    import psycopg

    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed or conn.broken:
        conn = _local.conn = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True,
                                             connect_timeout=5)
    return conn


def sql(query: str, *args: Any) -> list[tuple[Any, ...]]:
    import psycopg

    for attempt in range(3):
        try:
            cur = db().execute(query, args)
            return cur.fetchall() if cur.description else []
        except psycopg.OperationalError:
            _local.conn = None  # the server restarted (restore, reset): reconnect
            if attempt == 2:
                raise
            time.sleep(0.2)
    return []


def transaction() -> Any:
    return db().transaction()


def migrate(*statements: str) -> None:
    """Create this service's tables (idempotent), waiting for the database if need be."""
    import psycopg

    deadline = time.time() + 30
    while True:
        try:
            with telemetry.quiet():
                for statement in statements:
                    sql(statement)
            return
        except psycopg.OperationalError as exc:
            if time.time() > deadline:
                raise
            log(f"waiting for the database: {exc}")
            time.sleep(0.5)


# ---- Redis


def rds() -> Any:
    import redis

    client = getattr(_local, "redis", None)
    if client is None:
        client = _local.redis = redis.Redis.from_url(os.environ["REDIS_URL"],
                                                     decode_responses=True)
    return client


# ---- other services


def call(service: str, path: str, method: str = "GET", body: Any = None,
         timeout: float = 10) -> tuple[int, Any]:
    """Call another service through the stable address devenv gave us ($<SERVICE>_URL)."""
    base = os.environ[f"{service.upper().replace('-', '_')}_URL"]
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        try:
            return exc.code, json.loads(payload)
        except ValueError:
            return exc.code, {"error": payload.decode(errors="replace")}


# ---- the HTTP server


class App:
    def __init__(self, health: Callable[[], None] | None = None):
        self.routes: list[tuple[str, re.Pattern[str], str, Handler]] = []
        self.health = health

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        def add(fn: Handler) -> Handler:
            self.routes.append((method, re.compile(f"^{pattern}$"),
                                telemetry.route_name(pattern), fn))
            return fn
        return add

    def run(self) -> None:
        app = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def _dispatch(self, method: str) -> None:
                path = self.path.split("?", 1)[0]
                query = dict(p.split("=", 1) for p in self.path.partition("?")[2].split("&")
                             if "=" in p)
                if path == "/healthz":
                    try:
                        if app.health:
                            with telemetry.quiet():
                                app.health()
                        return self._send(200, {"ok": True})
                    except Exception as exc:
                        return self._send(503, {"ok": False, "error": str(exc)})
                for m, pattern, name, fn in app.routes:
                    match = pattern.match(path)
                    if m == method and match:
                        with telemetry.server_span(method, name, path, self.headers) as span:
                            length = int(self.headers.get("Content-Length") or 0)
                            body = json.loads(self.rfile.read(length)) if length else None
                            try:
                                status, payload = fn(*match.groups(), body=body, query=query)
                            except Exception as exc:
                                log(f"{method} {path} failed: {exc!r}")
                                status, payload = 500, {"error": str(exc)}
                            telemetry.finish_server_span(span, status)
                            return self._send(status, payload)
                with telemetry.server_span(method, None, path, self.headers) as span:
                    telemetry.finish_server_span(span, 404)
                    self._send(404, {"error": f"no route {method} {path}"})

            def do_GET(self) -> None:
                self._dispatch("GET")

            def do_POST(self) -> None:
                self._dispatch("POST")

            def _send(self, status: int, payload: Any) -> None:
                if isinstance(payload, bytes):
                    data, kind = payload, "text/html; charset=utf-8"
                else:
                    data, kind = json.dumps(payload, default=str).encode(), "application/json"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, fmt: str, *args: Any) -> None:
                if not self.path.startswith("/healthz"):
                    log(f"{self.command} {self.path} -> {args[1] if len(args) > 1 else ''}")

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128

        server = Server(("127.0.0.1", int(os.environ["PORT"])), RequestHandler)
        log(f"listening on {server.server_port}")
        server.serve_forever()
