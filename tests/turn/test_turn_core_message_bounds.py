"""The work one message may cost before it is authenticated is bounded (docs/turn.md,
"Message bounds"): datagram size on UDP, attribute count on every transport, peers per
CreatePermission; integrity is checked before any per-peer policy work."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from relay.stun import (
    ErrorCode,
    Message,
    MessageClass,
    Method,
    XorMappedAddress,
    XorPeerAddress,
    decode,
)
from relay.turn.policy import PeerPolicy
from relay.turn.server import (
    FAMILY_V4,
    MAX_ATTRIBUTES,
    MAX_PEERS_PER_REQUEST,
    MAX_UDP_REQUEST,
)
from tests.turn.core_harness import CLIENT, Harness, check_reply, txid


def flood_binding(attributes: int, value: bytes = b"\0\0\0\0") -> bytes:
    """A Binding request of `attributes` comprehension-optional attributes, as the flood
    sends it (8,000 of them make 64 KB)."""
    body = b"".join(struct.pack("!HH", 0x8100, len(value)) + value for _ in range(attributes))
    return struct.pack("!HHI12s", 0x0001, len(body), 0x2112A442, txid()) + body


def peers_request(method: int, count: int) -> bytes:
    peers = [XorPeerAddress(f"192.0.2.{i % 250 + 1}", 5000 + i) for i in range(count)]
    return Message(method, MessageClass.REQUEST, txid(), list(peers)).encode()


class CountingPolicy(PeerPolicy):
    calls = 0

    def check_ip(self, listener: str, ip_text: str) -> Any:
        CountingPolicy.calls += 1
        return super().check_ip(listener, ip_text)


@pytest.fixture
def h() -> Harness:
    harness = Harness()
    CountingPolicy.calls = 0
    harness.server.policy = CountingPolicy.from_config(harness.config)
    return harness


def test_64_kb_flood_binding_over_udp_is_dropped_unread(h: Harness) -> None:
    data = flood_binding(8000)
    assert len(data) > 64_000
    assert h.send(data) is None  # RFC 8489 §6.3: a message we will not process is discarded
    assert h.stats.drops["too_large"] == 1
    assert h.requests("binding", "success") == 0


def test_udp_size_bound_is_exact(h: Harness) -> None:
    fits = flood_binding(1, b"x" * (MAX_UDP_REQUEST - 24))
    assert len(fits) == MAX_UDP_REQUEST
    reply = h.send(fits)
    assert reply is not None and decode(reply).cls == MessageClass.SUCCESS
    over = flood_binding(1, b"x" * (MAX_UDP_REQUEST - 20))
    assert h.send(over) is None
    assert h.stats.drops["too_large"] == 1


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_attribute_count_bounds_streams_too(transport: str) -> None:
    h = Harness()
    lis = h.server.add_listener(transport, frozenset((FAMILY_V4,)), transport)
    data = flood_binding(8000)
    raw = h.server.handle(lis, CLIENT, data, h.now).reply
    assert raw is not None
    reply = decode(raw)
    assert (reply.cls, reply.transaction_id) == (MessageClass.ERROR, data[8:20])
    assert h.stats.requests[("binding", "400")] == 1


def test_attribute_count_bound_is_exact(h: Harness) -> None:
    ok = flood_binding(MAX_ATTRIBUTES)
    reply = h.send(ok)
    assert reply is not None
    assert decode(reply).get(XorMappedAddress) is not None
    too_many = flood_binding(MAX_ATTRIBUTES + 1)
    assert len(too_many) < MAX_UDP_REQUEST
    reply = h.send(too_many)
    assert reply is not None
    msg = decode(reply)
    assert msg.cls == MessageClass.ERROR and msg.transaction_id == too_many[8:20]
    assert h.requests("binding", "400") == 1


def test_unauthenticated_create_permission_does_no_per_peer_work(h: Harness) -> None:
    h.allocated()
    calls = CountingPolicy.calls
    big = peers_request(Method.CREATE_PERMISSION, 4000)  # the 48 KB flood message
    assert h.send(big) is None
    many = peers_request(Method.CREATE_PERMISSION, 300)  # fits the datagram bound
    reply = h.send(many)
    assert reply is not None and decode(reply).cls == MessageClass.ERROR
    small = peers_request(Method.CREATE_PERMISSION, MAX_PEERS_PER_REQUEST)
    raw = h.send(small)
    assert raw is not None
    assert check_reply(raw, decode(small), None, None, False).code == 401
    assert CountingPolicy.calls == calls


def test_bad_integrity_is_refused_before_per_peer_policy(h: Harness) -> None:
    h.allocated()
    calls = CountingPolicy.calls
    peers = [XorPeerAddress(f"192.0.2.{i + 1}", 6000) for i in range(MAX_PEERS_PER_REQUEST)]
    h.request(Method.CREATE_PERMISSION, peers, password="wrong").expect_error(401,
                                                                             signed=False)
    assert CountingPolicy.calls == calls


def test_peers_per_create_permission_are_bounded(h: Harness) -> None:
    alloc = h.allocated()
    peers = [XorPeerAddress(f"192.0.2.{i + 1}", 6000) for i in range(MAX_PEERS_PER_REQUEST + 1)]
    r = h.request(Method.CREATE_PERMISSION, peers).expect_error(400)
    assert str(MAX_PEERS_PER_REQUEST) in r.get(ErrorCode).reason
    assert not alloc.permissions
    h.request(Method.CREATE_PERMISSION, peers[:-1]).expect_success()
    assert len(alloc.permissions) == MAX_PEERS_PER_REQUEST

