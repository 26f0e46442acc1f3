"""The ingress as a reverse proxy against nginx as one, in the same run, on the same upstream.

An nginx answering `return 200` is the upstream. In front of it: nginx as a reverse proxy
(keep-alive to the upstream), and devenv's Ingress in its own process, wired as the engine
wires it (a Hub with the trace store open and a request sink): compiled (`make native`
builds it) on uvloop, as the engine runs it; beside it, compiled on asyncio's own loop
(`DEVENV_EVENT_LOOP=asyncio`), and interpreted (as without a C compiler).
`wrk -t1 -c32` against the upstream directly, then each proxy, in alternating rounds; printed
(medians): req/s of each, the ratio ingress/nginx-proxy, the p50 each proxy adds over direct,
and the ingress's CPU per request; then the cost of telemetry, and the ingress's own work a
request in-process (no sockets), compiled and interpreted.

    python bench/bench_ingress.py [--quick]

Skipped, saying why, when nginx or wrk cannot be found.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
from bench_core import EDGE_INGRESS, MODES, _cpu  # the ingress process, wired as the engine does

from _common import ENV, free_ports
from devenv import native
from devenv.core import eventloop

NAMES = ("direct", "nginx proxy", "ingress", "on asyncio", "interpreted")

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log error;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream up {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{upstream};
        location / {{ return 200 "ok"; }}
    }}
    server {{
        listen 127.0.0.1:{proxy};
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx(upstream: int, proxy: int) -> Iterator[None]:
    """nginx, unprivileged, serving the upstream and the proxy; stopped on the way out."""
    prefix = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, upstream=upstream, proxy=proxy))
    proc = subprocess.Popen(["nginx", "-p", str(prefix), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_listening(proxy, proc)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(prefix, ignore_errors=True)


@contextlib.contextmanager
def ingress(port: int, upstream: int, mode: str = "on", compiled: bool = True,
            loop: str = "") -> Iterator[psutil.Process]:
    """devenv's Ingress in its own process; telemetry `mode` as bench_core's EDGE_INGRESS
    takes it (on: as the engine runs it by default); `compiled`: its mypyc build, if made
    (`make native`), else interpreted."""
    store = tempfile.mkdtemp(prefix="bench-traces-")
    env = ENV if compiled else {**ENV, native.OFF: "1"}
    env = {**env, eventloop.LOOP_VAR: loop} if loop else env
    proc = subprocess.Popen([sys.executable, "-c", EDGE_INGRESS, str(port), str(upstream),
                             mode, store], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        yield psutil.Process(proc.pid)
    finally:
        assert proc.stdin is not None
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(store, ignore_errors=True)


def _own_cpu(proc: psutil.Process) -> float:
    """CPU seconds of the ingress's process alone (not its trace writer), so far."""
    times = proc.cpu_times()
    return times.user + times.system


def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"nginx exited: {err}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nginx did not listen on {port}")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
# the CPU times that are work (Linux: `user` already holds `guest`; `steal` is not ours)
_BUSY = ("user", "nice", "system", "irq", "softirq")


def wrk(port: int, host: str, secs: int, connections: int = 32) -> tuple[float, float, int]:
    """req/s, p50 latency (ms) and non-2xx/socket errors of `wrk -t1 -cN`."""
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{secs}s", "--latency", "-H",
                          f"Host: {host}", f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    assert p50 is not None, out
    errors = sum(int(n) for n in re.findall(r"(?:Non-2xx or 3xx responses|connect|read|"
                                            r"write|timeout)\s*:?\s+(\d+)", out))
    return rps, float(p50.group(1)) * _UNITS[p50.group(2)], errors


