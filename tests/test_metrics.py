"""The engine's Prometheus metrics, end to end: a real engine, a service that serves its own
metrics (prometheus-client), real `promtool` and a real Prometheus server scraping it."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Project, free_ports, procs_in, wait_for

PROM_SERVICE = '''\
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

ORDERS = Counter("shop_orders", "Orders placed.", ["kind"])
ORDERS.labels("book").inc(3)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/metrics":
            body, kind = generate_latest(), CONTENT_TYPE_LATEST
        elif self.path == "/broken":
            body, kind = b"this is { not metrics\\n", "text/plain"
        else:
            body, kind = b"ok", "text/plain"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
'''


def _start(project: Project, broken: bool = False, monitoring: str = "") -> str:
    """Up with `orders` serving its own metrics (and `broken`, whose /metrics is not
    exposition text); the engine's metrics URL."""
    (project.root / "promsvc.py").write_text(PROM_SERVICE)
    orders, bad = free_ports(2)
    extra = f"""
          broken:
            command: python promsvc.py
            port: {bad}
            metrics: {{path: /broken}}""" if broken else ""
    project.write(f"""\
        version: 1
        ingress: {{port: {project.ingress_port}}}
        monitoring: {{scrape_interval: 1{monitoring}}}
        services:
          orders:
            command: python promsvc.py
            port: {orders}
            metrics: {{path: /metrics}}{extra}
        """)
    result = project.up()
    url: str = project.status()["metrics"]["url"]
    assert f"metrics: {url}" in result.stdout  # `up` prints it
    return url


def _exposition(project: Project, url: str) -> str:
    status, text = project.get(url)
    assert status == 200
    assert isinstance(text, str)
    return text


def _wait_text(project: Project, url: str, needle: str) -> str:
    """The engine's exposition, once it holds `needle`."""

    def holding() -> str | None:
        text = _exposition(project, url)
        return text if needle in text else None

    found: str = wait_for(holding, timeout=15)
    assert found, f"{needle!r} never appeared in {url}"
    return found


def test_engine_reexposes_a_services_own_metrics_and_promtool_accepts_it(project: Project
                                                                         ) -> None:
    url = _start(project)
    text = _wait_text(project, url, "shop_orders_total{")
    assert 'shop_orders_total{instance="orders-1",kind="book",service="orders"} 3.0' in text
    assert 'devenv_scrape_up{instance="orders-1",service="orders"} 1.0' in text
    assert 'devenv_service_state{service="orders",state="healthy"} 1.0' in text
    assert 'devenv_service_restarts_total{service="orders"} 0.0' in text
    assert "devenv_instance_resident_memory_bytes{" in text
    # public (no token), so it must not carry the engine's token that services send with
    service = next(p for p in procs_in(project.root) if "promsvc.py" in p.cmdline())
    token = service.environ()["OTEL_EXPORTER_OTLP_HEADERS"].split("%20")[1]
    assert len(token) > 20 and token not in text

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (make tools installs Debian's prometheus)")
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr

    # the CLI: export writes the same exposition, the table and JSON show the service
    out = project.root / "metrics.txt"
    project.devenv("metrics", "--export", "prometheus", "-o", str(out), check=True)
    assert "devenv_service_state" in out.read_text()
    shown = project.devenv("metrics", "--json", check=True).stdout
    assert token not in shown
    data = json.loads(shown)
    row = next(r for r in data["services"] if r["service"] == "orders")
    assert row["state"] == "healthy" and row["ready"] == 1 and row["scrape_error"] is None
    assert row["rss_bytes"] > 0
    table = project.devenv("metrics", "--service", "orders", check=True).stdout
    assert "orders" in table and "healthy" in table and "REQ/S" in table
    assert f"metrics: {url}" in project.devenv("status", check=True).stdout


def _value(text: str, name: str, **labels: str) -> float:
    """One sample of an exposition, as Prometheus parses it."""
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == name and s.labels == labels)


def test_requests_over_the_trace_rate_are_counted_as_unsampled_in_the_engines_metrics(
        project: Project) -> None:
    url = _start(project, monitoring=", trace_rate: 1")  # one new trace a second
    assert _value(_exposition(project, url), "devenv_telemetry_requests_unsampled_total") == 0
    sent = 8
    started = time.monotonic()
    for _ in range(sent):
        status, body = project.ingress("/hello", "orders.localhost")
        assert (status, body) == (200, "ok")
    elapsed = time.monotonic() - started
    text = _exposition(project, url)
    unsampled = _value(text, "devenv_telemetry_requests_unsampled_total")
    # the first is traced (a second's worth of tokens at the start), then one a second
    assert sent - 1 - int(elapsed + 1) <= unsampled <= sent - 1, (unsampled, elapsed)
    assert _value(text, "devenv_http_requests_total", route="orders.localhost",
                  service="orders", code="2xx") == sent  # every one counted all the same


def test_a_broken_metrics_endpoint_shows_as_a_scrape_error_in_status(project: Project
                                                                     ) -> None:
    url = _start(project, broken=True)

    def error() -> str | None:
        svc: dict[str, Any] = project.service("broken")
        return svc.get("scrape_error")

    message = wait_for(error, timeout=15)
    assert "broken-1" in message and "not Prometheus exposition text" in message
    assert project.service("orders").get("scrape_error") is None
    text = _exposition(project, url)
    assert 'devenv_scrape_up{instance="broken-1",service="broken"} 0.0' in text
    assert "metrics scrape failed" in project.devenv("status", check=True).stdout


def test_a_real_prometheus_scrapes_the_engine_and_answers_promql(project: Project,
                                                                 tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus is not installed (make tools installs Debian's prometheus)")
    url = _start(project)
    target = urllib.parse.urlparse(url).netloc
    port = free_ports(1)[0]
    config = tmp_path / "prometheus.yml"
    config.write_text(textwrap.dedent(f"""\
        global: {{scrape_interval: 1s, evaluation_interval: 1s}}
        scrape_configs:
          - job_name: devenv
            honor_labels: true  # keep the engine's instance labels (orders-1)
            scrape_interval: 1s
            static_configs: [{{targets: ["{target}"]}}]
        """))
    proc = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        api = f"http://127.0.0.1:{port}/api/v1/query?query="

        def query(promql: str) -> list[dict[str, Any]]:
            try:
                status, body = project.get(api + urllib.parse.quote(promql), timeout=5)
            except OSError:
                return []
            return body["data"]["result"] if status == 200 else []

        found = wait_for(lambda: query('shop_orders_total{service="orders"}'), timeout=30,
                         interval=0.25)
        assert found[0]["metric"]["instance"] == "orders-1"
        assert found[0]["value"][1] == "3"
        healthy = wait_for(lambda: query('devenv_service_state{state="healthy"} == 1'),
                           timeout=10, interval=0.25)
        assert [r["metric"]["service"] for r in healthy] == ["orders"]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        assert proc.stderr is not None
        proc.stderr.close()


def test_the_telemetry_address_answers_only_local_hosts_and_keeps_the_summary_private(
        project: Project) -> None:
    url = _start(project)
    port = urllib.parse.urlsplit(url).port
    assert _exposition(project, url)  # Prometheus's own Host: 127.0.0.1:<port>
    status, body = project.get(url, host=f"rebound.example.com:{port}")  # DNS rebinding
    assert status == 403 and "answers only to 127.0.0.1" in body
    status, body = project.get(url + "/summary")  # without the engine's token
    assert status == 401 and "devenv metrics" in body["error"]
    shown = json.loads(project.devenv("metrics", "--json", check=True).stdout)  # with it
    assert [r["service"] for r in shown["services"]] == ["orders"]
