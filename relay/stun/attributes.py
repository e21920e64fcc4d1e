"""STUN/TURN attributes: one small frozen class per attribute type.

Every class has ``TYPE`` (the wire code), ``encode_value(transaction_id)`` (the value only,
unpadded) and ``decode_value(value, transaction_id)`` which raises :class:`StunDecodeError`
on any malformed value. Types we do not model are kept raw as :class:`UnknownAttribute`.
"""

from __future__ import annotations

import socket
import struct
from typing import ClassVar, Self

import attrs

from relay.stun.constants import ERROR_REASONS, MAGIC_COOKIE, AttrType, StunDecodeError

__all__ = [
    "AdditionalAddressFamily",
    "AddressErrorCode",
    "AlternateServer",
    "Attribute",
    "ChannelNumber",
    "ConnectionId",
    "Data",
    "DontFragment",
    "ErrorCode",
    "EvenPort",
    "Fingerprint",
    "IceControlled",
    "IceControlling",
    "Lifetime",
    "MappedAddress",
    "MessageIntegrity",
    "MessageIntegritySha256",
    "Nonce",
    "PasswordAlgorithm",
    "PasswordAlgorithms",
    "Priority",
    "Realm",
    "RequestedAddressFamily",
    "RequestedTransport",
    "ReservationToken",
    "Software",
    "UnknownAttribute",
    "UnknownAttributes",
    "UseCandidate",
    "UserHash",
    "Username",
    "XorMappedAddress",
    "XorPeerAddress",
    "XorRelayedAddress",
]

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_ADDR_HEAD = struct.Struct("!xBH")  # reserved, family, port
_U16_PAIR = struct.Struct("!HH")

_INET_NTOP = socket.inet_ntop
_INET_PTON = socket.inet_pton
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6

FAMILY_IPV4 = 1
FAMILY_IPV6 = 2

USERNAME_MAX = 513
TEXT_MAX = 763


def _fail(what: str) -> StunDecodeError:
    return StunDecodeError(what)


def _ip_bytes(ip: str) -> tuple[int, bytes]:
    """(family, packed address) for canonical or non-canonical IP text. ValueError if bad."""
    try:
        if ":" in ip:
            return FAMILY_IPV6, _INET_PTON(_AF_INET6, ip)
        return FAMILY_IPV4, _INET_PTON(_AF_INET, ip)
    except OSError as exc:
        raise ValueError(f"not an IP address: {ip!r}") from exc


def _check_port(port: int) -> None:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {port}")


def _decode_plain_address(value: bytes) -> tuple[str, int]:
    n = len(value)
    if n < 4:
        raise _fail("address attribute shorter than 4 bytes")
    family, port = _ADDR_HEAD.unpack_from(value)
    if family == FAMILY_IPV4:
        if n != 8:
            raise _fail("IPv4 address attribute must be 8 bytes")
        return _INET_NTOP(_AF_INET, value[4:8]), port
    if family == FAMILY_IPV6:
        if n != 20:
            raise _fail("IPv6 address attribute must be 20 bytes")
        return _INET_NTOP(_AF_INET6, value[4:20]), port
    raise _fail(f"unknown address family {family}")


def _encode_plain_address(ip: str, port: int) -> bytes:
    _check_port(port)
    family, packed = _ip_bytes(ip)
    return _ADDR_HEAD.pack(family, port) + packed


def _decode_xor_address(value: bytes, transaction_id: bytes) -> tuple[str, int]:
    n = len(value)
    if n < 4:
        raise _fail("XOR address attribute shorter than 4 bytes")
    family, xport = _ADDR_HEAD.unpack_from(value)
    port = xport ^ 0x2112
    if family == FAMILY_IPV4:
        if n != 8:
            raise _fail("IPv4 XOR address attribute must be 8 bytes")
        x = int.from_bytes(value[4:8], "big") ^ MAGIC_COOKIE
        return _INET_NTOP(_AF_INET, x.to_bytes(4, "big")), port
    if family == FAMILY_IPV6:
        if n != 20:
            raise _fail("IPv6 XOR address attribute must be 20 bytes")
        mask = (MAGIC_COOKIE << 96) | int.from_bytes(transaction_id, "big")
        x = int.from_bytes(value[4:20], "big") ^ mask
        return _INET_NTOP(_AF_INET6, x.to_bytes(16, "big")), port
    raise _fail(f"unknown address family {family}")


