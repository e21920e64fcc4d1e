"""TurnServer.handle: Binding, input that is not a request, and Allocate (RFC 8656 §7.2)."""

from __future__ import annotations

import struct

import pytest

from relay.stun import (
    AdditionalAddressFamily,
    AddressErrorCode,
    DontFragment,
    ErrorCode,
    EvenPort,
    Lifetime,
    Message,
    MessageClass,
    MessageIntegrity,
    Method,
    Nonce,
    Realm,
    RequestedAddressFamily,
    RequestedTransport,
    ReservationToken,
    Software,
    UnknownAttribute,
    UnknownAttributes,
    XorMappedAddress,
    XorRelayedAddress,
    decode,
)
from relay.turn.server import FAMILY_V4, FAMILY_V6
from tests.turn.core_harness import (
    BOTH,
    CLIENT,
    CLIENT2,
    CLIENT6,
    RELAY_V4,
    RELAY_V6,
    T0,
    UDP,
    Harness,
    check_reply,
    txid,
)

# -- Binding ------------------------------------------------------------------------------


@pytest.mark.parametrize("client", [CLIENT, CLIENT6])
@pytest.mark.parametrize("fingerprint", [False, True])
def test_binding_answers_the_mapped_address_without_credentials(
    client: tuple[str, int], fingerprint: bool
) -> None:
    h = Harness()
    req = Message(Method.BINDING, MessageClass.REQUEST, txid())
    raw = h.send(req.encode(fingerprint=fingerprint), client)
    assert raw is not None
    r = check_reply(raw, req, None, None, fingerprint)
    assert r.success and not r.signed
    assert r.get(XorMappedAddress) == XorMappedAddress(client[0], client[1])
    assert r.get(Software) == Software("relay")
    assert h.requests("binding", "success") == 1
    assert h.stats.auth_failures["missing_credentials"] == 0
    assert h.lis.allocations == {}


def test_binding_needs_no_turn_auth_and_ignores_credentials() -> None:
    h = Harness()
    r = h.request(Method.BINDING, integrity=None)
    assert r.success and r.get(XorMappedAddress).port == CLIENT[1]


@pytest.mark.parametrize("cls", [MessageClass.SUCCESS, MessageClass.ERROR,
                                 MessageClass.INDICATION])
@pytest.mark.parametrize("method", [Method.BINDING, Method.ALLOCATE, Method.SEND, Method.DATA])
def test_responses_and_indications_to_the_server_are_ignored(cls: int, method: int) -> None:
    h = Harness()
    attrs = [ErrorCode(400)] if cls == MessageClass.ERROR else []
    data = Message(method, cls, txid(), attrs).encode(fingerprint=True)
    assert h.send(data) is None
    assert h.stats.requests == {}
    assert h.stats.drops["malformed"] == 0


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, relay",
        b"\x00" * 19,
        # a Binding request header whose magic cookie is wrong
        struct.pack("!HHI12s", 0x0001, 0, 0x2112A443, b"x" * 12),
        # top bits set
        struct.pack("!HHI12s", 0xC001, 0, 0x2112A442, b"x" * 12),
        # Binding request headers whose length disagrees with the datagram (RFC 8489 §6.3:
        # a message that breaks the header rules is discarded, not answered)
        struct.pack("!HHI12s", 0x0001, 8, 0x2112A442, b"x" * 12),
        struct.pack("!HHI12s", 0x0001, 0, 0x2112A442, b"x" * 12) + b"\x00\x06\x00\x00",
        struct.pack("!HHI12s", 0x0001, 2, 0x2112A442, b"x" * 12) + b"\x00\x00",
        # a Binding *response* with a broken body: not a request, so no answer either
        struct.pack("!HHI12s", 0x0101, 8, 0x2112A442, b"x" * 12) + b"\x00\x20\x00\x09\x00",
    ],
)
def test_garbage_is_dropped_silently_and_counted(data: bytes) -> None:
    h = Harness()
    assert h.send(data) is None
    assert h.stats.drops["malformed"] == 1
    assert h.stats.requests == {}


