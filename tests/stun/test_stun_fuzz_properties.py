"""Property tests: random messages round-trip; random and mutated bytes only ever decode or
raise StunDecodeError."""

from __future__ import annotations

import socket
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.stun import (
    AdditionalAddressFamily,
    AddressErrorCode,
    AlternateServer,
    Attribute,
    ChannelNumber,
    ConnectionId,
    Data,
    DontFragment,
    ErrorCode,
    EvenPort,
    IceControlled,
    IceControlling,
    Lifetime,
    MappedAddress,
    Message,
    Nonce,
    PasswordAlgorithm,
    PasswordAlgorithms,
    Priority,
    Realm,
    RequestedAddressFamily,
    RequestedTransport,
    ReservationToken,
    Software,
    StunDecodeError,
    UnknownAttribute,
    UnknownAttributes,
    UseCandidate,
    UserHash,
    Username,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
    decode,
    integrity_kind,
    is_stun,
    scan_send_indication,
    verify_fingerprint,
    verify_integrity,
)

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 2**64 - 1)
ips = st.one_of(
    st.ip_addresses(v=4).map(str),
    # canonical text is inet_ntop's (it differs from ipaddress for e.g. ::ffff:0:0)
    st.ip_addresses(v=6).map(lambda a: socket.inet_ntop(socket.AF_INET6, a.packed)),
)
text = st.text(max_size=40)
small_bytes = st.binary(max_size=64)
error_codes = st.integers(300, 699)
known_modelled_unknown_types = {
    0x0001, 0x0006, 0x0008, 0x0009, 0x000A, 0x000C, 0x000D, 0x0012, 0x0013, 0x0014, 0x0015,
    0x0016, 0x0017, 0x0018, 0x0019, 0x001A, 0x001C, 0x001D, 0x001E, 0x0020, 0x0022, 0x0024,
    0x0025, 0x002A, 0x8000, 0x8001, 0x8002, 0x8022, 0x8023, 0x8028, 0x8029, 0x802A,
}  # fmt: skip

