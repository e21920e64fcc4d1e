"""The compiled datagram plane (`turn.data_plane: native`, relay/net/native.py).

Every gateway test in tests/turn also runs on it (the `datagram_io` fixture); these check
what is its own: the address encoding shared with the compiled loop, that ChannelData is
forwarded by the loop itself both ways (not handed back to Python) with the same counters
as the Python path, that the route table follows the allocation, and the polling mode used
under a test clock."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.echo_peer import serve_udp_echo
from benchmarks.turnclient import TurnClient
from relay.net import native
from relay.net.gateway import Gateway, serve_gateway
from relay.stun import (
    Data,
    Lifetime,
    Message,
    MessageClass,
    Method,
    Software,
    XorPeerAddress,
)
from relay.stun.fastpath import data_indication, scan_send_indication
from relay.turn.stats import TurnStats
from tests.turn.gateway_harness import HAS_IPV6, PASSWORD, USER, config

pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason=native.MISSING or "numba")

@pytest.mark.parametrize("addr", [("127.0.0.1", 1), ("10.1.2.3", 65535), ("::1", 49152, 0, 0),
                                  ("2001:db8::7", 5, 0x12345, 0)])
def test_a_sockaddr_reads_back_as_the_address_python_reports(addr: tuple) -> None:
    raw = native.sockaddr(addr)
    assert len(raw) == (28 if ":" in addr[0] else 16)
    assert native.from_sockaddr(bytearray(raw) + bytearray(28 - len(raw))) == addr


def test_address_keys_tell_families_ports_and_addresses_apart() -> None:
    keys = {native.addr_key(a) for a in [
        ("127.0.0.1", 1), ("127.0.0.1", 2), ("127.0.0.2", 1), ("::1", 1, 0, 0),
        ("::2", 1, 0, 0), ("::ffff:127.0.0.1", 1, 0, 0), ("0.0.0.1", 1)]}
    assert len(keys) == 7
    # the same IPv6 address in another spelling is the same key
    assert native.addr_key(("2001:db8::1", 9, 0, 0)) == native.addr_key(
        ("2001:0db8:0:0::0001", 9, 0, 0))


def _native_config(host: str) -> object:
    net = f"{host}/128" if ":" in host else f"{host}/32"
    return config(
        listeners=[{"name": "udp", "protocol": "TURN-UDP", "address": host, "port": 0,
                    "routes": ["peers"]}],
        clusters=[{"name": "peers", "type": "STATIC", "endpoints": [net]}],
        turn={"data_plane": "native"})


@pytest.mark.parametrize("host", ["127.0.0.1", pytest.param("::1", marks=pytest.mark.skipif(
    not HAS_IPV6, reason="no IPv6 loopback"))])
async def test_channel_data_is_forwarded_by_the_compiled_loop_both_ways(host: str) -> None:
    stats = TurnStats()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            gw: Gateway = await nursery.start(serve_gateway, _native_config(host), stats)
            plane = gw.native
            assert plane is not None
            peer = await nursery.start(serve_udp_echo, host, 0)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            async with TurnClient((host, gw.bound_ports["udp"]), USER, PASSWORD,
                                  rto=0.1) as c:
                await c.allocate(family=2 if family == socket.AF_INET6 else 1)
                await c.channel_bind(0x4001, peer[:2])
                # the channel, the client's key for Send indications; the way back
                assert plane.route_counts() == (2, 1)
                rounds, back = 50, 0
                for i in range(rounds):
                    await c.send_channel(0x4001, b"media %d" % i)
                    with trio.move_on_after(1):
                        kind, number, data = await c.recv()
                        assert (kind, number, data) == ("channel", 0x4001, b"media %d" % i)
                        back += 1
                assert back >= rounds - 2  # loopback UDP: a loss is possible, not likely
                await c.binding()  # a trip through Python: the counters are folded
                # The loop itself carried the data both ways: nothing was handed back.
                assert plane.forwarded >= 2 * back
                cluster = stats.cluster("peers").traffic
                assert cluster.tx_packets >= back and cluster.rx_packets >= back
                assert cluster.tx_bytes >= sum(len(b"media %d" % i) for i in range(back))
                lis = stats.listeners["udp"].traffic
                assert lis.tx_packets >= back + 3  # the answers and the ChannelData
                assert not any(stats.drops.values())
                await c.refresh(0)
                # The allocation ended: its routes are gone with it.
                assert plane.route_counts() == (0, 0) and not plane.routes
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("host", ["127.0.0.1", pytest.param("::1", marks=pytest.mark.skipif(
    not HAS_IPV6, reason="no IPv6 loopback"))])
async def test_data_indications_are_learned_then_built_by_the_compiled_loop(host: str) -> None:
    # A permission without a channel: the first datagram from the peer goes through Python
    # (the policy is asked per port on loopback, where relay listens itself); the route it
    # learns lets the loop build the next ones, byte for byte what Python would build.
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            gw: Gateway = await nursery.start(serve_gateway, _native_config(host), TurnStats())
            plane = gw.native
            assert plane is not None
            peer = await nursery.start(serve_udp_echo, host, 0)
            async with TurnClient((host, gw.bound_ports["udp"]), USER, PASSWORD,
                                  rto=0.1) as c:
                await c.allocate(family=2 if ":" in host else 1)
                await c.create_permission(peer[:2])
                assert plane.route_counts() == (1, 0)  # the client's key; nothing learned
                await c.send_indication(peer[:2], b"first")
                assert await c.recv() == ("data", peer[:2], b"first")
                # learned both ways: Send indications to that peer address, Data
                # indications from it
                assert plane.forwarded == 0 and plane.route_counts() == (2, 1)
                for size in range(1, 9):  # every padding
                    payload = bytes(range(size))
                    await c.send_indication(peer[:2], payload)
                    raw = await c._recv_datagram()
                    assert raw == data_indication(raw[8:20], peer[0], peer[1], payload)
                await c.binding()  # a trip through Python: the counters are folded
                assert plane.forwarded >= 16  # both ways, by the loop
                await c.refresh(0)
                assert plane.route_counts() == (0, 0)
            nursery.cancel_scope.cancel()


async def test_under_a_test_clock_the_plane_polls_instead_of_blocking(
        autojump_clock: trio.testing.MockClock) -> None:
    # A virtual clock must not be slept through in epoll_wait: the task polls and waits on
    # the set with wait_readable, and relays all the same.
    assert native.trio_epoll_fd() is None
    stats = TurnStats()
    async with trio.open_nursery() as nursery:
        gw: Gateway = await nursery.start(serve_gateway, _native_config("127.0.0.1"), stats)
        assert gw.native is not None
        peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
        async with TurnClient(("127.0.0.1", gw.bound_ports["udp"]), USER, PASSWORD,
                              rto=0.1) as c:
            await c.allocate()
            await c.channel_bind(0x4002, peer)
            await c.send_channel(0x4002, b"polled")
            assert await c.recv() == ("channel", 0x4002, b"polled")
        nursery.cancel_scope.cancel()


async def test_two_gateways_in_one_process_both_relay_one_of_them_polling() -> None:
    # Only one plane per Trio run may sleep in its own epoll_wait (the other's sockets
    # would go unwatched meanwhile): the second polls, and both relay.
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            gws: list[Gateway] = [
                await nursery.start(serve_gateway, _native_config("127.0.0.1"), TurnStats())
                for _ in range(2)]
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            await trio.testing.wait_all_tasks_blocked()  # both planes' tasks have started
            assert sorted(gw.native_driven for gw in gws) == [False, True]
            for n, gw in enumerate(gws):
                async with TurnClient(("127.0.0.1", gw.bound_ports["udp"]), USER, PASSWORD,
                                      rto=0.1) as c:
                    await c.allocate()
                    await c.channel_bind(0x4003, peer)
                    for i in range(5):
                        await c.send_channel(0x4003, b"gw %d #%d" % (n, i))
                        assert await c.recv() == ("channel", 0x4003, b"gw %d #%d" % (n, i))
            nursery.cancel_scope.cancel()


def _send_indication(peer: tuple[str, int], payload: bytes, extra: bytes = b"") -> bytes:
    return Message(method=Method.SEND, cls=MessageClass.INDICATION,
                   transaction_id=bytes(range(12)),
                   attributes=[XorPeerAddress(peer[0], peer[1]), Data(payload)]
                   ).encode() + extra


SEND_SAMPLES = [
    _send_indication(("192.0.2.1", 3478), b"media"),
    _send_indication(("2001:db8::5", 9), b"x" * 7),
    _send_indication(("10.0.0.1", 1), b""),
    # other attributes around them, and a second XOR-PEER-ADDRESS and DATA (the first count)
    Message(method=Method.SEND, cls=MessageClass.INDICATION, transaction_id=bytes(12),
            attributes=[Software("x"), XorPeerAddress("198.51.100.7", 40000), Lifetime(5),
                        Data(b"first"), XorPeerAddress("::1", 2), Data(b"second")]).encode(),
]


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(SEND_SAMPLES), st.lists(st.tuples(st.integers(0, 200),
                                                         st.integers(0, 255)), max_size=4),
       st.integers(-8, 8), st.binary(max_size=40))
def test_the_compiled_send_parser_agrees_with_pythons(base: bytes,
                                                      flips: list[tuple[int, int]],
                                                      cut: int, tail: bytes) -> None:
    # Mutated, cut and extended Send indications: the compiled parser (unchecked memory
    # access) finds exactly what scan_send_indication finds, or refuses what it refuses.
    import numpy as np

    from relay.net import native_loop
    data = bytearray(base)
    for at, value in flips:
        if at < len(data):
            data[at] = value
    if cut < 0:
        del data[cut:]
    data += tail if cut > 0 else b""
    n = len(data)
    buf = np.zeros(65600, np.uint8)
    buf[:n] = np.frombuffer(bytes(data), np.uint8)
    psa = np.zeros(28, np.uint8)
    found = np.zeros(6, np.int64)
    got = native_loop.parse_send(buf, n, psa, found)
    want = scan_send_indication(bytes(data), n)
    assert got == (want is not None)
    if want is not None:
        ip, port, payload = want
        assert native.from_sockaddr(psa)[:2] == (ip, port)
        assert bytes(buf[found[1]:found[2]]) == bytes(payload)
        assert tuple(int(v) for v in found[3:6]) == native.addr_key((ip, port))
