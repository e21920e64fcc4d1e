"""Refresh, CreatePermission and ChannelBind on the wire (RFC 8656 §7.3, §9, §11)."""

from __future__ import annotations

from typing import Any

import pytest

from relay.stun import (
    AdditionalAddressFamily,
    Attribute,
    ChannelNumber,
    Lifetime,
    Method,
    RequestedAddressFamily,
    XorPeerAddress,
)
from relay.turn.server import FAMILY_V4, FAMILY_V6
from tests.turn.core_harness import BOTH, CLIENT, CLIENT2, T0, Harness, Reply

PEER = XorPeerAddress("192.0.2.50", 6000)
PEER2 = XorPeerAddress("192.0.2.51", 6000)
PEER6 = XorPeerAddress("2001:db8:f::50", 6000)


def cp(h: Harness, *peers: XorPeerAddress, **kw: Any) -> Reply:
    return h.request(Method.CREATE_PERMISSION, peers, **kw)


def cb(h: Harness, number: int, peer: XorPeerAddress | None = PEER, **kw: Any) -> Reply:
    attrs: list[Attribute] = [ChannelNumber(number)]
    if peer is not None:
        attrs.append(peer)
    return h.request(Method.CHANNEL_BIND, attrs, **kw)


# -- no allocation, wrong user ------------------------------------------------------------


@pytest.mark.parametrize(("method", "attrs", "name"), [
    (Method.REFRESH, [Lifetime(600)], "refresh"),
    (Method.CREATE_PERMISSION, [PEER], "create_permission"),
    (Method.CHANNEL_BIND, [ChannelNumber(0x4000), PEER], "channel_bind"),
])
def test_requests_without_an_allocation_get_437(method: int, attrs: list[Attribute],
                                                name: str) -> None:
    h = Harness()
    h.request(method, attrs, fingerprint=True).expect_error(437)
    assert h.requests(name, "437") == 1
    # unauthenticated, they are challenged first
    h.request(method, attrs, integrity=None).expect_error(401, signed=False)


@pytest.mark.parametrize(("method", "attrs"), [
    (Method.REFRESH, [Lifetime(0)]),
    (Method.CREATE_PERMISSION, [PEER]),
    (Method.CHANNEL_BIND, [ChannelNumber(0x4000), PEER]),
])
def test_other_user_on_the_5_tuple_gets_441_and_changes_nothing(
    method: int, attrs: list[Attribute]
) -> None:
    h = Harness()
    alloc = h.allocated()
    r = h.request(method, attrs, user="bob")
    r.expect_error(441)
    assert h.stats.auth_failures["wrong_user"] == 1
    assert alloc.alive and h.lis.allocations[CLIENT] is alloc
    assert alloc.permissions == {} and alloc.channels == {}


# -- Refresh ------------------------------------------------------------------------------


def test_refresh_with_another_address_family_gets_443() -> None:
    h = Harness(families=BOTH)
    h.allocated()
    h.request(Method.REFRESH, [RequestedAddressFamily(FAMILY_V6)]).expect_error(443)
    h.request(Method.REFRESH, [RequestedAddressFamily(FAMILY_V4)]).expect_success()


def test_refresh_of_a_dual_stack_allocation_accepts_either_family() -> None:
    h = Harness(families=BOTH)
    h.allocated(AdditionalAddressFamily(FAMILY_V6))
    for fam in (FAMILY_V4, FAMILY_V6):
        h.request(Method.REFRESH, [RequestedAddressFamily(fam)]).expect_success()


# -- CreatePermission ---------------------------------------------------------------------


def test_create_permission_installs_every_peer_ip() -> None:
    h = Harness()
    alloc = h.allocated()
    r = cp(h, PEER, PEER2, XorPeerAddress(PEER.ip, 1), fingerprint=True).expect_success()
    assert r.msg.attributes[:-2] == []  # nothing but MESSAGE-INTEGRITY and FINGERPRINT
    assert set(alloc.permissions) == {PEER.ip, PEER2.ip}  # IP only: ports are ignored
    assert h.stats.permissions_active == 2
    assert h.stats.clusters["open"].connections == 2
    assert h.requests("create_permission", "success") == 1


