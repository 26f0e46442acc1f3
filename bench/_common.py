"""What the benchmarks share: free ports, percentiles, and running the devenv CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

# services the benchmarks start run with this virtualenv's python (and uvicorn) first on PATH
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def devenv(root: Path, *args: str) -> str:
    """Run `devenv ARGS` in `root`; its standard output (raises if it fails)."""
    return subprocess.run([sys.executable, "-m", "devenv", *args], cwd=root, env=ENV,
                          text=True, capture_output=True, check=True).stdout


def stop(root: Path) -> None:
    subprocess.run([sys.executable, "-m", "devenv", "stop", "--persist-data"], cwd=root,
                   env=ENV, capture_output=True)
