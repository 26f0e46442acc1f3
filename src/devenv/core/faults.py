"""Fault injection: the fault-injection tests name points (DEVENV_FAULTS=a,b) where the
process kills itself with SIGKILL, exactly as a crash there would. Unset, a point costs one
environment lookup; nothing else ever sets it."""

from __future__ import annotations

import os
import signal


def point(name: str) -> None:
    armed = os.environ.get("DEVENV_FAULTS")
    if armed and name in armed.split(","):
        os.kill(os.getpid(), signal.SIGKILL)
