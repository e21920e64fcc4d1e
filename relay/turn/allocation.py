"""Allocation state: plain slotted objects the data plane reads with one dict lookup.

An allocation is keyed by its client transport address on a listener (the 5-tuple for UDP:
protocol and server address are the listener's).  Permissions are keyed by peer IP text,
channels by number and by (peer IP, peer port).  Expiry is by deadline: the sweeper compares
`expires` fields with the clock; nothing here runs a timer.
"""

from __future__ import annotations

import random
from typing import Any, Protocol

from relay.turn.stats import ConnectionStats

# A transport address as the socket layer reports it: (ip, port) or (ip, port, flow, scope).
# A dict key of the allocation tables and a sendto target; the core reads [0] and [1].
Address = tuple[Any, ...]


class RelayEndpoint(Protocol):
    """One relayed transport address of an allocation (the I/O layer owns the socket)."""

    family: int  # 1 = IPv4, 2 = IPv6 (the STUN address family codes)
    ip: str  # advertised in XOR-RELAYED-ADDRESS
    port: int


class RelayPortAllocator(Protocol):
    """How the core gets relay endpoints: the I/O layer binds and frees the sockets.

    Binding is synchronous (a non-blocking bind, never an await) and its result decides the
    answer (the port in XOR-RELAYED-ADDRESS, or 508), so the core asks for it in the middle
    of processing an Allocate rather than returning a request for it and resuming later.
    Every endpoint `open` returned goes back through `release` exactly once: when its
    allocation is deleted, its reservation lapses or is refused, or the Allocate fails."""

    def open(self, listener: str, family: int, mode: str
             ) -> tuple[RelayEndpoint, RelayEndpoint | None]:
        """(endpoint, reserved next endpoint or None) on `listener` for `family` (1 = IPv4,
        2 = IPv6); mode "any", "even" or "pair" (an even port and the next one reserved).
        Raises OSError when no port is free."""
        ...

    def release(self, endpoint: RelayEndpoint) -> None:
        """Close the endpoint's socket and free its port."""
        ...


class Permission:
    __slots__ = ("any_port", "cluster", "expires")

    def __init__(self, expires: float, cluster: ConnectionStats, any_port: bool) -> None:
        self.expires = expires
        self.cluster = cluster  # the cluster that admitted this peer: its traffic counters
        self.any_port = any_port  # the admitting endpoint allows every port


class Channel:
    __slots__ = ("endpoint", "expires", "number", "peer", "permission")

    def __init__(
        self,
        number: int,
        peer: tuple[str, int],
        expires: float,
        endpoint: RelayEndpoint,
        permission: Permission,
    ) -> None:
        self.number = number
        self.peer = peer
        self.expires = expires
        self.endpoint = endpoint  # the relay endpoint of the peer's family
        self.permission = permission


class Allocation:
    """One TURN allocation. `io` is for the I/O layer (sockets, cancel scope)."""

    __slots__ = (
        "alive",
        "alloc_response",
        "alloc_txid",
        "channels",
        "client",
        "created",
        "expires",
        "integrity",
        "io",
        "key",
        "listener",
        "next_deadline",
        "peer_channels",
        "permissions",
        "quarantine_numbers",
        "quarantine_peers",
        "relays",
        "user_id",
        "username",
    )

    def __init__(
        self,
        listener: str,
        client: Address,
        username: str,
        user_id: str,
        key: bytes,
        created: float,
        expires: float,
    ) -> None:
        self.listener = listener
        self.client = client  # the address as the socket reports it: a dict key and sendto target
        self.username = username
        self.user_id = user_id
        self.key = key
        self.integrity = "sha1"
        self.created = created
        self.expires = expires
        self.relays: dict[int, RelayEndpoint] = {}  # family -> endpoint
        self.permissions: dict[str, Permission] = {}
        self.channels: dict[int, Channel] = {}
        self.peer_channels: dict[tuple[str, int], Channel] = {}
        # Expired pairings kept 5 minutes (RFC 8656 §12): number -> (peer, until), peer -> ...
        self.quarantine_numbers: dict[int, tuple[tuple[str, int], float]] = {}
        self.quarantine_peers: dict[tuple[str, int], tuple[int, float]] = {}
        self.next_deadline = float("inf")  # earliest permission/channel/quarantine expiry
        self.alloc_txid = b""
        self.alloc_response = b""
        self.alive = True
        self.io: object = None  # the I/O layer's handle (sender, task), opaque to the core

    def note_deadline(self, when: float) -> None:
        if when < self.next_deadline:
            self.next_deadline = when

    @staticmethod
    def indication_id() -> bytes:
        return random.randbytes(12)