def _encode_xor_address(ip: str, port: int, transaction_id: bytes) -> bytes:
    _check_port(port)
    family, packed = _ip_bytes(ip)
    if family == FAMILY_IPV4:
        x = int.from_bytes(packed, "big") ^ MAGIC_COOKIE
        return _ADDR_HEAD.pack(family, port ^ 0x2112) + x.to_bytes(4, "big")
    mask = (MAGIC_COOKIE << 96) | int.from_bytes(transaction_id, "big")
    x = int.from_bytes(packed, "big") ^ mask
    return _ADDR_HEAD.pack(family, port ^ 0x2112) + x.to_bytes(16, "big")


def _family_of(ip: str) -> int:
    return FAMILY_IPV6 if ":" in ip else FAMILY_IPV4


def _decode_text(value: bytes, limit: int, name: str) -> str:
    if len(value) > limit:
        raise _fail(f"{name} longer than {limit} bytes")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(f"{name} is not valid UTF-8") from exc


def _decode_u32(value: bytes, name: str) -> int:
    if len(value) != 4:
        raise _fail(f"{name} must be 4 bytes")
    result: int = _U32.unpack(value)[0]
    return result


def _split_error(value: bytes, name: str) -> tuple[int, str]:
    """Decode class/number/reason from the last 4 header bytes of (ADDRESS-)ERROR-CODE."""
    if len(value) < 4:
        raise _fail(f"{name} shorter than 4 bytes")
    klass = value[2] & 0x07
    number = value[3]
    if not 3 <= klass <= 6 or number > 99:
        raise _fail(f"{name} code {klass}{number:02d} out of range")
    return klass * 100 + number, _decode_text(value[4:], TEXT_MAX, name + " reason")


def _check_error_code(code: int) -> None:
    if not 300 <= code <= 699:
        raise ValueError(f"error code out of range 300..699: {code}")


def _default_reason(self: ErrorCode | AddressErrorCode) -> str:
    return ERROR_REASONS.get(self.code, "")


# --------------------------------------------------------------------------- addresses


class _Address:
    __slots__ = ()
    ip: str
    port: int

    @property
    def family(self) -> int:
        return _family_of(self.ip)


@attrs.frozen(slots=True)
class MappedAddress(_Address):
    TYPE: ClassVar[int] = AttrType.MAPPED_ADDRESS
    ip: str
    port: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _encode_plain_address(self.ip, self.port)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        return cls(*_decode_plain_address(value))


@attrs.frozen(slots=True)
class AlternateServer(_Address):
    TYPE: ClassVar[int] = AttrType.ALTERNATE_SERVER
    ip: str
    port: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _encode_plain_address(self.ip, self.port)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        return cls(*_decode_plain_address(value))


@attrs.frozen(slots=True)
class XorMappedAddress(_Address):
    TYPE: ClassVar[int] = AttrType.XOR_MAPPED_ADDRESS
    ip: str
    port: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _encode_xor_address(self.ip, self.port, transaction_id)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        return cls(*_decode_xor_address(value, transaction_id))


@attrs.frozen(slots=True)
class XorPeerAddress(_Address):
    TYPE: ClassVar[int] = AttrType.XOR_PEER_ADDRESS
    ip: str
    port: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _encode_xor_address(self.ip, self.port, transaction_id)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        return cls(*_decode_xor_address(value, transaction_id))


@attrs.frozen(slots=True)
class XorRelayedAddress(_Address):
    TYPE: ClassVar[int] = AttrType.XOR_RELAYED_ADDRESS
    ip: str
    port: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _encode_xor_address(self.ip, self.port, transaction_id)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        return cls(*_decode_xor_address(value, transaction_id))


# --------------------------------------------------------------------------- text


@attrs.frozen(slots=True)
class Username:
    TYPE: ClassVar[int] = AttrType.USERNAME
    value: str

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.value.encode("utf-8")

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        return cls(_decode_text(value, USERNAME_MAX, "USERNAME"))


@attrs.frozen(slots=True)
class Realm:
    TYPE: ClassVar[int] = AttrType.REALM
    value: str

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.value.encode("utf-8")

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        return cls(_decode_text(value, TEXT_MAX, "REALM"))


@attrs.frozen(slots=True)
class Nonce:
    TYPE: ClassVar[int] = AttrType.NONCE
    value: str

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.value.encode("utf-8")

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        return cls(_decode_text(value, TEXT_MAX, "NONCE"))


@attrs.frozen(slots=True)
class Software:
    TYPE: ClassVar[int] = AttrType.SOFTWARE
    value: str

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.value.encode("utf-8")

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        return cls(_decode_text(value, TEXT_MAX, "SOFTWARE"))