def test_create_permission_is_all_or_nothing() -> None:
    h = Harness()
    alloc = h.allocated()
    cp(h, PEER, XorPeerAddress("127.0.0.1", 80), PEER2).expect_error(403)
    assert alloc.permissions == {}
    assert h.stats.permissions_active == 0
    assert h.stats.peer_refusals["loopback"] == 1
    assert h.stats.clusters.get("open") is None or h.stats.clusters["open"].connections == 0


def test_create_permission_without_a_peer_gets_400() -> None:
    h = Harness()
    h.allocated()
    cp(h).expect_error(400)


def test_peer_of_another_family_gets_443() -> None:
    h = Harness(families=BOTH)
    alloc = h.allocated()
    cp(h, PEER, PEER6).expect_error(443)
    cb(h, 0x4000, PEER6).expect_error(443)
    assert alloc.permissions == {} and alloc.channels == {}
    assert h.stats.peer_refusals["family_mismatch"] == 2


def test_ipv6_allocation_takes_ipv6_peers() -> None:
    h = Harness(families=BOTH)
    alloc = h.allocated(RequestedAddressFamily(FAMILY_V6))
    cp(h, PEER6).expect_success()
    cp(h, PEER).expect_error(443)
    assert list(alloc.permissions) == [PEER6.ip]


def test_max_permissions_gets_508() -> None:
    h = Harness(turn={"max_permissions": 2})
    alloc = h.allocated()
    cp(h, PEER, PEER2).expect_success()
    cp(h, XorPeerAddress("192.0.2.52", 1)).expect_error(508)
    cp(h, PEER, PEER2).expect_success()  # refreshing existing ones is not a new permission
    assert len(alloc.permissions) == 2
    assert h.stats.quota_rejections["permissions"] == 1


def test_channel_bind_cannot_exceed_max_permissions() -> None:
    h = Harness(turn={"max_permissions": 1})
    alloc = h.allocated()
    cb(h, 0x4000, PEER).expect_success()
    cb(h, 0x4001, PEER2).expect_error(508)
    cb(h, 0x4001, XorPeerAddress(PEER.ip, 7000)).expect_success()  # same IP: no new one
    assert list(alloc.permissions) == [PEER.ip]
    assert sorted(alloc.channels) == [0x4000, 0x4001]
    assert h.stats.quota_rejections["permissions"] == 1


# -- ChannelBind --------------------------------------------------------------------------


def test_channel_bind_installs_channel_and_permission() -> None:
    h = Harness()
    alloc = h.allocated()
    r = cb(h, 0x4000, fingerprint=True).expect_success()
    assert r.msg.attributes[:-2] == []
    chan = alloc.channels[0x4000]
    assert chan.peer == (PEER.ip, PEER.port)
    assert alloc.peer_channels[chan.peer] is chan
    assert chan.endpoint is alloc.relays[FAMILY_V4]
    assert chan.permission is alloc.permissions[PEER.ip]
    assert (chan.expires, chan.permission.expires) == (T0 + 600, T0 + 300)
    assert h.stats.channels_active == 1 and h.stats.permissions_active == 1
    assert h.stats.clusters["open"].connections == 1
    assert h.requests("channel_bind", "success") == 1


@pytest.mark.parametrize(("number", "ok"), [
    (0x0000, False), (0x3FFF, False), (0x4000, True), (0x4FFF, True), (0x5000, False),
    (0x7FFF, False), (0x8000, False), (0xFFFF, False),
])
def test_channel_number_range(number: int, ok: bool) -> None:
    h = Harness()
    alloc = h.allocated()
    r = cb(h, number)
    if ok:
        r.expect_success()
    else:
        r.expect_error(400)
        assert alloc.channels == {} and alloc.permissions == {}


