"""The allowed_ips / trusted_proxies gate (spreed-signaling's algorithm), without sockets."""

from __future__ import annotations

import ipaddress

import pytest

from relay.access import is_allowed, real_client_ip
from relay.config import StatsConfig

DEFAULT = StatsConfig()
ip = ipaddress.ip_address


def nets(*items: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(i) for i in items)


def test_defaults_allow_only_loopback_direct_peers() -> None:
    allowed, trusted = DEFAULT.allowed_ips, DEFAULT.trusted_proxies
    assert is_allowed("127.0.0.1", [], allowed, trusted)
    assert is_allowed("::1", [], allowed, trusted)
    assert is_allowed("::ffff:127.0.0.1", [], allowed, trusted)  # v4-mapped peer
    assert not is_allowed("127.0.0.2", [], allowed, trusted)  # /32, not /8
    assert not is_allowed("10.1.2.3", [], allowed, trusted)
    assert not is_allowed("2001:db8::1", [], allowed, trusted)


def test_cidr_allowlist() -> None:
    allowed = nets("10.0.0.0/8", "2001:db8::/32")
    assert is_allowed("10.200.0.1", [], allowed, ())
    assert is_allowed("2001:db8::99", [], allowed, ())
    assert not is_allowed("11.0.0.1", [], allowed, ())
    assert not is_allowed("127.0.0.1", [], allowed, ())


def test_forwarded_headers_from_untrusted_peer_are_ignored() -> None:
    allowed = nets("127.0.0.1/32")
    trusted = nets("192.168.0.0/16")
    spoof = [("X-Real-IP", "127.0.0.1"), ("X-Forwarded-For", "127.0.0.1")]
    assert real_client_ip("203.0.113.5", spoof, trusted) == ip("203.0.113.5")
    assert not is_allowed("203.0.113.5", spoof, allowed, trusted)


def test_trusted_proxy_x_real_ip_wins() -> None:
    allowed = nets("198.51.100.0/24")
    trusted = nets("10.0.0.0/8")
    headers = [("x-real-ip", "198.51.100.7"), ("x-forwarded-for", "203.0.113.9")]
    assert real_client_ip("10.0.0.2", headers, trusted) == ip("198.51.100.7")
    assert is_allowed("10.0.0.2", headers, allowed, trusted)
    # The proxy itself is not in allowed_ips, and it is the client without headers.
    assert not is_allowed("10.0.0.2", [], allowed, trusted)


def test_trusted_proxy_invalid_real_ip_falls_back_to_forwarded_for() -> None:
    trusted = nets("10.0.0.0/8")
    headers = [("X-Real-IP", "not-an-ip"), ("X-Forwarded-For", "198.51.100.7")]
    assert real_client_ip("10.0.0.2", headers, trusted) == ip("198.51.100.7")


def test_forwarded_for_walks_right_to_left_skipping_trusted_hops() -> None:
    trusted = nets("10.0.0.0/8")
    # client (spoofable left part), then the real client, then two trusted proxies.
    headers = [("X-Forwarded-For", "127.0.0.1, 203.0.113.4"), ("X-Forwarded-For", "10.0.0.9")]
    assert real_client_ip("10.0.0.2", headers, trusted) == ip("203.0.113.4")
    # The spoofed left-most loopback does not get through the gate.
    assert not is_allowed("10.0.0.2", headers, nets("127.0.0.1/32"), trusted)


def test_forwarded_for_all_trusted_gives_left_most() -> None:
    trusted = nets("10.0.0.0/8")
    headers = [("X-Forwarded-For", "10.1.1.1, 10.2.2.2")]
    assert real_client_ip("10.0.0.2", headers, trusted) == ip("10.1.1.1")


@pytest.mark.parametrize("value", ["[2001:db8::5]", " 2001:db8::5 "])
def test_forwarded_ipv6_forms(value: str) -> None:
    trusted = nets("::1/128")
    assert real_client_ip("::1", [("X-Real-IP", value)], trusted) == ip("2001:db8::5")


def test_peer_that_is_not_an_ip_is_refused() -> None:
    assert real_client_ip("unix-socket", [], ()) is None
    assert not is_allowed("", [], DEFAULT.allowed_ips, DEFAULT.trusted_proxies)


def test_garbage_forwarded_values_keep_the_peer() -> None:
    trusted = nets("127.0.0.0/8")
    headers = [("X-Forwarded-For", "garbage, , ;;"), ("X-Real-IP", "")]
    assert real_client_ip("127.0.0.1", headers, trusted) == ip("127.0.0.1")
