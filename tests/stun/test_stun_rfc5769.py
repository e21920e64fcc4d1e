"""RFC 5769 test vectors: decode, verify, re-encode byte for byte."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from relay.stun import (
    Fingerprint,
    IceControlled,
    MessageClass,
    MessageIntegrity,
    MessageIntegritySha256,
    Method,
    Nonce,
    PasswordAlgorithm,
    Priority,
    Realm,
    Software,
    UserHash,
    Username,
    XorMappedAddress,
    decode,
    integrity_kind,
    long_term_key,
    opaque_string,
    user_hash,
    verify_fingerprint,
    verify_integrity,
)

_spec = importlib.util.spec_from_file_location(
    "stun_rfc5769_vectors", Path(__file__).with_name("rfc5769_vectors.py")
)
assert _spec is not None and _spec.loader is not None
v = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(v)

SHORT_TERM_KEY = opaque_string(v.REQUEST_PASSWORD).encode()


def test_sample_request() -> None:
    msg = decode(v.REQUEST)
    assert (msg.method, msg.cls) == (Method.BINDING, MessageClass.REQUEST)
    assert msg.transaction_id == bytes.fromhex("b7e7a701bc34d686fa87dfae")
    assert [type(a) for a in msg.attributes] == [
        Software,
        Priority,
        IceControlled,
        Username,
        MessageIntegrity,
        Fingerprint,
    ]
    assert msg.get(Software) == Software("STUN test client")
    assert msg.get(Priority) == Priority(0x6E0001FF)
    assert msg.get(IceControlled) == IceControlled(0x932FF9B151263B36)
    assert msg.get(Username) == Username("evtj:h6vY")
    assert msg.raw == v.REQUEST
    assert integrity_kind(msg) == "sha1"
    assert verify_integrity(msg, SHORT_TERM_KEY)
    assert not verify_integrity(msg, b"wrong password")
    assert verify_fingerprint(msg)


@pytest.mark.parametrize(
    ("raw", "ip"),
    [
        pytest.param(v.IPV4_RESPONSE, "192.0.2.1", id="ipv4"),
        pytest.param(v.IPV6_RESPONSE, "2001:db8:1234:5678:11:2233:4455:6677", id="ipv6"),
    ],
)
def test_sample_responses(raw: bytes, ip: str) -> None:
    msg = decode(raw)
    assert (msg.method, msg.cls) == (Method.BINDING, MessageClass.SUCCESS)
    assert msg.get(Software) == Software("test vector")
    xma = msg.get(XorMappedAddress)
    assert xma == XorMappedAddress(ip, 32853)
    assert xma is not None and xma.family == (2 if ":" in ip else 1)
    assert verify_integrity(msg, SHORT_TERM_KEY)
    assert not verify_integrity(msg, SHORT_TERM_KEY + b"x")
    assert verify_fingerprint(msg)


def test_long_term_request() -> None:
    msg = decode(v.LONG_TERM_REQUEST)
    assert msg.transaction_id == bytes.fromhex("78ad3433c6ad72c029da412e")
    assert msg.get(Username) == Username(v.LONG_TERM_USERNAME)
    assert msg.get(Nonce) == Nonce(v.LONG_TERM_NONCE)
    assert msg.get(Realm) == Realm(v.LONG_TERM_REALM)
    assert opaque_string(v.LONG_TERM_PASSWORD) == "TheMatrIX"
    key = long_term_key(v.LONG_TERM_USERNAME, v.LONG_TERM_REALM, v.LONG_TERM_PASSWORD)
    assert verify_integrity(msg, key)
    # The unprepared password must not verify: preparation is part of the key.
    raw_key = long_term_key(v.LONG_TERM_USERNAME, v.LONG_TERM_REALM, "TheMatrix")
    assert not verify_integrity(msg, raw_key)
    assert not verify_fingerprint(msg)  # this vector has no FINGERPRINT


@pytest.mark.parametrize(
    ("raw", "padding"),
    [
        pytest.param(v.REQUEST, b" ", id="request"),
        pytest.param(v.IPV4_RESPONSE, b" ", id="ipv4"),
        pytest.param(v.IPV6_RESPONSE, b" ", id="ipv6"),
    ],
)
def test_short_term_vectors_reencode_byte_for_byte(raw: bytes, padding: bytes) -> None:
    msg = decode(raw)
    # with the key: MESSAGE-INTEGRITY and FINGERPRINT are recomputed in place
    assert msg.encode(key=SHORT_TERM_KEY, padding=padding) == raw
    # without the key: the stored mac is kept, the fingerprint recomputed
    assert msg.encode(padding=padding) == raw
    # a different key changes the mac, and the fingerprint with it
    other = msg.encode(key=b"other", padding=padding)
    assert other[:-28] == raw[:-28] and other[-28:] != raw[-28:]


def test_long_term_vector_reencodes_byte_for_byte() -> None:
    msg = decode(v.LONG_TERM_REQUEST)
    key = long_term_key(v.LONG_TERM_USERNAME, v.LONG_TERM_REALM, v.LONG_TERM_PASSWORD)
    assert msg.encode(key=key) == v.LONG_TERM_REQUEST
    assert msg.encode() == v.LONG_TERM_REQUEST


def test_building_the_sample_request_from_scratch_matches_the_vector() -> None:
    from relay.stun import Message

    msg = Message(
        Method.BINDING,
        MessageClass.REQUEST,
        bytes.fromhex("b7e7a701bc34d686fa87dfae"),
        [
            Software("STUN test client"),
            Priority(0x6E0001FF),
            IceControlled(0x932FF9B151263B36),
            Username("evtj:h6vY"),
        ],
    )
    built = msg.encode(key=SHORT_TERM_KEY, integrity="sha1", fingerprint=True, padding=b" ")
    assert built == v.REQUEST


def test_rfc8489_sha256_vector() -> None:
    msg = decode(v.SHA256_REQUEST)
    assert [type(a) for a in msg.attributes] == [
        UserHash,
        Nonce,
        Realm,
        PasswordAlgorithm,
        MessageIntegritySha256,
    ]
    assert msg.get(UserHash) == UserHash(user_hash(v.LONG_TERM_USERNAME, v.LONG_TERM_REALM))
    assert msg.get(Nonce) == Nonce(v.SHA256_NONCE)
    assert msg.get(PasswordAlgorithm) == PasswordAlgorithm(2)
    assert integrity_kind(msg) == "sha256"
    key = long_term_key(v.LONG_TERM_USERNAME, v.LONG_TERM_REALM, v.LONG_TERM_PASSWORD, 2)
    assert verify_integrity(msg, key)
    md5_key = long_term_key(v.LONG_TERM_USERNAME, v.LONG_TERM_REALM, v.LONG_TERM_PASSWORD, 1)
    assert not verify_integrity(msg, md5_key)
    assert msg.encode(key=key) == v.SHA256_REQUEST
    assert msg.encode() == v.SHA256_REQUEST
