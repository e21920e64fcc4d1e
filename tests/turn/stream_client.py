"""A TURN client over TCP or TLS for the stream gateway tests.

It reuses `benchmarks.turnclient.TurnClient` (the transaction loop, long-term credentials,
401/438, message classification) and swaps only the transport: the UDP socket becomes a
byte stream whose messages are framed by their headers (STUN: 20 + length; ChannelData:
4 + length padded to 4), and, the transport being reliable, requests are sent once.
"""

from __future__ import annotations

import ssl
from typing import Any

import trio

from benchmarks.turnclient import TurnClient
from relay.stun import encode_channel_data


def take_frame(buf: bytearray) -> bytes | None:
    """Take one complete STUN / ChannelData message off the front of `buf` (ChannelData with
    its padding, as received); None until one is complete."""
    if len(buf) < 4:
        return None
    length = buf[2] << 8 | buf[3]
    size = 20 + length if buf[0] < 0x40 else 4 + length + (-length & 3)
    if len(buf) < max(size, 20 if buf[0] < 0x40 else 4):
        return None
    frame = bytes(buf[:size])
    del buf[:size]
    return frame


class StreamTurnClient(TurnClient):
    """`TurnClient` over one TCP (or, with `tls`, TLS) connection."""

    reliable = True

    def __init__(self, server: tuple[str, int], username: str, password: str, *,
                 tls: ssl.SSLContext | None = None, **kw: Any) -> None:
        super().__init__(server, username, password, **kw)
        self.tls = tls
        self.stream: trio.abc.Stream | None = None
        self.tcp: trio.SocketStream | None = None
        self.rx = bytearray()
        self.frames: list[bytes] = []  # raw frames received, in order (padding included)

    async def _open_socket(self, port: int = 0) -> None:
        tcp = await trio.open_tcp_stream(*self.server)
        self.tcp = tcp
        name = tcp.socket.getsockname()
        self.local_address = (str(name[0]), int(name[1]))
        if self.tls is not None:
            tls = trio.SSLStream(tcp, self.tls, server_hostname="localhost")
            await tls.do_handshake()
            self.stream = tls
        else:
            self.stream = tcp

    def close(self) -> None:
        if self.tcp is not None:
            self.tcp.socket.close()
            self.tcp = None
            self.stream = None

    def _s(self) -> trio.abc.Stream:
        if self.stream is None:
            raise RuntimeError("StreamTurnClient is not open (use 'async with')")
        return self.stream

    async def read_frame(self) -> bytes:
        """The next whole message from the server (b"" at EOF)."""
        while True:
            frame = take_frame(self.rx)
            if frame is not None:
                self.frames.append(frame)
                return frame
            data = await self._s().receive_some(65536)
            if not data:
                return b""
            self.rx += data

    async def _recv_datagram(self) -> bytes:
        frame = await self.read_frame()
        if not frame:
            raise EOFError("server closed the connection")
        return frame

    async def send_raw(self, data: bytes) -> None:
        if data:
            await self._s().send_all(data)

    async def send_channel(self, channel: int, data: bytes) -> None:
        await self.send_raw(encode_channel_data(channel, data, pad=True))

    async def at_eof(self) -> bool:
        """Read until the server closes the connection (True) or sends something (False)."""
        try:
            data = await self._s().receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return True
        if data:
            self.rx += data
            return False
        return True