def _bad_body(method_type: int, tid: bytes) -> bytes:
    # one attribute whose length runs past the end of the message
    body = struct.pack("!HH", 0x0019, 8) + b"\x11\x00\x00\x00"
    return struct.pack("!HHI12s", method_type, len(body), 0x2112A442, tid) + body


@pytest.mark.parametrize(("mtype", "method", "name"), [
    (0x0001, Method.BINDING, "binding"),
    (0x0003, Method.ALLOCATE, "allocate"),
    (0x0009, Method.CHANNEL_BIND, "channel_bind"),
])
def test_sound_header_with_bad_body_gets_400_with_the_same_txid(
    mtype: int, method: int, name: str
) -> None:
    h = Harness()
    tid = txid()
    raw = h.send(_bad_body(mtype, tid))
    assert raw is not None
    msg = decode(raw)
    assert (msg.method, msg.cls, msg.transaction_id) == (method, MessageClass.ERROR, tid)
    assert msg.get(ErrorCode).code == 400
    assert msg.get(MessageIntegrity) is None
    assert h.requests(name, "400") == 1
    assert h.lis.allocations == {}


def test_bad_fingerprint_is_dropped() -> None:
    h = Harness()
    data = bytearray(Message(Method.BINDING, MessageClass.REQUEST, txid()).encode(
        fingerprint=True))
    data[-1] ^= 1
    assert h.send(bytes(data)) is None
    assert h.stats.drops["malformed"] == 1
    assert h.stats.requests == {}


def test_unknown_method_gets_400() -> None:
    h = Harness()
    r = h.request(0x0FF)
    assert r.code == 400
    r = h.request(Method.SEND, [UDP], integrity=None)  # Send is an indication, never a request
    assert r.code == 400
    assert h.requests("other", "400") == 2


def test_unknown_comprehension_required_attribute_on_binding_gets_420() -> None:
    h = Harness()
    unknown = UnknownAttribute(0x0031, b"\x01\x02\x03\x04")
    optional = UnknownAttribute(0xC001, b"ignored!")
    r = h.request(Method.BINDING, [optional, unknown], integrity=None, fingerprint=True)
    r.expect_error(420, signed=False)
    assert r.get(UnknownAttributes) == UnknownAttributes((0x0031,))
    # comprehension-optional ones are ignored
    assert h.request(Method.BINDING, [optional], integrity=None).success
    assert h.requests("binding", "420") == 1


def test_unknown_comprehension_required_attribute_on_allocate_gets_signed_420() -> None:
    """RFC 8489 §6.3: the unknown-attribute check comes after authentication, so the 420
    to an authenticated request is signed; unauthenticated, the request is challenged."""
    h = Harness()
    unknown = UnknownAttribute(0x0031, b"\x00\x00\x00\x00")
    r = h.allocate(unknown, fingerprint=True).expect_error(420)
    assert r.get(UnknownAttributes).types == (0x0031,)
    h.allocate(unknown, integrity=None).expect_error(401, signed=False)
    assert h.lis.allocations == {}
    assert h.ports.calls == []


# -- Allocate: success and retransmission -------------------------------------------------


@pytest.mark.parametrize("fingerprint", [False, True])
def test_allocate_success_carries_relayed_mapped_lifetime_and_integrity(
    fingerprint: bool
) -> None:
    h = Harness()
    r = h.allocate(fingerprint=fingerprint).expect_success()
    assert r.get_all(XorRelayedAddress) == [XorRelayedAddress(RELAY_V4, 50000)]
    assert r.get(XorMappedAddress) == XorMappedAddress(*CLIENT)
    assert r.get(Lifetime) == Lifetime(600)
    assert r.get(ReservationToken) is None
    assert h.ports.calls == [("udp", FAMILY_V4, "any")]
    alloc = h.lis.allocations[CLIENT]
    assert (alloc.username, alloc.user_id, alloc.expires) == ("alice", "alice", T0 + 600)
    assert h.created == [alloc]
    assert h.stats.allocations_active == 1 and h.stats.allocations_total == 1
    assert h.stats.listeners["udp"].connections == 1
    assert h.requests("allocate", "success") == 1


