"""A small TURN-over-UDP client (RFC 8656) with long-term credentials, on Trio.

It drives the control plane (Allocate, Refresh, CreatePermission, ChannelBind) for the load
generators and for integration tests, and can send and receive relayed data the slow, simple
way. The load generators switch to raw non-blocking sockets for the data itself.

Usage::

    async with TurnClient(("127.0.0.1", 3478), "user", "pass") as client:
        await client.allocate()
        await client.channel_bind(0x4000, peer)
        await client.send_channel(0x4000, b"hello")
        kind, channel, payload = await client.recv()
"""

from __future__ import annotations

import math
import os
import socket
from collections import deque
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import trio

from relay.stun import (
    AdditionalAddressFamily,
    Attribute,
    ChannelNumber,
    Data,
    ErrorCode,
    EvenPort,
    Lifetime,
    Message,
    MessageClass,
    MessageIntegrity,
    MessageIntegritySha256,
    Method,
    Nonce,
    Realm,
    RequestedAddressFamily,
    RequestedTransport,
    Software,
    StunDecodeError,
    Username,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
    decode,
    encode_channel_data,
    is_channel_data,
    long_term_key,
    parse_channel_data,
    verify_integrity,
)

__all__ = ["MISMATCH_RETRIES", "TurnClient", "TurnError"]

UDP = 17
MAX_DATAGRAM = 65536
# Bounded retries of the authentication dance (401 then 438s) per request.
MAX_AUTH_RETRIES = 3
# What the load generators pass as allocate(new_port_on_mismatch=...).
MISMATCH_RETRIES = 3


class TurnError(Exception):
    """An error response (or an unusable success response) from the TURN server."""

    def __init__(self, code: int, reason: str, response: Message) -> None:
        super().__init__(f"{code} {reason}".strip())
        self.code = code
        self.reason = reason
        self.response = response


def new_transaction_id() -> bytes:
    return os.urandom(12)


def _loopback_for(host: str) -> str:
    return "::1" if ":" in host else "127.0.0.1"


