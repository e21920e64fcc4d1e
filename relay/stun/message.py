"""STUN messages: header, ordered attribute list, encode/decode, integrity and fingerprint.

RFC 8489 §5 (header), §14 (attributes, MESSAGE-INTEGRITY(-SHA256), FINGERPRINT).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from typing import TypeVar

import attrs

from relay.stun.attributes import (
    DECODERS,
    Attribute,
    Fingerprint,
    MessageIntegrity,
    MessageIntegritySha256,
    UnknownAttribute,
)
from relay.stun.constants import (
    FINGERPRINT_XOR,
    HEADER_SIZE,
    MAGIC_COOKIE,
    AttrType,
    MessageClass,
    Method,
    StunDecodeError,
)

__all__ = [
    "Message",
    "TooManyAttributes",
    "decode",
    "has_fingerprint",
    "integrity_kind",
    "is_stun",
    "message_type",
    "split_type",
    "verify_fingerprint",
    "verify_integrity",
]

A = TypeVar("A")

_HEADER = struct.Struct("!HHI12s")
_HEAD3 = struct.Struct("!HHI")
_TL = struct.Struct("!HH")
_U32 = struct.Struct("!I")
_MAX_BODY = 0xFFFF - 3  # largest multiple of 4 that fits the 16-bit length

_T_MI = int(AttrType.MESSAGE_INTEGRITY)
_T_MI256 = int(AttrType.MESSAGE_INTEGRITY_SHA256)
_T_FP = int(AttrType.FINGERPRINT)
_FP_TL = _TL.pack(_T_FP, 4)
_INTEGRITY_TYPES = frozenset((_T_MI, _T_MI256, _T_FP))
# the only attribute classes honoured after MESSAGE-INTEGRITY
_TRAILERS: frozenset[type] = frozenset((MessageIntegritySha256, Fingerprint))


_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))
_HASHES = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}


def _hmac(key: bytes, data: bytes, digest: str) -> bytes:
    """HMAC (RFC 2104) over SHA-1/SHA-256 from hashlib primitives: the same result as
    ``hmac.digest`` at about half the cost for short STUN messages (no per-call EVP setup)."""
    h = _HASHES[digest]
    if len(key) > 64:  # both hashes have a 64-byte block
        key = h(key).digest()
    key = key.ljust(64, b"\x00")
    return h(key.translate(_OPAD) + h(key.translate(_IPAD) + data).digest()).digest()


def message_type(method: int, cls: int) -> int:
    """The 14-bit message type: method bits M11..M0 interleaved with class bits C1, C0."""
    if not 0 <= method <= 0xFFF:
        raise ValueError(f"method out of range: {method:#x}")
    if not 0 <= cls <= 3:
        raise ValueError(f"class out of range: {cls}")
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((cls & 1) << 4)
        | ((cls & 2) << 7)
    )


def _split(msg_type: int) -> tuple[int, int]:
    method = (msg_type & 0x000F) | ((msg_type & 0x00E0) >> 1) | ((msg_type & 0x3E00) >> 2)
    cls = ((msg_type >> 4) & 1) | ((msg_type >> 7) & 2)
    return method, cls


# Known (method, class) pairs as enum members, so decoded messages print nicely at no cost.
_SPLIT_CACHE: dict[int, tuple[int, int]] = {
    message_type(m, c): (m, c) for m in Method for c in MessageClass
}


def split_type(msg_type: int) -> tuple[int, int]:
    """(method, class) of a 14-bit message type."""
    hit = _SPLIT_CACHE.get(msg_type)
    if hit is not None:
        return hit
    return _split(msg_type & 0x3FFF)


@attrs.define(slots=True)
class Message:
    """A STUN message: method, class, transaction id and an ordered list of attributes
    (duplicates kept, in wire order). ``raw`` is the exact bytes it was decoded from."""

    method: int
    cls: int
    transaction_id: bytes
    attributes: list[Attribute] = attrs.Factory(list)
    raw: bytes | None = None
    # Offset in ``raw`` of the integrity attribute verify_integrity checks: set by decode()
    # (-1: none), -2 when unknown (then it is found by walking ``raw``).
    integrity_offset: int = attrs.field(default=-2, init=False, repr=False, eq=False)

    def get(self, kind: type[A]) -> A | None:
        """The FIRST attribute of that class (RFC 8489: the first one wins), or None.

        Attributes after MESSAGE-INTEGRITY(-SHA256) are not covered by it and are ignored
        (RFC 8489 §14.5), except MESSAGE-INTEGRITY-SHA256 and FINGERPRINT."""
        sealed = False
        for attr in self.attributes:
            t = type(attr)
            if t is kind:
                if sealed and t not in _TRAILERS:
                    return None
                return attr  # type: ignore[return-value]
            if t is MessageIntegrity or t is MessageIntegritySha256:
                sealed = True
        return None

    def get_all(self, kind: type[A]) -> list[A]:
        """Every attribute of that class in order (same rule as :meth:`get` for attributes
        after the integrity attribute)."""
        out: list[A] = []
        sealed = False
        trailer = kind in _TRAILERS
        for attr in self.attributes:
            t = type(attr)
            if t is kind and (trailer or not sealed):
                out.append(attr)  # type: ignore[arg-type]
            if t is MessageIntegrity or t is MessageIntegritySha256:
                sealed = True
        return out

    def unknown_required(self) -> list[int]:
        """Types 0x0000-0x7FFF we do not understand that appear before MESSAGE-INTEGRITY
        (everything after the integrity attribute is ignored): answer these with 420."""
        out: list[int] = []
        for attr in self.attributes:
            kind = type(attr)
            if kind is MessageIntegrity or kind is MessageIntegritySha256:
                break
            if kind is UnknownAttribute and attr.type < 0x8000:  # type: ignore[union-attr]
                out.append(attr.type)  # type: ignore[union-attr]
        return out

    def encode(
        self,
        *,
        key: bytes | None = None,
        integrity: str | None = None,
        fingerprint: bool = False,
        padding: bytes = b"\x00",
    ) -> bytes:
        """Serialise. ``integrity`` ("sha1"/"sha256") appends MESSAGE-INTEGRITY(-SHA256)
        computed with ``key``; ``fingerprint`` appends FINGERPRINT. Integrity and fingerprint
        attributes already in ``attributes`` are recomputed at their position (an integrity
        attribute keeps its stored mac when no key is given). ValueError if the message does
        not fit the 16-bit length field."""
        tid = self.transaction_id
        if len(tid) != 12:
            raise ValueError("transaction id must be 12 bytes")
        mtype = message_type(self.method, self.cls)
        if len(padding) != 1:
            raise ValueError("padding must be a single byte")
        parts: list[bytes] = []
        size = 0
        for attr in self.attributes:
            kind = type(attr)
            if kind is MessageIntegrity or kind is MessageIntegritySha256 or kind is Fingerprint:
                special = _special(kind, attr, mtype, tid, parts, size, key)
                parts.append(special)
                size += len(special)
                continue
            try:
                value = attr.encode_value(tid)
            except (struct.error, OverflowError) as exc:
                raise ValueError(f"cannot encode {attr!r:.80}: {exc}") from exc
            vlen = len(value)
            if vlen > 0xFFFF:
                raise ValueError(f"attribute {attr!r:.60} value longer than 65535 bytes")
            pad = -vlen % 4
            parts.append(_TL.pack(_attr_type(attr), vlen))
            parts.append(value)
            if pad:
                parts.append(padding * pad)
            size += 4 + vlen + pad
        if integrity is not None:
            if integrity == "sha1":
                kind_i: type[Attribute] = MessageIntegrity
            elif integrity == "sha256":
                kind_i = MessageIntegritySha256
            else:
                raise ValueError(f"integrity must be 'sha1' or 'sha256', not {integrity!r}")
            if key is None:
                raise ValueError("integrity requested without a key")
            special = _special(kind_i, None, mtype, tid, parts, size, key)
            parts.append(special)
            size += len(special)
        if fingerprint:
            special = _special(Fingerprint, None, mtype, tid, parts, size, key)
            parts.append(special)
            size += len(special)
        if size > _MAX_BODY:
            raise ValueError(f"message body of {size} bytes exceeds the 16-bit length field")
        return _HEADER.pack(mtype, size, MAGIC_COOKIE, tid) + b"".join(parts)


def _attr_type(attr: Attribute) -> int:
    if type(attr) is UnknownAttribute:
        return attr.type
    return attr.TYPE  # type: ignore[union-attr]


def _special(
    kind: type,
    attr: Attribute | None,
    mtype: int,
    tid: bytes,
    parts: list[bytes],
    size: int,
    key: bytes | None,
) -> bytes:
    """Encode MI / MI-SHA256 / FINGERPRINT over the message so far (``parts``, ``size``)."""
    if kind is Fingerprint:
        total = size + 8
        if total > _MAX_BODY:
            raise ValueError("message exceeds the 16-bit length field")
        head = _HEADER.pack(mtype, total, MAGIC_COOKIE, tid)
        crc = zlib.crc32(b"".join(parts), zlib.crc32(head)) ^ FINGERPRINT_XOR
        return _FP_TL + _U32.pack(crc)
    if kind is MessageIntegrity:
        atype, maclen, digest = _T_MI, 20, "sha1"
    else:
        atype, digest = _T_MI256, "sha256"
        stored = attr.mac if isinstance(attr, MessageIntegritySha256) else b""
        maclen = len(stored) if stored else 32
    if key is None:
        assert attr is not None
        value = attr.encode_value(tid)  # the stored mac (validated by encode_value)
        return _TL.pack(atype, len(value)) + value
    total = size + 4 + maclen
    if total > _MAX_BODY:
        raise ValueError("message exceeds the 16-bit length field")
    head = _HEADER.pack(mtype, total, MAGIC_COOKIE, tid)
    mac = _hmac(key, head + b"".join(parts), digest)[:maclen]
    return _TL.pack(atype, maclen) + mac


def _bad(why: str) -> StunDecodeError:
    return StunDecodeError(why)


class TooManyAttributes(StunDecodeError):
    """More attributes than the caller's bound: the message was not decoded further."""


