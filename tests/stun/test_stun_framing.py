"""The STUN/ChannelData demultiplexing rule and the stream framer, without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.stun import (
    FramingError,
    Message,
    MessageClass,
    Method,
    Software,
    StreamFramer,
    StunDecodeError,
    demux_table,
    encode_channel_data,
    stun_frame_size,
)
from relay.stun.framing import CHANNEL_DATA, INVALID, STUN

BINDING = Message(Method.BINDING, MessageClass.REQUEST, b"\x01" * 12, []).encode()
WITH_SOFTWARE = Message(
    Method.BINDING, MessageClass.REQUEST, b"\x02" * 12, [Software("framing test")]
).encode(fingerprint=True)
CHAN5 = encode_channel_data(0x4001, b"hello", pad=True)  # 4 + 5 + 3 bytes of padding
CHAN0 = encode_channel_data(0x4FFF, b"", pad=True)
CHAN8 = encode_channel_data(0x4000, b"12345678", pad=True)  # no padding needed
FRAMES = [BINDING, CHAN5, WITH_SOFTWARE, CHAN0, CHAN8]


def frames_of(framer: StreamFramer, data: bytes) -> list[bytes]:
    return [bytes(f) for f in framer.feed(data)]


# -- the first-byte rule ----------------------------------------------------------------


def test_demux_table_follows_rfc_7983() -> None:
    table = demux_table()
    assert len(table) == 256
    assert {table[b] for b in range(0x00, 0x40)} == {STUN}
    assert {table[b] for b in range(0x40, 0x50)} == {CHANNEL_DATA}
    assert {table[b] for b in range(0x50, 0x100)} == {INVALID}


def test_demux_table_with_rfc_5766_channel_numbers() -> None:
    table = demux_table(0x7FFF)
    assert {table[b] for b in range(0x40, 0x80)} == {CHANNEL_DATA}
    assert {table[b] for b in range(0x80, 0x100)} == {INVALID}


@pytest.mark.parametrize("channel_max", [0x3FFF, 0x8000, -1])
def test_demux_table_refuses_impossible_channel_ranges(channel_max: int) -> None:
    with pytest.raises(ValueError, match="channel_max"):
        demux_table(channel_max)


def test_stun_frame_size_reads_the_header() -> None:
    assert stun_frame_size(BINDING) == len(BINDING) == 20
    assert stun_frame_size(WITH_SOFTWARE) == len(WITH_SOFTWARE)
    assert stun_frame_size(b"xx" + WITH_SOFTWARE, 2) == len(WITH_SOFTWARE)


@pytest.mark.parametrize(
    "header",
    [
        BINDING[:19],  # short
        b"\x80" + BINDING[1:],  # top bits set
        BINDING[:4] + b"\x21\x12\xa4\x43" + BINDING[8:],  # wrong magic cookie
        BINDING[:3] + b"\x02" + BINDING[4:],  # length not a multiple of 4
    ],
)
def test_stun_frame_size_refuses_what_is_not_a_stun_header(header: bytes) -> None:
    assert stun_frame_size(header) is None


# -- the stream framer ------------------------------------------------------------------


def test_merged_frames_come_out_whole_with_their_padding() -> None:
    framer = StreamFramer()
    assert frames_of(framer, b"".join(FRAMES)) == FRAMES
    assert len(CHAN5) == 12 and CHAN5.endswith(b"\x00\x00\x00")
    assert framer.buffered == 0


def test_a_byte_at_a_time_gives_the_same_frames() -> None:
    framer = StreamFramer()
    out: list[bytes] = []
    for b in b"".join(FRAMES):
        out.extend(frames_of(framer, bytes([b])))
    assert out == FRAMES
    assert framer.buffered == 0


def test_an_incomplete_tail_waits_for_the_rest() -> None:
    framer = StreamFramer()
    data = BINDING + CHAN5
    assert frames_of(framer, data[:25]) == [BINDING]
    assert framer.buffered == 5
    assert frames_of(framer, data[25:30]) == []  # padding still missing
    assert frames_of(framer, data[30:]) == [CHAN5]
    assert framer.buffered == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(FRAMES), min_size=1, max_size=8), st.data())
def test_any_split_of_a_stream_gives_its_frames(frames: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(frames)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=10)))
    framer = StreamFramer()
    out: list[bytes] = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out.extend(frames_of(framer, stream[a:b]))
    assert out == frames
    assert framer.buffered == 0


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x80\x00\x00\x00",  # neither STUN nor ChannelData
        b"\xff" * 30,
        BINDING[:4] + b"\xde\xad\xbe\xef" + BINDING[8:],  # STUN-looking, wrong cookie
        BINDING[:3] + b"\x01" + BINDING[4:],  # STUN length not a multiple of 4
    ],
)
def test_garbage_raises_after_the_good_frames_before_it(garbage: bytes) -> None:
    framer = StreamFramer()
    seen: list[bytes] = []
    with pytest.raises(FramingError):
        for frame in framer.feed(BINDING + CHAN5 + garbage):
            seen.append(bytes(frame))
    assert seen == [BINDING, CHAN5]


def test_framing_error_is_a_stun_decode_error() -> None:
    framer = StreamFramer()
    with pytest.raises(StunDecodeError, match="neither STUN nor ChannelData"):
        list(framer.feed(b"\xc0\x00\x00\x00"))


def test_channel_max_decides_what_the_stream_accepts() -> None:
    odd = encode_channel_data(0x4000, b"abcd", pad=True)
    odd = b"\x5a" + odd[1:]  # first byte of channel 0x5A00
    assert frames_of(StreamFramer(), odd) == [odd]  # generous by default (0x7FFF)
    with pytest.raises(FramingError):
        frames_of(StreamFramer(channel_max=0x4FFF), odd)


def test_oversize_frames_are_refused_before_they_are_buffered() -> None:
    framer = StreamFramer(max_frame=1024)
    big = encode_channel_data(0x4000, b"x" * 2000, pad=True)
    with pytest.raises(FramingError, match="exceeds"):
        frames_of(framer, big[:8])  # the header alone tells the size
    ok = StreamFramer(max_frame=1024)
    small = encode_channel_data(0x4000, b"x" * 1000, pad=True)
    assert frames_of(ok, small) == [small]


def test_largest_frames_the_length_field_allows() -> None:
    chan = encode_channel_data(0x4000, b"y" * 0xFFFF, pad=True)
    stun = Message(
        Method.BINDING, MessageClass.REQUEST, b"\x03" * 12, [Software("z" * 700)]
    ).encode()
    framer = StreamFramer()
    assert frames_of(framer, chan + stun) == [chan, stun]
    assert len(chan) == 4 + 0xFFFF + 1
