"""Relay port selection when another program holds a block of the range."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator

import pytest

from relay.net import gateway
from relay.net.gateway import RelayPorts
from relay.turn.server import FAMILY_V4
from tests.turn.gateway_harness import free_port_range

BLOCK = 80  # more than RelayPorts.MAX_BIND_TRIES consecutive ports


@pytest.fixture
def held_block() -> Iterator[tuple[int, int]]:
    """A 400-port range whose first BLOCK ports another program holds."""
    lo, hi = free_port_range(400, ("127.0.0.1",))
    held = []
    try:
        for port in range(lo, lo + BLOCK):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", port))
            held.append(s)
        yield lo, hi
    finally:
        for s in held:
            s.close()


def test_a_block_held_by_another_program_is_skipped(
    held_block: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    lo, hi = held_block
    assert BLOCK > RelayPorts.MAX_BIND_TRIES
    real = random.randrange
    first = [True]

    def start_in_the_block(*args: int) -> int:
        if first[0]:  # the first pick lands on the held block's first port
            first[0] = False
            return 0
        return real(*args)

    monkeypatch.setattr(gateway.random, "randrange", start_in_the_block)
    ports = RelayPorts(lo, hi, 0)
    ep, nxt = ports.open(FAMILY_V4, "any", "127.0.0.1", "127.0.0.1")
    try:
        assert nxt is None
        assert lo + BLOCK <= ep.port <= hi
        assert ep.sock.getsockname()[1] == ep.port
    finally:
        ep.sock.close()
