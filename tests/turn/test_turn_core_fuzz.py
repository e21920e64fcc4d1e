"""Random request sequences against the core: it never raises, every answer belongs to its
request, and the counters, quotas and open relay ports always match the allocation table."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from relay.stun import (
    AdditionalAddressFamily,
    Attribute,
    ChannelNumber,
    Data,
    DontFragment,
    EvenPort,
    Lifetime,
    Message,
    MessageClass,
    Nonce,
    Realm,
    RequestedAddressFamily,
    RequestedTransport,
    ReservationToken,
    StunDecodeError,
    UnknownAttribute,
    Username,
    XorPeerAddress,
    decode,
)
from tests.turn.core_harness import BOTH, CLIENT, CLIENT2, CLIENT6, REALM, T0, UDP, Harness

ATTRIBUTES: list[Attribute] = [
    UDP, UDP, RequestedTransport(6), Lifetime(0), Lifetime(1), Lifetime(5000),
    EvenPort(True), EvenPort(False), RequestedAddressFamily(1), RequestedAddressFamily(2),
    RequestedAddressFamily(9), AdditionalAddressFamily(2), AdditionalAddressFamily(1),
    ReservationToken(b"abcdefgh"), DontFragment(), ChannelNumber(0x4000), ChannelNumber(0x4001),
    ChannelNumber(0x5000), XorPeerAddress("192.0.2.5", 1), XorPeerAddress("192.0.2.6", 2),
    XorPeerAddress("::ffff:127.0.0.1", 9), XorPeerAddress("2001:db8::5", 7),
    XorPeerAddress("10.0.0.1", 0), Data(b"x"), UnknownAttribute(0x7777, b""),
    UnknownAttribute(0xC000, b"zz"),
]
METHODS = [0x001, 0x003, 0x003, 0x004, 0x006, 0x008, 0x009, 0x009, 0x00A, 0xFFF]
CLIENTS: list[Any] = [CLIENT, CLIENT2, CLIENT6]


PEERS = [XorPeerAddress(f"192.0.2.{i}", 5000 + i % 2) for i in range(1, 6)] + [
    XorPeerAddress("2001:db8::7", 5000), XorPeerAddress("127.0.0.1", 5000)]


def plausible(rnd: random.Random, method: int) -> list[Attribute]:
    """The attributes a well-behaved client would send with `method`."""
    if method == 0x003:
        extra: list[Attribute] = rnd.sample(
            [EvenPort(True), AdditionalAddressFamily(2), RequestedAddressFamily(2),
             Lifetime(rnd.choice([0, 300, 1200]))], rnd.randint(0, 1))
        return [UDP, *extra]
    if method == 0x004:
        return [Lifetime(rnd.choice([0, 600, 1200, 3600]))] if rnd.random() < 0.8 else []
    if method == 0x008:
        return rnd.sample(PEERS, rnd.randint(1, 3))
    if method == 0x009:
        return [ChannelNumber(rnd.choice([0x4000, 0x4001, 0x4002])), rnd.choice(PEERS)]
    return []


def check_invariants(h: Harness) -> None:
    allocs = list(h.lis.allocations.values())
    st = h.stats
    assert all(a.alive for a in allocs)
    assert st.allocations_active == len(allocs) == h.stats.listeners["udp"].connections
    assert st.permissions_active == sum(len(a.permissions) for a in allocs)
    assert st.channels_active == sum(len(a.channels) for a in allocs)
    assert sum(c.connections for c in st.clusters.values()) == st.permissions_active
    assert h.server.user_counts == dict(Counter(a.user_id for a in allocs))
    for a in allocs:
        assert {ch.number: ch.peer for ch in a.channels.values()} == {
            ch.number: p for p, ch in a.peer_channels.items()}
    in_use = {id(ep) for a in allocs for ep in a.relays.values()}
    in_use |= {id(r.endpoint) for r in h.server.reservations.values()}
    assert {id(ep) for ep in h.ports.in_use()} == in_use
    assert all(ep.closes <= 1 for ep in h.ports.endpoints)


@pytest.mark.parametrize("seed", range(6))
def test_random_requests_keep_the_books_straight(seed: int) -> None:
    rnd = random.Random(seed)
    h = Harness(families=BOTH, free=6, admin={"user_quota": 2},
                turn={"unauthorized_ratelimit": 0, "max_permissions": 3, "max_channels": 2})
    now = T0
    for _ in range(1500):
        now += rnd.random() * 2
        client = rnd.choice(CLIENTS)
        user = rnd.choice(["alice", "alice", "bob", "mallory"])
        method = rnd.choice(METHODS)
        attrs = plausible(rnd, method) if rnd.random() < 0.7 else []
        attrs += rnd.sample(ATTRIBUTES, rnd.randint(0, 2 if attrs else 5))
        signed = rnd.random() < 0.9
        if signed:
            attrs += [Username(user), Realm(REALM), Nonce(h.nonce(client, now))]
        msg = Message(method, rnd.choice([0, 0, 0, 0, 0, 0, 1, 2]), rnd.randbytes(12),
                      attrs)
        data = msg.encode(key=h.key(user) if signed else None,
                          integrity=rnd.choice(["sha1", "sha256"]) if signed else None,
                          fingerprint=rnd.random() < 0.5)
        if rnd.random() < 0.2:
            b = bytearray(data)
            b[rnd.randrange(len(b))] = rnd.randrange(256)
            data = bytes(b)
        out = h.send(data, client, now)
        if out is not None:
            reply = decode(out)
            assert reply.transaction_id == data[8:20]
            assert reply.cls in (MessageClass.SUCCESS, MessageClass.ERROR)
            try:
                req = decode(data)
            except StunDecodeError:
                continue
            assert req.cls == MessageClass.REQUEST
        if rnd.random() < 0.1:
            h.sweep(now)
        check_invariants(h)
    h.close_all(now)
    check_invariants(h)
    assert h.ports.in_use() == []
    assert h.stats.allocation_lifetime.count == h.stats.allocations_total
