"""The event loop the engine and the load generator run on: uvloop's (libuv, in C) where it
is installed, as it is with devenv on Linux and macOS; asyncio's own otherwise, or when
`DEVENV_EVENT_LOOP=asyncio` asks for it (to rule the loop out when something misbehaves).

uvloop keeps the ingress's cost a request near that of the system calls it makes: on
asyncio's loop the same compiled proxy spends about a fifth more CPU on each request (37
against 31 us here), its event loop, selector and transports being Python. What the engine
does differently on it is in `core/children.py` and docs/architecture.md ("The event
loop")."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

LOOP_VAR = "DEVENV_EVENT_LOOP"

T = TypeVar("T")


def _declined() -> bool:
    return os.environ.get(LOOP_VAR, "").strip().lower() == "asyncio"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's `new_event_loop` when installed and not declined, else asyncio's."""
    if not _declined():
        try:
            import uvloop  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop  # type: ignore[no-any-return, unused-ignore]
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the loop `loop_factory` picks."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


def is_uvloop(loop: asyncio.AbstractEventLoop) -> bool:
    return type(loop).__module__.startswith("uvloop")


def describe() -> tuple[bool, str]:
    """Whether the engine will run on uvloop, and what `devenv doctor` says of its loop."""
    if loop_factory() is not asyncio.new_event_loop:
        return True, "on uvloop"
    if _declined():
        return True, f"on asyncio's own loop ({LOOP_VAR}=asyncio asks for it)"
    return False, "on asyncio's own loop (uvloop is not installed: about a fifth slower)"
