"""Attribute round trips, header rules, malformed input, integrity and fingerprint rules."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest

from relay.stun import (
    ERROR_REASONS,
    MAGIC_COOKIE,
    AdditionalAddressFamily,
    AddressErrorCode,
    AlternateServer,
    Attribute,
    AttrType,
    ChannelNumber,
    ConnectionId,
    Data,
    DontFragment,
    ErrorCode,
    EvenPort,
    Fingerprint,
    IceControlled,
    IceControlling,
    Lifetime,
    MappedAddress,
    Message,
    MessageClass,
    MessageIntegrity,
    MessageIntegritySha256,
    Method,
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
    attribute_type,
    decode,
    has_fingerprint,
    integrity_kind,
    is_stun,
    long_term_key,
    message_type,
    opaque_string,
    split_type,
    verify_fingerprint,
    verify_integrity,
)

TID = bytes(range(1, 13))

ATTRIBUTES: list[Attribute] = [
    MappedAddress("192.0.2.1", 3478),
    MappedAddress("2001:db8::1", 1),
    XorMappedAddress("203.0.113.9", 65535),
    XorMappedAddress("2001:db8::2", 0),
    XorPeerAddress("198.51.100.7", 5000),
    XorPeerAddress("::ffff:127.0.0.1", 80),
    XorRelayedAddress("192.0.2.200", 49152),
    XorRelayedAddress("fe80::1", 49153),
    AlternateServer("192.0.2.2", 3479),
    AlternateServer("2001:db8::3", 3479),
    Username("alice"),
    Username("1700000000:\u00e9l\u00e8ve"),
    Realm("example.org"),
    Nonce("obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA"),
    Software("relay 0.1"),
    ErrorCode(401),
    ErrorCode(438, "Stale Nonce, try again"),
    ErrorCode(699, ""),
    UnknownAttributes((0x0031, 0x7FFF)),
    UnknownAttributes(()),
    Lifetime(600),
    Lifetime(0xFFFFFFFF),
    RequestedTransport(17),
    RequestedTransport(6),
    RequestedAddressFamily(2),
    AdditionalAddressFamily(2),
    AddressErrorCode(2, 440),
    ChannelNumber(0x4000),
    ChannelNumber(0x4FFF),
    Data(b""),
    Data(b"\x00\x01\x02"),
    Data(bytes(1200)),
    EvenPort(True),
    EvenPort(False),
    ReservationToken(b"12345678"),
    DontFragment(),
    ConnectionId(0xDEADBEEF),
    MessageIntegrity(bytes(range(20))),
    MessageIntegritySha256(bytes(range(32))),
    MessageIntegritySha256(bytes(range(16))),
    PasswordAlgorithm(1),
    PasswordAlgorithm(2, b"\x01\x02\x03"),
    PasswordAlgorithms(((2, b""), (1, b"x"), (3, b"abcd"))),
    UserHash(bytes(range(32))),
    Fingerprint(0x12345678),
    Priority(0x6E0001FF),
    UseCandidate(),
    IceControlled(2**64 - 1),
    IceControlling(1),
    UnknownAttribute(0x7000, b"abc"),
    UnknownAttribute(0xC001, b""),
]


@pytest.mark.parametrize("attr", ATTRIBUTES, ids=repr)
def test_attribute_round_trips_alone(attr: Attribute) -> None:
    value = attr.encode_value(TID)
    if isinstance(attr, UnknownAttribute):
        assert value == attr.value
    else:
        assert type(attr).decode_value(value, TID) == attr


@pytest.mark.parametrize("attr", ATTRIBUTES, ids=repr)
def test_attribute_round_trips_in_a_message(attr: Attribute) -> None:
    msg = Message(Method.ALLOCATE, MessageClass.SUCCESS, TID, [attr, attr])
    raw = msg.encode()
    back = decode(raw)
    if isinstance(attr, Fingerprint):
        # FINGERPRINT is recomputed over the message wherever it stands
        assert [type(a) for a in back.attributes] == [Fingerprint, Fingerprint]
        assert back.attributes[0] != back.attributes[1]
    else:
        assert back.attributes == [attr, attr]
    assert (back.method, back.cls, back.transaction_id, back.raw) == (
        Method.ALLOCATE,
        MessageClass.SUCCESS,
        TID,
        raw,
    )
    assert attribute_type(back.attributes[0]) == attribute_type(attr)


def test_attribute_types_match_the_registry() -> None:
    assert XorPeerAddress.TYPE == AttrType.XOR_PEER_ADDRESS == 0x0012
    assert AttrType.PRIORITY == 0x0024 and AttrType.USE_CANDIDATE == 0x0025
    assert AttrType.ICE_CONTROLLED == 0x8029 and AttrType.ICE_CONTROLLING == 0x802A
    assert AttrType.ICMP == 0x8004 and AttrType.CONNECTION_ID == 0x002A
    assert MessageIntegritySha256.TYPE == 0x001C and Fingerprint.TYPE == 0x8028


def test_address_family_and_canonical_text() -> None:
    assert XorPeerAddress("192.0.2.1", 1).family == 1
    assert XorPeerAddress("2001:db8::1", 1).family == 2
    # non-canonical text in, canonical text out
    raw = Message(1, 0, TID, [XorPeerAddress("2001:0db8:0::0001", 9)]).encode()
    assert decode(raw).get(XorPeerAddress) == XorPeerAddress("2001:db8::1", 9)


def test_xor_address_wire_form() -> None:
    value = XorMappedAddress("192.0.2.1", 32853).encode_value(TID)
    assert value == bytes.fromhex("0001a147e112a643")  # RFC 5769 §2.2


def test_error_code_defaults_and_reasons() -> None:
    assert ErrorCode(401).reason == "Unauthorized"
    assert ErrorCode(420).reason == "Unknown Attribute"
    assert ErrorCode(599).reason == ""
    assert ErrorCode(438, "custom").reason == "custom"
    assert AddressErrorCode(1, 440).reason == "Address Family not Supported"
    for code, phrase in {
        300: "Try Alternate",
        400: "Bad Request",
        403: "Forbidden",
        437: "Allocation Mismatch",
        441: "Wrong Credentials",
        442: "Unsupported Transport Protocol",
        443: "Peer Address Family Mismatch",
        486: "Allocation Quota Reached",
        487: "Role Conflict",
        500: "Server Error",
        508: "Insufficient Capacity",
    }.items():
        assert ERROR_REASONS[code] == phrase
    assert {446, 447} <= ERROR_REASONS.keys()
    assert ErrorCode(420).encode_value(TID) == b"\x00\x00\x04\x14Unknown Attribute"
    with pytest.raises(ValueError):
        ErrorCode(200).encode_value(TID)


# ------------------------------------------------------------------ message type


@pytest.mark.parametrize(
    ("method", "cls", "wire"),
    [
        (Method.BINDING, MessageClass.REQUEST, 0x0001),
        (Method.BINDING, MessageClass.SUCCESS, 0x0101),
        (Method.BINDING, MessageClass.ERROR, 0x0111),
        (Method.ALLOCATE, MessageClass.REQUEST, 0x0003),
        (Method.ALLOCATE, MessageClass.ERROR, 0x0113),
        (Method.SEND, MessageClass.INDICATION, 0x0016),
        (Method.DATA, MessageClass.INDICATION, 0x0017),
        (Method.CHANNEL_BIND, MessageClass.SUCCESS, 0x0109),
        (Method.CONNECTION_ATTEMPT, MessageClass.INDICATION, 0x001C),
        (0xFFF, MessageClass.ERROR, 0x3FFF),
    ],
)
def test_message_type_interleaving(method: int, cls: int, wire: int) -> None:
    assert message_type(method, cls) == wire
    assert split_type(wire) == (method, cls)


def test_message_type_all_values_invert() -> None:
    for t in range(0x4000):
        assert message_type(*split_type(t)) == t
    with pytest.raises(ValueError):
        message_type(0x1000, 0)
    with pytest.raises(ValueError):
        message_type(1, 4)


# ------------------------------------------------------------------ header and TLV errors


def header(mtype: int = 0x0001, length: int = 0, cookie: int = MAGIC_COOKIE) -> bytes:
    return struct.pack("!HHI", mtype, length, cookie) + TID


def tlv(atype: int, value: bytes, pad: bytes = b"\x00") -> bytes:
    return struct.pack("!HH", atype, len(value)) + value + pad * (-len(value) % 4)


def msg_with(*tlvs: bytes, mtype: int = 0x0003) -> bytes:
    body = b"".join(tlvs)
    return header(mtype, len(body)) + body


BAD_MESSAGES = {
    "empty": b"",
    "short header": header()[:19],
    "top bits set": header(0x4001),
    "top bit set": header(0x8001),
    "bad cookie": header(cookie=0x2112A443),
    "length not multiple of 4": header(length=2) + b"\x00\x00",
    "length larger than data": header(length=8) + tlv(0x8022, b"abcd")[:4],
    "length smaller than data": header(length=0) + tlv(0x8022, b"abcd"),
    "trailing garbage": msg_with(tlv(0x000D, b"\x00\x00\x02\x58")) + b"\x00\x00\x00\x00",
    "16-bit length wrap": header(length=0) + tlv(0x0013, bytes(65532)),
    "attribute runs past end": header(length=8) + struct.pack("!HH", 0x8022, 8) + b"abcd",
    "padding runs past end": header(length=8) + struct.pack("!HH", 0x8022, 5) + b"abcd",
    "lone attribute header bytes": header(length=4) + b"\x00\x06\x00",
    "LIFETIME 3 bytes": msg_with(tlv(0x000D, b"\x00\x00\x02")),
    "LIFETIME 8 bytes": msg_with(tlv(0x000D, bytes(8))),
    "CHANNEL-NUMBER 2 bytes": msg_with(tlv(0x000C, b"\x40\x00")),
    "REQUESTED-TRANSPORT 1 byte": msg_with(tlv(0x0019, b"\x11")),
    "REQUESTED-TRANSPORT 8 bytes": msg_with(tlv(0x0019, bytes(8))),
    "REQUESTED-ADDRESS-FAMILY 1 byte": msg_with(tlv(0x0017, b"\x01")),
    "XOR-PEER-ADDRESS family 0": msg_with(tlv(0x0012, b"\x00\x00\x12\x34" + bytes(4))),
    "XOR-PEER-ADDRESS family 3": msg_with(tlv(0x0012, b"\x00\x03\x12\x34" + bytes(4))),
    "XOR-PEER-ADDRESS IPv4 with 16 bytes": msg_with(tlv(0x0012, b"\x00\x01\x12\x34" + bytes(16))),
    "XOR-PEER-ADDRESS IPv6 with 4 bytes": msg_with(tlv(0x0012, b"\x00\x02\x12\x34" + bytes(4))),
    "XOR-PEER-ADDRESS empty": msg_with(tlv(0x0012, b"")),
    "XOR-MAPPED-ADDRESS 3 bytes": msg_with(tlv(0x0020, b"\x00\x01\x12")),
    "XOR-RELAYED-ADDRESS odd": msg_with(tlv(0x0016, b"\x00\x01\x12\x34" + bytes(5))),
    "MAPPED-ADDRESS family 9": msg_with(tlv(0x0001, b"\x00\x09\x12\x34" + bytes(4))),
    "ALTERNATE-SERVER IPv4 with 16 bytes": msg_with(tlv(0x8023, b"\x00\x01\x12\x34" + bytes(16))),
    "USERNAME bad UTF-8": msg_with(tlv(0x0006, b"\xff\xfe")),
    "USERNAME too long": msg_with(tlv(0x0006, b"a" * 514)),
    "REALM bad UTF-8": msg_with(tlv(0x0014, b"\xc3")),
    "REALM too long": msg_with(tlv(0x0014, b"a" * 764)),
    "NONCE bad UTF-8": msg_with(tlv(0x0015, b"\xed\xa0\x80")),
    "NONCE too long": msg_with(tlv(0x0015, b"a" * 764)),
    "SOFTWARE bad UTF-8": msg_with(tlv(0x8022, b"\x80")),
    "SOFTWARE too long": msg_with(tlv(0x8022, b"a" * 764)),
    "ERROR-CODE short": msg_with(tlv(0x0009, b"\x00\x00\x04")),
    "ERROR-CODE class 2": msg_with(tlv(0x0009, b"\x00\x00\x02\x00")),
    "ERROR-CODE class 7": msg_with(tlv(0x0009, b"\x00\x00\x07\x00")),
    "ERROR-CODE number 100": msg_with(tlv(0x0009, b"\x00\x00\x04\x64")),
    "ERROR-CODE bad reason": msg_with(tlv(0x0009, b"\x00\x00\x04\x01\xff")),
    "ADDRESS-ERROR-CODE class 1": msg_with(tlv(0x8001, b"\x01\x00\x01\x00")),
    "UNKNOWN-ATTRIBUTES odd": msg_with(tlv(0x000A, b"\x00\x01\x00")),
    "EVEN-PORT empty": msg_with(tlv(0x0018, b"")),
    "EVEN-PORT 4 bytes": msg_with(tlv(0x0018, b"\x80\x00\x00\x00")),
    "RESERVATION-TOKEN 4 bytes": msg_with(tlv(0x0022, bytes(4))),
    "DONT-FRAGMENT with value": msg_with(tlv(0x001A, b"\x01")),
    "CONNECTION-ID 2 bytes": msg_with(tlv(0x002A, bytes(2))),
    "MESSAGE-INTEGRITY 16 bytes": msg_with(tlv(0x0008, bytes(16))),
    "MESSAGE-INTEGRITY 0 bytes": msg_with(tlv(0x0008, b"")),
    "MESSAGE-INTEGRITY-SHA256 12 bytes": msg_with(tlv(0x001C, bytes(12))),
    "MESSAGE-INTEGRITY-SHA256 18 bytes": msg_with(tlv(0x001C, bytes(18))),
    "MESSAGE-INTEGRITY-SHA256 36 bytes": msg_with(tlv(0x001C, bytes(36))),
    "PASSWORD-ALGORITHM short": msg_with(tlv(0x001D, b"\x00\x01")),
    "PASSWORD-ALGORITHM params past end": msg_with(tlv(0x001D, b"\x00\x01\x00\x08abcd")),
    "PASSWORD-ALGORITHM two entries": msg_with(tlv(0x001D, b"\x00\x01\x00\x00\x00\x02\x00\x00")),
    "PASSWORD-ALGORITHMS truncated": msg_with(tlv(0x8002, b"\x00\x01\x00\x00\x00\x02")),
    "PASSWORD-ALGORITHMS missing padding": msg_with(tlv(0x8002, b"\x00\x01\x00\x01a")),
    "USERHASH 31 bytes": msg_with(tlv(0x001E, bytes(31))),
    "FINGERPRINT 8 bytes": msg_with(tlv(0x8028, bytes(8))),
    "PRIORITY 2 bytes": msg_with(tlv(0x0024, bytes(2))),
    "USE-CANDIDATE with value": msg_with(tlv(0x0025, b"\x01")),
    "ICE-CONTROLLED 4 bytes": msg_with(tlv(0x8029, bytes(4))),
    "ICE-CONTROLLING 4 bytes": msg_with(tlv(0x802A, bytes(4))),
}


@pytest.mark.parametrize("raw", BAD_MESSAGES.values(), ids=BAD_MESSAGES.keys())
def test_malformed_input_raises_stun_decode_error(raw: bytes) -> None:
    with pytest.raises(StunDecodeError):
        decode(raw)
    with pytest.raises(StunDecodeError):
        decode(bytearray(raw))
    with pytest.raises(StunDecodeError):
        decode(memoryview(raw))


def test_stun_decode_error_is_a_value_error() -> None:
    assert issubclass(StunDecodeError, ValueError)


def test_decode_accepts_buffers_and_odd_padding_bytes() -> None:
    raw = msg_with(tlv(0x0006, b"bob", pad=b"\xaa"), tlv(0x000D, b"\x00\x00\x02\x58"))
    for buf in (raw, bytearray(raw), memoryview(raw)):
        msg = decode(buf)
        assert msg.attributes == [Username("bob"), Lifetime(600)]
        assert msg.raw == raw and type(msg.raw) is bytes


def test_limits_are_inclusive() -> None:
    msg = decode(msg_with(tlv(0x0006, b"u" * 513), tlv(0x0014, b"r" * 763)))
    assert msg.attributes == [Username("u" * 513), Realm("r" * 763)]


def test_zero_length_and_odd_length_attributes() -> None:
    raw = msg_with(tlv(0x0013, b""), tlv(0x0013, b"abcde"), tlv(0x8022, b""))
    assert decode(raw).attributes == [Data(b""), Data(b"abcde"), Software("")]


def test_duplicates_kept_in_order_and_first_wins() -> None:
    raw = msg_with(
        tlv(0x0019, b"\x11\x00\x00\x00"),
        tlv(0x000D, b"\x00\x00\x00\x10"),
        tlv(0x0019, b"\x06\x00\x00\x00"),
        tlv(0x000D, b"\x00\x00\x00\x20"),
    )
    msg = decode(raw)
    assert msg.get(RequestedTransport) == RequestedTransport(17)
    assert msg.get(Lifetime) == Lifetime(16)
    assert msg.get_all(Lifetime) == [Lifetime(16), Lifetime(32)]
    assert msg.get_all(RequestedTransport) == [RequestedTransport(17), RequestedTransport(6)]
    assert msg.get(Username) is None and msg.get_all(Username) == []


def test_unknown_attributes_kept_and_required_ones_reported() -> None:
    raw = msg_with(
        tlv(0x0031, b"abc"),  # unknown, comprehension-required
        tlv(0x8055, b"opt"),  # unknown, optional
        tlv(0x001B, b"token"),  # ACCESS-TOKEN: not modelled, required
        tlv(0x0008, bytes(20)),  # MESSAGE-INTEGRITY
        tlv(0x0077, b""),  # after MI: ignored for 420
        tlv(0x8028, bytes(4)),
    )
    msg = decode(raw)
    assert msg.attributes[0] == UnknownAttribute(0x0031, b"abc")
    assert msg.attributes[1] == UnknownAttribute(0x8055, b"opt")
    assert msg.unknown_required() == [0x0031, 0x001B]
    # re-encoding keeps unknown attributes byte for byte
    assert Message(msg.method, msg.cls, TID, msg.attributes).encode() != b""
    assert decode(Message(3, 0, TID, msg.attributes[:3]).encode()).attributes == msg.attributes[:3]


def test_unknown_method_and_class_decode() -> None:
    wire = message_type(0xABC, MessageClass.ERROR)
    msg = decode(header(wire))
    assert (msg.method, msg.cls) == (0xABC, MessageClass.ERROR)
    assert decode(header(0x3EEF)).method == 0xFFF


def test_is_stun() -> None:
    good = msg_with(tlv(0x000D, bytes(4)))
    assert is_stun(good) and is_stun(bytearray(good)) and is_stun(memoryview(good))
    assert not is_stun(good[:-1])
    assert not is_stun(good + b"\x00" * 4)
    assert not is_stun(header(0x4001))
    assert not is_stun(header(cookie=1))
    assert not is_stun(header(length=2) + b"\x00\x00")
    assert not is_stun(b"\x40\x00\x00\x04abcd")  # ChannelData
    assert not is_stun(b"")


# ------------------------------------------------------------------ encode rules


def test_encode_rejects_oversized_messages_instead_of_wrapping() -> None:
    # 4 + 65529 + 3 padding = 65536 bytes: would wrap the 16-bit length to 0
    big = Message(Method.SEND, MessageClass.INDICATION, TID, [Data(bytes(65529))])
    with pytest.raises(ValueError):
        big.encode()
    with pytest.raises(ValueError):
        Message(Method.SEND, MessageClass.INDICATION, TID, [Data(bytes(65536))]).encode()
    fits = Message(Method.SEND, MessageClass.INDICATION, TID, [Data(bytes(65528))])
    assert len(fits.encode()) == 20 + 65532
    with pytest.raises(ValueError):
        fits.encode(fingerprint=True)
    with pytest.raises(ValueError):
        fits.encode(key=b"k", integrity="sha1")


def test_encode_argument_errors() -> None:
    msg = Message(1, 0, TID, [])
    with pytest.raises(ValueError):
        msg.encode(integrity="sha1")  # no key
    with pytest.raises(ValueError):
        msg.encode(key=b"k", integrity="md5")
    with pytest.raises(ValueError):
        Message(1, 0, b"short", []).encode()
    with pytest.raises(ValueError):
        Message(1, 0, TID, [MessageIntegrity()]).encode()  # no mac, no key
    with pytest.raises(ValueError):
        Message(1, 0, TID, [XorPeerAddress("not an ip", 1)]).encode()
    with pytest.raises(ValueError):
        Message(1, 0, TID, [XorPeerAddress("192.0.2.1", 70000)]).encode()


def test_encode_padding_byte() -> None:
    msg = Message(1, 0, TID, [Username("abc")])
    assert msg.encode().endswith(b"abc\x00")
    assert msg.encode(padding=b" ").endswith(b"abc ")


# ------------------------------------------------------------------ integrity


def _authenticated(integrity: str, key: bytes, *, fingerprint: bool = True) -> bytes:
    msg = Message(
        Method.ALLOCATE,
        MessageClass.REQUEST,
        TID,
        [
            Username("user"),
            Realm("realm"),
            Nonce("nonce"),
            RequestedTransport(17),
        ],
    )
    return msg.encode(key=key, integrity=integrity, fingerprint=fingerprint)


@pytest.mark.parametrize("integrity", ["sha1", "sha256"])
def test_integrity_round_trip_and_tamper(integrity: str) -> None:
    key = long_term_key("user", "realm", "pass", 2 if integrity == "sha256" else 1)
    raw = _authenticated(integrity, key)
    msg = decode(raw)
    assert integrity_kind(msg) == integrity
    assert verify_integrity(msg, key)
    assert verify_fingerprint(msg) and has_fingerprint(msg)
    assert not verify_integrity(msg, key[:-1] + bytes([key[-1] ^ 1]))
    # flip one bit in the USERNAME value: integrity and fingerprint both fail
    tampered = bytearray(raw)
    tampered[24] ^= 0x01
    bad = decode(bytes(tampered))
    assert not verify_integrity(bad, key)
    assert not verify_fingerprint(bad)


def test_integrity_mac_is_hmac_over_adjusted_header() -> None:
    key = b"secret"
    raw = _authenticated("sha1", key, fingerprint=True)
    mi_at = len(raw) - 8 - 24
    signed = raw[:2] + (mi_at + 24 - 20).to_bytes(2, "big") + raw[4:mi_at]
    assert raw[mi_at + 4 : mi_at + 24] == hmac.new(key, signed, hashlib.sha1).digest()


def test_sha256_preferred_when_both_present() -> None:
    key = b"k"
    msg = Message(1, 0, TID, [Username("u"), MessageIntegrity(), MessageIntegritySha256()])
    raw = msg.encode(key=key, fingerprint=True)
    decoded = decode(raw)
    assert integrity_kind(decoded) == "sha256"
    assert verify_integrity(decoded, key)
    # a garbage SHA-1 mac followed by a correct SHA-256 mac (built by hand): SHA-256 decides
    body = tlv(0x0006, b"u") + tlv(0x0008, bytes(20))
    signed = header(0x0001, len(body) + 36) + body
    mac = hmac.new(key, signed, hashlib.sha256).digest()
    good = signed + tlv(0x001C, mac)
    assert verify_integrity(decode(good), key)
    bad = signed + tlv(0x001C, mac[:-1] + bytes([mac[-1] ^ 1]))
    assert not verify_integrity(decode(bad), key)
    # SHA-1 alone with the garbage mac fails
    assert not verify_integrity(decode(header(0x0001, len(body)) + body), key)


def test_truncated_sha256_mac_recomputed_at_its_length() -> None:
    key = b"k"
    msg = Message(1, 0, TID, [Username("u"), MessageIntegritySha256(bytes(16))])
    decoded = decode(msg.encode(key=key))
    mac = decoded.get(MessageIntegritySha256)
    assert mac is not None and len(mac.mac) == 16
    assert verify_integrity(decoded, key)


def test_verify_without_integrity_or_raw_is_false() -> None:
    raw = Message(1, 0, TID, [Username("u")]).encode(fingerprint=True)
    msg = decode(raw)
    assert integrity_kind(msg) is None
    assert not verify_integrity(msg, b"k")
    built = Message(1, 0, TID, [Username("u")])
    assert not verify_integrity(built, b"k") and not verify_fingerprint(built)


def test_attributes_after_integrity_are_not_signed() -> None:
    key = b"k"
    msg = Message(1, 0, TID, [Username("u"), MessageIntegrity(), Software("after")])
    raw = msg.encode(key=key)
    assert verify_integrity(decode(raw), key)


def test_fingerprint_rules() -> None:
    raw = Message(1, 0, TID, [Username("u")]).encode(fingerprint=True)
    assert verify_fingerprint(decode(raw))
    # wrong CRC
    bad = raw[:-1] + bytes([raw[-1] ^ 1])
    assert not verify_fingerprint(decode(bad))
    # absent
    assert not verify_fingerprint(decode(Message(1, 0, TID, [Username("u")]).encode()))
    assert not has_fingerprint(decode(Message(1, 0, TID, []).encode()))
    # FINGERPRINT not last
    not_last = Message(1, 0, TID, [Fingerprint(), Username("u")]).encode()
    assert has_fingerprint(decode(not_last)) and not verify_fingerprint(decode(not_last))


# ------------------------------------------------------------------ credentials


def test_long_term_key_algorithms() -> None:
    assert long_term_key("u", "r", "p") == hashlib.md5(b"u:r:p").digest()
    assert long_term_key("u", "r", "p", 2) == hashlib.sha256(b"u:r:p").digest()
    with pytest.raises(ValueError):
        long_term_key("u", "r", "p", 3)


def test_opaque_string() -> None:
    assert opaque_string("VOkJxbRl1RmTxUk/WvJxBt") == "VOkJxbRl1RmTxUk/WvJxBt"
    assert opaque_string("The\u00adM\u00aatr\u2168") == "TheMatrIX"
    assert opaque_string("a\u00a0b") == "a b"  # non-ASCII space -> space
    assert opaque_string("\ufb01") == "fi"  # NFKC
    assert opaque_string("") == ""
    for bad in ("a\x00b", "a\x7fb", "\ue000", "a\u200eb", "\U000e0041", "\u05d0a\u05d1", "\ufdd0"):
        with pytest.raises(ValueError):
            opaque_string(bad)
    assert opaque_string("\u05d0\u05d1") == "\u05d0\u05d1"  # all right-to-left is fine


def test_attributes_after_integrity_are_ignored_by_get() -> None:
    key = b"k"
    msg = Message(
        Method.ALLOCATE,
        MessageClass.REQUEST,
        TID,
        [
            Lifetime(60),
            MessageIntegrity(),
            Lifetime(3600),  # appended after the MAC: not authenticated
            RequestedTransport(6),
            MessageIntegritySha256(),
            Fingerprint(),
        ],
    )
    decoded = decode(msg.encode(key=key))
    assert len(decoded.attributes) == 6  # decode keeps everything, in order
    assert decoded.get(Lifetime) == Lifetime(60)
    assert decoded.get_all(Lifetime) == [Lifetime(60)]
    assert decoded.get(RequestedTransport) is None
    assert decoded.get_all(RequestedTransport) == []
    assert decoded.get(MessageIntegrity) is not None
    assert decoded.get(MessageIntegritySha256) is not None
    assert decoded.get(Fingerprint) is not None and len(decoded.get_all(Fingerprint)) == 1
    assert verify_integrity(decoded, key) and verify_fingerprint(decoded)


def test_encode_bad_values_are_value_errors() -> None:
    for attr in (
        Lifetime(-1),
        Lifetime(2**32),
        ChannelNumber(0x10000),
        RequestedTransport(256),
        Priority(-5),
        IceControlled(2**64),
        UnknownAttributes((70000,)),
    ):
        with pytest.raises(ValueError):
            Message(1, 0, TID, [attr]).encode()


def test_codec_is_sans_io() -> None:
    import subprocess
    import sys

    code = "import sys, relay.stun; sys.exit(1 if 'trio' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=60).returncode == 0