def main() -> int:
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            print(f"skipped: `{tool}` is not installed (apt-get install nginx-light wrk, or "
                  "`make tools`)")
            return 0
    quick = "--quick" in sys.argv
    secs, rounds = (2, 1) if quick else (5, 3)
    upstream, proxy, edge, edge_aio, edge_py = free_ports(5)
    runs: dict[str, list[tuple[float, float, int]]] = {name: [] for name in NAMES}
    with nginx(upstream, proxy), ingress(edge, upstream) as proc, \
            ingress(edge_aio, upstream, loop="asyncio"), \
            ingress(edge_py, upstream, compiled=False):
        for port in (edge, edge_aio, edge_py):
            wrk(port, "backend-0.localhost", 1)  # warm up: connections to the upstream
        for _ in range(rounds):  # alternating, so that a change in the machine's speed
            runs["direct"].append(wrk(upstream, "x", secs))  # touches each alike
            runs["nginx proxy"].append(wrk(proxy, "x", secs))
            before, before_own = _cpu(proc), _own_cpu(proc)
            split, machine = proc.cpu_times(), psutil.cpu_times()
            runs["ingress"].append(wrk(edge, "backend-0.localhost", secs))
            served = runs["ingress"][-1][0] * secs
            cpu = (_cpu(proc) - before) / served
            own = (_own_cpu(proc) - before_own) / served
            split_after, machine_after = proc.cpu_times(), psutil.cpu_times()
            runs["on asyncio"].append(wrk(edge_aio, "backend-0.localhost", secs))
            runs["interpreted"].append(wrk(edge_py, "backend-0.localhost", secs))
        user = (split_after.user - split.user) / served
        system = (split_after.system - split.system) / served
        idle = (machine_after.idle - machine.idle) / secs  # (cores' worth)
        busy = sum(getattr(machine_after, f) - getattr(machine, f) for f in _BUSY) / served
        # one connection: the latency a proxy adds when it is not saturated (at 32, p50 is
        # about 32 / throughput, whatever the proxy)
        alone = [wrk(port, host, secs, 1)[1] for port, host in
                 ((upstream, "x"), (proxy, "x"), (edge, "backend-0.localhost"))]
    with nginx(upstream, proxy):
        telemetry = spans(upstream, secs)
    _, said, _ = native.describe()
    print(f"machine: {psutil.cpu_count()} cores, Python {sys.version.split()[0]}; "
          f"wrk -t1 -c32 -d{secs}s, upstream: nginx `return 200`; medians of {rounds} "
          f"alternating rounds; the ingress {said}")
    med = {name: tuple(statistics.median(r[i] for r in got) for i in range(3))
           for name, got in runs.items()}
    direct, via_nginx, via_ingress = med["direct"], med["nginx proxy"], med["ingress"]
    for name, (rps, p50, errors) in med.items():
        added = "" if name == "direct" else f"  (added p50 {p50 - direct[1]:.3f} ms)"
        print(f"  {name:<12} {rps:>9,.0f} req/s  p50 {p50:.3f} ms{added}  errors "
              f"{errors:.0f}")
    print(f"ingress / nginx proxy: {via_ingress[0] / via_nginx[0]:.2f}x req/s (at least 0.3x "
          f"asked); compiled on asyncio's loop {med['on asyncio'][0] / via_nginx[0]:.2f}x; "
          f"interpreted {med['interpreted'][0] / via_nginx[0]:.2f}x")
    print(f"one connection (wrk -c1), p50: direct {alone[0]:.3f} ms, nginx proxy "
          f"{alone[1]:.3f} ms (added {alone[1] - alone[0]:.3f}), ingress {alone[2]:.3f} ms "
          f"(added {alone[2] - alone[0]:.3f})")
    print(f"CPU a request (last round): ingress process {own * 1e6:.0f} us ({user * 1e6:.0f} "
          f"us in Python and libraries, {system * 1e6:.0f} us in the kernel: its 2 sends and 2 "
          f"receives), with its trace writer (edge spans on) {cpu * 1e6:.0f} us; the whole "
          f"machine {busy * 1e6:.0f} us a request (wrk and nginx too), {idle:.2f} of its "
          f"{psutil.cpu_count()} cores idle")
    # closed model: p50 is about 32 / throughput, so the added p50 goal is a throughput one
    needed = 32 / (direct[1] + 1.0) * 1000
    print(f"(an estimate: at 32 connections the p50 is about 32 / req/s: 1 ms added (p50 "
          f"{direct[1] + 1.0:.2f} ms) takes about {needed:,.0f} req/s through the ingress, "
          f"{needed / via_ingress[0]:.2f}x what it does; its one thread at "
          f"{1e6 / needed:.0f} us a request)")
    print("\n".join(telemetry))
    print(in_process())
    return 0


