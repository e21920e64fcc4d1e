"""Peer policy: which peers a listener may relay to (STUNner's clusters), safe by default.

A peer is admitted when it lies in an endpoint of some cluster on the listener's `routes`
(network and, at send time, port range).  One rule for both families: a broad cluster such
as 0.0.0.0/0 or ::/0 reaches public peers only.  Every non-public range is refused inside
it — loopback, unspecified, link-local (cloud metadata), multicast, reserved, broadcast, and
the private ranges: 10/8, 172.16/12, 192.168/16, 100.64/10 (carrier-grade NAT), 198.18/15
(benchmarking), IPv6 ULA fc00::/7 and site-local fec0::/10 — after unwrapping every
IPv4-in-IPv6 form (::ffff:a.b.c.d, SIIT's ::ffff:0:a.b.c.d, ::a.b.c.d, 64:ff9b::/96,
2002::/16).  Such a range is admitted only through a cluster endpoint that lies entirely
inside it: an operator who writes `10.0.0.0/8` or `127.0.0.1/32` means it.  relay's own
listener, metrics, health and signaling ports are refused always.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import attrs

from relay.config import ClusterConfig, Config, IPAddress, IPNetwork, ListenerConfig, PortRange

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# (network, reason) — order matters only for the reported reason.
DANGEROUS: tuple[tuple[IPNetwork, str], ...] = (
    (_V4("127.0.0.0/8"), "loopback"),
    (_V4("0.0.0.0/8"), "unspecified"),
    (_V4("169.254.0.0/16"), "link_local"),
    (_V4("224.0.0.0/4"), "multicast"),
    (_V4("255.255.255.255/32"), "broadcast"),
    (_V4("240.0.0.0/4"), "reserved"),
    (_V4("10.0.0.0/8"), "private"),
    (_V4("172.16.0.0/12"), "private"),
    (_V4("192.168.0.0/16"), "private"),
    (_V4("100.64.0.0/10"), "private"),  # shared address space (RFC 6598): behind a CGN
    (_V4("198.18.0.0/15"), "reserved"),  # benchmarking (RFC 2544)
    (_V6("::1/128"), "loopback"),
    (_V6("::/128"), "unspecified"),
    (_V6("fe80::/10"), "link_local"),
    (_V6("ff00::/8"), "multicast"),
    (_V6("fc00::/7"), "private"),
    (_V6("fec0::/10"), "private"),
    # Local-use NAT64 (RFC 8215): the embedded IPv4 address sits where the prefix length
    # puts it, so it cannot be unwrapped reliably; refuse the whole range.
    (_V6("64:ff9b:1::/48"), "reserved"),
)

_MAPPED = _V6("::ffff:0:0/96")
_TRANSLATED = _V6("::ffff:0:0:0/96")  # SIIT's IPv4-translated form (RFC 7915, RFC 2765)
_COMPAT = _V6("::/96")
_NAT64 = _V6("64:ff9b::/96")
_SIX_TO_FOUR = _V6("2002::/16")


def canonical_ip(ip: IPAddress) -> IPAddress:
    """Unwrap IPv4 addresses embedded in IPv6 so policy sees what the kernel would reach."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _MAPPED or ip in _TRANSLATED:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip in _COMPAT and int(ip) > 1:  # :: and ::1 are IPv6 themselves
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip in _SIX_TO_FOUR:
            return ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF)
    return ip


def danger_reason(ip: IPAddress) -> tuple[str, IPNetwork] | None:
    for net, reason in DANGEROUS:
        if ip.version == net.version and ip in net:
            return reason, net
    return None


@attrs.frozen
class Verdict:
    """A policy decision: `cluster` names the admitting cluster, else `reason` says why not."""

    cluster: str | None
    reason: str | None = None
    any_port: bool = False  # the admitting endpoint allows every port

    @property
    def allowed(self) -> bool:
        return self.cluster is not None


