"""`signaling.geoip` and `signaling.geoip-overrides` (spreed-signaling's `[geoip]` and
`[geoip-overrides]`).

`geoip.url` names a local MaxMind-format database (a path or a `file://` URL); relay does
not download databases, so `geoip.license` (upstream's download key) is refused with a
hint. Overrides map an IP or CIDR to a country code, upper-cased as upstream; entries
with an empty or reserved country are refused here (upstream skips them with a log line).
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any
from urllib.parse import unquote, urlsplit

from relay.config.reader import Section
from relay.errors import ConfigError

GeoNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Upstream's pseudo countries: never counted, not valid as an override.
NOT_COUNTRIES = frozenset({"", "NO-COUNTRY", "LOOPBACK", "UNKNOWN-COUNTRY"})


def parse_geoip(g: Section) -> str:
    """The database path ("" = none)."""
    license_key = g.get_str("license")
    url = g.get_str("url").strip()
    g.done()
    if license_key and not url:
        raise ConfigError(g.key("license"), "downloading a GeoIP database is not supported; "
                          "set url to a local .mmdb file")
    if not url:
        return ""
    if "://" in url:
        parts = urlsplit(url)
        if parts.scheme != "file":
            raise ConfigError(g.key("url"), f"{url!r}: only a local file (path or file://) "
                              "is supported")
        path = unquote(parts.path)
    else:
        path = url
    if not os.path.isfile(path):
        raise ConfigError(g.key("url"), f"{path!r} is not a readable file")
    return path


def parse_geoip_overrides(raw: Any, key: str) -> tuple[tuple[GeoNetwork, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ConfigError(key, "must be a mapping of IP address or CIDR to a country code")
    out: list[tuple[GeoNetwork, str]] = []
    for net_text, country in raw.items():
        item = f"{key}.{net_text}"
        try:
            net = ipaddress.ip_network(str(net_text).strip(), strict=False)
        except ValueError:
            raise ConfigError(item, f"{net_text!r} is not an IP address or CIDR") from None
        if not isinstance(country, str) or country.strip().upper() in NOT_COUNTRIES:
            raise ConfigError(item, f"{country!r} is not a country code")
        out.append((net, country.strip().upper()))
    return tuple(out)