def test_allocate_retransmission_gets_identical_bytes_and_new_txid_gets_437() -> None:
    h = Harness()
    tid = txid()
    first = h.allocate(tid=tid).expect_success()
    again = h.allocate(tid=tid, now=T0 + 1)  # a fresh nonce, same transaction
    assert again.raw == first.raw
    assert len(h.ports.endpoints) == 1
    h.allocate(now=T0 + 2).expect_error(437)
    # another user on the same 5-tuple with the same txid is no retransmission either
    h.allocate(tid=tid, user="bob").expect_error(437)
    assert h.stats.allocations_total == 1
    assert h.requests("allocate", "success") == 2
    assert h.requests("allocate", "437") == 2
    assert h.ports.in_use() == h.ports.endpoints


# -- Allocate: checks in RFC 8656 §7.2 order ----------------------------------------------


def test_requested_transport_missing_tcp_and_other() -> None:
    h = Harness()
    h.allocate(transport=False).expect_error(400)
    h.allocate(RequestedTransport(6), transport=False).expect_error(400)
    h.allocate(RequestedTransport(1), transport=False).expect_error(442)
    assert h.ports.calls == [] and h.lis.allocations == {}
    assert h.requests("allocate", "400") == 2 and h.requests("allocate", "442") == 1


def test_dont_fragment_gets_420_naming_it() -> None:
    h = Harness()
    r = h.allocate(DontFragment(), fingerprint=True).expect_error(420)
    assert r.get(UnknownAttributes) == UnknownAttributes((0x001A,))
    assert h.ports.calls == []


def test_reservation_token_with_even_port_or_address_family_gets_400() -> None:
    h = Harness(families=BOTH)
    tok = ReservationToken(b"12345678")
    h.allocate(tok, EvenPort(False)).expect_error(400)
    h.allocate(tok, RequestedAddressFamily(FAMILY_V4)).expect_error(400)
    h.allocate(tok).expect_error(508)  # well formed but unknown
    assert h.ports.calls == []


def test_even_port_reserve_issues_a_token_that_a_second_allocate_uses_once() -> None:
    h = Harness()
    r = h.allocate(EvenPort(True)).expect_success()
    assert h.ports.calls == [("udp", FAMILY_V4, "pair")]
    relayed = r.get(XorRelayedAddress)
    assert relayed.port % 2 == 0
    token = r.get(ReservationToken)
    assert token is not None and len(token.token) == 8
    assert len(h.ports.in_use()) == 2  # the allocation's port and the reserved one

    r2 = h.allocate(token, client=CLIENT2, now=T0 + 10).expect_success()
    assert r2.get(XorRelayedAddress) == XorRelayedAddress(RELAY_V4, relayed.port + 1)
    assert len(h.ports.calls) == 1  # no new port was opened
    assert h.lis.allocations[CLIENT2].relays[FAMILY_V4] is h.ports.endpoints[1]

    client3 = ("198.51.100.12", 40000)
    h.allocate(token, client=client3, now=T0 + 11).expect_error(508)  # used up
    assert h.server.reservations == {}


def test_reservation_token_is_good_only_on_the_listener_that_issued_it() -> None:
    h = Harness()
    other = h.server.add_listener("udp-2", frozenset({FAMILY_V4}))
    token = h.allocate(EvenPort(True)).expect_success().get(ReservationToken)
    assert token is not None
    h.lis, mine = other, h.lis
    h.allocate(token, client=CLIENT2).expect_error(508)
    h.lis = mine
    h.allocate(token, client=CLIENT2).expect_success()


