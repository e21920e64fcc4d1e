"""A stream connection driven through the narrow `StreamHost` seam: a fake host and an
in-memory stream, no gateway and no sockets."""

from __future__ import annotations

import os

import trio
import trio.testing

from relay.net.stream import IDLE_TIMEOUT, StreamConnection
from relay.stun import (
    ErrorCode,
    Message,
    MessageClass,
    Method,
    XorMappedAddress,
    encode_channel_data,
)
from relay.turn.allocation import Address
from relay.turn.policy import PeerPolicy
from relay.turn.server import FAMILY_V4, ListenerState
from relay.turn.stats import ConnectionStats, TurnStats
from tests.turn.core_harness import make_config

CLIENT = ("192.0.2.7", 40000)
REQUEST = Message(Method.BINDING, MessageClass.REQUEST, b"\x05" * 12, []).encode()
REPLY = Message(
    Method.BINDING, MessageClass.SUCCESS, b"\x05" * 12, [XorMappedAddress(*CLIENT)]
).encode()
CHANNEL_DATA = encode_channel_data(0x4000, b"media", pad=True)


class FakeHost:
    """Implements `StreamHost`: records what the connection asks of the gateway."""

    def __init__(self) -> None:
        self.stats = TurnStats()
        self.policy = PeerPolicy.from_config(make_config())
        self.answered: list[bytes] = []
        self.opened: list[StreamConnection] = []
        self.closed: list[StreamConnection] = []

    def answer(self, lis: ListenerState, client: Address, data: bytes) -> bytes | None:
        assert client == CLIENT
        self.answered.append(data)
        return REPLY

    def connection_opened(self, conn: StreamConnection) -> None:
        self.opened.append(conn)

    def connection_closed(self, conn: StreamConnection) -> None:
        self.closed.append(conn)


def listener() -> ListenerState:
    return ListenerState("tcp", ConnectionStats("tcp"), frozenset({FAMILY_V4}), "tcp")


async def receive_exactly(stream: trio.abc.Stream, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = await stream.receive_some(n - len(got))
        assert chunk, "the connection closed early"
        got += chunk
    return got


async def test_split_frames_reach_the_host_and_garbage_ends_the_connection() -> None:
    host = FakeHost()
    lis = listener()
    client_end, server_end = trio.testing.memory_stream_pair()
    conn = StreamConnection(host, lis, server_end, CLIENT)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.run)
            await client_end.send_all(REQUEST[:7])  # a request split across reads
            await client_end.send_all(REQUEST[7:] + CHANNEL_DATA)  # ... merged with media
            assert await receive_exactly(client_end, len(REPLY)) == REPLY
            await trio.testing.wait_all_tasks_blocked()
            assert host.answered == [REQUEST]
            assert host.stats.drops["no_allocation"] == 1  # the ChannelData: no allocation
            await client_end.send_all(b"\xff" * 8)  # neither STUN nor ChannelData
    # the connection ended by itself (the nursery closed without cancelling it)
    assert host.stats.drops["malformed"] == 1
    assert lis.stats.traffic.rx_packets == 2
    assert lis.stats.traffic.rx_bytes == len(REQUEST) + len(CHANNEL_DATA)
    assert lis.stats.traffic.tx_packets == 1


class ProgressHost(FakeHost):
    """Answers a Binding with its success, anything unauthenticated with a 401 and a
    CreatePermission with a success (a request that makes progress)."""

    def answer(self, lis: ListenerState, client: Address, data: bytes) -> bytes | None:
        self.answered.append(data)
        tid = data[8:20]
        method = (data[0] << 8 | data[1]) & 0x3EEF
        if method == Method.BINDING:
            return Message(Method.BINDING, MessageClass.SUCCESS, tid,
                           [XorMappedAddress(*CLIENT)]).encode()
        if method == Method.CREATE_PERMISSION:
            return Message(Method.CREATE_PERMISSION, MessageClass.SUCCESS, tid, []).encode()
        return Message(method, MessageClass.ERROR, tid, [ErrorCode(401)]).encode()


def request(method: int) -> bytes:
    return Message(method, MessageClass.REQUEST, os.urandom(12), []).encode()


SEND_INDICATION = Message(Method.SEND, MessageClass.INDICATION, b"\x06" * 12, []).encode()


async def _serve(conn: StreamConnection, ended: trio.Event) -> None:
    await conn.run()
    ended.set()


async def _drain(stream: trio.abc.Stream) -> None:
    while await stream.receive_some(65536):
        pass


async def test_traffic_without_an_allocation_does_not_hold_the_connection(
        autojump_clock: trio.testing.MockClock) -> None:
    # ChannelData, Send indications, Bindings and unauthenticated requests every 5 s: none
    # of them moves the connection towards an allocation, so it closes at the idle timeout.
    host = ProgressHost()
    client_end, server_end = trio.testing.memory_stream_pair()
    ended = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve, StreamConnection(host, listener(), server_end, CLIENT), ended)
        nursery.start_soon(_drain, client_end)
        frames = [CHANNEL_DATA, SEND_INDICATION, request(Method.BINDING),
                  request(Method.ALLOCATE)]
        sent = 0
        for i in range(int(3 * IDLE_TIMEOUT / 5)):  # every 5 s, for three timeouts
            if ended.is_set():
                break
            await client_end.send_all(frames[i % len(frames)])
            sent += 1
            with trio.move_on_after(5):
                await ended.wait()
        nursery.cancel_scope.cancel()
    assert ended.is_set()
    assert sent >= IDLE_TIMEOUT // 5  # it kept sending until it was closed
    assert host.stats.drops["no_allocation"] >= 2


async def test_a_request_that_makes_progress_resets_the_idle_timer(
        autojump_clock: trio.testing.MockClock) -> None:
    host = ProgressHost()
    client_end, server_end = trio.testing.memory_stream_pair()
    ended = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve, StreamConnection(host, listener(), server_end, CLIENT), ended)
        nursery.start_soon(_drain, client_end)
        for _ in range(4):  # 4 x (3/4 of the timeout): well past one timeout in all
            await trio.sleep(IDLE_TIMEOUT * 3 / 4)
            assert not ended.is_set()
            await client_end.send_all(request(Method.CREATE_PERMISSION))
        with trio.move_on_after(2 * IDLE_TIMEOUT):
            await ended.wait()
        nursery.cancel_scope.cancel()
    assert ended.is_set()  # and once the progress stops, the timeout applies again
