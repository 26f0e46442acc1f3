"""The engine's one event stream: state changes, log lines, reloads and alerts.

Everything that shows the running system (`up` progress, `logs -f`, `up --attach`, and the
dashboard to come) subscribes here instead of keeping its own fan-out. A subscriber that
stops reading loses events past its bound rather than growing the engine's memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from devenv.wire import LogLine, ReloadRecord, State

QUEUE_LIMIT = 10_000


@dataclass(frozen=True)
class StateChanged:
    service: str
    state: State
    detail: str
    ready: int
    desired: int


@dataclass(frozen=True)
class Logged:
    line: LogLine


@dataclass(frozen=True)
class Reloaded:
    service: str
    record: ReloadRecord


@dataclass(frozen=True)
class Alert:
    service: str
    text: str


Event = StateChanged | Logged | Reloaded | Alert


class Subscription:
    def __init__(self, stream: Events, kinds: tuple[type, ...]):
        self._stream = stream
        self.kinds = kinds
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.dropped = 0

    def offer(self, event: Event) -> None:
        if self.kinds and not isinstance(event, self.kinds):
            return
        if self.queue.qsize() >= QUEUE_LIMIT:
            self.dropped += 1
            return
        self.queue.put_nowait(event)

    async def get(self) -> Event:
        return await self.queue.get()

    def empty(self) -> bool:
        return self.queue.empty()

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            yield await self.queue.get()

    def close(self) -> None:
        self._stream._subs.discard(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Events:
    def __init__(self) -> None:
        self._subs: set[Subscription] = set()

    def publish(self, event: Event) -> None:
        for sub in list(self._subs):
            sub.offer(event)

    def subscribe(self, *kinds: type) -> Subscription:
        """Events of these kinds (all when none are named), from now on."""
        sub = Subscription(self, kinds)
        self._subs.add(sub)
        return sub
