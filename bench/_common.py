"""What the benchmarks share: free ports, percentiles, running the devenv CLI, and stopping
whatever a benchmark started, however it ends (done, failed, or Ctrl-C)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

# services the benchmarks start run with this virtualenv's python (and uvicorn) first on PATH
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

# The ports the benchmarks give services and ingresses come from a fixed range below the
# kernel's ephemeral range. Binding port 0 would draw from the ephemeral range, which is where
# the engine's instance ports, its health probes and every outgoing connection draw from too:
# such a port can be taken again before the service binds it. (The tests use 20000-24999, so
# a benchmark run and a test run never share a port.)
PORTS = range(25000, 30000)
EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_low() -> int | None:
    try:
        return int(EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


if (_low := _ephemeral_low()) is not None and PORTS.stop > _low:
    raise RuntimeError(f"benchmark ports {PORTS.start}-{PORTS.stop - 1} overlap the ephemeral "
                       f"range (from {_low}, {EPHEMERAL}); move PORTS in bench/_common.py")


def _bindable(port: int) -> bool:
    """Nothing listens on, or still holds, 127.0.0.1:port (SO_REUSEADDR off: a port with a
    connection in TIME_WAIT fails too)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_cursor = random.Random(os.getpid()).randrange(len(PORTS))  # two runs at once start far apart
_given: set[int] = set()


def free_ports(n: int) -> list[int]:
    """n ports of PORTS, free now, never handed out before in this process."""
    global _cursor
    out: list[int] = []
    for _ in range(len(PORTS)):
        if len(out) == n:
            break
        port = PORTS[_cursor]
        _cursor = (_cursor + 1) % len(PORTS)
        if port not in _given and _bindable(port):
            _given.add(port)
            out.append(port)
    if len(out) < n:
        raise RuntimeError(f"no {n} free ports left in {PORTS.start}-{PORTS.stop - 1}")
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def devenv(root: Path, *args: str) -> str:
    """Run `devenv ARGS` in `root`; its standard output (raises if it fails)."""
    return subprocess.run([sys.executable, "-m", "devenv", *args], cwd=root, env=ENV,
                          text=True, capture_output=True, check=True).stdout


def stop(root: Path) -> None:
    """Stop the environment in `root` (its data kept): `devenv stop`, then kill whatever still
    runs there (an engine that did not stop, its guardian, services)."""
    try:
        subprocess.run([sys.executable, "-m", "devenv", "stop", "--persist-data"], cwd=root,
                       env=ENV, capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        pass
    finally:
        _kill_leftovers(root)


@contextlib.contextmanager
def running(root: Path) -> Iterator[None]:
    """Around whatever starts an environment in `root` (`devenv up`) and uses it: stop it on
    the way out, whether the block finished, failed, or was interrupted."""
    try:
        yield
    finally:
        stop(root)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process started with start_new_session=True and everything in its group: TERM,
    then KILL what is left once it has exited (or after 10 s). The group is signalled only
    while its leader is not yet reaped, so that its id cannot have passed to another
    process."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.waitid(
            os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def _kill_leftovers(root: Path) -> None:
    inside = str(root.resolve())
    with contextlib.suppress(OSError, ValueError, psutil.Error):
        engine = psutil.Process(int((root / ".devenv/run/engine.pid").read_text()))
        if "devenv.engine" in " ".join(engine.cmdline()):  # (not a PID used again since)
            engine.kill()  # its guardian then stops the services
    leftovers = []
    for proc in psutil.process_iter(["cwd"]):
        cwd = proc.info["cwd"]
        if cwd and (cwd == inside or cwd.startswith(inside + os.sep)):
            leftovers.append(proc)
    for proc in leftovers:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(leftovers, timeout=10)