# --------------------------------------------------------------------------- errors


@attrs.frozen(slots=True)
class ErrorCode:
    """ERROR-CODE; ``reason`` defaults to the standard phrase for ``code``."""

    TYPE: ClassVar[int] = AttrType.ERROR_CODE
    code: int
    reason: str = attrs.field(default=attrs.Factory(_default_reason, takes_self=True))

    def encode_value(self, transaction_id: bytes) -> bytes:
        _check_error_code(self.code)
        head = bytes((0, 0, self.code // 100, self.code % 100))
        return head + self.reason.encode("utf-8")

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        code, reason = _split_error(value, "ERROR-CODE")
        return cls(code, reason)


@attrs.frozen(slots=True)
class AddressErrorCode:
    """ADDRESS-ERROR-CODE (RFC 8656 §18.12): family, then an ERROR-CODE style code."""

    TYPE: ClassVar[int] = AttrType.ADDRESS_ERROR_CODE
    family: int
    code: int
    reason: str = attrs.field(default=attrs.Factory(_default_reason, takes_self=True))

    def encode_value(self, transaction_id: bytes) -> bytes:
        _check_error_code(self.code)
        head = bytes((self.family & 0xFF, 0, self.code // 100, self.code % 100))
        return head + self.reason.encode("utf-8")

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        code, reason = _split_error(value, "ADDRESS-ERROR-CODE")
        return cls(value[0], code, reason)


@attrs.frozen(slots=True)
class UnknownAttributes:
    TYPE: ClassVar[int] = AttrType.UNKNOWN_ATTRIBUTES
    types: tuple[int, ...]

    def encode_value(self, transaction_id: bytes) -> bytes:
        return struct.pack(f"!{len(self.types)}H", *self.types)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        if len(value) % 2:
            raise _fail("UNKNOWN-ATTRIBUTES length must be even")
        return cls(struct.unpack(f"!{len(value) // 2}H", value))


# --------------------------------------------------------------------------- TURN numbers


@attrs.frozen(slots=True)
class Lifetime:
    TYPE: ClassVar[int] = AttrType.LIFETIME
    seconds: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _U32.pack(self.seconds)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        return cls(_decode_u32(value, "LIFETIME"))


@attrs.frozen(slots=True)
class RequestedTransport:
    """REQUESTED-TRANSPORT: IANA protocol number (17 UDP, 6 TCP) then 3 RFFU bytes."""

    TYPE: ClassVar[int] = AttrType.REQUESTED_TRANSPORT
    protocol: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return bytes((self.protocol, 0, 0, 0))

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        if len(value) != 4:
            raise _fail("REQUESTED-TRANSPORT must be 4 bytes")
        return cls(value[0])


@attrs.frozen(slots=True)
class RequestedAddressFamily:
    """REQUESTED-ADDRESS-FAMILY (1 IPv4, 2 IPv6). Other values decode; the server answers 440."""

    TYPE: ClassVar[int] = AttrType.REQUESTED_ADDRESS_FAMILY
    family: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return bytes((self.family, 0, 0, 0))

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        if len(value) != 4:
            raise _fail("REQUESTED-ADDRESS-FAMILY must be 4 bytes")
        return cls(value[0])


@attrs.frozen(slots=True)
class AdditionalAddressFamily:
    TYPE: ClassVar[int] = AttrType.ADDITIONAL_ADDRESS_FAMILY
    family: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return bytes((self.family, 0, 0, 0))

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        if len(value) != 4:
            raise _fail("ADDITIONAL-ADDRESS-FAMILY must be 4 bytes")
        return cls(value[0])


@attrs.frozen(slots=True)
class ChannelNumber:
    """CHANNEL-NUMBER. Any 16-bit value decodes; range checks (0x4000-0x4FFF) are the
    server's, so it can answer 400."""

    TYPE: ClassVar[int] = AttrType.CHANNEL_NUMBER
    number: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _U16_PAIR.pack(self.number, 0)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        if len(value) != 4:
            raise _fail("CHANNEL-NUMBER must be 4 bytes")
        return cls(_U16_PAIR.unpack(value)[0])


@attrs.frozen(slots=True)
class Data:
    TYPE: ClassVar[int] = AttrType.DATA
    value: bytes

    def encode_value(self, transaction_id: bytes) -> bytes:
        return bytes(self.value)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        return cls(value)


@attrs.frozen(slots=True)
class EvenPort:
    TYPE: ClassVar[int] = AttrType.EVEN_PORT
    reserve: bool

    def encode_value(self, transaction_id: bytes) -> bytes:
        return b"\x80" if self.reserve else b"\x00"

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        if len(value) != 1:
            raise _fail("EVEN-PORT must be 1 byte")
        return cls(bool(value[0] & 0x80))


@attrs.frozen(slots=True)
class ReservationToken:
    TYPE: ClassVar[int] = AttrType.RESERVATION_TOKEN
    token: bytes

    def encode_value(self, transaction_id: bytes) -> bytes:
        if len(self.token) != 8:
            raise ValueError("RESERVATION-TOKEN must be 8 bytes")
        return bytes(self.token)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        if len(value) != 8:
            raise _fail("RESERVATION-TOKEN must be 8 bytes")
        return cls(value)


@attrs.frozen(slots=True)
class DontFragment:
    TYPE: ClassVar[int] = AttrType.DONT_FRAGMENT

    def encode_value(self, transaction_id: bytes) -> bytes:
        return b""

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        if value:
            raise _fail("DONT-FRAGMENT must be empty")
        return cls()


@attrs.frozen(slots=True)
class ConnectionId:
    TYPE: ClassVar[int] = AttrType.CONNECTION_ID
    value: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _U32.pack(self.value)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        return cls(_decode_u32(value, "CONNECTION-ID"))


# --------------------------------------------------------------------------- integrity


@attrs.frozen(slots=True)
class MessageIntegrity:
    """MESSAGE-INTEGRITY (HMAC-SHA1, 20 bytes). Message.encode computes it when given a key."""

    TYPE: ClassVar[int] = AttrType.MESSAGE_INTEGRITY
    mac: bytes = b""

    def encode_value(self, transaction_id: bytes) -> bytes:
        if len(self.mac) != 20:
            raise ValueError("MESSAGE-INTEGRITY needs a 20-byte mac (or a key to compute it)")
        return bytes(self.mac)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        if len(value) != 20:
            raise _fail("MESSAGE-INTEGRITY must be 20 bytes")
        return cls(value)


def _sha256_mac_ok(n: int) -> bool:
    return 16 <= n <= 32 and n % 4 == 0


@attrs.frozen(slots=True)
class MessageIntegritySha256:
    """MESSAGE-INTEGRITY-SHA256 (HMAC-SHA256, 16..32 bytes, a multiple of 4)."""

    TYPE: ClassVar[int] = AttrType.MESSAGE_INTEGRITY_SHA256
    mac: bytes = b""

    def encode_value(self, transaction_id: bytes) -> bytes:
        if not _sha256_mac_ok(len(self.mac)):
            raise ValueError("MESSAGE-INTEGRITY-SHA256 needs a 16..32 byte mac (or a key)")
        return bytes(self.mac)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        if not _sha256_mac_ok(len(value)):
            raise _fail("MESSAGE-INTEGRITY-SHA256 must be 16..32 bytes, a multiple of 4")
        return cls(value)


def _encode_algorithm(algorithm: int, params: bytes) -> bytes:
    pad = -len(params) % 4
    return _U16_PAIR.pack(algorithm, len(params)) + bytes(params) + b"\x00" * pad


def _decode_algorithms(value: bytes, name: str) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    pos = 0
    n = len(value)
    while pos < n:
        if pos + 4 > n:
            raise _fail(f"{name} entry truncated")
        algorithm, plen = _U16_PAIR.unpack_from(value, pos)
        start = pos + 4
        end = start + plen
        if end > n:
            raise _fail(f"{name} parameters run past the value")
        out.append((algorithm, value[start:end]))
        pos = start + plen + (-plen % 4)
        if pos > n:
            raise _fail(f"{name} parameter padding runs past the value")
    return out


@attrs.frozen(slots=True)
class PasswordAlgorithm:
    """PASSWORD-ALGORITHM: 1 MD5, 2 SHA-256."""

    TYPE: ClassVar[int] = AttrType.PASSWORD_ALGORITHM
    algorithm: int
    params: bytes = b""

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _encode_algorithm(self.algorithm, self.params)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        entries = _decode_algorithms(value, "PASSWORD-ALGORITHM")
        if len(entries) != 1:
            raise _fail("PASSWORD-ALGORITHM must hold exactly one algorithm")
        return cls(*entries[0])


@attrs.frozen(slots=True)
class PasswordAlgorithms:
    TYPE: ClassVar[int] = AttrType.PASSWORD_ALGORITHMS
    algorithms: tuple[tuple[int, bytes], ...]

    def encode_value(self, transaction_id: bytes) -> bytes:
        return b"".join(_encode_algorithm(a, p) for a, p in self.algorithms)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        return cls(tuple(_decode_algorithms(value, "PASSWORD-ALGORITHMS")))


@attrs.frozen(slots=True)
class UserHash:
    TYPE: ClassVar[int] = AttrType.USERHASH
    value: bytes

    def encode_value(self, transaction_id: bytes) -> bytes:
        if len(self.value) != 32:
            raise ValueError("USERHASH must be 32 bytes")
        return bytes(self.value)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        if len(value) != 32:
            raise _fail("USERHASH must be 32 bytes")
        return cls(value)


@attrs.frozen(slots=True)
class Fingerprint:
    """FINGERPRINT: CRC-32 of the message XOR 0x5354554E. Message.encode computes it."""

    TYPE: ClassVar[int] = AttrType.FINGERPRINT
    crc: int = 0

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _U32.pack(self.crc)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        return cls(_decode_u32(value, "FINGERPRINT"))


# --------------------------------------------------------------------------- ICE


@attrs.frozen(slots=True)
class Priority:
    TYPE: ClassVar[int] = AttrType.PRIORITY
    value: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _U32.pack(self.value)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        return cls(_decode_u32(value, "PRIORITY"))


@attrs.frozen(slots=True)
class UseCandidate:
    TYPE: ClassVar[int] = AttrType.USE_CANDIDATE

    def encode_value(self, transaction_id: bytes) -> bytes:
        return b""

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        if value:
            raise _fail("USE-CANDIDATE must be empty")
        return cls()


@attrs.frozen(slots=True)
class IceControlled:
    TYPE: ClassVar[int] = AttrType.ICE_CONTROLLED
    tiebreaker: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _U64.pack(self.tiebreaker)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        if len(value) != 8:
            raise _fail("ICE-CONTROLLED must be 8 bytes")
        return cls(_U64.unpack(value)[0])


@attrs.frozen(slots=True)
class IceControlling:
    TYPE: ClassVar[int] = AttrType.ICE_CONTROLLING
    tiebreaker: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _U64.pack(self.tiebreaker)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        if len(value) != 8:
            raise _fail("ICE-CONTROLLING must be 8 bytes")
        return cls(_U64.unpack(value)[0])


# --------------------------------------------------------------------------- unknown


@attrs.frozen(slots=True)
class UnknownAttribute:
    """Any attribute type we do not model, kept raw (``type`` is the wire code)."""

    type: int
    value: bytes

    def encode_value(self, transaction_id: bytes) -> bytes:
        return bytes(self.value)


Attribute = (
    MappedAddress
    | XorMappedAddress
    | XorPeerAddress
    | XorRelayedAddress
    | AlternateServer
    | Username
    | Realm
    | Nonce
    | Software
    | ErrorCode
    | UnknownAttributes
    | Lifetime
    | RequestedTransport
    | RequestedAddressFamily
    | AdditionalAddressFamily
    | AddressErrorCode
    | ChannelNumber
    | Data
    | EvenPort
    | ReservationToken
    | DontFragment
    | ConnectionId
    | MessageIntegrity
    | MessageIntegritySha256
    | PasswordAlgorithm
    | PasswordAlgorithms
    | UserHash
    | Fingerprint
    | Priority
    | UseCandidate
    | IceControlled
    | IceControlling
    | UnknownAttribute
)

MODELLED: tuple[type[Attribute], ...] = (
    MappedAddress,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
    AlternateServer,
    Username,
    Realm,
    Nonce,
    Software,
    ErrorCode,
    UnknownAttributes,
    Lifetime,
    RequestedTransport,
    RequestedAddressFamily,
    AdditionalAddressFamily,
    AddressErrorCode,
    ChannelNumber,
    Data,
    EvenPort,
    ReservationToken,
    DontFragment,
    ConnectionId,
    MessageIntegrity,
    MessageIntegritySha256,
    PasswordAlgorithm,
    PasswordAlgorithms,
    UserHash,
    Fingerprint,
    Priority,
    UseCandidate,
    IceControlled,
    IceControlling,
)

# wire type -> decoder(value, transaction_id)
DECODERS = {kind.TYPE: kind.decode_value for kind in MODELLED}  # type: ignore[union-attr]


def attribute_type(attr: Attribute) -> int:
    """The wire type code of an attribute instance."""
    if isinstance(attr, UnknownAttribute):
        return attr.type
    return attr.TYPE
