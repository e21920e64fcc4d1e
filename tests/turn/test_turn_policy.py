"""Peer policy: clusters as the allowlist, dangerous ranges refused after unwrapping every
IPv4-in-IPv6 form, relay's own ports refused, cluster port ranges at send time."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from relay.config import Config
from relay.stun import AdditionalAddressFamily, ChannelNumber, Method, XorPeerAddress
from relay.turn.policy import PeerPolicy, canonical_ip
from relay.turn.server import FAMILY_V6
from tests.turn.core_harness import BOTH, Harness, make_config

OPEN = [{"name": "open", "type": "STATIC", "endpoints": ["0.0.0.0/0", "::/0"]}]


def policy(clusters: list[dict[str, Any]] | None = None, routes: tuple[str, ...] = ("open",),
           own: tuple[tuple[str, int], ...] = ()) -> PeerPolicy:
    cfg: Config = make_config(clusters=clusters if clusters is not None else OPEN,
                              routes=routes)
    return PeerPolicy.from_config(cfg, own)


@pytest.mark.parametrize(("text", "canonical"), [
    ("::ffff:127.0.0.1", "127.0.0.1"),
    ("::127.0.0.1", "127.0.0.1"),
    ("64:ff9b::7f00:1", "127.0.0.1"),
    ("2002:7f00:1::", "127.0.0.1"),
    ("2002:a9fe:a9fe:1234::1", "169.254.169.254"),
    ("::ffff:169.254.169.254", "169.254.169.254"),
    ("::ffff:0.0.0.0", "0.0.0.0"),
    ("::ffff:0:a9fe:a9fe", "169.254.169.254"),  # SIIT IPv4-translated (RFC 7915)
    ("::ffff:0:7f00:1", "127.0.0.1"),
    ("::", "::"),  # IPv6 unspecified and loopback are not IPv4-compatible forms
    ("::1", "::1"),
    ("2001:db8::1", "2001:db8::1"),
    ("10.1.2.3", "10.1.2.3"),
])
def test_canonical_ip_unwraps_ipv4_in_ipv6(text: str, canonical: str) -> None:
    assert canonical_ip(ipaddress.ip_address(text)) == ipaddress.ip_address(canonical)


DANGEROUS = [
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::127.0.0.1", "loopback"),
    ("64:ff9b::7f00:1", "loopback"),
    ("2002:7f00:1::", "loopback"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("::", "unspecified"),
    ("::ffff:0.0.0.0", "unspecified"),
    ("169.254.169.254", "link_local"),
    ("::ffff:169.254.169.254", "link_local"),
    ("64:ff9b::a9fe:a9fe", "link_local"),
    ("fe80::1", "link_local"),
    ("fe80::1%eth0", "link_local"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    ("fc00::1", "private"),
    ("fd12:3456::1", "private"),
    ("fec0::1", "private"),
    ("64:ff9b:1::7f00:1", "reserved"),  # local-use NAT64: embedding position varies
    ("::ffff:0:a9fe:a9fe", "link_local"),  # SIIT form of the metadata address
    ("::ffff:0:7f00:1", "loopback"),
    # private ranges: refused inside 0.0.0.0/0 as ULA is inside ::/0 (one rule, both families)
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "private"),
    ("100.127.255.254", "private"),
    ("::ffff:10.0.0.1", "private"),
    ("64:ff9b::a00:1", "private"),
    ("::ffff:0:c0a8:101", "private"),
    ("198.18.0.1", "reserved"),
    ("198.19.255.254", "reserved"),
    ("64:ff9b:1:7f00:1::", "reserved"),
]


@pytest.mark.parametrize(("ip", "reason"), DANGEROUS)
def test_dangerous_peers_are_refused_inside_an_open_cluster(ip: str, reason: str) -> None:
    p = policy()
    v = p.check_ip("udp", ip)
    assert (v.cluster, v.reason) == (None, reason)
    assert not p.check("udp", ip, 5000).allowed
    assert p.check("udp", "192.0.2.7", 5000).allowed
    assert p.check_ip("udp", "2001:db8::7").allowed


@pytest.mark.parametrize(("ip", "reason"), [
    (ip, reason) for ip, reason in DANGEROUS if "%" not in ip
])
def test_dangerous_peers_get_403_and_their_reason_counted(ip: str, reason: str) -> None:
    h = Harness(families=BOTH)
    alloc = h.allocated(AdditionalAddressFamily(FAMILY_V6))
    peer = XorPeerAddress(ip, 5000)
    h.request(Method.CREATE_PERMISSION, [peer]).expect_error(403)
    h.request(Method.CHANNEL_BIND, [ChannelNumber(0x4000), peer]).expect_error(403)
    assert h.stats.peer_refusals[reason] == 2
    assert alloc.permissions == {} and alloc.channels == {}


def test_a_loopback_endpoint_admits_loopback_but_only_that() -> None:
    p = policy([{"name": "local", "endpoints": ["127.0.0.1/32"]}], routes=("local",))
    assert p.check_ip("udp", "127.0.0.1").cluster == "local"
    assert p.check_ip("udp", "::ffff:127.0.0.1").cluster == "local"
    assert p.check("udp", "127.0.0.1", 9).allowed
    assert p.check_ip("udp", "127.0.0.2").reason == "loopback"
    assert p.check_ip("udp", "::1").reason == "loopback"
    assert p.check_ip("udp", "192.0.2.1").reason == "no_route"


def test_a_wide_network_containing_a_dangerous_range_does_not_admit_it() -> None:
    p = policy([{"name": "big", "endpoints": ["120.0.0.0/5"]}], routes=("big",))
    assert p.check_ip("udp", "121.0.0.1").allowed
    assert p.check_ip("udp", "127.0.0.1").reason == "loopback"


def test_own_listener_and_metrics_ports_are_refused() -> None:
    p = policy(own=(("192.0.2.1", 3478), ("127.0.0.1", 8080)))
    assert p.check("udp", "192.0.2.1", 3478).reason == "own_address"
    assert p.check("udp", "::ffff:192.0.2.1", 3478).reason == "own_address"
    assert p.check("udp", "192.0.2.1", 3479).allowed
    assert p.check("udp", "192.0.2.2", 3478).allowed
    # the permission-time check has no port: the send-time check is the one that refuses
    assert p.check_ip("udp", "192.0.2.1").allowed


def test_own_loopback_ports_are_refused_even_through_a_loopback_cluster() -> None:
    p = policy([{"name": "local", "endpoints": ["127.0.0.0/8", "::1/128"]}],
               routes=("local",), own=(("127.0.0.1", 8080),))
    assert p.check("udp", "127.0.0.1", 8080).reason == "own_address"
    assert p.check("udp", "::ffff:127.0.0.1", 8080).reason == "own_address"
    assert p.check("udp", "127.0.0.1", 8081).allowed


@pytest.mark.parametrize("bind", ["0.0.0.0", "::"])
def test_own_wildcard_bind_is_refused_on_every_local_address(bind: str) -> None:
    p = policy([{"name": "all", "endpoints": ["0.0.0.0/0", "::/0", "127.0.0.0/8", "::1/128"]}],
               routes=("all",), own=((bind, 8086),))
    assert p.check("udp", "127.0.0.1", 8086).reason == "own_address"
    assert p.check("udp", "::1" if bind == "::" else "127.0.0.1", 8086).reason == "own_address"
    same_family = "2001:db8::5" if bind == "::" else "192.0.2.5"
    assert p.check("udp", same_family, 8086).reason == "own_address"
    assert p.check("udp", same_family, 8087).allowed
    assert p.check("udp", "127.0.0.1", 8087).allowed


def test_own_port_through_the_server_gets_403_on_channel_bind() -> None:
    h = Harness(own=(("192.0.2.1", 3478),))
    alloc = h.allocated()
    peer = XorPeerAddress("192.0.2.1", 3478)
    h.request(Method.CHANNEL_BIND, [ChannelNumber(0x4000), peer]).expect_error(403)
    assert h.stats.peer_refusals["own_address"] == 1
    assert alloc.channels == {}


def test_port_zero_is_refused() -> None:
    assert policy().check("udp", "192.0.2.1", 0).reason == "reserved"


def test_cluster_port_ranges_are_enforced_by_check() -> None:
    p = policy([{"name": "media", "endpoints": ["10.0.0.0/8:<1000-2000>"]},
                {"name": "web", "endpoints": ["10.1.0.0/16:<443-443>"]}],
               routes=("media", "web"))
    assert p.check_ip("udp", "10.1.2.3").allowed
    v = p.check("udp", "10.1.2.3", 1000)
    assert (v.cluster, v.any_port) == ("media", False)
    assert p.check("udp", "10.1.2.3", 2000).allowed
    assert p.check("udp", "10.1.2.3", 443).cluster == "web"
    assert p.check("udp", "10.1.2.3", 2001).reason == "port_not_allowed"
    assert p.check("udp", "10.2.0.1", 443).reason == "port_not_allowed"
    assert p.check("udp", "11.0.0.1", 1500).reason == "no_route"


def test_a_full_port_range_endpoint_is_preferred_and_admits_any_port() -> None:
    p = policy([{"name": "narrow", "endpoints": ["10.0.0.0/8:<1000-2000>"]},
                {"name": "wide", "endpoints": ["10.0.0.0/24"]}],
               routes=("narrow", "wide"))
    v = p.check_ip("udp", "10.0.0.5")
    assert (v.cluster, v.any_port) == ("wide", True)
    assert p.check_ip("udp", "10.0.1.5").any_port is False


def test_routes_restrict_a_listener_to_its_clusters() -> None:
    clusters = [{"name": "a", "endpoints": ["192.168.0.0/16"]},
                {"name": "b", "endpoints": ["10.0.0.0/8"]}]
    p = policy(clusters, routes=("a",))
    assert p.check_ip("udp", "192.168.1.1").cluster == "a"
    assert p.check_ip("udp", "10.0.0.1").reason == "private"  # no cluster names 10/8 here
    assert p.check_ip("other-listener", "192.168.1.1").reason == "private"
    assert p.check_ip("other-listener", "192.0.2.1").reason == "no_route"
    assert policy(clusters, routes=()).check_ip("udp", "192.0.2.1").reason == "no_route"


def test_strict_dns_admits_exactly_the_resolved_addresses() -> None:
    p = policy([{"name": "dns", "type": "STRICT_DNS", "endpoints": ["media.example"]}],
               routes=("dns",))
    assert p.check_ip("udp", "192.0.2.10").reason == "no_route"
    p.set_resolved("dns", [ipaddress.ip_address("192.0.2.10"),
                           ipaddress.ip_address("127.0.0.1")])
    v = p.check("udp", "192.0.2.10", 1234)
    assert (v.cluster, v.any_port) == ("dns", True)
    assert p.check_ip("udp", "::ffff:192.0.2.10").cluster == "dns"
    assert p.check_ip("udp", "192.0.2.11").reason == "no_route"
    assert p.check_ip("udp", "127.0.0.1").reason == "loopback"  # resolving to loopback
    p.set_resolved("dns", [])
    assert p.check_ip("udp", "192.0.2.10").reason == "no_route"  # caches were dropped


def test_not_an_ip_is_refused() -> None:
    assert policy().check_ip("udp", "example.org").reason == "reserved"



@pytest.mark.parametrize(("network", "inside", "outside"), [
    ("10.0.0.0/8", "10.9.8.7", "172.16.0.1"),
    ("172.16.0.0/12", "172.20.0.1", "192.168.0.1"),
    ("192.168.0.0/16", "192.168.7.7", "10.0.0.1"),
    ("100.64.0.0/10", "100.100.0.1", "10.0.0.1"),
    ("198.18.0.0/15", "198.18.1.1", "10.0.0.1"),
    ("fd00::/8", "fd00::7", "fc00::7"),
])
def test_private_range_admitted_only_by_a_cluster_inside_it(
        network: str, inside: str, outside: str) -> None:
    """The operator names the private network to relay into it, in either family."""
    p = policy([*OPEN, {"name": "lan", "type": "STATIC", "endpoints": [network]}],
               routes=("open", "lan"))
    assert p.check_ip("udp", inside).cluster == "lan"
    assert not p.check_ip("udp", outside).allowed
    assert p.check_ip("udp", "192.0.2.7").cluster == "open"  # public peers as before
