"""The HTTP access gate of spreed-signaling: `allowed_ips` plus `trusted_proxies`.

The client's IP is the socket peer, unless the peer is a trusted proxy: then a valid
`X-Real-IP` wins, else the `X-Forwarded-For` hops are walked right to left and the first
untrusted hop is the client (the left-most one when all are trusted).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from relay.config import IPAddress, IPNetwork


def _parse_ip(text: str) -> IPAddress | None:
    t = text.strip()
    if t.startswith("[") and "]" in t:
        t = t[1 : t.index("]")]
    try:
        ip = ipaddress.ip_address(t)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _in(ip: IPAddress, nets: Iterable[IPNetwork]) -> bool:
    return any(ip.version == n.version and ip in n for n in nets)


def is_trusted_proxy(peer: str, trusted_proxies: Iterable[IPNetwork]) -> bool:
    """True when the socket peer is one of the trusted proxies."""
    ip = _parse_ip(peer)
    return ip is not None and _in(ip, trusted_proxies)


def real_client_ip(
    peer: str,
    headers: Iterable[tuple[str, str]],
    trusted_proxies: Iterable[IPNetwork],
) -> IPAddress | None:
    """The client IP to gate on; None when even the socket peer is not an IP."""
    peer_ip = _parse_ip(peer)
    if peer_ip is None:
        return None
    trusted = tuple(trusted_proxies)
    if not _in(peer_ip, trusted):
        return peer_ip
    real: str | None = None
    forwarded: list[str] = []
    for name, value in headers:
        lname = name.lower()
        if lname == "x-real-ip" and real is None:
            real = value
        elif lname == "x-forwarded-for":
            forwarded.extend(p for p in (x.strip() for x in value.split(",")) if p)
    if real is not None:
        ip = _parse_ip(real)
        if ip is not None:
            return ip
    hops = [ip for ip in (_parse_ip(h) for h in forwarded) if ip is not None]
    for ip in reversed(hops):
        if not _in(ip, trusted):
            return ip
    if hops:
        return hops[0]
    return peer_ip


def is_allowed(
    peer: str,
    headers: Iterable[tuple[str, str]],
    allowed_ips: Iterable[IPNetwork],
    trusted_proxies: Iterable[IPNetwork],
) -> bool:
    ip = real_client_ip(peer, headers, trusted_proxies)
    return ip is not None and _in(ip, allowed_ips)
