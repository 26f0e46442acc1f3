"""Health probes: HTTP GET, TCP connect, or a command in the service's environment."""

from __future__ import annotations

import asyncio
import contextlib

from devenv.config.model import HealthCheck
from devenv.plan import command_argv
from devenv.runtime.base import Instance, InstanceSpec, Runtime


async def probe(check: HealthCheck | None, instance: Instance, spec: InstanceSpec,
                runtime: Runtime) -> bool:
    """One check of one instance. No check declared: TCP on the port, if it has one."""
    endpoint = instance.endpoint
    timeout = check.timeout if check else 2.0
    try:
        if check is not None and check.command is not None:
            argv = command_argv(check.command)
            return (await runtime.run(spec, argv, timeout, instance)).code == 0
        if endpoint is None:
            return True
        if check is not None and check.http:
            return await asyncio.wait_for(_http(endpoint, check.http), timeout)
        return await asyncio.wait_for(_tcp(endpoint), timeout)
    except (TimeoutError, OSError, ValueError):
        return False


async def _tcp(endpoint: tuple[str, int]) -> bool:
    _, writer = await asyncio.open_connection(*endpoint)
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


async def _http(endpoint: tuple[str, int], path: str) -> bool:
    host, port = endpoint
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: devenv-health"
                     f"\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status_line = await reader.readline()
        parts = status_line.split()
        return len(parts) >= 2 and parts[0].startswith(b"HTTP/") and 200 <= int(parts[1]) < 400
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
