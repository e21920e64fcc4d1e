"""A stream connection driven through the narrow `StreamHost` seam: a fake host and an
in-memory stream, no gateway and no sockets."""

from __future__ import annotations

import trio
import trio.testing

from relay.net.stream import StreamConnection
from relay.stun import Message, MessageClass, Method, XorMappedAddress, encode_channel_data
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