class PeerPolicy:
    """Decides for each listener whether a peer address may be relayed to."""

    CACHE_LIMIT = 65536

    def __init__(
        self,
        listeners: Iterable[ListenerConfig],
        clusters: Iterable[ClusterConfig],
        own_addresses: Iterable[tuple[str, int]] = (),
    ) -> None:
        by_name = {c.name: c for c in clusters}
        self._routes: dict[str, tuple[ClusterConfig, ...]] = {
            lis.name: tuple(by_name[r] for r in lis.routes if r in by_name) for lis in listeners
        }
        self._own_ports: set[int] = set()
        self._own: set[tuple[IPAddress, int]] = set()
        self.set_own_addresses(own_addresses)
        self._ip_cache: dict[tuple[str, str], Verdict] = {}
        self._port_cache: dict[tuple[str, str, int], Verdict] = {}
        # Resolved addresses of STRICT_DNS clusters: cluster name -> set of IPs.
        self.resolved: dict[str, frozenset[IPAddress]] = {}

    @classmethod
    def from_config(cls, config: Config, own_addresses: Iterable[tuple[str, int]] = ()
                    ) -> PeerPolicy:
        return cls(config.listeners, config.clusters, own_addresses)

    def reconfigure(self, listeners: Iterable[ListenerConfig],
                    clusters: Iterable[ClusterConfig]) -> None:
        """A reload: new routes and clusters, decided afresh from the next check on (the
        object stays, so the data-plane loops holding it see the change).  Permissions
        already installed keep their admitting cluster until they expire."""
        by_name = {c.name: c for c in clusters}
        self._routes = {
            lis.name: tuple(by_name[r] for r in lis.routes if r in by_name) for lis in listeners
        }
        self.resolved = {n: ips for n, ips in self.resolved.items() if n in by_name}
        self.clear_cache()

    def set_own_addresses(self, addrs: Iterable[tuple[str, int]]) -> None:
        self._own = set()
        self._own_ports = set()
        for host, port in addrs:
            try:
                ip = canonical_ip(ipaddress.ip_address(host))
            except ValueError:
                continue
            self._own.add((ip, port))
            self._own_ports.add(port)
        self.clear_cache()

    def clear_cache(self) -> None:
        if hasattr(self, "_ip_cache"):
            self._ip_cache.clear()
            self._port_cache.clear()

    def set_resolved(self, cluster: str, ips: Iterable[IPAddress]) -> None:
        self.resolved[cluster] = frozenset(canonical_ip(ip) for ip in ips)
        self.clear_cache()

    # -- decisions ------------------------------------------------------------------------

    def check_ip(self, listener: str, ip_text: str) -> Verdict:
        """Permission-time check: is this peer IP admitted by any cluster of the listener?"""
        key = (listener, ip_text)
        v = self._ip_cache.get(key)
        if v is None:
            v = self._decide(listener, ip_text, None)
            if len(self._ip_cache) >= self.CACHE_LIMIT:
                self._ip_cache.clear()
            self._ip_cache[key] = v
        return v

    def check(self, listener: str, ip_text: str, port: int) -> Verdict:
        """Send-time check with the port: cluster port ranges and relay's own ports."""
        key = (listener, ip_text, port)
        v = self._port_cache.get(key)
        if v is None:
            v = self._decide(listener, ip_text, port)
            if len(self._port_cache) >= self.CACHE_LIMIT:
                self._port_cache.clear()
            self._port_cache[key] = v
        return v

    def _decide(self, listener: str, ip_text: str, port: int | None) -> Verdict:
        try:
            raw_ip = ipaddress.ip_address(ip_text.split("%", 1)[0])
        except ValueError:
            return Verdict(None, "reserved")
        ip = canonical_ip(raw_ip)
        if port is not None and port == 0:
            return Verdict(None, "reserved")
        if port is not None and port in self._own_ports and self._is_own(ip, port):
            return Verdict(None, "own_address")
        danger = danger_reason(ip)
        clusters = self._routes.get(listener, ())
        best: Verdict | None = None
        saw_network = False
        for cluster in clusters:
            if cluster.type == "STRICT_DNS":
                if ip in self.resolved.get(cluster.name, frozenset()) and danger is None:
                    return Verdict(cluster.name, any_port=True)
                continue
            for ep in cluster.endpoints:
                if not _contains(ep, ip):
                    continue
                if danger is not None and not _inside(ep.network, danger[1]):
                    continue
                saw_network = True
                # "Any port" lets the data plane skip the per-datagram check; never for an
                # address relay itself listens on (its own ports must stay refused).
                full = ep.min_port == 0 and ep.max_port == 65535 and not self._may_be_own(ip)
                if port is None or ep.min_port <= port <= ep.max_port:
                    if best is None or (full and not best.any_port):
                        best = Verdict(cluster.name, any_port=full)
        if best is not None:
            return best
        if saw_network:
            return Verdict(None, "port_not_allowed")
        if danger is not None:
            return Verdict(None, danger[0])
        return Verdict(None, "no_route")

    def _may_be_own(self, ip: IPAddress) -> bool:
        """Whether some port of `ip` is one of relay's own addresses."""
        return any(self._is_own(ip, port) for port in self._own_ports)

    def _is_own(self, ip: IPAddress, port: int) -> bool:
        if (ip, port) in self._own:
            return True
        # A listener on 0.0.0.0 / :: is reachable on every local address, loopback included.
        for own_ip, own_port in self._own:
            if own_port == port and own_ip.is_unspecified and own_ip.version == ip.version:
                return True
        return ip.is_loopback and any(p == port and (o.is_loopback or o.is_unspecified)
                                      for o, p in self._own)


def _contains(ep: PortRange, ip: IPAddress) -> bool:
    return ip.version == ep.network.version and ip in ep.network


def _inside(inner: IPNetwork, outer: IPNetwork) -> bool:
    return inner.version == outer.version and inner.subnet_of(outer)  # type: ignore[arg-type]
