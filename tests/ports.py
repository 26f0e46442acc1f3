"""Ports for the services and ingresses that tests and benchmarks start.

They come from fixed ranges below the kernel's ephemeral range. Binding port 0 would draw
from the ephemeral range, which is where the engine's instance ports, its health probes and
every outgoing connection draw from too: such a port can be taken again before the service
binds it. Tests use 20000-24999 and benchmarks 25000-29999, so a test run and a benchmark
run never share a port.
"""

from __future__ import annotations

import os
import random
import socket
import threading
from pathlib import Path

TESTS = range(20000, 25000)
BENCHES = range(25000, 30000)
EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_low() -> int | None:
    try:
        return int(EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _bindable(port: int) -> bool:
    """Nothing listens on, or still holds, 127.0.0.1:port (SO_REUSEADDR off: a port with a
    connection in TIME_WAIT fails too)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def worker_share(ports: range) -> range:
    """Under pytest-xdist (`pytest -n N`), worker k of N gets the k-th of N equal slices of
    `ports`: two workers never hand out the same port."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or count <= 1:
        return ports
    k, size = int(worker[2:]), len(ports) // count
    return range(ports.start + k * size, ports.start + (k + 1) * size)


class PortRange:
    """Hands out each port of `ports` at most once in this process: a cursor moves through the
    range from an offset derived from the PID (two runs at once start far apart), and a port
    is handed out only if it can be bound right now."""

    def __init__(self, ports: range):
        low = _ephemeral_low()
        if low is not None and ports.stop > low:
            raise RuntimeError(f"ports {ports.start}-{ports.stop - 1} overlap the ephemeral "
                               f"range (from {low}, {EPHEMERAL}); move them in tests/ports.py")
        self.ports = ports
        self._cursor = random.Random(os.getpid()).randrange(len(ports))
        self._given: set[int] = set()
        self._lock = threading.Lock()

    def take(self, n: int) -> list[int]:
        """n ports, free now, never handed out before in this process."""
        out: list[int] = []
        with self._lock:
            for _ in range(len(self.ports)):
                if len(out) == n:
                    break
                port = self.ports[self._cursor]
                self._cursor = (self._cursor + 1) % len(self.ports)
                if port not in self._given and _bindable(port):
                    self._given.add(port)
                    out.append(port)
        if len(out) < n:
            raise RuntimeError(f"no {n} free ports left in {self.ports.start}-"
                               f"{self.ports.stop - 1}")
        return out