def decode(data: bytes | bytearray | memoryview, max_attributes: int | None = None) -> Message:
    """Decode one STUN message that fills ``data`` exactly. Raises StunDecodeError only.

    With ``max_attributes``, a message carrying more attributes raises `TooManyAttributes`
    before any of them is decoded: the work spent on a hostile message stays bounded."""
    if type(data) is not bytes:
        data = bytes(data)
    n = len(data)
    if n < HEADER_SIZE:
        raise _bad(f"STUN message shorter than 20 bytes ({n})")
    mtype, length, cookie, tid = _HEADER.unpack_from(data)
    if mtype & 0xC000:
        raise _bad("top two bits of the STUN type are not zero")
    if cookie != MAGIC_COOKIE:
        raise _bad("bad magic cookie")
    if length & 3:
        raise _bad("STUN length is not a multiple of 4")
    if length + HEADER_SIZE != n:
        raise _bad(f"STUN length {length} does not match the {n - HEADER_SIZE} bytes present")
    method, cls = split_type(mtype)
    if max_attributes is not None and length > 4 * max_attributes:
        _count_attributes(data, max_attributes)
    attributes: list[Attribute] = []
    append = attributes.append
    decoders = DECODERS
    unpack_tl = _TL.unpack_from
    pos = HEADER_SIZE
    mi_at = -1  # first MESSAGE-INTEGRITY; a later MESSAGE-INTEGRITY-SHA256 takes precedence
    scan = True  # still looking: stops at MESSAGE-INTEGRITY-SHA256 or FINGERPRINT
    try:
        while pos < n:
            atype, alen = unpack_tl(data, pos)
            start = pos + 4
            end = start + alen
            if scan and atype in _INTEGRITY_TYPES:
                if atype == _T_MI256:
                    mi_at = pos
                    scan = False
                elif atype == _T_FP:
                    scan = False
                elif mi_at < 0:
                    mi_at = pos
            pos = end + (-alen & 3)
            if pos > n:
                raise _bad(f"attribute {atype:#06x} of length {alen} runs past the message")
            dec = decoders.get(atype)
            if dec is None:
                append(UnknownAttribute(atype, data[start:end]))
            else:
                append(dec(data[start:end], tid))
    except StunDecodeError:
        raise
    except (ValueError, IndexError, struct.error, UnicodeError, OverflowError) as exc:
        raise _bad(f"malformed attribute: {exc}") from exc
    msg = Message(method, cls, tid, attributes, data)
    msg.integrity_offset = mi_at
    return msg


