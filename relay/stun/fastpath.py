"""Data-plane shortcuts: Send indication in, Data indication out, without Message objects.

They agree with the full codec (tests check that) but build no attrs instances and return
None instead of raising on anything unexpected, so the caller just drops the datagram.
"""

from __future__ import annotations

import socket
import struct

from relay.stun.constants import HEADER_SIZE, MAGIC_COOKIE

__all__ = ["data_indication", "scan_send_indication"]

_SEND_INDICATION = 0x0016  # method SEND (0x006), class INDICATION
_DATA_INDICATION = 0x0017  # method DATA (0x007), class INDICATION
_XOR_PEER_ADDRESS = 0x0012
_DATA = 0x0013

_HEAD3 = struct.Struct("!HHI")
_TL = struct.Struct("!HH")
_ADDR = struct.Struct("!xBH")
_unpack_head = _HEAD3.unpack_from
_unpack_tl = _TL.unpack_from
_unpack_addr = _ADDR.unpack_from
_pack_head = _HEAD3.pack
_V4_ATTR = struct.Struct("!HHBBHI")  # type, len, reserved, family, xport, xaddr
_pack_v4 = _V4_ATTR.pack
_V6_HEAD = struct.Struct("!HHBBH")
_pack_v6_head = _V6_HEAD.pack
_DATA_TL = struct.Struct("!HH")
_pack_tl = _DATA_TL.pack
_PADS = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")
_COOKIE_HIGH = MAGIC_COOKIE << 96

_U32 = struct.Struct("!I")
_unpack_u32 = _U32.unpack_from

# Small bounded caches between IPv4 text and the XOR-ed wire value: a relay talks to a
# limited set of peers, so these turn most conversions into one dict lookup. They are
# cleared when full, so hostile churn only costs the slow path.
_CACHE_MAX = 4096
_V4_TEXT: dict[int, str] = {}  # XOR-ed 32-bit wire value -> "a.b.c.d"
_V4_WIRE: dict[str, int] = {}  # "a.b.c.d" -> XOR-ed 32-bit wire value

_ntop = socket.inet_ntop
_pton = socket.inet_pton
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6


def scan_send_indication(
    data: bytes | bytearray | memoryview, n: int
) -> tuple[str, int, memoryview] | None:
    """(peer ip, peer port, payload view) of a Send indication in the first ``n`` bytes of
    ``data``, from the first XOR-PEER-ADDRESS and first DATA; None if it is not a
    well-formed Send indication."""
    if n < HEADER_SIZE or n > len(data):
        return None
    mtype, length, cookie = _unpack_head(data)
    if mtype != _SEND_INDICATION or cookie != MAGIC_COOKIE or length + HEADER_SIZE != n:
        return None
    if length & 3:
        return None
    pos = HEADER_SIZE
    peer: tuple[str, int] | None = None
    start = end = -1
    while pos < n:
        if pos + 4 > n:
            return None
        atype, alen = _unpack_tl(data, pos)
        vstart = pos + 4
        pos = vstart + alen + (-alen & 3)
        if pos > n:
            return None
        if atype == _XOR_PEER_ADDRESS:
            if peer is None:
                if alen < 4:
                    return None
                family, xport = _unpack_addr(data, vstart)
                if family == 1 and alen == 8:
                    wire = _unpack_u32(data, vstart + 4)[0]
                    text = _V4_TEXT.get(wire)
                    if text is None:
                        text = _ntop(_AF_INET, (wire ^ MAGIC_COOKIE).to_bytes(4, "big"))
                        if len(_V4_TEXT) >= _CACHE_MAX:
                            _V4_TEXT.clear()
                        _V4_TEXT[wire] = text
                    peer = (text, xport ^ 0x2112)
                elif family == 2 and alen == 20:
                    mask = _COOKIE_HIGH | int.from_bytes(data[8:20], "big")
                    x = int.from_bytes(data[vstart + 4 : vstart + 20], "big") ^ mask
                    peer = (_ntop(_AF_INET6, x.to_bytes(16, "big")), xport ^ 0x2112)
                else:
                    return None
        elif atype == _DATA:
            if start < 0:
                start = vstart
                end = vstart + alen
    if peer is None or start < 0:
        return None
    return peer[0], peer[1], memoryview(data)[start:end]


def _pton4(ip: str) -> bytes:
    try:
        return _pton(_AF_INET, ip)
    except OSError as exc:
        raise ValueError(f"not an IPv4 address: {ip!r}") from exc


def _pton6(ip: str) -> bytes:
    try:
        return _pton(_AF_INET6, ip)
    except OSError as exc:
        raise ValueError(f"not an IPv6 address: {ip!r}") from exc


def data_indication(
    transaction_id: bytes, peer_ip: str, peer_port: int, payload: bytes | memoryview
) -> bytes:
    """A Data indication carrying XOR-PEER-ADDRESS and DATA (ValueError on a bad address)."""
    plen = len(payload)
    pad = -plen & 3
    if not 0 <= peer_port <= 0xFFFF:
        raise ValueError(f"port out of range: {peer_port}")
    xport = peer_port ^ 0x2112
    if ":" in peer_ip:
        mask = _COOKIE_HIGH | int.from_bytes(transaction_id, "big")
        x = int.from_bytes(_pton6(peer_ip), "big") ^ mask
        addr = _pack_v6_head(_XOR_PEER_ADDRESS, 20, 0, 2, xport) + x.to_bytes(16, "big")
        body = 24 + 4 + plen + pad
    else:
        wire = _V4_WIRE.get(peer_ip)
        if wire is None:
            wire = int.from_bytes(_pton4(peer_ip), "big") ^ MAGIC_COOKIE
            if len(_V4_WIRE) >= _CACHE_MAX:
                _V4_WIRE.clear()
            _V4_WIRE[peer_ip] = wire
        addr = _pack_v4(_XOR_PEER_ADDRESS, 8, 0, 1, xport, wire)
        body = 12 + 4 + plen + pad
    if body > 0xFFFC:
        raise ValueError("Data indication payload too large for the STUN length field")
    return b"".join(
        (
            _pack_head(_DATA_INDICATION, body, MAGIC_COOKIE),
            transaction_id,
            addr,
            _pack_tl(_DATA, plen),
            payload,
            _PADS[plen & 3],
        )
    )