def test_even_port_without_reserve_asks_for_an_even_port() -> None:
    h = Harness()
    h.ports.next_port = 50001
    r = h.allocate(EvenPort(False)).expect_success()
    assert h.ports.calls == [("udp", FAMILY_V4, "even")]
    assert r.get(XorRelayedAddress).port == 50002
    assert r.get(ReservationToken) is None


def test_reservation_expires_after_30_s_and_its_port_is_released() -> None:
    h = Harness()
    token = h.allocate(EvenPort(True)).expect_success().get(ReservationToken)
    reserved = h.ports.endpoints[1]
    h.sweep(T0 + 29)
    assert reserved.closes == 0
    h.sweep(T0 + 30)
    assert reserved.closes == 1
    h.allocate(token, client=CLIENT2, now=T0 + 31).expect_error(508)
    assert reserved.closes == 1


def test_expired_token_is_refused_even_before_the_sweep() -> None:
    h = Harness()
    token = h.allocate(EvenPort(True)).expect_success().get(ReservationToken)
    reserved = h.ports.endpoints[1]
    h.allocate(token, client=CLIENT2, now=T0 + 31).expect_error(508)
    assert reserved.closes == 1


def test_token_for_an_ipv6_reservation_with_additional_family_is_refused_without_leak(
) -> None:
    h = Harness(families=BOTH)
    r = h.allocate(EvenPort(True), RequestedAddressFamily(FAMILY_V6)).expect_success()
    token = r.get(ReservationToken)
    h.allocate(token, AdditionalAddressFamily(FAMILY_V6), client=CLIENT2).expect_error(400)
    assert CLIENT2 not in h.lis.allocations
    # nothing but the first allocation's port and the still-held reservation is open
    assert h.ports.in_use() == h.ports.endpoints[:2]
    h.close_all(T0 + 1)
    assert h.ports.in_use() == []


def test_user_quota_gets_486_and_is_freed_by_delete() -> None:
    h = Harness(admin={"user_quota": 1})
    h.allocate().expect_success()
    h.allocate(client=CLIENT2).expect_error(486)
    assert h.stats.quota_rejections["user"] == 1
    # another user is not affected
    h.allocate(user="bob", client=("198.51.100.12", 1)).expect_success()
    h.request(Method.REFRESH, [Lifetime(0)]).expect_success()
    h.allocate(client=CLIENT2).expect_success()
    assert h.server.user_counts == {"alice": 1, "bob": 1}


def test_user_quota_refusal_releases_a_reserved_port() -> None:
    h = Harness(admin={"user_quota": 1})
    token = h.allocate(EvenPort(True)).expect_success().get(ReservationToken)
    h.allocate(token, client=CLIENT2).expect_error(486)
    assert h.ports.endpoints[1].closes == 1
    assert h.server.reservations == {}


def test_total_quota_gets_508() -> None:
    h = Harness(turn={"total_quota": 2})
    h.allocate().expect_success()
    h.allocate(user="bob", client=CLIENT2).expect_success()
    h.allocate(client=("198.51.100.12", 1)).expect_error(508)
    assert h.stats.quota_rejections["total"] == 1
    assert h.stats.allocations_active == 2
    assert len(h.ports.calls) == 2


def test_no_free_relay_port_gets_508_and_leaks_nothing() -> None:
    h = Harness(free=1)
    h.allocate().expect_success()
    r = h.allocate(client=CLIENT2).expect_error(508)
    assert r.get(XorRelayedAddress) is None
    # a pair needs two ports: with one free none is taken
    h2 = Harness(free=1)
    h2.allocate(EvenPort(True)).expect_error(508)
    assert h2.ports.endpoints == [] and h2.server.reservations == {}
    assert h.stats.quota_rejections["ports"] == 1
    assert h.stats.allocations_active == 1 and len(h.ports.in_use()) == 1
    assert h.server.user_counts == {"alice": 1}


