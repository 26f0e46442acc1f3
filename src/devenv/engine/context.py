"""What every part of the engine shares: its runtimes, the log store, the event stream, a
clock. Injected, so tests can run the engine on a fake runtime and a fake clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devenv.engine.events import Events, Logged
from devenv.engine.logstore import LogStore
from devenv.runtime.base import Runtime
from devenv.telemetry.model import Hub


@dataclass
class Context:
    root: Path
    runtimes: Callable[[str], Runtime]  # a plan names its runtime; this makes or finds it
    logs: LogStore
    events: Events = field(default_factory=Events)
    hold_timeout: float = 15.0
    clock: Callable[[], float] = time.monotonic
    # file work off the event loop (tests on a virtual clock run it inline)
    blocking: Callable[..., Awaitable[Any]] = asyncio.to_thread
    hub: Hub = field(default_factory=Hub)  # spans and requests, to whoever subscribed
    # what every instance of a service gets to send its telemetry (service, replica -> env)
    service_env: Callable[[str, int], dict[str, str]] = lambda service, replica: {}
    secrets: list[str] = field(default_factory=list)  # the engine's own, masked in logs

    def __post_init__(self) -> None:
        if self.logs.sink is None:  # every stored line is an event too
            events = self.events
            self.logs.sink = lambda line: events.publish(Logged(line))
