"""The stable address of a service: a pool of ready backends that callers are balanced over.

Both the TCP balancer (the service's own port) and the ingress pick from the same pool, count
what they have in flight, and wait a little when nothing is ready (a restart in progress)
rather than fail. Draining takes a backend out of rotation and waits for its work to finish:
a request still being answered gets the long timeout, connections that are merely open (idle
keep-alive, a dev server's quiet HMR websocket) only the short one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(eq=False)
class Backend:
    id: str
    host: str
    port: int
    inflight: int = 0  # connections open through it
    busy: int = 0  # of those, the ones waiting for an answer
    # drains waiting for those counts to change (futures, not an asyncio.Event: counted for
    # every request, and an Event's set is a call into interpreted code each time)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    used: bool = False  # a caller was sent to it
    on_first_use: Callable[[], None] | None = None
    on_leave: list[Callable[[Backend], None]] = field(default_factory=list)  # out of its pool

    def working(self, delta: int) -> None:
        self.busy += delta
        self.changed()

    def changed(self) -> None:
        """Wake whoever waits for the counts to change (nearly always no one)."""
        if not self.waiters:
            return
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


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
            for hook in list(backend.on_leave):
                hook(backend)

    def holds(self, backend: Backend) -> bool:
        """Whether `backend` is (still) ready here."""
        return backend in self._ready

    def pick_ready(self, exclude: set[str] | None = None) -> Backend | None:
        """The next ready backend, least busy first, now; None when none is ready (no
        coroutine: the ingress's every request asks, and one is ready nearly always)."""
        ready = self._ready
        self._turn += 1
        if len(ready) == 1 and not exclude:
            return ready[0]
        choices = [b for b in ready if not exclude or b.id not in exclude]
        if not choices:
            return None
        least = min(b.inflight for b in choices)
        busy_least = [b for b in choices if b.inflight == least]
        return busy_least[self._turn % len(busy_least)]

    async def pick(self, exclude: set[str] | None = None,
                   timeout: float | None = None) -> Backend:
        """The next ready backend, least busy first; waits up to `timeout` (by default the
        hold timeout) for one."""
        backend = self.pick_ready(exclude)
        if backend is not None:
            return backend
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.hold_timeout if timeout is None else timeout)
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NoBackend(self.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
            backend = self.pick_ready(exclude)
            if backend is not None:
                return backend

    @staticmethod
    def acquire(backend: Backend, busy: bool = False) -> None:
        """Count a connection to `backend` (`busy`: it is one request) until `release`."""
        if not backend.used:
            backend.used = True
            if backend.on_first_use:
                backend.on_first_use()
        backend.inflight += 1
        if busy:
            backend.working(1)

    @staticmethod
    def release(backend: Backend, busy: bool = False) -> None:
        backend.inflight -= 1
        if busy:
            backend.busy -= 1
        backend.changed()

    def use(self, exclude: set[str] | None = None, timeout: float | None = None,
            busy: bool = False) -> Use:
        """A backend for one connection (`async with pool.use() as backend`), counted while
        the block runs; `busy`: the whole block is one request."""
        return Use(self, exclude, timeout, busy)

    async def drain(self, backend: Backend, timeout: float, idle_timeout: float | None = None
                    ) -> None:
        """Stop sending work to `backend` and wait for what it has: up to `timeout` while a
        connection waits for an answer, up to `idle_timeout` (default: the same) for
        connections that are merely open."""
        self.remove(backend)
        loop = asyncio.get_running_loop()
        began = loop.time()
        linger = timeout if idle_timeout is None else min(idle_timeout, timeout)
        while backend.inflight > 0:
            waited = loop.time() - began
            if waited >= timeout or (backend.busy <= 0 and waited >= linger):
                return
            limit = timeout if backend.busy > 0 else linger
            waiter: asyncio.Future[None] = loop.create_future()
            backend.waiters.append(waiter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, limit - waited)
            with contextlib.suppress(ValueError):  # (timed out: not woken, still listed)
                backend.waiters.remove(waiter)


class Use:
    """`Pool.use`'s context: a class, not a generator (the pool is compiled with the ingress,
    `devenv/native.py`, and mypyc compiles no async generator)."""

    def __init__(self, pool: Pool, exclude: set[str] | None, timeout: float | None,
                 busy: bool):
        self.pool, self.exclude, self.timeout, self.busy = pool, exclude, timeout, busy
        self.backend: Backend | None = None

    async def __aenter__(self) -> Backend:
        backend = await self.pool.pick(self.exclude, self.timeout)
        Pool.acquire(backend, self.busy)
        self.backend = backend
        return backend

    async def __aexit__(self, *exc: object) -> None:
        if self.backend is not None:
            Pool.release(self.backend, self.busy)
            self.backend = None
