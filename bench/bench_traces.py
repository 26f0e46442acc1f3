"""Trace ingestion benchmark: prints figures, asserts nothing.

  - 100k spans (10-span traces, 500 spans a request) POSTed as OTLP protobuf to the engine's
    receiver over 2 keep-alive connections: spans/s accepted, and spans/s stored
  - engine RSS before and after, the store's size on disk, spans dropped (writer behind)

Run: make bench   (or .venv/bin/python bench/bench_traces.py [--quick])
"""

from __future__ import annotations

import http.client
import json
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import psutil
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from _common import devenv, free_ports, running

REPO = Path(__file__).resolve().parents[1]
SVC = REPO / "tests/fixtures/svc.py"
PER_REQUEST = 500
SPANS_PER_TRACE = 10


def payloads(total: int) -> list[bytes]:
    """Export requests as an SDK sends them: a resource, a scope, spans with attributes."""
    out, now = [], time.time_ns()
    for first in range(0, total, PER_REQUEST):
        request = ExportTraceServiceRequest()
        rs = request.resource_spans.add()
        for key, value in (("service.name", "bench"), ("service.instance.id", "bench-1")):
            rs.resource.attributes.append(KeyValue(key=key, value=AnyValue(string_value=value)))
        scope = rs.scope_spans.add()
        for n in range(first, min(first + PER_REQUEST, total)):
            trace, index = divmod(n, SPANS_PER_TRACE)
            start = now + n * 1000
            scope.spans.append(Span(
                trace_id=(trace + 1).to_bytes(16, "big"), span_id=(n + 1).to_bytes(8, "big"),
                parent_span_id=(trace * SPANS_PER_TRACE + 1).to_bytes(8, "big")
                if index else b"",
                name=f"GET /items/{index}", kind=2, start_time_unix_nano=start,
                end_time_unix_nano=start + 2_000_000, status=Status(code=1),
                attributes=[KeyValue(key="http.route", value=AnyValue(string_value="/items")),
                            KeyValue(key="http.status_code", value=AnyValue(int_value=200))]))
        out.append(request.SerializeToString())
    return out


def post_all(url: str, token: str, bodies: list[bytes], connections: int) -> tuple[float, int]:
    target = urlparse(url)
    failures = [0]

    def worker(mine: list[bytes]) -> None:
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        for body in mine:
            conn.request("POST", "/v1/traces", body, {
                "Content-Type": "application/x-protobuf", "Authorization": token})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                failures[0] += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(bodies[i::connections],))
               for i in range(connections)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, failures[0]


def stored(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM spans").fetchone()[0])


def main() -> None:
    quick = "--quick" in sys.argv
    total = 20_000 if quick else 100_000
    root = Path(tempfile.mkdtemp(prefix="devenv-bench-traces-"))
    try:
        shutil.copy(SVC, root / "svc.py")
        port, ingress = free_ports(2)
        (root / "devenv.yaml").write_text(
            f"version: 1\ningress: {{port: {ingress}}}\nservices:\n  api:\n"
            f"    command: [{sys.executable}, svc.py]\n    port: {port}\n"
            "    health: {http: /healthz}\n")
        bodies = payloads(total)
        with running(root):
            devenv(root, "up", "--json")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/env", timeout=10) as resp:
                env = json.loads(resp.read())
            url = env["OTEL_EXPORTER_OTLP_ENDPOINT"]
            token = env["OTEL_EXPORTER_OTLP_HEADERS"].split("=", 1)[1].replace("%20", " ")
            engine = psutil.Process(int((root / ".devenv/run/engine.pid").read_text()))
            rss_before = engine.memory_info().rss
            seconds, failures = post_all(url, token, bodies, 2)
            rss_after_post = engine.memory_info().rss
            db = root / ".devenv/traces/traces.db"
            t0, count = time.perf_counter(), 0
            while time.perf_counter() < t0 + 120:  # until the writer has caught up
                count, before = stored(db), count
                if count == total or (count == before and count):
                    break
                time.sleep(0.5)
            caught_up = time.perf_counter() - t0
            listed = json.loads(devenv(root, "trace", "--json", "-n", "5"))
            rss_after = engine.memory_info().rss
            size = sum(p.stat().st_size for p in db.parent.iterdir())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"machine: {psutil.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(f"OTLP protobuf ingest, {total:,} spans in {len(bodies)} requests of {PER_REQUEST} "
          f"over 2 connections: {total / seconds:,.0f} spans/s accepted "
          f"({seconds:.2f}s, {failures} failed requests)")
    print(f"  stored {count:,} of {total:,} spans (the rest dropped while the writer was "
          f"behind), all written {caught_up:.1f}s after the last request; "
          f"`devenv trace --json -n 5` listed {len(listed)} traces")
    print(f"  engine RSS before {rss_before / 2**20:.1f} MiB, right after the flood "
          f"{rss_after_post / 2**20:.1f} MiB, once written {rss_after / 2**20:.1f} MiB")
    print(f"  trace store on disk: {size / 2**20:.1f} MiB (bound: monitoring.trace_max_mb, "
          "64 MiB by default)")


if __name__ == "__main__":
    main()
