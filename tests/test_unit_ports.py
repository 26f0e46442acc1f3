"""Where instances listen: ports from a range the kernel's ephemeral ports leave out (so no
outgoing connection takes one before its instance binds it), never one in use, never one
handed out twice in a short while; the kernel's pick where no such range can be had. Real
sockets."""

from __future__ import annotations

import socket

import pytest

from conftest import free_ports
from devenv.core.ports import HANDED_FOR, INSTANCE_PORTS, InstancePorts, ephemeral_range

LINUX_DEFAULT = range(32768, 61000)


def test_instance_ports_are_apart_from_the_ephemeral_range_and_never_handed_out_twice() -> None:
    ports = InstancePorts(ephemeral=lambda: LINUX_DEFAULT)
    taken = [ports.take() for _ in range(200)]
    assert all(p in INSTANCE_PORTS for p in taken)
    assert len(set(taken)) == len(taken)  # (free all along: none is bound here)


def test_a_port_in_use_is_skipped() -> None:
    busy, free = free_ports(2)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", busy))
        listener.listen()
        ports = InstancePorts([busy, free], ephemeral=lambda: LINUX_DEFAULT)
        assert {ports.take() for _ in range(5)} >= {free}
        assert ports.take() not in (busy, free)  # both out of reach now: the kernel's pick


def test_a_port_is_handed_out_again_once_its_while_has_passed() -> None:
    (port,) = free_ports(1)
    now = [0.0]
    ports = InstancePorts([port], ephemeral=lambda: LINUX_DEFAULT, clock=lambda: now[0])
    assert ports.take() == port
    assert ports.take() != port  # (its instance may not listen yet)
    now[0] = HANDED_FOR + 1
    assert ports.take() == port


def test_where_the_ephemeral_range_covers_the_ports_or_is_unknown_the_kernel_picks() -> None:
    for ephemeral in (range(1024, 65536), None):
        ports = InstancePorts(ephemeral=lambda e=ephemeral: e)  # type: ignore[misc]
        assert ports.ports == ()
        port = ports.take()
        if ephemeral is not None:
            assert port in ephemeral
        with socket.socket() as sock:  # free: an instance can listen on it
            sock.bind(("127.0.0.1", port))


def test_on_this_machine_instances_listen_outside_its_ephemeral_range() -> None:
    found = ephemeral_range()
    if found is None or INSTANCE_PORTS.start < found.stop:
        pytest.skip(f"this machine's ephemeral ports ({found}) reach {INSTANCE_PORTS}")
    port = InstancePorts().take()
    assert port in INSTANCE_PORTS and port not in found
