"""Metrics benchmark: prints figures, asserts nothing.

  - engine idle CPU with 10 services, each serving its own /metrics (prometheus-client), which
    the engine scrapes every 5 s (monitoring.scrape_interval's default): first with nobody
    reading the engine's /metrics, then with a Prometheus-like reader every 5 s
  - the cost of one read of the engine's /metrics (ms, and its size)

Run: make bench   (or .venv/bin/python bench/bench_metrics.py [--quick])
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil

from _common import devenv, free_ports, pct, running

SERVICE = '''\
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

REQUESTS = Counter("app_requests", "Requests.", ["path"])
LATENCY = Histogram("app_latency_seconds", "Latency.")
for i in range(20):
    REQUESTS.labels(f"/p{i}").inc(i)
    LATENCY.observe(i / 100)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = generate_latest() if self.path == "/metrics" else b"ok"
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
'''


def make_project(root: Path) -> None:
    (root / "promsvc.py").write_text(SERVICE)
    ports = free_ports(11)
    lines = ["version: 1", f"ingress: {{port: {ports[10]}}}", "services:"]
    for i in range(10):
        lines += [f"  svc-{i}:", f"    command: [{sys.executable}, promsvc.py]",
                  f"    port: {ports[i]}", "    metrics: {path: /metrics}"]
    (root / "devenv.yaml").write_text("\n".join(lines) + "\n")


def engine_cpu(root: Path, seconds: float, reader: str | None) -> float:
    """CPU% of a core used by the engine and its guardian over `seconds`; `reader`: a URL
    read every 5 s meanwhile, as Prometheus would."""
    engine = psutil.Process(int((root / ".devenv/run/engine.pid").read_text()))
    procs = [engine, *(p for p in engine.children() if "guardian" in " ".join(p.cmdline()))]
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            assert reader is not None
            with urllib.request.urlopen(reader, timeout=10) as resp:
                resp.read()
            stop.wait(5.0)

    thread = threading.Thread(target=read, daemon=True) if reader else None
    t0 = sum(sum(p.cpu_times()[:2]) for p in procs)
    if thread:
        thread.start()
    time.sleep(seconds)
    stop.set()
    used = sum(sum(p.cpu_times()[:2]) for p in procs) - t0
    if thread:
        thread.join(15)
    return 100 * used / seconds


def scrape_cost(url: str, n: int) -> tuple[list[float], int]:
    times, size = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        with urllib.request.urlopen(url, timeout=10) as resp:
            size = len(resp.read())
        times.append(time.perf_counter() - t0)
    return times, size


def main() -> None:
    quick = "--quick" in sys.argv
    seconds = 10.0 if quick else 30.0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_project(root)
        with running(root):
            devenv(root, "up")
            url = json.loads(devenv(root, "status", "--json"))["metrics"]["url"]
            time.sleep(6)  # let the start-up settle; a first round of scrapes has happened
            idle = engine_cpu(root, seconds, None)
            read = engine_cpu(root, seconds, url)
            times, size = scrape_cost(url, 20 if quick else 100)
            text = urllib.request.urlopen(url, timeout=10).read().decode()
    series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    ms = 1000.0
    print(f"machine: {psutil.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(f"engine idle, 10 services each scraped every 5 s, {seconds:.0f}s: "
          f"CPU {idle:.2f}% of a core (engine + guardian), nobody reading /metrics")
    print(f"  with /metrics read every 5 s: CPU {read:.2f}% of a core")
    print(f"one read of the engine's /metrics ({series} series, {size / 1024:.0f} KiB), "
          f"{len(times)} runs: p50 {pct(times, 50) * ms:.1f} ms, p95 {pct(times, 95) * ms:.1f} ms")


if __name__ == "__main__":
    main()