# The ingress's own work a request, no sockets: a client connection and an instance's kept-alive
# connection on fake transports, fed a request and its answer in turns of 32, telemetry on
# (as by default), as the engine wires it. Prints the best of 3 runs of 50,000, in us.
IN_PROCESS = """
import asyncio, tempfile, time
from pathlib import Path
from devenv.config.model import MonitoringConfig
from devenv.engine.ingress import Ingress, RouteSpec, build_routes
from devenv.engine.ingress.server import ClientConnection
from devenv.engine.ingress.upstream import Upstream
from devenv.engine.pool import Backend, Pool
from devenv.telemetry.counts import RequestStats
from devenv.telemetry.model import Hub
from devenv.telemetry.store import Traces

class Fake:
    def __init__(self): self.out = []
    def write(self, data): self.out.append(data)
    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 5555) if name == "peername" else default
    def is_closing(self): return False
    def set_write_buffer_limits(self, high=None, low=None): pass
    def get_write_buffer_size(self): return 0
    def pause_reading(self): pass
    def resume_reading(self): pass
    def close(self): pass
    def abort(self): pass

ASK = b"GET / HTTP/1.1\\r\\nHost: backend-0.localhost\\r\\n\\r\\n"
ANSWER = (b"HTTP/1.1 200 OK\\r\\nServer: nginx\\r\\nContent-Type: text/plain\\r\\n"
          b"Content-Length: 2\\r\\nConnection: keep-alive\\r\\n\\r\\nok")

async def main():
    loop = asyncio.get_running_loop()
    pool, backend = Pool("backend-0"), Backend("backend-0-1", "127.0.0.1", 9)
    pool.add(backend)
    stats, traces = RequestStats(), Traces(Path(tempfile.mkdtemp()))
    ingress = Ingress(1, lambda name: pool, hub=Hub([traces.add], [traces.add_requests, stats.add]))
    ingress.sampler.rate = MonitoringConfig().trace_rate
    ingress.routes = build_routes([RouteSpec("backend-0", port=9)])
    ingress.outbox.attach(loop)
    client, client_side = ClientConnection(ingress), Fake()
    client.connection_made(client_side)
    conn, conn_side = Upstream(backend, ingress.outbox), Fake()
    conn.connection_made(conn_side)
    ingress.upstreams.give(conn, time.monotonic())

    def run(n):
        for i in range(n):
            client.data_received(ASK)
            conn.data_received(ANSWER)
            if i % 32 == 31:  # the end of a turn of the loop
                ingress.outbox.flush(); ingress._deliver(); loop._ready.clear()
        ingress.outbox.flush(); ingress._deliver(); loop._ready.clear()
        answered = sum(part.count(b"200 OK") for part in client_side.out)
        assert answered == n, answered
        client_side.out.clear(); conn_side.out.clear()

    run(1000)
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter(); run(50_000)
        best = min(best, (time.perf_counter() - began) / 50_000)
    print(f"{best * 1e6:.2f}")

asyncio.run(main())
"""


def in_process() -> str:
    """The ingress's own work a request (in-process, fake transports), compiled and
    interpreted."""
    took = {}
    for name, env in (("compiled", ENV), ("interpreted", {**ENV, native.OFF: "1"})):
        took[name] = float(subprocess.run([sys.executable, "-c", IN_PROCESS], env=env,
                                          capture_output=True, text=True,
                                          check=True).stdout)
    _, said, _ = native.describe()
    return (f"the ingress's own work a request (in-process, fake transports, telemetry on): "
            f"{took['compiled']:.1f} us {said}; {took['interpreted']:.1f} us interpreted")


def spans(upstream: int, secs: int, rounds: int = 3) -> list[str]:
    """The cost of telemetry where the ingress is what limits (nginx behind it): req/s and
    CPU a request with it off, on as by default, and recording every request's trace."""
    rps: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(rounds):
        for mode in MODES:
            (port,) = free_ports(1)
            with ingress(port, upstream, mode) as proc:
                wrk(port, "backend-0.localhost", 1)
                before = _cpu(proc)
                got = wrk(port, "backend-0.localhost", secs)[0]
                rps[mode].append(got)
                cpu[mode].append((_cpu(proc) - before) / (got * secs))
    off = max(rps["off"])
    lines = [f"telemetry where the ingress limits (nginx behind it; {rounds} x {secs}s each "
             f"way, alternating, best req/s; CPU a request of the ingress and its trace "
             f"writer, medians): off {off:,.0f} req/s, "
             f"{statistics.median(cpu['off']) * 1e6:.0f} us"]
    metrics = max(rps["metrics"])
    for mode, what in (("metrics", "requests counted, no trace recorded"),
                       ("on", "on, as by default"), ("all", "every request traced")):
        lines.append(f"  {what}: {max(rps[mode]):,.0f} req/s, ratio "
                     f"{max(rps[mode]) / off:.2f}x of off, "
                     f"{max(rps[mode]) / metrics:.2f}x of metrics only; "
                     f"{statistics.median(cpu[mode]) * 1e6:.0f} us a request")
    return lines


if __name__ == "__main__":
    sys.exit(main())
