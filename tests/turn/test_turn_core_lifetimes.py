"""Lifetimes by deadline: allocations, permissions, channels, the 5-minute channel
quarantine, and the counters that follow them (all at explicit times, no clock)."""

from __future__ import annotations

from typing import Any

import pytest

from relay.stun import (
    AdditionalAddressFamily,
    Attribute,
    ChannelNumber,
    EvenPort,
    Lifetime,
    Method,
    XorPeerAddress,
)
from relay.turn.effects import AllocationCreated, AllocationDeleted, Outcome
from relay.turn.server import FAMILY_V6
from tests.turn.core_harness import BOTH, CLIENT, CLIENT2, T0, Harness, Reply

PEER = XorPeerAddress("192.0.2.50", 6000)
PEER2 = XorPeerAddress("192.0.2.51", 6000)


def refresh(h: Harness, seconds: int | None, **kw: Any) -> Reply:
    attrs: list[Attribute] = [] if seconds is None else [Lifetime(seconds)]
    return h.request(Method.REFRESH, attrs, **kw)


def cb(h: Harness, number: int, peer: XorPeerAddress, **kw: Any) -> Reply:
    return h.request(Method.CHANNEL_BIND, [ChannelNumber(number), peer], **kw)


def cp(h: Harness, *peers: XorPeerAddress, **kw: Any) -> Reply:
    return h.request(Method.CREATE_PERMISSION, peers, **kw)


# max(default, min(requested, max)) with the defaults 600 and 3600 (RFC 8656 §7.2, §7.3)
LIFETIMES = [(None, 600), (0xFFFFFFFF, 3600), (3601, 3600), (3600, 3600), (1200, 1200),
             (601, 601), (599, 600), (1, 600)]


@pytest.mark.parametrize(("requested", "granted"), [*LIFETIMES, (0, 600)])
def test_allocate_lifetime(requested: int | None, granted: int) -> None:
    h = Harness()
    attrs = [] if requested is None else [Lifetime(requested)]
    r = h.allocate(*attrs).expect_success()
    assert r.get(Lifetime) == Lifetime(granted)
    assert h.lis.allocations[CLIENT].expires == T0 + granted


@pytest.mark.parametrize(("requested", "granted"), LIFETIMES)
def test_refresh_lifetime(requested: int | None, granted: int) -> None:
    h = Harness()
    alloc = h.allocated()
    r = refresh(h, requested, now=T0 + 100).expect_success()
    assert r.get(Lifetime) == Lifetime(granted)
    assert alloc.expires == T0 + 100 + granted


def test_configured_lifetimes_are_honoured() -> None:
    h = Harness(turn={"default_lifetime": 60, "max_lifetime": 120})
    assert h.allocate(Lifetime(30)).expect_success().get(Lifetime) == Lifetime(60)
    assert refresh(h, 1000).expect_success().get(Lifetime) == Lifetime(120)


def test_refresh_zero_deletes_and_releases_everything() -> None:
    h = Harness(families=BOTH, admin={"user_quota": 1})
    alloc = h.allocated(AdditionalAddressFamily(FAMILY_V6))
    cp(h, PEER, PEER2).expect_success()
    cb(h, 0x4000, PEER).expect_success()
    assert (h.stats.permissions_active, h.stats.channels_active) == (2, 1)
    endpoints = list(h.ports.endpoints)
    assert len(endpoints) == 2

    r = refresh(h, 0, now=T0 + 42, fingerprint=True).expect_success()
    assert r.get(Lifetime) == Lifetime(0)
    assert not alloc.alive and CLIENT not in h.lis.allocations
    assert [ep.closes for ep in endpoints] == [1, 1]
    assert h.deleted == [alloc]
    st = h.stats
    assert (st.allocations_active, st.allocations_total) == (0, 1)
    assert (st.permissions_active, st.channels_active) == (0, 0)
    assert st.listeners["udp"].connections == 0 and st.listeners["udp"].connections_total == 1
    assert st.clusters["open"].connections == 0 and st.clusters["open"].connections_total == 2
    assert h.server.user_counts == {}
    assert (st.allocation_lifetime.count, st.allocation_lifetime.sum) == (1, 42.0)
    assert h.requests("refresh", "success") == 1
    # the quota is free again, and the 5-tuple has no allocation any more
    refresh(h, 0, now=T0 + 43).expect_error(437)
    h.allocated(client=CLIENT2, now=T0 + 44)


def test_refresh_extends_and_sweep_deletes_at_the_exact_deadline() -> None:
    h = Harness()
    alloc = h.allocated()
    refresh(h, 1000, now=T0 + 500).expect_success()
    h.sweep(T0 + 600)  # the original deadline no longer applies
    assert alloc.alive
    h.sweep(T0 + 1499.999)
    assert alloc.alive
    h.sweep(T0 + 1500)
    assert not alloc.alive and h.lis.allocations == {}
    assert h.ports.endpoints[0].closes == 1
    assert h.stats.allocations_active == 0
    assert h.stats.allocation_lifetime.count == 1
    assert h.stats.allocation_lifetime.sum == 1500.0
    assert h.deleted == [alloc]


