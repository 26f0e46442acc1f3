"""Fault injection: the fault-injection tests name points (DEVENV_FAULTS=a,b) where the
process kills itself with SIGKILL, exactly as a crash there would. Unset, a point costs one
environment lookup; nothing else ever sets it."""

from __future__ import annotations

import os
import signal


def armed(name: str) -> bool:
    """Whether the tests armed `name` (for a fault other than this process's death)."""
    faults = os.environ.get("DEVENV_FAULTS")
    return bool(faults) and name in (faults or "").split(",")


def point(name: str) -> None:
    if armed(name):
        os.kill(os.getpid(), signal.SIGKILL)
