"""Local TCP ports: which ones instances listen on, and who holds one (for error messages
that say what to stop)."""

from __future__ import annotations

import contextlib
import random
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

HOST = "127.0.0.1"
# Instances listen on these: above Linux's default ephemeral range (32768-60999), where every
# outgoing connection takes its local port, so none can take one between its choice and the
# instance's bind. (A port the kernel picks for port 0 is an ephemeral one: on a busy machine,
# now and then, an outgoing connection took it first and the instance failed to listen.)
INSTANCE_PORTS = range(61000, 65536)
EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
HANDED_FOR = 60.0  # seconds a port handed out is not handed out again (it may not be bound yet)


def port_owner(port: int) -> str:
    """' by pid N (name)' for the process listening on `port`, or '' when it cannot be read."""
    with contextlib.suppress(Exception):
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == "LISTEN" and conn.pid:
                return f" by pid {conn.pid} ({psutil.Process(conn.pid).name()})"
    return ""


def ephemeral_range(path: Path = EPHEMERAL) -> range | None:
    """The kernel's ephemeral ports (net.ipv4.ip_local_port_range); None where it cannot be
    read (not Linux)."""
    try:
        low, high = (int(v) for v in path.read_text().split()[:2])
    except (OSError, ValueError):
        return None
    return range(low, high + 1)


def bindable(port: int) -> bool:
    """Nothing listens on, or still holds, 127.0.0.1:port now."""
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def kernel_port() -> int:
    """A port the kernel picks (port 0): free now, from the ephemeral range."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class InstancePorts:
    """Ports for instances to listen on: free ones of `ports`, when the ephemeral range leaves
    them out; the kernel's pick otherwise (another OS, a range widened over them) or when
    every one is taken. A port is not handed out twice within HANDED_FOR seconds (its first
    instance may not be listening yet)."""

    def __init__(self, ports: Sequence[int] = INSTANCE_PORTS,
                 ephemeral: Callable[[], range | None] = ephemeral_range,
                 clock: Callable[[], float] = time.monotonic):
        taken = ephemeral()
        apart = taken is not None and not any(port in taken for port in ports)
        self.ports: Sequence[int] = ports if apart else ()
        self._handed: dict[int, float] = {}
        self._clock = clock
        self._random = random.Random()

    def take(self) -> int:
        ports = self.ports
        if not ports:
            return kernel_port()
        now = self._clock()
        self._handed = {p: at for p, at in self._handed.items() if now - at < HANDED_FOR}
        start = self._random.randrange(len(ports))
        for i in range(len(ports)):
            port = ports[(start + i) % len(ports)]
            if port not in self._handed and bindable(port):
                self._handed[port] = now
                return port
        return kernel_port()
