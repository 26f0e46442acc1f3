"""What every part of the engine shares: the runtime, the log store, the event bus, a clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devenv.engine.logstore import LogStore
from devenv.runtime.base import Runtime

Event = dict[str, Any]


class Bus:
    """Fan-out of engine events (state changes) to whoever is listening, e.g. `up` progress."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[Event]] = set()

    def emit(self, event: Event) -> None:
        for queue in self._queues:
            queue.put_nowait(event)

    def listen(self) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._queues.add(queue)
        return queue

    def unlisten(self, queue: asyncio.Queue[Event]) -> None:
        self._queues.discard(queue)


@dataclass
class Context:
    root: Path
    runtime: Runtime
    logs: LogStore
    bus: Bus = field(default_factory=Bus)
    hold_timeout: float = 15.0
    clock: Callable[[], float] = time.monotonic