def test_delete_is_idempotent() -> None:
    h = Harness()
    alloc = h.allocated()
    h.delete(alloc, T0 + 1)
    h.delete(alloc, T0 + 2)
    h.sweep(T0 + 10_000)
    h.close_all(T0 + 10_001)
    assert h.ports.endpoints[0].closes == 1
    assert h.stats.allocations_active == 0 and h.stats.allocation_lifetime.count == 1


def test_lifetime_histogram_buckets() -> None:
    h = Harness()
    alloc = h.allocated()
    h.sweep(T0 + 600)
    hist = h.stats.allocation_lifetime
    assert hist.count == 1 and not alloc.alive
    assert dict(hist.buckets())["300.0"] == 0
    assert dict(hist.buckets())["600.0"] == 1


def test_permission_lasts_300_s_and_create_permission_refreshes_it() -> None:
    h = Harness()
    alloc = h.allocated()
    cp(h, PEER, PEER2).expect_success()
    cp(h, PEER2, now=T0 + 200).expect_success()
    assert alloc.permissions[PEER2.ip].expires == T0 + 500
    h.sweep(T0 + 299)
    assert set(alloc.permissions) == {PEER.ip, PEER2.ip}
    h.sweep(T0 + 300)
    assert set(alloc.permissions) == {PEER2.ip}
    assert h.stats.permissions_active == 1
    assert h.stats.clusters["open"].connections == 1
    h.sweep(T0 + 500)
    assert alloc.permissions == {}
    assert h.stats.permissions_active == 0 and h.stats.clusters["open"].connections == 0
    assert alloc.alive


def test_channel_bind_refreshes_the_permission() -> None:
    h = Harness()
    alloc = h.allocated()
    cp(h, PEER).expect_success()
    cb(h, 0x4000, PEER, now=T0 + 200).expect_success()
    h.sweep(T0 + 300)
    assert PEER.ip in alloc.permissions
    assert alloc.permissions[PEER.ip].expires == T0 + 500
    assert h.stats.permissions_active == 1


def _with_long_allocation(h: Harness) -> Any:
    alloc = h.allocated(Lifetime(3600))
    assert alloc.expires == T0 + 3600
    return alloc


def test_channel_lasts_600_s_then_the_pairing_is_quarantined_300_s() -> None:
    h = Harness()
    alloc = _with_long_allocation(h)
    cb(h, 0x4000, PEER).expect_success()
    h.sweep(T0 + 300)  # the permission goes; the channel stays
    assert alloc.permissions == {} and 0x4000 in alloc.channels
    h.sweep(T0 + 599)
    assert 0x4000 in alloc.channels and h.stats.channels_active == 1
    h.sweep(T0 + 600)
    assert alloc.channels == {} and alloc.peer_channels == {}
    assert h.stats.channels_active == 0

    # within 5 minutes neither the number nor the peer can be re-paired differently
    cb(h, 0x4000, PEER2, now=T0 + 899).expect_error(400)
    cb(h, 0x4001, PEER, now=T0 + 899).expect_error(400)
    assert alloc.channels == {}
    # after them both can
    h.sweep(T0 + 900)
    cb(h, 0x4000, PEER2, now=T0 + 900).expect_success()
    cb(h, 0x4001, PEER, now=T0 + 900).expect_success()
    assert alloc.channels[0x4000].peer == (PEER2.ip, PEER2.port)
    assert alloc.channels[0x4001].peer == (PEER.ip, PEER.port)
    assert h.stats.channels_active == 2


def test_quarantine_counts_from_the_expiry_not_from_a_late_sweep() -> None:
    h = Harness()
    _with_long_allocation(h)
    cb(h, 0x4000, PEER).expect_success()
    h.sweep(T0 + 650)  # expired at T0 + 600, noticed later
    cb(h, 0x4000, PEER2, now=T0 + 899).expect_error(400)
    h.sweep(T0 + 900)
    cb(h, 0x4000, PEER2, now=T0 + 900).expect_success()


def test_same_pairing_can_rebind_during_the_quarantine() -> None:
    h = Harness()
    alloc = _with_long_allocation(h)
    cb(h, 0x4000, PEER).expect_success()
    h.sweep(T0 + 600)
    cb(h, 0x4000, PEER, now=T0 + 700).expect_success()
    assert alloc.channels[0x4000].expires == T0 + 1300
    assert alloc.quarantine_numbers == {} and alloc.quarantine_peers == {}
    assert h.stats.channels_active == 1


