"""Core benchmark: prints figures, asserts nothing.

  - cold `devenv up` to all-healthy for a 10-service project (engine not running before)
  - `devenv status` latency (the whole CLI process, as a user feels it)
  - engine idle CPU and RSS with 10 services running
  - ingress throughput and added latency versus calling the service directly

Run: make bench   (or .venv/bin/python bench/bench_core.py [--quick])
"""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

from _common import devenv, free_ports, pct, running

REPO = Path(__file__).resolve().parents[1]
SVC = REPO / "tests/fixtures/svc.py"


def make_project(root: Path) -> tuple[int, int]:
    """10 services in three tiers: 3 backends, 4 mid-tier (depend on backends), 3 edges."""
    shutil.copy(SVC, root / "svc.py")
    ports = free_ports(11)
    names = [f"backend-{i}" for i in range(3)] + [f"mid-{i}" for i in range(4)] + \
        [f"edge-{i}" for i in range(3)]
    lines = ["version: 1", f"ingress: {{port: {ports[10]}}}", "services:"]
    for i, name in enumerate(names):
        deps = [] if name.startswith("backend") else (
            [f"backend-{i % 3}"] if name.startswith("mid") else [f"mid-{i % 4}"])
        lines += [f"  {name}:", f"    command: [{sys.executable}, svc.py]",
                  f"    port: {ports[i]}", "    health: {http: /healthz}"]
        if deps:
            lines.append(f"    depends_on: {deps}")
    (root / "devenv.yaml").write_text("\n".join(lines) + "\n")
    return ports[0], ports[10]


def cold_up(root: Path, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        result = json.loads(devenv(root, "up", "--json"))
        times.append(time.perf_counter() - t0)
        assert result["ok"], result
        if len(times) < runs:
            devenv(root, "stop")
    return times


def status_latency(root: Path, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        devenv(root, "status")
        times.append(time.perf_counter() - t0)
    return times


def engine_idle(root: Path, seconds: float) -> tuple[float, float, int, int]:
    """CPU% of the engine alone and of its 10 services; RSS of engine and guardian."""
    engine = psutil.Process(int((root / ".devenv/run/engine.pid").read_text()))
    children = engine.children()
    guardian = next(p for p in children if "guardian" in " ".join(p.cmdline()))
    services = [p for p in children if p is not guardian]
    time.sleep(2)  # let the start-up settle

    def cpu(procs: list[psutil.Process]) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in procs)

    e0, s0 = cpu([engine, guardian]), cpu(services)
    time.sleep(seconds)
    e1, s1 = cpu([engine, guardian]), cpu(services)
    return (100 * (e1 - e0) / seconds, 100 * (s1 - s0) / seconds, engine.memory_info().rss,
            guardian.memory_info().rss)


def latency(port: int, host: str, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", "/whoami", headers={"Host": host})
        conn.getresponse().read()
        out.append(time.perf_counter() - t0)
    conn.close()
    return out


async def _throughput(port: int, host: str, conns: int, seconds: float) -> tuple[int, int]:
    request = f"GET /whoami HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    done = [0, 0]
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            await reader.readexactly(length)
            done[0 if head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.0 200")
                 else 1] += 1
        writer.close()

    await asyncio.gather(*(worker() for _ in range(conns)))
    return done[0], done[1]


def throughput(port: int, host: str, conns: int, seconds: float) -> tuple[float, int]:
    ok, bad = asyncio.run(_throughput(port, host, conns, seconds))
    return ok / seconds, bad


def main() -> None:
    quick = "--quick" in sys.argv
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        svc_port, ingress_port = make_project(root)
        with running(root):
            ups = cold_up(root, 2 if quick else 5)
            stats = status_latency(root, 10 if quick else 30)
            cpu, svc_cpu, rss, guardian = engine_idle(root, 3 if quick else 10)
            n = 300 if quick else 2000
            direct = latency(svc_port, "x", n)
            via = latency(ingress_port, "backend-0.localhost", n)
            secs = 2 if quick else 5
            direct_rps, direct_bad = throughput(svc_port, "x", 8, secs)
            via_rps, via_bad = throughput(ingress_port, "backend-0.localhost", 8, secs)
    ms = 1000.0
    print(f"machine: {psutil.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(f"cold up, 10 services to all-healthy (engine start included), {len(ups)} runs: "
          f"median {statistics.median(ups):.2f}s, min {min(ups):.2f}s, max {max(ups):.2f}s")
    print(f"devenv status (whole CLI process), {len(stats)} runs: "
          f"p50 {pct(stats, 50) * ms:.0f} ms, p95 {pct(stats, 95) * ms:.0f} ms")
    print(f"engine idle with 10 services: CPU {cpu:.2f}% of a core (engine + guardian; the "
          f"10 services answering health checks: {svc_cpu:.2f}%), engine RSS "
          f"{rss / 2**20:.1f} MiB, guardian RSS {guardian / 2**20:.1f} MiB")
    print(f"latency, one keep-alive connection, {len(direct)} requests:")
    print(f"  direct  p50 {pct(direct, 50) * ms:.3f} ms  p99 {pct(direct, 99) * ms:.3f} ms")
    print(f"  ingress p50 {pct(via, 50) * ms:.3f} ms  p99 {pct(via, 99) * ms:.3f} ms  "
          f"(added p50 {(pct(via, 50) - pct(direct, 50)) * ms:.3f} ms)")
    print(f"throughput, 8 keep-alive connections, {secs}s:")
    print(f"  direct  {direct_rps:,.0f} req/s ({direct_bad} errors)")
    print(f"  ingress {via_rps:,.0f} req/s ({via_bad} errors)")


if __name__ == "__main__":
    main()