@pytest.mark.parametrize(("number", "ok"), [
    (0x3FFF, False), (0x4000, True), (0x5000, True), (0x7FFF, True), (0x8000, False),
])
def test_rfc5766_channels_widen_the_range_to_0x7fff(number: int, ok: bool) -> None:
    h = Harness(turn={"rfc5766_channels": True})
    h.allocated()
    r = cb(h, number)
    if ok:
        r.expect_success()
    else:
        r.expect_error(400)


def test_channel_re_pairing_gets_400_and_same_pairing_refreshes() -> None:
    h = Harness()
    alloc = h.allocated()
    cb(h, 0x4000, PEER).expect_success()
    cb(h, 0x4000, PEER2).expect_error(400)  # the number is bound to another peer
    cb(h, 0x4000, XorPeerAddress(PEER.ip, PEER.port + 1)).expect_error(400)  # port counts
    cb(h, 0x4001, PEER).expect_error(400)  # the peer is bound to another number
    cb(h, 0x4000, PEER, now=T0 + 100).expect_success()
    assert alloc.channels[0x4000].expires == T0 + 700
    assert alloc.permissions[PEER.ip].expires == T0 + 400
    assert list(alloc.channels) == [0x4000] and h.stats.channels_active == 1
    assert h.requests("channel_bind", "400") == 3


@pytest.mark.parametrize("which", ["number", "peer"])
def test_channel_bind_missing_attribute_gets_400(which: str) -> None:
    h = Harness()
    h.allocated()
    if which == "number":
        h.request(Method.CHANNEL_BIND, [PEER]).expect_error(400)
    else:
        cb(h, 0x4000, None).expect_error(400)


def test_channel_bind_to_a_forbidden_peer_gets_403_not_401() -> None:
    h = Harness()
    alloc = h.allocated()
    cb(h, 0x4000, XorPeerAddress("169.254.169.254", 80)).expect_error(403)
    assert alloc.channels == {} and alloc.permissions == {}
    assert h.stats.peer_refusals["link_local"] == 1


def test_channel_bind_checks_the_cluster_port_range() -> None:
    clusters = [{"name": "media", "endpoints": ["192.0.2.0/24:<5000-5999>"]}]
    h = Harness(clusters=clusters, routes=("media",))
    alloc = h.allocated()
    cb(h, 0x4000, XorPeerAddress("192.0.2.50", 6000)).expect_error(403)
    assert h.stats.peer_refusals["port_not_allowed"] == 1
    cb(h, 0x4000, XorPeerAddress("192.0.2.50", 5000)).expect_success()
    # permissions are IP-only: CreatePermission does not look at the port
    cp(h, XorPeerAddress("192.0.2.60", 1)).expect_success()
    assert not alloc.permissions["192.0.2.60"].any_port
    cp(h, XorPeerAddress("198.51.100.1", 5000)).expect_error(403)
    assert h.stats.peer_refusals["no_route"] == 1
    assert h.stats.clusters["media"].connections == 2


def test_max_channels_gets_508() -> None:
    h = Harness(turn={"max_channels": 2})
    alloc = h.allocated()
    cb(h, 0x4000, PEER).expect_success()
    cb(h, 0x4001, PEER2).expect_success()
    cb(h, 0x4002, XorPeerAddress("192.0.2.52", 1)).expect_error(508)
    cb(h, 0x4001, PEER2).expect_success()  # refreshing a bound channel is fine
    assert sorted(alloc.channels) == [0x4000, 0x4001]
    assert "192.0.2.52" not in alloc.permissions
    assert h.stats.quota_rejections["channels"] == 1


def test_allocations_are_per_5_tuple() -> None:
    h = Harness()
    a = h.allocated()
    b = h.allocated(client=CLIENT2)
    cb(h, 0x4000, PEER).expect_success()
    cb(h, 0x4000, PEER2, client=CLIENT2).expect_success()
    assert a.channels[0x4000].peer != b.channels[0x4000].peer
    assert a.relays[FAMILY_V4] is not b.relays[FAMILY_V4]
