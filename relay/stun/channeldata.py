"""TURN ChannelData framing (RFC 8656 §12.4-12.5; demultiplexing per RFC 7983).

A 4-byte header (channel number 0x4000-0x4FFF, payload length) then the payload. Over
TCP/TLS the frame is padded to a multiple of 4 (the padding is not counted in the length);
over UDP padding is optional.
"""

from __future__ import annotations

import struct

from relay.stun.constants import StunDecodeError

__all__ = [
    "CHANNEL_MAX",
    "CHANNEL_MIN",
    "channel_data_frame_length",
    "channel_data_header",
    "encode_channel_data",
    "is_channel_data",
    "parse_channel_data",
]

CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x4FFF

_HEAD = struct.Struct("!HH")
_unpack_head = _HEAD.unpack_from
_pack_head = _HEAD.pack
_PADS = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")


def is_channel_data(first_byte: int) -> bool:
    """True if a datagram/frame starting with this byte is ChannelData (RFC 7983: 64..79)."""
    return 0x40 <= first_byte <= 0x4F


def parse_channel_data(
    data: bytes | bytearray | memoryview, n: int, *, stream: bool = False
) -> tuple[int, int]:
    """(channel, payload length) of the ChannelData frame in the first ``n`` bytes of ``data``.

    Raises StunDecodeError for a short header, a channel outside 0x4000-0x4FFF, or a length
    larger than the bytes present (with ``stream=True`` the 4-byte padding must fit too;
    check :func:`channel_data_frame_length` against what you have buffered first).
    """
    if n < 4 or n > len(data):
        raise StunDecodeError(f"ChannelData: {n} bytes claimed, buffer holds {len(data)}")
    channel, length = _unpack_head(data)
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise StunDecodeError(f"ChannelData channel {channel:#06x} outside 0x4000-0x4FFF")
    need = length + (-length & 3) if stream else length
    if need > n - 4:
        raise StunDecodeError(f"ChannelData length {length} exceeds the {n - 4} bytes present")
    return channel, length


def _check(channel: int, length: int) -> None:
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise ValueError(f"channel {channel:#x} outside 0x4000-0x4FFF")
    if not 0 <= length <= 0xFFFF:
        raise ValueError(f"ChannelData length {length} does not fit 16 bits")


def channel_data_header(channel: int, length: int) -> bytes:
    """The 4-byte ChannelData header."""
    _check(channel, length)
    return _pack_head(channel, length)


def encode_channel_data(channel: int, payload: bytes | memoryview, *, pad: bool = False) -> bytes:
    """A whole ChannelData frame; ``pad=True`` pads to 4 bytes (stream transports)."""
    length = len(payload)
    _check(channel, length)
    if pad:
        return b"".join((_pack_head(channel, length), payload, _PADS[length & 3]))
    return b"".join((_pack_head(channel, length), payload))


def channel_data_frame_length(length: int, *, stream: bool) -> int:
    """Total bytes of a frame with a ``length``-byte payload, header and padding included."""
    return 4 + length + (-length & 3) if stream else 4 + length
