"""Core benchmark: prints figures, asserts nothing.

  - cold `devenv up` to all-healthy for a 10-service project (engine not running before)
  - `devenv status` latency (the whole CLI process, as a user feels it)
  - engine idle CPU and RSS with 10 services running
  - ingress throughput and added latency versus calling the service directly
  - ingress throughput with edge spans recorded versus without (the ratio; issue 10 asks
    at least 0.9): the engine's Ingress in a process of its own, its spans recorded in a real
    trace store (as the engine does), or with no hub

Run: make bench   (or .venv/bin/python bench/bench_core.py [--quick])
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from _common import ENV, devenv, free_ports, pct, running, stop_group
from devenv.config.model import MonitoringConfig

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


# An Ingress routing backend-0.localhost to one instance; argv: port, instance port, mode, the
# trace store's folder. Modes: off (no telemetry), metrics (requests counted, no trace
# recorded), on (as the engine runs it by default: every request counted, new traces recorded
# up to monitoring.trace_rate a second), all (every request's trace recorded: trace_rate null)
EDGE_INGRESS = """
import asyncio, sys
from devenv.core import eventloop
from devenv.engine.ingress import Ingress, RouteSpec, build_routes
from devenv.engine.pool import Backend, Pool
from devenv.config.model import MonitoringConfig
from devenv.telemetry.counts import RequestStats
from devenv.telemetry.model import Hub
from devenv.telemetry.store import Traces
from pathlib import Path

async def main() -> None:
    port, backend, mode, folder = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    pool = Pool("backend-0")
    pool.add(Backend("backend-0-1", "127.0.0.1", backend))
    stats = RequestStats()  # the engine's request metrics, as EngineMetrics subscribes them
    traces = Traces(Path(folder))  # the engine's own trace store, as `up` opens it
    traces.open(64 * 1024 * 1024, 24 * 3600.0)
    sinks = [stats.add] if mode == "metrics" else [traces.add_requests, stats.add]
    hub = Hub([traces.add], sinks) if mode != "off" else None
    ingress = Ingress(port, lambda name: pool, hub=hub)
    ingress.sampler.rate = MonitoringConfig().trace_rate if mode in ("on", "metrics") else None
    ingress.routes = build_routes([RouteSpec("backend-0", port=backend)])
    await ingress.start()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    traces.close()

eventloop.run(main())  # (the engine's loop: uvloop, unless DEVENV_EVENT_LOOP=asyncio)
"""


MODES = ("off", "metrics", "on", "all")


def edge_span_ratio(svc_port: int, secs: float, rounds: int
                    ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Ingress req/s in each of MODES, alternating, `rounds` times each; and the CPU seconds a
    request costs the ingress's process and its trace writer."""
    out: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(rounds):
        for mode in MODES:
            port = free_ports(1)[0]
            store = tempfile.mkdtemp(prefix="bench-traces-")
            proc = subprocess.Popen([sys.executable, "-c", EDGE_INGRESS, str(port),
                                     str(svc_port), mode, store], env=ENV, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, start_new_session=True)
            try:
                assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
                ingress = psutil.Process(proc.pid)
                before = _cpu(ingress)
                rps, bad = throughput(port, "backend-0.localhost", 8, secs)
                used = _cpu(ingress) - before
                assert bad == 0, f"{bad} requests failed through the ingress ({mode})"
                out[mode].append(rps)
                cpu[mode].append(used / (rps * secs))
            finally:
                stop_group(proc)
                shutil.rmtree(store, ignore_errors=True)
    return out, cpu


def _cpu(proc: psutil.Process) -> float:
    """CPU seconds of a process and its children (the trace writer), so far."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = p.cpu_times()
            total += times.user + times.system
    return total


def edge_span_cost(n: int = 15_000) -> float:  # (under the store's MAX_QUEUED)
    """Seconds the ingress spends per request on its edge span: reading the traceparent,
    new ids, the RequestSeen, publishing it (to the request metrics and a trace store's
    queue, as the engine does; the span itself is made by the store's writer process)."""
    from devenv.engine.ingress import Edge
    from devenv.telemetry.counts import RequestStats
    from devenv.telemetry.model import Hub
    from devenv.telemetry.store import Traces

    traces = Traces(Path(tempfile.gettempdir()) / "bench-traces-unopened")  # it only queues
    hub = Hub([traces.add], [traces.add_requests, RequestStats().add])
    traceparent = ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]
    t0 = time.perf_counter()
    for _ in range(n):
        edge = Edge(b"GET", b"/whoami", traceparent, [])
        edge.route, edge.service, edge.instance = "backend-0.localhost", "backend-0", "b-1"
        hub.request(edge.finish(200, None, "backend-0.localhost"))
    return (time.perf_counter() - t0) / n


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
            spans, cpu_spans = edge_span_ratio(svc_port, secs, 3 if quick else 5)
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
    # other load on the machine only lowers a run's figure: the best of each way compares them
    off = max(spans["off"])
    print(f"ingress with and without telemetry, 8 keep-alive connections, "
          f"{len(spans['off'])} x {secs}s each way, alternating: off {off:,.0f} req/s (best)")
    counted = max(spans["metrics"])
    print(f"  requests counted, no trace recorded: {counted:,.0f} req/s, ratio "
          f"{counted / off:.2f}x")
    for mode, what in (("on", "on, as by default (new traces recorded up to "
                        f"monitoring.trace_rate {MonitoringConfig().trace_rate}/s, failures "
                        "always)"),
                       ("all", "every request's trace recorded (trace_rate: null)")):
        best, median = max(spans[mode]), statistics.median(spans[mode])
        per_off, per = statistics.median(cpu_spans["off"]), statistics.median(cpu_spans[mode])
        print(f"  {what}: {best:,.0f} req/s, ratio {best / off:.2f}x of off and "
              f"{best / counted:.2f}x of counted only (at least 0.9x asked; of the medians "
              f"{median / statistics.median(spans['off']):.2f}x of off); CPU a request "
              f"(ingress and trace writer, medians) {per * 1e6:.0f} us against "
              f"{per_off * 1e6:.0f} us off: {per_off / per:.2f}x the requests a CPU second")
    cost = edge_span_cost()
    # the ingress is one event loop, busy: each request takes it 1/throughput seconds
    print(f"  edge span cost {cost * 1e6:.1f} us a request, {cost * off * 100:.1f}% of the "
          f"ingress's time for one")


if __name__ == "__main__":
    main()
