"""The counters the TURN core and its data plane increment: plain ints on slotted objects.

They live next to the code that counts (the core in `relay.turn.server`, the loops in
`relay.net`); `relay.metrics.collector` only reads them at scrape time and turns them into
metric families.  Nothing here allocates per packet or calls prometheus_client: the loops do
`x += 1`.  Every field is a plain int, dict of ints or `Histogram`, so the counters of
several worker processes can be summed.  Label values come from fixed sets (methods,
result codes, reasons), never from a client.
"""

from __future__ import annotations

from typing import Any

from relay.histogram import Histogram

__all__ = [
    "AUTH_FAILURE_REASONS",
    "DROP_REASONS",
    "LATENCY_BUCKETS",
    "LIFETIME_BUCKETS",
    "METHODS",
    "PEER_REFUSAL_REASONS",
    "QUOTA_KINDS",
    "ConnectionStats",
    "Histogram",
    "Traffic",
    "TurnStats",
    "add_stats",
    "reset_stats",
]


class Traffic:
    """Packets and bytes in each direction (rx = received by relay, tx = sent by relay)."""

    __slots__ = ("rx_bytes", "rx_packets", "tx_bytes", "tx_packets")

    def __init__(self) -> None:
        self.rx_packets = 0
        self.rx_bytes = 0
        self.tx_packets = 0
        self.tx_bytes = 0


class ConnectionStats:
    """One STUNner listener or cluster: active and total connections plus traffic.

    For a UDP listener a "connection" is an allocation; for a cluster it is a peer
    permission admitted through that cluster.
    """

    __slots__ = ("connections", "connections_total", "name", "traffic")

    def __init__(self, name: str) -> None:
        self.name = name
        self.connections = 0
        self.connections_total = 0
        self.traffic = Traffic()

    def opened(self) -> None:
        self.connections += 1
        self.connections_total += 1

    def closed(self) -> None:
        self.connections -= 1


# Label value sets: everything a label can take is listed here.
METHODS = ("binding", "allocate", "refresh", "create_permission", "channel_bind", "other")
AUTH_FAILURE_REASONS = (
    "missing_credentials",  # no USERNAME/MESSAGE-INTEGRITY: the ordinary first 401 challenge
    "unknown_user",
    "bad_integrity",
    "stale_nonce",
    "bad_nonce",
    "expired_credential",
    "malformed_username",
    "wrong_realm",
    "wrong_user",  # 441: another user on an existing allocation
)
PEER_REFUSAL_REASONS = (
    "no_route",  # outside every cluster on the listener's routes
    "port_not_allowed",  # inside a cluster network but outside its port range
    "loopback",
    "unspecified",
    "link_local",
    "multicast",
    "reserved",
    "broadcast",
    "private",
    "own_address",  # one of relay's own listener, relay, metrics or health addresses
    "family_mismatch",
)
DROP_REASONS = (
    "no_permission",
    "unbound_channel",
    "malformed",
    "send_buffer_full",
    "peer_not_allowed",
    "no_allocation",
    "ratelimited",
    "too_large",
)
QUOTA_KINDS = ("user", "total", "permissions", "channels", "ports", "draining")

LIFETIME_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400)
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)


class TurnStats:
    """Every counter of the TURN gateway."""

    __slots__ = (
        "allocation_lifetime",
        "allocations_active",
        "allocations_total",
        "auth_failures",
        "channels_active",
        "clusters",
        "drops",
        "listeners",
        "peer_refusals",
        "permissions_active",
        "quota_rejections",
        "request_latency",
        "requests",
    )

    def __init__(self) -> None:
        self.listeners: dict[str, ConnectionStats] = {}
        self.clusters: dict[str, ConnectionStats] = {}
        self.allocations_active = 0
        self.allocations_total = 0
        self.permissions_active = 0
        self.channels_active = 0
        # (method, result) -> count; result is "success" or an error code such as "401"
        self.requests: dict[tuple[str, str], int] = {}
        self.auth_failures: dict[str, int] = dict.fromkeys(AUTH_FAILURE_REASONS, 0)
        self.peer_refusals: dict[str, int] = dict.fromkeys(PEER_REFUSAL_REASONS, 0)
        self.drops: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.quota_rejections: dict[str, int] = dict.fromkeys(QUOTA_KINDS, 0)
        self.allocation_lifetime = Histogram(LIFETIME_BUCKETS)
        self.request_latency = Histogram(LATENCY_BUCKETS)

    def listener(self, name: str) -> ConnectionStats:
        st = self.listeners.get(name)
        if st is None:
            st = self.listeners[name] = ConnectionStats(name)
        return st

    def cluster(self, name: str) -> ConnectionStats:
        st = self.clusters.get(name)
        if st is None:
            st = self.clusters[name] = ConnectionStats(name)
        return st

    def count_request(self, method: str, result: str) -> None:
        key = (method, result)
        self.requests[key] = self.requests.get(key, 0) + 1


def _add_conn(into: dict[str, ConnectionStats], other: dict[str, ConnectionStats],
              gauges: bool) -> None:
    for name, st in other.items():
        mine = into.get(name)
        if mine is None:
            mine = into[name] = ConnectionStats(name)
        if gauges:
            mine.connections += st.connections
        mine.connections_total += st.connections_total
        a, b = mine.traffic, st.traffic
        a.rx_packets += b.rx_packets
        a.rx_bytes += b.rx_bytes
        a.tx_packets += b.tx_packets
        a.tx_bytes += b.tx_bytes


def _add_counts(into: dict[Any, int], other: dict[Any, int]) -> None:
    for key, n in other.items():
        into[key] = into.get(key, 0) + n


def add_stats(into: TurnStats, other: TurnStats, *, gauges: bool = True) -> None:
    """Add `other`'s counters to `into` (the workers' counters summed for one scrape);
    `gauges=False` leaves out what is current rather than cumulative (active allocations,
    permissions, channels, connections), for a worker that is gone."""
    if gauges:
        into.allocations_active += other.allocations_active
        into.permissions_active += other.permissions_active
        into.channels_active += other.channels_active
    into.allocations_total += other.allocations_total
    _add_conn(into.listeners, other.listeners, gauges)
    _add_conn(into.clusters, other.clusters, gauges)
    _add_counts(into.requests, other.requests)
    _add_counts(into.auth_failures, other.auth_failures)
    _add_counts(into.peer_refusals, other.peer_refusals)
    _add_counts(into.drops, other.drops)
    _add_counts(into.quota_rejections, other.quota_rejections)
    for mine, theirs in ((into.allocation_lifetime, other.allocation_lifetime),
                         (into.request_latency, other.request_latency)):
        for i, n in enumerate(theirs.counts):
            mine.counts[i] += n
        mine.sum += theirs.sum
        mine.count += theirs.count


def reset_stats(stats: TurnStats) -> None:
    """Every counter back to zero, the listeners and clusters kept (so the summed counters
    can be rebuilt in the object the collector holds)."""
    fresh = TurnStats()
    for name in stats.__slots__:
        if name in ("listeners", "clusters"):
            continue
        setattr(stats, name, getattr(fresh, name))
    for group in (stats.listeners, stats.clusters):
        for st in group.values():
            st.connections = st.connections_total = 0
            st.traffic = Traffic()
