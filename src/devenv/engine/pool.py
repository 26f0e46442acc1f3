"""The stable address of a service: a pool of ready backends that callers are balanced over.

Both the TCP balancer (the service's own port) and the ingress pick from the same pool, count
what they have in flight, and wait a little when nothing is ready (a restart in progress)
rather than fail. Draining takes a backend out of rotation and waits for its work to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass(eq=False)
class Backend:
    id: str
    host: str
    port: int
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()


class NoBackend(LookupError):
    pass


class Pool:
    def __init__(self, name: str, hold_timeout: float = 15.0):
        self.name = name
        self.hold_timeout = hold_timeout
        self._ready: list[Backend] = []
        self._changed = asyncio.Event()
        self._turn = 0

    @property
    def ready(self) -> list[Backend]:
        return list(self._ready)

    def add(self, backend: Backend) -> None:
        if backend not in self._ready:
            self._ready.append(backend)
            self._changed.set()
            self._changed = asyncio.Event()

    def remove(self, backend: Backend) -> None:
        if backend in self._ready:
            self._ready.remove(backend)

    async def pick(self, exclude: set[str] | None = None,
                   timeout: float | None = None) -> Backend:
        """The next ready backend, least busy first; waits up to `timeout` (by default the
        hold timeout) for one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.hold_timeout if timeout is None else timeout)
        while True:
            choices = [b for b in self._ready if not exclude or b.id not in exclude]
            if choices:
                self._turn += 1
                least = min(b.inflight for b in choices)
                busy_least = [b for b in choices if b.inflight == least]
                return busy_least[self._turn % len(busy_least)]
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NoBackend(self.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    @contextlib.asynccontextmanager
    async def use(self, exclude: set[str] | None = None,
                  timeout: float | None = None) -> AsyncIterator[Backend]:
        backend = await self.pick(exclude, timeout)
        backend.inflight += 1
        backend.idle.clear()
        try:
            yield backend
        finally:
            backend.inflight -= 1
            if backend.inflight == 0:
                backend.idle.set()

    async def drain(self, backend: Backend, timeout: float) -> None:
        """Stop sending work to `backend` and wait (up to timeout) for what it has."""
        self.remove(backend)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(backend.idle.wait(), timeout)
