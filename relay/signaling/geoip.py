"""The country of a client, for `signaling_client_countries_total{country}`.

As upstream's `Hub.LookupCountry`: an address that does not parse has no country; the
`[geoip-overrides]` networks come first; a loopback address is `loopback`; otherwise the
MaxMind-format database's `country.iso_code` (no database, no record, no code: unknown).
Only a real country code is counted (`is_valid_country`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import maxminddb

from relay.config.geoip import GeoNetwork

NO_COUNTRY = "no-country"
LOOPBACK = "loopback"
UNKNOWN_COUNTRY = "unknown-country"
_INVALID = frozenset({"", NO_COUNTRY, LOOPBACK, UNKNOWN_COUNTRY,
                      NO_COUNTRY.upper(), LOOPBACK.upper(), UNKNOWN_COUNTRY.upper()})


def is_valid_country(country: str) -> bool:
    return country not in _INVALID


class GeoIP:
    """Overrides plus an optional database reader (opened once, read in memory)."""

    def __init__(self, overrides: Sequence[tuple[GeoNetwork, str]] = (),
                 database: str = "") -> None:
        self.overrides = tuple(overrides)
        self._reader: Any = None
        if database:
            self._reader = maxminddb.open_database(database, maxminddb.MODE_MEMORY)

    @property
    def enabled(self) -> bool:
        return self._reader is not None or bool(self.overrides)

    def lookup(self, ip_text: str) -> str:
        try:
            ip = ipaddress.ip_address(ip_text.strip("[]"))
        except ValueError:
            return NO_COUNTRY
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for net, country in self.overrides:
            if net.version == ip.version and ip in net:
                return country
        if ip.is_loopback:
            return LOOPBACK
        if self._reader is None:
            return UNKNOWN_COUNTRY
        try:
            record = self._reader.get(ip)
        except (ValueError, maxminddb.InvalidDatabaseError):
            return UNKNOWN_COUNTRY
        code = _iso_code(record)
        return code or UNKNOWN_COUNTRY

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def _iso_code(record: Any) -> str:
    if not isinstance(record, dict):
        return ""
    country = record.get("country")
    if not isinstance(country, dict):
        return ""
    code = country.get("iso_code")
    return code if isinstance(code, str) else ""