def _count_attributes(data: bytes, limit: int) -> None:
    """Raise TooManyAttributes if ``data`` holds more than ``limit`` attributes (a walk of
    at most ``limit + 1`` type-length headers; nothing is decoded)."""
    n = len(data)
    pos = HEADER_SIZE
    count = 0
    while pos + 4 <= n:
        count += 1
        if count > limit:
            raise TooManyAttributes(f"more than {limit} attributes")
        alen = data[pos + 2] << 8 | data[pos + 3]
        pos += 4 + alen + (-alen & 3)


def is_stun(data: bytes | bytearray | memoryview) -> bool:
    """Cheap check that ``data`` is exactly one STUN message (header only, no attributes)."""
    n = len(data)
    if n < HEADER_SIZE:
        return False
    mtype, length, cookie = _HEAD3.unpack_from(data)
    return (
        not (mtype & 0xC000)
        and cookie == MAGIC_COOKIE
        and not (length & 3)
        and length + HEADER_SIZE == n
    )


def _find_integrity(raw: bytes) -> int:
    """Offset of the integrity attribute to verify: MESSAGE-INTEGRITY-SHA256 if present
    before FINGERPRINT, else the first MESSAGE-INTEGRITY; -1 if neither."""
    n = len(raw)
    pos = HEADER_SIZE
    mi = -1
    while pos + 4 <= n:
        atype, alen = _TL.unpack_from(raw, pos)
        if atype == _T_MI256:
            return pos
        if atype == _T_MI:
            if mi < 0:
                mi = pos
        elif atype == _T_FP:
            break
        pos += 4 + alen + (-alen & 3)
    return mi