attributes: st.SearchStrategy[Attribute] = st.one_of(
    st.builds(MappedAddress, ips, u16),
    st.builds(XorMappedAddress, ips, u16),
    st.builds(XorPeerAddress, ips, u16),
    st.builds(XorRelayedAddress, ips, u16),
    st.builds(AlternateServer, ips, u16),
    st.builds(Username, text),
    st.builds(Realm, text),
    st.builds(Nonce, text),
    st.builds(Software, text),
    st.builds(ErrorCode, error_codes, text),
    st.builds(UnknownAttributes, st.lists(u16, max_size=5).map(tuple)),
    st.builds(Lifetime, u32),
    st.builds(RequestedTransport, u8),
    st.builds(RequestedAddressFamily, u8),
    st.builds(AdditionalAddressFamily, u8),
    st.builds(AddressErrorCode, u8, error_codes, text),
    st.builds(ChannelNumber, u16),
    st.builds(Data, small_bytes),
    st.builds(EvenPort, st.booleans()),
    st.builds(ReservationToken, st.binary(min_size=8, max_size=8)),
    st.builds(DontFragment),
    st.builds(ConnectionId, u32),
    st.builds(PasswordAlgorithm, u16, st.binary(max_size=9)),
    st.builds(
        PasswordAlgorithms, st.lists(st.tuples(u16, st.binary(max_size=6)), max_size=3).map(tuple)
    ),
    st.builds(UserHash, st.binary(min_size=32, max_size=32)),
    st.builds(Priority, u32),
    st.builds(UseCandidate),
    st.builds(IceControlled, u64),
    st.builds(IceControlling, u64),
    st.builds(
        UnknownAttribute,
        u16.filter(lambda t: t not in known_modelled_unknown_types),
        small_bytes,
    ),
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    return Message(
        draw(st.integers(0, 0xFFF)),
        draw(st.integers(0, 3)),
        draw(st.binary(min_size=12, max_size=12)),
        draw(st.lists(attributes, max_size=8)),
    )


@FAST
@given(
    msg=messages(),
    key=st.binary(min_size=1, max_size=32),
    integrity=st.sampled_from([None, "sha1", "sha256"]),
    fingerprint=st.booleans(),
    padding=st.sampled_from([b"\x00", b" ", b"\xff"]),
)
def test_random_messages_round_trip(
    msg: Message, key: bytes, integrity: str | None, fingerprint: bool, padding: bytes
) -> None:
    raw = msg.encode(
        key=key if integrity else None,
        integrity=integrity,
        fingerprint=fingerprint,
        padding=padding,
    )
    assert is_stun(raw)
    back = decode(raw)
    assert (back.method, back.cls, back.transaction_id) == (
        msg.method,
        msg.cls,
        msg.transaction_id,
    )
    n = len(msg.attributes)
    assert back.attributes[:n] == msg.attributes
    assert back.raw == raw
    assert integrity_kind(back) == integrity
    if integrity:
        assert verify_integrity(back, key)
        assert not verify_integrity(back, key + b"!")
    else:
        assert not verify_integrity(back, key)
    assert verify_fingerprint(back) == fingerprint
    # re-encoding the decoded message with the same options reproduces the bytes
    again = Message(back.method, back.cls, back.transaction_id, back.attributes[:n])
    assert (
        again.encode(
            key=key if integrity else None,
            integrity=integrity,
            fingerprint=fingerprint,
            padding=padding,
        )
        == raw
    )


def _decode_or_stun_error(data: bytes) -> None:
    try:
        msg = decode(data)
    except StunDecodeError:
        return
    # whatever decodes must be safe to inspect
    msg.unknown_required()
    verify_integrity(msg, b"key")
    verify_fingerprint(msg)
    integrity_kind(msg)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_stun_decode_error(data: bytes) -> None:
    _decode_or_stun_error(data)
    scan_send_indication(data, len(data))


@settings(max_examples=500, deadline=None)
@given(
    body=st.binary(max_size=120).map(lambda b: b + bytes(-len(b) % 4)),
    mtype=st.integers(0, 0x3FFF),
)
def test_random_bodies_behind_a_valid_header(body: bytes, mtype: int) -> None:
    data = struct.pack("!HHI", mtype, len(body), 0x2112A442) + bytes(12) + body
    _decode_or_stun_error(data)
    scan_send_indication(data, len(data))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    msg = draw(messages())
    data = bytearray(msg.encode(key=b"k", integrity="sha1", fingerprint=draw(st.booleans())))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "length", "attrlen", "extend"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif op == "length" and len(data) >= 4:
            data[2:4] = draw(u16).to_bytes(2, "big")
        elif op == "attrlen" and len(data) > 24:
            # rewrite the length field of some 4-aligned attribute-header slot
            slots = (len(data) - 20) // 4
            i = 20 + 4 * draw(st.integers(0, slots - 1)) + 2
            data[i : i + 2] = draw(u16).to_bytes(2, "big")
        elif op == "extend":
            data += draw(st.binary(max_size=12))
    return bytes(data)


@settings(max_examples=600, deadline=None)
@given(mutated())
def test_mutated_valid_messages_only_raise_stun_decode_error(data: bytes) -> None:
    _decode_or_stun_error(data)
    scan_send_indication(data, len(data))


@settings(max_examples=200, deadline=None)
@given(
    key=st.binary(max_size=130),
    data=st.binary(max_size=300),
    digest=st.sampled_from(["sha1", "sha256"]),
)
def test_internal_hmac_equals_the_standard_library(key: bytes, data: bytes, digest: str) -> None:
    import hmac

    from relay.stun.message import _hmac

    assert _hmac(key, data, digest) == hmac.digest(key, data, digest)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=40), n=st.integers(0, 48), stream=st.booleans())
def test_channel_data_parse_only_raises_stun_decode_error(
    data: bytes, n: int, stream: bool
) -> None:
    from relay.stun import parse_channel_data

    try:
        channel, length = parse_channel_data(data, n, stream=stream)
    except StunDecodeError:
        return
    assert 0x4000 <= channel <= 0x4FFF
    assert 4 + length <= n <= len(data)


@st.composite
def tlv_soup(draw: st.DrawFn) -> bytes:
    """A well-framed message whose attributes have known types but random values: every
    attribute decoder sees wrong sizes, bad families, bad UTF-8 and so on."""
    body = b""
    for _ in range(draw(st.integers(1, 6))):
        atype = draw(st.sampled_from(sorted(known_modelled_unknown_types)))
        value = draw(st.binary(max_size=24))
        body += struct.pack("!HH", atype, len(value)) + value + bytes(-len(value) % 4)
    mtype = draw(st.sampled_from([0x0001, 0x0003, 0x0016, 0x0113]))
    return struct.pack("!HHI", mtype, len(body), 0x2112A442) + bytes(12) + body


@settings(max_examples=800, deadline=None)
@given(tlv_soup())
def test_known_types_with_random_values_only_raise_stun_decode_error(data: bytes) -> None:
    _decode_or_stun_error(data)
    scan_send_indication(data, len(data))