class TurnClient:
    """One UDP socket (trio) talking to one TURN server with long-term credentials.

    ``rto`` is the initial retransmission timeout (RFC 8489 uses 0.5 s; it doubles on every
    retransmission, bounded by the request's ``timeout``).

    The transport is four methods (``_open_socket``, ``close``, ``_recv_datagram``,
    ``send_raw``); a subclass over a byte stream replaces those and sets ``reliable``.
    """

    # A reliable transport (TCP, TLS) carries each request once: no retransmission.
    reliable = False

    def __init__(
        self,
        server: tuple[str, int],
        username: str,
        password: str,
        *,
        bind: str | None = None,
        software: str | None = None,
        integrity: str = "sha1",
        rto: float = 0.5,
        verify_responses: bool = True,
        local_port: int = 0,
    ) -> None:
        if integrity not in ("sha1", "sha256"):
            raise ValueError("integrity must be 'sha1' or 'sha256'")
        self.server = (server[0], int(server[1]))
        self.username = username
        self.password = password
        self.bind_host = bind if bind is not None else _loopback_for(server[0])
        self.local_port = local_port  # the first socket's port; 0 = any
        self.software = software
        self.integrity = integrity
        self.rto = rto
        self.verify_responses = verify_responses
        self.family = socket.AF_INET6 if ":" in self.server[0] else socket.AF_INET
        self.sock: trio.socket.SocketType | None = None
        self.local_address: tuple[str, int] = ("", 0)
        self.realm: str | None = None
        self.nonce: str | None = None
        self.key: bytes | None = None
        # Results of the last Allocate.
        self.relayed: tuple[str, int] | None = None
        self.relayed_all: list[tuple[str, int]] = []
        self.lifetime: int | None = None
        self.mapped: tuple[str, int] | None = None
        self._pending: deque[tuple[str, Any, bytes]] = deque()
        # Sockets given up after a 437: kept open until close() so the kernel cannot hand
        # their ports (5-tuples the server still holds) straight back to us.
        self._parked: list[trio.socket.SocketType] = []
        self.mismatches = 0  # 437s answered by moving to a new port (allocate)
        self._lock = trio.Lock()
        self._buf = bytearray(MAX_DATAGRAM)

    # -- lifecycle -----------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        await self._open_socket(self.local_port)
        return self

    async def _open_socket(self, port: int = 0) -> None:
        sock = trio.socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            await sock.bind((self.bind_host, port))
            name = sock.getsockname()
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.local_address = (str(name[0]), int(name[1]))

    async def new_port(self) -> None:
        """Move to a fresh local port (a new 5-tuple); the old socket stays open (parked)
        until close(), so the kernel cannot give its port back to us meanwhile."""
        old = self._socket()
        await self._open_socket()
        self._parked.append(old)
        self._pending.clear()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        for sock in self._parked:
            sock.close()
        self._parked.clear()

    def fileno(self) -> int:
        return self._socket().fileno()

    def stdlib_socket(self) -> socket.socket:
        """A plain non-blocking stdlib socket on a duplicate of our descriptor (data fast path)."""
        sock = socket.socket(self.family, socket.SOCK_DGRAM, fileno=os.dup(self.fileno()))
        sock.setblocking(False)
        return sock

    def _socket(self) -> trio.socket.SocketType:
        if self.sock is None:
            raise RuntimeError("TurnClient is not open (use 'async with')")
        return self.sock

    # -- wire helpers ------------------------------------------------------------------
    def _auth_attributes(self) -> list[Attribute]:
        assert self.realm is not None and self.nonce is not None
        return [Username(self.username), Realm(self.realm), Nonce(self.nonce)]

    def _encode(self, msg: Message, authenticate: bool) -> bytes:
        if self.software is not None and msg.get(Software) is None:
            msg.attributes.insert(0, Software(self.software))
        if authenticate and self.key is not None:
            msg.attributes.extend(self._auth_attributes())
            return msg.encode(key=self.key, integrity=self.integrity, fingerprint=True)
        return msg.encode(fingerprint=True)

    def _classify(self, data: bytes) -> tuple[str, Any, bytes] | None:
        """Turn one datagram from the server into a recv() item (None if undecodable)."""
        if not data:
            return None
        if is_channel_data(data[0]):
            try:
                channel, length = parse_channel_data(data, len(data))
            except StunDecodeError:
                return None
            return ("channel", channel, bytes(data[4:4 + length]))
        try:
            msg = decode(data)
        except StunDecodeError:
            return None
        if msg.method == Method.DATA and msg.cls == MessageClass.INDICATION:
            peer = msg.get(XorPeerAddress)
            payload = msg.get(Data)
            if peer is not None and payload is not None:
                return ("data", (peer.ip, peer.port), bytes(payload.value))
        return ("stun", msg, data)

    async def _recv_datagram(self) -> bytes:
        sock = self._socket()
        while True:
            data, addr = await sock.recvfrom(MAX_DATAGRAM)
            if (addr[0], addr[1]) == self.server or self._same_server(addr):
                return bytes(data)
            # Anything not from our server is ignored (never happens on a quiet loopback).

    def _same_server(self, addr: Any) -> bool:
        try:
            return bool(
                socket.inet_pton(self.family, addr[0]) == socket.inet_pton(self.family,
                                                                           self.server[0])
                and addr[1] == self.server[1]
            )
        except OSError:
            return False

    async def _transact(
        self, data: bytes, transaction_id: bytes, timeout: float, retransmit: bool  # noqa: ASYNC109
    ) -> Message:
        """Send ``data`` until the response carrying ``transaction_id`` arrives, within
        ``timeout``: retransmitted with RTO doubling when ``retransmit`` and the transport is
        not reliable (RFC 8489 §6.2.1), else sent once (§6.2.2)."""
        resend = retransmit and not self.reliable
        with trio.fail_after(timeout):
            rto = self.rto
            while True:
                await self.send_raw(data)
                with trio.move_on_after(rto if resend else math.inf):
                    return await self._response(transaction_id)
                rto *= 2

    async def _response(self, transaction_id: bytes) -> Message:
        """Read until the success or error response to ``transaction_id``; everything else
        received meanwhile is kept for recv()."""
        while True:
            item = self._classify(await self._recv_datagram())
            if item is None:
                continue
            if item[0] == "stun":
                msg: Message = item[1]
                if (msg.transaction_id == transaction_id
                        and msg.cls in (MessageClass.SUCCESS, MessageClass.ERROR)):
                    return msg
            self._pending.append(item)

    # -- requests ----------------------------------------------------------------------
    async def raw_request(self, msg_bytes: bytes, transaction_id: bytes, *,
                          timeout: float = 2.0) -> Message:  # noqa: ASYNC109
        """Send exact bytes; return whatever response carries ``transaction_id``."""
        async with self._lock:
            return await self._transact(bytes(msg_bytes), transaction_id, timeout, True)

    async def request(self, msg: Message, *, authenticate: bool = True, timeout: float = 2.0,  # noqa: ASYNC109
                      retransmit: bool = True) -> Message:
        """Run one request transaction; handles 401/438; raises TurnError on error responses."""
        base = list(msg.attributes)
        async with self._lock:
            with trio.fail_after(timeout):
                for _attempt in range(MAX_AUTH_RETRIES + 1):
                    msg = Message(method=msg.method, cls=MessageClass.REQUEST,
                                  transaction_id=new_transaction_id(), attributes=list(base))
                    data = self._encode(msg, authenticate)
                    resp = await self._transact(data, msg.transaction_id, timeout + 1.0,
                                                retransmit)
                    if resp.cls == MessageClass.SUCCESS:
                        self._check_response(resp, authenticate)
                        return resp
                    err = resp.get(ErrorCode)
                    code = err.code if err is not None else 0
                    reason = err.reason if err is not None else "error response without ERROR-CODE"
                    if authenticate and code in (401, 438):
                        realm = resp.get(Realm)
                        nonce = resp.get(Nonce)
                        if nonce is not None and (realm is not None or self.realm is not None):
                            already = self.key is not None and code == 401
                            if realm is not None:
                                self.realm = realm.value
                            self.nonce = nonce.value
                            assert self.realm is not None
                            self.key = long_term_key(self.username, self.realm, self.password)
                            if not already:
                                continue
                    raise TurnError(code, reason, resp)
        raise TurnError(0, "authentication retries exhausted", resp)

    def _check_response(self, resp: Message, authenticate: bool) -> None:
        if not (self.verify_responses and authenticate and self.key is not None):
            return
        if resp.get(MessageIntegrity) is None and resp.get(MessageIntegritySha256) is None:
            return
        if not verify_integrity(resp, self.key):
            raise TurnError(0, "response MESSAGE-INTEGRITY does not verify", resp)

    async def binding(self) -> tuple[str, int]:
        resp = await self.request(
            Message(method=Method.BINDING, cls=MessageClass.REQUEST,
                    transaction_id=new_transaction_id()),
            authenticate=False,
        )
        xma = resp.get(XorMappedAddress)
        if xma is None:
            raise TurnError(0, "Binding response without XOR-MAPPED-ADDRESS", resp)
        return (xma.ip, xma.port)

    async def allocate(
        self,
        *,
        lifetime: int | None = None,
        family: int | None = None,
        additional_family: int | None = None,
        even_port: bool | None = None,
        extra: Sequence[Attribute] = (),
        timeout: float = 2.0,  # noqa: ASYNC109
        new_port_on_mismatch: int = 0,
    ) -> Message:
        """Allocate a relayed address.  ``new_port_on_mismatch``: on a 437 (Allocation
        Mismatch: the server still holds an allocation on this 5-tuple, e.g. a recently
        deleted one whose port the kernel gave us again), retry up to that many times from a
        fresh local port, as RFC 8656 §7.4 suggests."""
        attrs: list[Attribute] = [RequestedTransport(UDP)]
        if lifetime is not None:
            attrs.append(Lifetime(lifetime))
        if family is not None:
            attrs.append(RequestedAddressFamily(family))
        if additional_family is not None:
            attrs.append(AdditionalAddressFamily(additional_family))
        if even_port is not None:
            attrs.append(EvenPort(even_port))
        attrs.extend(extra)
        for attempt in range(new_port_on_mismatch + 1):
            try:
                resp = await self.request(
                    Message(method=Method.ALLOCATE, cls=MessageClass.REQUEST,
                            transaction_id=new_transaction_id(), attributes=list(attrs)),
                    timeout=timeout,
                )
                break
            except TurnError as exc:
                if exc.code != 437 or attempt == new_port_on_mismatch:
                    raise
                self.mismatches += 1
                await self.new_port()
        relayed = [(a.ip, a.port) for a in resp.get_all(XorRelayedAddress)]
        if not relayed:
            raise TurnError(0, "Allocate success without XOR-RELAYED-ADDRESS", resp)
        self.relayed_all = relayed
        self.relayed = relayed[0]
        lt = resp.get(Lifetime)
        self.lifetime = lt.seconds if lt is not None else None
        xma = resp.get(XorMappedAddress)
        self.mapped = (xma.ip, xma.port) if xma is not None else None
        return resp

    async def refresh(self, lifetime: int | None = None, *, timeout: float = 2.0) -> Message:  # noqa: ASYNC109
        attrs: list[Attribute] = [] if lifetime is None else [Lifetime(lifetime)]
        resp = await self.request(
            Message(method=Method.REFRESH, cls=MessageClass.REQUEST,
                    transaction_id=new_transaction_id(), attributes=attrs),
            timeout=timeout,
        )
        lt = resp.get(Lifetime)
        if lt is not None:
            self.lifetime = lt.seconds
        return resp

    async def create_permission(self, *peers: tuple[str, int], timeout: float = 2.0) -> Message:  # noqa: ASYNC109
        if not peers:
            raise ValueError("create_permission needs at least one peer")
        attrs: list[Attribute] = [XorPeerAddress(ip, port) for ip, port in peers]
        return await self.request(
            Message(method=Method.CREATE_PERMISSION, cls=MessageClass.REQUEST,
                    transaction_id=new_transaction_id(), attributes=attrs),
            timeout=timeout,
        )

    async def channel_bind(self, channel: int, peer: tuple[str, int], *,
                           timeout: float = 2.0) -> Message:  # noqa: ASYNC109
        attrs: list[Attribute] = [ChannelNumber(channel), XorPeerAddress(peer[0], peer[1])]
        return await self.request(
            Message(method=Method.CHANNEL_BIND, cls=MessageClass.REQUEST,
                    transaction_id=new_transaction_id(), attributes=attrs),
            timeout=timeout,
        )

    # -- data --------------------------------------------------------------------------
    def send_indication_bytes(self, peer: tuple[str, int], data: bytes) -> bytes:
        msg = Message(method=Method.SEND, cls=MessageClass.INDICATION,
                      transaction_id=new_transaction_id(),
                      attributes=[XorPeerAddress(peer[0], peer[1]), Data(bytes(data))])
        return msg.encode()

    async def send_indication(self, peer: tuple[str, int], data: bytes) -> None:
        await self.send_raw(self.send_indication_bytes(peer, data))

    async def send_channel(self, channel: int, data: bytes) -> None:
        await self.send_raw(encode_channel_data(channel, data))

    async def send_raw(self, data: bytes) -> None:
        await self._socket().sendto(data, self.server)

    async def recv(self, timeout: float = 2.0) -> tuple[str, Any, bytes]:  # noqa: ASYNC109
        """Next datagram from the server: ("channel", number, payload), ("data", peer, payload)
        or ("stun", Message, raw). Raises trio.TooSlowError after ``timeout``."""
        if self._pending:
            return self._pending.popleft()
        async with self._lock:
            if self._pending:
                return self._pending.popleft()
            with trio.fail_after(timeout):
                while True:
                    item = self._classify(await self._recv_datagram())
                    if item is not None:
                        return item
