"""The example shop's traces, made by the official OpenTelemetry packages: one checkout through
the ingress is one trace across its services, with the stream's consumers linked to it.

The first test receives the shop's spans itself, on a small OTLP/HTTP receiver in this
process (decoded with opentelemetry-proto), by pointing the services' standard
OTEL_EXPORTER_OTLP_ENDPOINT at it (a user's `env` wins over what devenv injects). The second
reads them from the engine as a user would, with `devenv trace --json`."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import test_shop
from browser import CHROMIUM, open_page
from conftest import Project, free_ports, wait_for

APPS = ["user", "catalog", "inventory", "payment", "order", "notification", "recommendation",
        "gateway"]
CHECKOUT = {"user", "catalog", "inventory", "payment", "order", "gateway"}
TRACE = "5a1c0ffee0ddba11c0ffee0ddba11c0f"
CALLER = "b0b0cafe00000001"


@dataclass(frozen=True)
class Got:
    service: str
    instance: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    links: tuple[tuple[str, str], ...]
    attributes: dict[str, Any]


class Receiver:
    """An OTLP/HTTP (protobuf) trace receiver: the spans it was sent, decoded."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        self.spans: list[Got] = []
        self.paths: set[str] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.paths.add(self.path)
                request = ExportTraceServiceRequest.FromString(body)
                receiver.spans.extend(_decode(request))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_ports(1)[0]), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def in_trace(self, trace_id: str) -> list[Got]:
        return [s for s in list(self.spans) if s.trace_id == trace_id]


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


def _decode(request: Any) -> Iterator[Got]:
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope in resource_spans.scope_spans:
            for span in scope.spans:
                yield Got(resource.get("service.name", ""),
                          resource.get("service.instance.id", ""), span.trace_id.hex(),
                          span.span_id.hex(), span.parent_span_id.hex(), span.name, span.kind,
                          tuple((link.trace_id.hex(), link.span_id.hex())
                                for link in span.links),
                          {a.key: _value(a.value) for a in span.attributes})


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def checkout(project: Project, traceparent: str | None = None) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", "Host": "127.0.0.1"}
    if traceparent:
        headers["traceparent"] = traceparent
    request = urllib.request.Request(
        f"http://127.0.0.1:{project.ingress_port}/api/checkout", method="POST",
        headers=headers,
        data=json.dumps({"user_id": 1, "items": [{"product_id": 2, "qty": 1}]}).encode())
    with urllib.request.urlopen(request, timeout=30) as resp:
        result: dict[str, Any] = json.loads(resp.read())
    assert result["status"] == "paid", result
    return result


# OTLP span kinds
SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5


