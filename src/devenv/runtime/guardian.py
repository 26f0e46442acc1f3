"""The guardian: a tiny process that outlives the engine only to clean up after it.

The engine tells it, on a pipe, its token ("=TOKEN"), then each process group it starts
("+PGID") and stops ("-PGID"). If the pipe closes while groups are still registered (the
engine died, even by kill -9), the guardian stops them: TERM, then KILL after a grace period;
then it kills what escaped the groups (a service's `setsid` child): every process whose
environment carries the engine's token. It imports nothing but the stdlib.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

GRACE_SECONDS = 5.0
ENGINE_VAR = "DEVENV_ENGINE"  # in every instance's environment: whose it is
INSTANCE_VAR = "DEVENV_INSTANCE"
PROJECT_VAR = "DEVENV_PROJECT"  # the project folder, for whoever looks (tests, doctor)


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop_groups(pgids: set[int], grace: float = GRACE_SECONDS) -> None:
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pgids):
        time.sleep(0.05)
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def carrying(var: str, value: str) -> list[int]:
    """Processes whose environment has var=value (those we may read: ours, or all as root)."""
    entry = f"{var}={value}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                if entry in fh.read().split(b"\0"):
                    found.append(int(name))
        except OSError:
            continue
    return found


def kill_carrying(var: str, value: str) -> int:
    """KILL every process marked var=value (what escaped its process group); how many."""
    pids = carrying(var, value)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the CLI is not for us
    groups: set[int] = set()
    token = ""
    for line in sys.stdin:
        line = line.strip()
        if line.startswith("="):
            token = line[1:]
        elif line.startswith("+"):
            groups.add(int(line[1:]))
        elif line.startswith("-"):
            groups.discard(int(line[1:]))
    if groups:
        stop_groups(groups)
    if token:
        kill_carrying(ENGINE_VAR, token)


if __name__ == "__main__":
    main()
