"""What the benchmarks share: free ports, percentiles, running the devenv CLI, and stopping
whatever a benchmark started, however it ends (done, failed, or Ctrl-C)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

# services the benchmarks start run with this virtualenv's python (and uvicorn) first on PATH
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ports import BENCHES, PortRange  # noqa: E402 - shared with the tests

_PORTS = PortRange(BENCHES)


def free_ports(n: int) -> list[int]:
    """n ports, free now, never handed out before in this process."""
    return _PORTS.take(n)


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