def test_one_checkout_is_one_trace_across_the_shop(project: Project,
                                                   receiver: Receiver) -> None:
    test_shop.copy_shop(project)
    local = project.root / ".devenv/local.yaml"
    overrides = json.loads(local.read_text())
    for name in APPS:  # the shop's services send their spans to this test
        overrides["services"][name]["env"] = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                                              "OTEL_BSP_SCHEDULE_DELAY": "100"}
    local.write_text(json.dumps(overrides))
    project.devenv("up", "--profile", "integration-test", check=True)

    checkout(project, f"00-{TRACE}-{CALLER}-01")

    def everyone() -> bool:  # (each service sends its spans in its own time; a consumer's
        # own span ends after the calls it made, so it may come in a later batch)
        # (the gateway's server span ends last of all: it too may come in a later batch)
        # (and a service's server span ends after the client spans it is the parent of:
        # every caller's, up to the gateway's, is awaited too)
        spans = receiver.in_trace(TRACE)
        ids = {s.span_id: s for s in spans}
        return CHECKOUT | {"notification", "recommendation"} <= {s.service for s in spans} \
            and {s.service for s in spans if s.kind == CONSUMER} == {"notification",
                                                                      "recommendation"} \
            and any(s.service == "gateway" and s.kind == SERVER for s in spans) \
            and all(s.parent_id in ids and ids[s.parent_id].parent_id in ids for s in spans
                    if s.kind == SERVER and s.service != "gateway")
    assert wait_for(everyone, timeout=20), {s.service for s in receiver.in_trace(TRACE)}
    spans = receiver.in_trace(TRACE)
    consumers = [s for s in spans if s.kind == CONSUMER]
    assert receiver.paths == {"/v1/traces"}
    assert all(s.instance == f"{s.service}-1" for s in spans)

    # the gateway's server span is a child of the ingress's edge span, not of our caller's
    (gateway,) = [s for s in spans if s.service == "gateway" and s.kind == SERVER]
    assert gateway.name == "POST /api/checkout"
    assert gateway.parent_id and gateway.parent_id != CALLER
    assert gateway.attributes["http.response.status_code"] == 201
    # every other service's server span is the child of a client span in the trace
    ids = {s.span_id: s for s in spans}
    for s in spans:
        if s.kind == SERVER and s is not gateway:
            assert ids[s.parent_id].kind == CLIENT, s
            assert ids[ids[s.parent_id].parent_id].service != s.service, s
    assert {"GET /users/{}", "GET /products/{}", "POST /reservations", "POST /charges",
            "POST /orders"} <= {s.name for s in spans if s.kind == SERVER}

    # PostgreSQL and Redis calls are client spans of the official instrumentations
    databases = {(s.service, s.attributes.get("db.system")) for s in spans if s.kind == CLIENT}
    assert {("user", "postgresql"), ("order", "postgresql"), ("payment", "postgresql"),
            ("inventory", "postgresql"), ("order", "redis")} <= databases, databases
    statements = [s.attributes["db.statement"] for s in spans
                  if s.attributes.get("db.system") == "postgresql"]
    assert any(q.startswith("INSERT INTO orders") for q in statements)
    assert all(len(q) <= 256 for q in statements)

    # the consumers' spans are linked to the order's producer span
    (producer,) = [s for s in spans if s.kind == PRODUCER]
    assert producer.service == "order" and producer.name == "send orders"
    assert {s.service for s in consumers} == {"notification", "recommendation"}
    for s in consumers:
        assert s.name == "process orders"
        assert s.links == ((TRACE, producer.span_id),)
        assert s.parent_id == producer.span_id

    # waiting on the stream or a health check makes no spans: every span is in a checkout
    assert {s.trace_id for s in receiver.spans} == {TRACE}


def test_a_checkout_is_a_trace_devenv_trace_and_the_dashboard_show(
        project: Project, tmp_path: Path) -> None:
    test_shop.copy_shop(project)
    project.devenv("up", "--profile", "integration-test", check=True)
    checkout(project, f"00-{TRACE}-{CALLER}-01")

    def trace() -> dict[str, Any] | None:
        result = project.devenv("trace", "--json")
        if result.returncode != 0:
            return None
        found = [t for t in json.loads(result.stdout) if t["trace_id"] == TRACE]
        wanted = CHECKOUT | {"devenv-ingress", "notification", "recommendation"}
        if found and wanted <= set(found[0]["services"]):  # (each sends in its own time)
            return found[0]
        return None

    found = wait_for(trace, timeout=20, interval=0.5)
    assert found, project.devenv("trace", "--json").stdout
    assert CHECKOUT | {"devenv-ingress"} <= set(found["services"])
    (edge,) = [s for s in found["spans"] if s["service"] == "devenv-ingress"]
    assert edge["name"] == "POST /" and edge["attributes"]["devenv.service"] == "gateway"

    # the same trace in the dashboard, in a real browser: listed, then drawn as a waterfall
    if CHROMIUM is None:
        pytest.skip("needs chromium (make tools installs it)")
    url = project.status()["dashboard"]["url"]

    async def dashboard() -> tuple[Any, Any]:
        async with open_page(url) as page:
            listed = await page.wait_for(
                f"document.querySelector('#traces tr[data-trace=\"{TRACE}\"]') !== null", 20)
            await page.eval(f"document.querySelector('#traces tr[data-trace=\"{TRACE}\"]')"
                            ".click()")
            drawn = await page.wait_for(
                "[...document.querySelectorAll('#waterfall .wf-label b')]"
                ".map(b => b.textContent)", 10)
            await page.screenshot(tmp_path / "dashboard-checkout.png")
            return listed, drawn

    listed, drawn = asyncio.run(dashboard())
    assert listed
    assert CHECKOUT | {"devenv-ingress", "notification", "recommendation"} <= set(drawn)
