"""The local runtime's balancer on real sockets: closing it while a caller waits for an
instance ends that caller's connection at once, and quietly (no error in the loop's log)."""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import free_ports
from devenv.engine.pool import Pool
from devenv.runtime.balancer import Balancer


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
