"""ChannelData framing, and the Send/Data indication fast paths against the full codec."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.stun import (
    Data,
    Fingerprint,
    Message,
    MessageClass,
    Method,
    Software,
    StunDecodeError,
    XorPeerAddress,
    channel_data_frame_length,
    channel_data_header,
    data_indication,
    decode,
    encode_channel_data,
    is_channel_data,
    is_stun,
    parse_channel_data,
    scan_send_indication,
)

TID = bytes(range(12))

# ------------------------------------------------------------------ ChannelData


def test_is_channel_data_range() -> None:
    assert [b for b in range(256) if is_channel_data(b)] == list(range(0x40, 0x50))


def test_header_and_encode() -> None:
    assert channel_data_header(0x4001, 5) == b"\x40\x01\x00\x05"
    assert encode_channel_data(0x4001, b"hello") == b"\x40\x01\x00\x05hello"
    assert encode_channel_data(0x4001, b"hello", pad=True) == b"\x40\x01\x00\x05hello\x00\x00\x00"
    assert encode_channel_data(0x4FFF, b"", pad=True) == b"\x4f\xff\x00\x00"
    assert encode_channel_data(0x4000, memoryview(b"abcd"), pad=True) == b"\x40\x00\x00\x04abcd"
    for bad_channel in (0x3FFF, 0x5000, 0xFFFF, -1):
        with pytest.raises(ValueError):
            channel_data_header(bad_channel, 0)
        with pytest.raises(ValueError):
            encode_channel_data(bad_channel, b"")
    with pytest.raises(ValueError):
        channel_data_header(0x4000, 0x10000)


@pytest.mark.parametrize(
    ("length", "udp", "stream"),
    [(0, 4, 4), (1, 5, 8), (3, 7, 8), (4, 8, 8), (5, 9, 12), (1200, 1204, 1204)],
)
def test_frame_length(length: int, udp: int, stream: int) -> None:
    assert channel_data_frame_length(length, stream=False) == udp
    assert channel_data_frame_length(length, stream=True) == stream
    assert len(encode_channel_data(0x4000, bytes(length), pad=True)) == stream
    assert len(encode_channel_data(0x4000, bytes(length))) == udp


def test_parse_channel_data() -> None:
    frame = encode_channel_data(0x4123, b"payload")
    assert parse_channel_data(frame, len(frame)) == (0x4123, 7)
    # unpadded is fine on UDP, extra trailing bytes (padding) are fine too
    assert parse_channel_data(frame + b"\x00", len(frame) + 1) == (0x4123, 7)
    # works on a reused receive buffer where only n bytes are valid
    buf = bytearray(2048)
    buf[: len(frame)] = frame
    assert parse_channel_data(buf, len(frame)) == (0x4123, 7)
    assert parse_channel_data(memoryview(buf), len(frame)) == (0x4123, 7)
    padded = encode_channel_data(0x4123, b"payload", pad=True)
    assert parse_channel_data(padded, len(padded), stream=True) == (0x4123, 7)


@pytest.mark.parametrize(
    ("data", "n", "stream"),
    [
        (b"", 0, False),
        (b"\x40\x00\x00", 3, False),  # short header
        (b"\x40\x00", 4, False),  # n larger than the buffer
        (b"\x40\x00\x00\x05abcd", 8, False),  # length > n - 4
        (b"\x40\x00\x00\x05abcde\x00\x00\x00", 8, False),  # n cuts it short
        (b"\x3f\xff\x00\x00", 4, False),  # channel below range
        (b"\x50\x00\x00\x00", 4, False),  # reserved range
        (b"\xff\xff\x00\x00", 4, False),
        (b"\x40\x00\x00\x05abcde", 9, True),  # stream frame missing its padding
    ],
)
def test_parse_channel_data_errors(data: bytes, n: int, stream: bool) -> None:
    with pytest.raises(StunDecodeError):
        parse_channel_data(data, n, stream=stream)


# ------------------------------------------------------------------ Send / Data indications


def send_indication(ip: str, port: int, payload: bytes, *extra: object) -> bytes:
    attrs = [XorPeerAddress(ip, port), Data(payload), *extra]
    return Message(Method.SEND, MessageClass.INDICATION, TID, attrs).encode()  # type: ignore[arg-type]


@pytest.mark.parametrize("ip", ["192.0.2.1", "2001:db8::1", "::ffff:127.0.0.1"])
def test_scan_send_indication_matches_decode(ip: str) -> None:
    raw = send_indication(ip, 40000, b"media!", Software("x"), Fingerprint())
    result = scan_send_indication(raw, len(raw))
    assert result is not None
    peer_ip, peer_port, view = result
    msg = decode(raw)
    xpa, data = msg.get(XorPeerAddress), msg.get(Data)
    assert xpa is not None and data is not None
    assert (peer_ip, peer_port, bytes(view)) == (xpa.ip, xpa.port, data.value)
    assert isinstance(view, memoryview)


def test_scan_send_indication_in_a_larger_buffer_and_first_attributes_win() -> None:
    raw = Message(
        Method.SEND,
        MessageClass.INDICATION,
        TID,
        [
            Data(b"first"),
            XorPeerAddress("192.0.2.9", 9),
            Data(b"second"),
            XorPeerAddress("192.0.2.10", 10),
        ],
    ).encode()
    buf = bytearray(4096)
    buf[: len(raw)] = raw
    result = scan_send_indication(buf, len(raw))
    assert result is not None
    assert result[:2] == ("192.0.2.9", 9) and bytes(result[2]) == b"first"
    assert scan_send_indication(memoryview(buf), len(raw)) is not None


def test_scan_send_indication_empty_data_is_allowed() -> None:
    raw = send_indication("192.0.2.1", 1, b"")
    result = scan_send_indication(raw, len(raw))
    assert result is not None and bytes(result[2]) == b""


def test_scan_send_indication_rejects_odd_input() -> None:
    good = send_indication("192.0.2.1", 1234, b"abc")
    cases = [
        b"",
        good[:19],
        good[:-4],  # length field no longer matches
        good + b"\x00\x00\x00\x00",
        b"\x00\x01" + good[2:],  # Binding request, not a Send indication
        b"\x00\x17" + good[2:],  # Data indication
        good[:4] + b"\x00\x00\x00\x00" + good[8:],  # bad cookie
        Message(Method.SEND, MessageClass.INDICATION, TID, [Data(b"x")]).encode(),
        Message(
            Method.SEND, MessageClass.INDICATION, TID, [XorPeerAddress("192.0.2.1", 1)]
        ).encode(),
    ]
    for raw in cases:
        assert scan_send_indication(raw, len(raw)) is None, raw
    # XOR-PEER-ADDRESS with family 3, or IPv4 family with 16 bytes
    hdr = struct.pack("!HHI", 0x0016, 0, 0x2112A442) + TID
    for value in (b"\x00\x03\x00\x01" + bytes(4), b"\x00\x01\x00\x01" + bytes(16)):
        body = struct.pack("!HH", 0x0012, len(value)) + value + struct.pack("!HH", 0x0013, 0)
        raw = hdr[:2] + len(body).to_bytes(2, "big") + hdr[4:] + body
        assert scan_send_indication(raw, len(raw)) is None
    # attribute length running past the end
    body = struct.pack("!HH", 0x0013, 40) + bytes(8)
    raw = hdr[:2] + len(body).to_bytes(2, "big") + hdr[4:] + body
    assert scan_send_indication(raw, len(raw)) is None
    # n larger than the buffer
    assert scan_send_indication(good, len(good) + 4) is None


@pytest.mark.parametrize("ip", ["198.51.100.20", "2001:db8::20"])
@pytest.mark.parametrize("payload", [b"", b"a", b"abcd", bytes(range(255)) * 4])
def test_data_indication_matches_the_full_encoder(ip: str, payload: bytes) -> None:
    fast = data_indication(TID, ip, 5004, payload)
    slow = Message(
        Method.DATA, MessageClass.INDICATION, TID, [XorPeerAddress(ip, 5004), Data(payload)]
    ).encode()
    assert fast == slow
    assert is_stun(fast)
    assert data_indication(TID, ip, 5004, memoryview(payload)) == slow


def test_data_indication_too_large() -> None:
    with pytest.raises(ValueError):
        data_indication(TID, "192.0.2.1", 1, bytes(65520))


@settings(max_examples=200, deadline=None)
@given(
    v6=st.booleans(),
    addr4=st.ip_addresses(v=4),
    addr6=st.ip_addresses(v=6),
    port=st.integers(0, 0xFFFF),
    payload=st.binary(max_size=300),
    tid=st.binary(min_size=12, max_size=12),
)
def test_fast_paths_agree_with_the_codec(
    v6: bool, addr4: object, addr6: object, port: int, payload: bytes, tid: bytes
) -> None:
    ip = str(addr6 if v6 else addr4)
    raw = Message(
        Method.SEND, MessageClass.INDICATION, tid, [XorPeerAddress(ip, port), Data(payload)]
    ).encode()
    scanned = scan_send_indication(raw, len(raw))
    assert scanned is not None
    assert scanned[0] == decode(raw).get(XorPeerAddress).ip  # type: ignore[union-attr]
    assert (scanned[1], bytes(scanned[2])) == (port, payload)
    fast = data_indication(tid, scanned[0], scanned[1], scanned[2])
    back = decode(fast)
    assert (back.method, back.cls) == (Method.DATA, MessageClass.INDICATION)
    assert back.attributes == [XorPeerAddress(scanned[0], port), Data(payload)]


def test_data_indication_bad_address_is_value_error() -> None:
    for ip, port in (("300.1.1.1", 1), ("2001:db8::zz", 1), ("192.0.2.1", 70000), ("", 1)):
        with pytest.raises(ValueError):
            data_indication(TID, ip, port, b"x")


def test_address_caches_stay_bounded_and_correct(monkeypatch: pytest.MonkeyPatch) -> None:
    from relay.stun import fastpath

    monkeypatch.setattr(fastpath, "_CACHE_MAX", 3)
    monkeypatch.setattr(fastpath, "_V4_TEXT", {})
    monkeypatch.setattr(fastpath, "_V4_WIRE", {})
    for round_ in range(2):
        for i in range(10):
            ip = f"198.51.100.{i}"
            raw = data_indication(TID, ip, 1000 + i, b"p")
            assert decode(raw).get(XorPeerAddress) == XorPeerAddress(ip, 1000 + i), round_
            send = b"\x00\x16" + raw[2:]  # same body as a Send indication
            scanned = scan_send_indication(send, len(send))
            assert scanned is not None and scanned[:2] == (ip, 1000 + i)
            assert len(fastpath._V4_TEXT) <= 3 and len(fastpath._V4_WIRE) <= 3
