"""`depends_on: {db: {restart: true}}` on a real PostgreSQL: a service that opened its
connection at start (and never reconnects) answers the very first request after the
database was restored or restarted, because devenv rolled it once the database was back."""

from __future__ import annotations

import pytest

from conftest import Project, free_ports

# a pool of one connection, opened at start; no reconnect logic, as many apps have
POOLED = """\
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg

conn = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        code, body = 200, b"ok"
        if self.path != "/healthz":
            try:
                body = str(conn.execute("SELECT count(*) FROM item").fetchone()[0]).encode()
            except Exception as exc:
                code, body = 500, str(exc).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


@pytest.fixture
def pooled(project: Project) -> Project:
    db, api, plain = free_ports(3)
    (project.root / "pooled.py").write_text(POOLED)
    project.services(f"""\
        db:
          kind: postgres
          port: {db}
          password: pw
        api:
          command: python pooled.py
          port: {api}
          health: {{http: /healthz}}
          depends_on: {{db: {{restart: true}}}}
        plain:
          command: python pooled.py
          port: {plain}
          health: {{http: /healthz}}
          depends_on: [db]
        """)
    project.up()
    url = project.service("db")["url"].replace("***", "pw")
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE item (id int); INSERT INTO item VALUES (1), (2)")
    return project


def first_request(project: Project, service: str) -> tuple[int, object]:
    return project.get(project.service(service)["url"] + "/")


def test_the_first_request_after_a_restore_or_a_database_restart_succeeds(
        pooled: Project) -> None:
    assert first_request(pooled, "api") == (200, 2)
    pooled.devenv("snapshot", "save", "two", check=True)

    restored = pooled.devenv("snapshot", "restore", "two", check=True)

    assert "rolled api (depends on db with restart: true)" in restored.stdout
    assert first_request(pooled, "api") == (200, 2)
    status, _ = first_request(pooled, "plain")  # no restart: true: its connection died
    assert status == 500
    logs = pooled.devenv("logs", "db", "api", "--verbose", "-n", "50", check=True).stdout
    assert "restored from snapshot two: rolled api (depends on db with restart: true)" in logs
    assert "rolling: db restored from snapshot two (depends on db with restart: true)" in logs

    restarted = pooled.devenv("restart", "db", check=True)

    assert restarted.stdout.splitlines() == [
        "restarted db", "rolled api (depends on db with restart: true)"]
    assert first_request(pooled, "api") == (200, 2)