def verify_integrity(msg: Message, key: bytes) -> bool:
    """Check MESSAGE-INTEGRITY-SHA256 (preferred) or MESSAGE-INTEGRITY of a decoded message
    against ``key`` (RFC 8489 §14.5/14.6). False if neither is present or ``raw`` is missing."""
    raw = msg.raw
    if raw is None:
        return False
    pos = msg.integrity_offset
    if pos == -2:
        pos = _find_integrity(raw)
    if pos < 0 or pos + 4 > len(raw):
        return False
    atype, alen = _TL.unpack_from(raw, pos)
    end = pos + 4 + alen
    if end > len(raw):
        return False
    if atype == _T_MI:
        if alen != 20:
            return False
        digest = "sha1"
    else:
        if not (16 <= alen <= 32 and alen % 4 == 0):
            return False
        digest = "sha256"
    signed = raw[:2] + (end - HEADER_SIZE).to_bytes(2, "big") + raw[4:pos]
    mac = _hmac(key, signed, digest)
    return hmac.compare_digest(mac[:alen], raw[pos + 4 : end])


def integrity_kind(msg: Message) -> str | None:
    """ "sha256" / "sha1" / None: which integrity attribute the sender used."""
    seen_mi = False
    for attr in msg.attributes:
        kind = type(attr)
        if kind is MessageIntegritySha256:
            return "sha256"
        if kind is MessageIntegrity:
            seen_mi = True
        elif kind is Fingerprint:
            break
    return "sha1" if seen_mi else None


def verify_fingerprint(msg: Message) -> bool:
    """True only if FINGERPRINT is the last attribute and its CRC matches ``raw``."""
    raw = msg.raw
    if raw is None or len(raw) < HEADER_SIZE + 8:
        return False
    if not msg.attributes or type(msg.attributes[-1]) is not Fingerprint:
        return False
    if raw[-8:-4] != _FP_TL:
        return False
    crc = zlib.crc32(raw[:-8]) ^ FINGERPRINT_XOR
    return bool(crc == _U32.unpack_from(raw, len(raw) - 4)[0])


def has_fingerprint(msg: Message) -> bool:
    return any(type(a) is Fingerprint for a in msg.attributes)
