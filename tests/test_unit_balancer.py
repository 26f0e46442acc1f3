"""The local runtime's balancer on real sockets, on both event loops: closing it while a
caller waits for an instance ends that caller's connection at once, and quietly (no error in
the loop's log); so does a caller leaving while its instance still sends; an instance that
resets its connection ends the caller's."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from conftest import free_ports
from devenv.engine.pool import Backend, Pool
from devenv.runtime.balancer import Balancer

pytestmark = pytest.mark.usefixtures("both_loops")  # (the engine's: uvloop)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def in_front_of(instance: Handler) -> AsyncIterator[tuple[Balancer, int]]:
    """A balancer (and its port) in front of one instance served by `instance`; closed on
    the way out."""
    port, service_port = free_ports(2)
    service = await asyncio.start_server(instance, "127.0.0.1", service_port)
    pool = Pool("api")
    pool.add(Backend("api-1", "127.0.0.1", service_port))
    balancer = Balancer("api", port, pool)
    await balancer.open()
    try:
        yield balancer, port
    finally:
        await balancer.close()
        service.close()


def test_closing_while_a_caller_waits_for_an_instance_ends_it_quietly() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _, context: errors.append(context))
        (port,) = free_ports(1)
        balancer = Balancer("api", port, Pool("api", hold_timeout=30.0))  # none ready
        await balancer.open()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET / HTTP/1.1\r\n\r\n")
            async with asyncio.timeout(3):
                while not balancer._conns:  # (the caller's connection, waiting)
                    await asyncio.sleep(0.01)
                await balancer.close()
                assert await reader.read() == b""  # its connection closed, unanswered
            for _ in range(3):  # (the callbacks its ending queued)
                await asyncio.sleep(0)
        finally:
            writer.close()
        assert errors == []

    asyncio.run(scenario())


def test_a_caller_leaving_while_its_instance_still_sends_ends_quietly() -> None:
    """The instance streams on after the caller is gone: its connection ends too, and
    nothing reaches the loop's log, on either loop. (The window where uvloop would raise, a
    chunk read after the caller's transport closed, is not provoked here: `_pipe` checks
    `is_closing()` before each write for it.)"""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _, context: errors.append(context))
        instance_done = loop.create_future()

        async def streaming(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    writer.write(b"x" * 4096)
                    await writer.drain()
                    await asyncio.sleep(0.005)
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()
                instance_done.set_result(None)

        async with in_front_of(streaming) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            async with asyncio.timeout(5):
                assert await reader.readexactly(4096) == b"x" * 4096
                writer.close()  # (gone, unread bytes and all: a reset)
                await instance_done  # the instance's connection ended too
                for _ in range(3):  # (the callbacks its ending queued)
                    await asyncio.sleep(0.01)
        assert errors == []

    asyncio.run(scenario())


def test_an_instance_resetting_its_connection_ends_the_callers() -> None:
    """The caller waits for the rest of an answer: its instance's reset ends its connection
    too, after what came before it (it waited until it gave up itself, its balancer
    connection held)."""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _, context: errors.append(context))

        async def resetting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                            ) -> None:
            await reader.read(10)
            writer.write(b"part of an answer")
            await writer.drain()
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # (closed with linger 0: a reset)

        async with in_front_of(resetting) as (balancer, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\n\r\n")
            got = b""
            async with asyncio.timeout(5):
                try:
                    while data := await reader.read(65536):
                        got += data
                except ConnectionResetError:
                    pass
                while balancer._conns:  # its connection through the balancer ended
                    await asyncio.sleep(0.01)
            writer.close()
            assert got in (b"", b"part of an answer")
        assert errors == []

    asyncio.run(scenario())
