"""The ingress's outbox on a real event loop and real sockets: a write made while more of
the loop's turn remains waits for the turn's end, in order with the connection's other writes;
a lone write goes at once; closing sends what was held before the close."""

from __future__ import annotations

import asyncio
import gc
import socket
import tracemalloc
from collections.abc import Awaitable, Callable

import uvloop

from devenv.engine.ingress.outbox import Held, Outbox


def _on_pair(check: Callable[[Held, socket.socket, asyncio.AbstractEventLoop],
                             Awaitable[None]],
             loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
             ) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        ours, peer = socket.socketpair()
        peer.setblocking(False)
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
        outbox = Outbox()
        outbox.attach(loop)
        held = Held(transport, outbox)
        try:
            await check(held, peer, loop)
        finally:
            held.abort()
            peer.close()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


def _available(peer: socket.socket) -> bytes:
    try:
        return peer.recv(65536)
    except BlockingIOError:
        return b""


def test_a_write_in_a_busy_turn_waits_for_its_end_and_keeps_its_order() -> None:
    async def check(held: Held, peer: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        seen: list[bytes] = []
        done = loop.create_future()

        def first() -> None:
            held.write(b"one ")
            held.write(bytearray(b"two "))
            seen.append(_available(peer))  # (the turn goes on: nothing sent yet)

        def second() -> None:
            held.write(b"three")
            seen.append(_available(peer))
            loop.call_soon(lambda: done.set_result(None))

        loop.call_soon(first)
        loop.call_soon(second)
        await done
        seen.append(_available(peer))
        assert seen == [b"", b"", b"one two three"]

    _on_pair(check)


def test_a_lone_write_goes_at_once() -> None:
    async def check(held: Held, peer: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        done = loop.create_future()

        def alone() -> None:
            held.write(b"now")
            done.set_result(_available(peer))

        await asyncio.sleep(0)  # (a turn with nothing else queued)
        loop.call_soon(alone)
        assert await done == b"now"

    _on_pair(check)


def test_on_uvloop_every_write_is_held_to_the_end_of_its_turn_then_goes() -> None:
    """uvloop does not show its queue of callbacks: a write is held even alone, and goes out
    with the turn (no later I/O needed to send it)."""
    async def check(held: Held, peer: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        right_after = loop.create_future()

        def alone() -> None:
            held.write(b"now")
            held.write(b" and then")
            right_after.set_result(_available(peer))

        loop.call_soon(alone)
        assert await right_after == b""
        async with asyncio.timeout(5):
            assert await loop.sock_recv(peer, 65536) == b"now and then"

    _on_pair(check, uvloop.new_event_loop)


def test_closing_sends_what_was_held_first() -> None:
    async def check(held: Held, peer: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        done = loop.create_future()

        def answer_and_close() -> None:
            loop.call_soon(lambda: None)  # (more of the turn to come: the write is held)
            held.write(b"the last answer")
            assert held.get_write_buffer_size() == len(b"the last answer")
            held.close()
            loop.call_soon(lambda: done.set_result(None))

        loop.call_soon(answer_and_close)
        await done
        received = []
        async with asyncio.timeout(5):
            while data := await loop.sock_recv(peer, 65536):  # (to the end of the stream)
                received.append(data)
        assert b"".join(received) == b"the last answer"

    _on_pair(check)


def test_a_connection_leaves_no_memory_behind() -> None:
    """Every connection, both sides, is wrapped: compiled on `asyncio.Transport` as its base,
    a wrapper leaked a dict (about 64 bytes a connection for as long as the engine ran)."""
    async def check(held: Held, peer: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        inner = held.inner
        for _ in range(1000):  # (warm: free lists filled)
            Held(inner, held.outbox)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(20_000):
                Held(inner, held.outbox)
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert grown < 100_000, f"{grown:,} bytes left by 20,000 wrappers"

    _on_pair(check)