def test_an_expired_unswept_channel_still_blocks_re_pairing() -> None:
    h = Harness()
    _with_long_allocation(h)
    cb(h, 0x4000, PEER).expect_success()
    cb(h, 0x4000, PEER2, now=T0 + 700).expect_error(400)
    cb(h, 0x4000, PEER, now=T0 + 700).expect_success()


def test_allocation_expiry_removes_its_channels_and_permissions_from_the_counters() -> None:
    h = Harness()
    alloc = h.allocated()
    cp(h, PEER).expect_success()
    cb(h, 0x4000, PEER2).expect_success()
    h.sweep(T0 + 600)
    assert not alloc.alive
    st = h.stats
    assert (st.allocations_active, st.permissions_active, st.channels_active) == (0, 0, 0)
    assert st.clusters["open"].connections == 0
    assert st.clusters["open"].connections_total == 2


def test_close_all_releases_allocations_and_reservations() -> None:
    h = Harness()
    h.allocated(EvenPort(True))
    h.allocated(client=CLIENT2)
    assert len(h.ports.in_use()) == 3
    h.close_all(T0 + 5)
    assert h.ports.in_use() == []
    assert all(ep.closes == 1 for ep in h.ports.endpoints)
    assert h.server.reservations == {} and h.lis.allocations == {}
    assert h.stats.allocations_active == 0
    assert h.stats.listeners["udp"].connections == 0
    assert h.stats.allocation_lifetime.count == 2


def test_request_counters_by_method_and_result() -> None:
    h = Harness()
    h.allocate(integrity=None)
    h.allocate().expect_success()
    cp(h, PEER).expect_success()
    cp(h, XorPeerAddress("127.0.0.1", 1)).expect_error(403)
    cb(h, 0x4000, PEER).expect_success()
    refresh(h, 0).expect_success()
    assert h.stats.requests == {
        ("allocate", "401"): 1,
        ("allocate", "success"): 1,
        ("create_permission", "success"): 1,
        ("create_permission", "403"): 1,
        ("channel_bind", "success"): 1,
        ("refresh", "success"): 1,
    }
    assert h.stats.auth_failures["missing_credentials"] == 1
    assert h.stats.peer_refusals["loopback"] == 1
    assert h.stats.allocations_total == 1


def test_an_expired_allocation_is_gone_before_the_sweep_notices() -> None:
    h = Harness()
    alloc = h.allocated()
    refresh(h, 600, now=T0 + 600).expect_error(437)  # no resurrection at the deadline
    assert not alloc.alive and h.ports.endpoints[0].closes == 1
    assert h.stats.allocations_active == 0
    h.allocated(now=T0 + 601)  # the 5-tuple is free for a new allocation
    assert h.stats.allocations_total == 2


def test_an_expired_allocation_does_not_block_a_new_one_on_its_5_tuple() -> None:
    h = Harness()
    h.allocated()
    h.allocated(now=T0 + 600)
    assert h.stats.allocations_active == 1 and len(h.ports.in_use()) == 1


# -- effects: what the core tells the I/O layer ------------------------------------------


def kinds(h: Harness) -> list[tuple[type, Any]]:
    return [(type(e), e.allocation) for e in h.effects]


def test_an_allocation_life_is_told_as_effects_in_order() -> None:
    h = Harness()
    first = h.allocated()
    assert kinds(h) == [(AllocationCreated, first)]
    cp(h, PEER).expect_success()  # requests that create nothing report nothing
    assert len(h.effects) == 1
    second = h.allocated(now=T0 + 600)  # the first expired: gone, then the new one
    assert kinds(h) == [(AllocationCreated, first), (AllocationDeleted, first),
                        (AllocationCreated, second)]
    refresh(h, 0, now=T0 + 601).expect_success()
    assert kinds(h)[-1] == (AllocationDeleted, second)
    assert h.delete(second, T0 + 602) is None  # already gone: nothing more to do
    h.sweep(T0 + 10_000)
    assert len(h.effects) == 4


def test_the_outcome_carries_the_reply_and_no_effect_for_a_refused_allocate() -> None:
    h = Harness(free=0)
    r = h.allocate()
    r.expect_error(508)
    assert h.effects == [] and h.ports.calls == [("udp", 1, "any")]
    out = h.server.handle(h.lis, CLIENT, b"\x00\x01\x00\x00" + bytes(16), T0)
    assert isinstance(out, Outcome) and out.reply is None and out.effects == ()


def test_sweep_and_close_all_return_the_deletions() -> None:
    h = Harness()
    a = h.allocated()
    b = h.allocated(client=CLIENT2, now=T0 + 100)
    effects = h.server.sweep(T0 + 600)
    assert [(type(e), e.allocation) for e in effects] == [(AllocationDeleted, a)]
    effects = h.server.close_all(T0 + 601)
    assert [(type(e), e.allocation) for e in effects] == [(AllocationDeleted, b)]
    assert h.server.close_all(T0 + 602) == []
    assert h.ports.in_use() == []