def test_requested_address_family_ipv6() -> None:
    h = Harness(families=BOTH)
    r = h.allocate(RequestedAddressFamily(FAMILY_V6)).expect_success()
    assert r.get_all(XorRelayedAddress) == [XorRelayedAddress(RELAY_V6, 50000)]
    assert list(h.lis.allocations[CLIENT].relays) == [FAMILY_V6]


@pytest.mark.parametrize(("families", "raf"), [
    (frozenset((FAMILY_V4,)), FAMILY_V6),   # not offered on this listener
    (frozenset((FAMILY_V6,)), FAMILY_V4),
    (BOTH, 3),                              # not an address family
    (BOTH, 0),
])
def test_requested_address_family_unsupported_or_bad_gets_440(
    families: frozenset[int], raf: int
) -> None:
    h = Harness(families=families)
    h.allocate(RequestedAddressFamily(raf)).expect_error(440)
    assert h.ports.calls == [] and h.lis.allocations == {}


def test_no_ipv4_relay_and_no_requested_family_gets_440() -> None:
    h = Harness(families=(FAMILY_V6,))
    h.allocate().expect_error(440)


def test_requested_and_additional_address_family_together_get_400() -> None:
    h = Harness(families=BOTH)
    h.allocate(RequestedAddressFamily(FAMILY_V4),
               AdditionalAddressFamily(FAMILY_V6)).expect_error(400)
    h.allocate(AdditionalAddressFamily(FAMILY_V4)).expect_error(400)
    assert h.ports.calls == []


def test_additional_address_family_gives_both_relayed_addresses() -> None:
    h = Harness(families=BOTH)
    r = h.allocate(AdditionalAddressFamily(FAMILY_V6)).expect_success()
    assert r.get_all(XorRelayedAddress) == [
        XorRelayedAddress(RELAY_V4, 50000), XorRelayedAddress(RELAY_V6, 50001)]
    assert r.get(AddressErrorCode) is None
    assert set(h.lis.allocations[CLIENT].relays) == {FAMILY_V4, FAMILY_V6}


def test_additional_address_family_without_ipv6_gives_address_error_code() -> None:
    h = Harness(families=(FAMILY_V4,))
    r = h.allocate(AdditionalAddressFamily(FAMILY_V6)).expect_success()
    assert r.get_all(XorRelayedAddress) == [XorRelayedAddress(RELAY_V4, 50000)]
    err = r.get(AddressErrorCode)
    assert (err.family, err.code) == (FAMILY_V6, 440)


def test_additional_address_family_without_ipv6_port_gives_address_error_508() -> None:
    h = Harness(families=BOTH)
    h.ports.failing_families.add(FAMILY_V6)
    r = h.allocate(AdditionalAddressFamily(FAMILY_V6)).expect_success()
    assert len(r.get_all(XorRelayedAddress)) == 1
    assert (r.get(AddressErrorCode).family, r.get(AddressErrorCode).code) == (FAMILY_V6, 508)


def test_allocate_check_order_transport_before_dont_fragment_before_token() -> None:
    h = Harness()
    # all of them wrong: REQUESTED-TRANSPORT is reported first
    h.allocate(RequestedTransport(1), DontFragment(), ReservationToken(b"abcdefgh"),
               EvenPort(True), transport=False).expect_error(442)
    h.allocate(DontFragment(), ReservationToken(b"abcdefgh"), EvenPort(True)
               ).expect_error(420)


def test_error_to_unauthenticated_allocate_is_a_challenge_not_processing() -> None:
    h = Harness()
    r = h.allocate(RequestedTransport(1), transport=False, integrity=None)
    r.expect_error(401, signed=False)
    assert r.get(Realm) is not None and r.get(Nonce) is not None
