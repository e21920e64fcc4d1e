"""Demultiplexing and stream framing of STUN and ChannelData messages (sans-IO).

One rule, used by every transport (RFC 7983 §7, RFC 8656 §12):

* the first byte tells the kind: 0-63 (top two bits zero) is STUN, 64-79 is ChannelData
  (up to 127 with RFC 5766's channel numbers 0x4000-0x7FFF), anything else is neither;
* a STUN message is a 20-byte header (magic cookie, length a multiple of 4) plus the
  header's length; a ChannelData message is a 4-byte header plus the length, and on a
  stream (TCP/TLS) it is padded to a multiple of 4 (the padding is not in the length).

`demux_table` turns the first-byte rule into a 256-entry lookup table, so a datagram loop
classifies a packet with one index (as cheap as the two comparisons it replaces).
`StreamFramer` cuts a byte stream into whole messages: feed it what the socket returned and
iterate the frames; bytes that are neither kind raise `FramingError`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

from relay.stun.constants import HEADER_SIZE, MAGIC_COOKIE, StunDecodeError

__all__ = [
    "CHANNEL_DATA",
    "INVALID",
    "STUN",
    "FramingError",
    "StreamFramer",
    "demux_table",
    "stun_frame_size",
]

STUN = 0
CHANNEL_DATA = 1  # StreamFramer.feed compares with the literals, keep them in step
INVALID = 2

_COOKIE = MAGIC_COOKIE.to_bytes(4, "big")


class FramingError(StunDecodeError):
    """Bytes on a stream that are neither STUN nor ChannelData: the stream is unusable."""


@functools.cache
def demux_table(channel_max: int = 0x4FFF) -> bytes:
    """256 entries, indexed by a message's first byte: STUN, CHANNEL_DATA or INVALID.

    ChannelData covers the first bytes of channel numbers 0x4000-``channel_max``
    (0x4FFF per RFC 8656; 0x7FFF with RFC 5766 channel numbers)."""
    if not 0x4000 <= channel_max <= 0x7FFF:
        raise ValueError(f"channel_max {channel_max:#x} outside 0x4000-0x7FFF")
    hi = channel_max >> 8
    return bytes(
        STUN if b < 0x40 else CHANNEL_DATA if b <= hi else INVALID for b in range(256)
    )


def stun_frame_size(data: bytes | bytearray | memoryview, pos: int = 0) -> int | None:
    """Total size (20 + length) of the STUN message whose header starts at ``data[pos]``, or
    None if those 20 bytes are not a STUN header (top bits, magic cookie, length a multiple
    of 4) or are not all there."""
    if len(data) - pos < HEADER_SIZE or data[pos] & 0xC0:
        return None
    length = data[pos + 2] << 8 | data[pos + 3]
    if length & 3 or data[pos + 4 : pos + 8] != _COOKIE:
        return None
    return HEADER_SIZE + length


class StreamFramer:
    """Whole STUN and ChannelData messages out of a byte stream, split or merged alike.

    ``for frame in framer.feed(data): ...`` yields each complete message as a memoryview
    (ChannelData frames include their padding), keeps an incomplete tail for the next
    `feed`, and raises `FramingError` at the first bytes that are neither kind (the frames
    before them are yielded first) or at a frame longer than ``max_frame``.  Iterate each
    `feed` to its end.  A frame trickling in is not re-scanned per byte: the framer waits
    until the bytes it knows it needs are there.

    The stream rule is generous on purpose: with the default ``channel_max`` (0x7FFF) every
    first byte 0x40-0x7F is framed as ChannelData, and the channel lookup that follows drops
    numbers that are not bound.
    """

    __slots__ = ("_buf", "_need", "_table", "max_frame")

    def __init__(self, *, channel_max: int = 0x7FFF, max_frame: int | None = None) -> None:
        self._table = demux_table(channel_max)
        self._buf = bytearray()  # the start of an incomplete message
        self._need = 4  # bytes `_buf` must hold before it is worth framing again
        self.max_frame = max_frame

    @property
    def buffered(self) -> int:
        """Bytes held of an incomplete message."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray) -> Iterator[memoryview]:
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                return
            chunk: bytes | bytearray = bytes(buf)
        else:
            chunk = data
        # Frames are views of `chunk`, which is never resized (views pin a bytearray).
        view = memoryview(chunk)
        end = len(chunk)
        pos = 0
        need = 4
        table = self._table
        limit = self.max_frame
        try:
            while end - pos >= 4:
                kind = table[chunk[pos]]
                if kind == 1:  # CHANNEL_DATA (media: the common case first)
                    length = chunk[pos + 2] << 8 | chunk[pos + 3]
                    size = 4 + length + (-length & 3)
                elif kind == 0:  # STUN
                    if end - pos < HEADER_SIZE:
                        need = HEADER_SIZE
                        break
                    stun = stun_frame_size(chunk, pos)
                    if stun is None:
                        raise FramingError("not a STUN header (magic cookie or length)")
                    size = stun
                else:
                    raise FramingError(
                        f"first byte {chunk[pos]:#04x} is neither STUN nor ChannelData"
                    )
                if limit is not None and size > limit:
                    raise FramingError(f"a {size}-byte frame exceeds the {limit}-byte limit")
                if end - pos < size:
                    need = size
                    break
                yield view[pos : pos + size]
                pos += size
        finally:
            self._buf = bytearray(view[pos:]) if pos < end else bytearray()
            self._need = need
