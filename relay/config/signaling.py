"""The `signaling` section of relay's config (mirrors spreed-signaling's server.conf).

server.conf sections map to nested keys, so existing settings carry over::

    signaling:
      http:
        listen: "127.0.0.1:8081"        # [http] listen
        max_connections_per_ip: 1000    # ours: connections one source IP may hold at once
      backend:
        allowall: false                 # [backend] allowall
        secret: "..."                   # [backend] secret (allowall mode)
        timeout: 10                     # [backend] timeout, seconds
        connectionsperhost: 8           # [backend] connectionsperhost
        backends:                       # [backend] backends = id1 + [id1] urls/secret/...
          - {id: nc1, urls: ["https://cloud.example.com/"], secret: "...", sessionlimit: 0}
      clients:
        internalsecret: "..."           # [clients] internalsecret (internal clients)
        messagerate: 100                # relay: messages/s per connection (0: no limit)
        messageburst: 500               # relay: bucket size of that limit
      sessions:
        hashkey: "..."                  # [sessions] hashkey/blockkey: accepted, unused
        blockkey: "..."                 # (session ids are random, not encoded)
      federation:
        timeout: 10                     # [federation] timeout, seconds (dial + handshake)
        skipverify: false               # [federation] skipverify (remote TLS certificates)
      turn:                             # [turn]: GET /turn/credentials (TURN REST API)
        apikey: "..."                   # [turn] apikey
        secret: "..."                   # [turn] secret (relay's own ephemeral auth secret
                                        #   makes the credentials work at relay's gateway)
        servers: []                     # [turn] servers; empty: relay's own TURN listeners
      geoip:
        url: /var/lib/GeoLite2-Country.mmdb  # [geoip] url (a local file or file:// URL)
      geoip-overrides:                  # [geoip-overrides] IP or CIDR -> country code
        "192.168.0.0/24": DE

The gate of `/api/v1/stats` and `/metrics` is the shared `stats.allowed_ips` /
`stats.trusted_proxies`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import attrs

from relay.config.geoip import GeoNetwork, parse_geoip, parse_geoip_overrides
from relay.config.reader import Section
from relay.errors import ConfigError

DEFAULT_LISTEN = "127.0.0.1:8081"


@attrs.frozen
class BackendConfig:
    """One Nextcloud instance allowed to use this signaling server."""

    id: str
    urls: tuple[str, ...]  # canonical base URLs, each ending in "/"
    secret: bytes
    session_limit: int = 0  # 0 = unlimited


@attrs.frozen
class TurnRestConfig:
    """`[turn]`: the TURN REST API key and shared secret, and the URIs to hand out (empty:
    relay's own TURN listeners)."""

    apikey: str
    secret: bytes
    servers: tuple[str, ...] = ()


@attrs.frozen
class SignalingConfig:
    host: str = "127.0.0.1"
    port: int = 8081
    allow_all: bool = False
    secret: bytes = b""  # the allowall secret
    backends: tuple[BackendConfig, ...] = ()
    backend_timeout: float = 10.0
    connections_per_host: int = 8
    hash_key: str = ""
    block_key: str = ""
    internal_secret: bytes = b""  # [clients] internalsecret; empty = no internal clients
    # Protocol limits and timers (upstream's constants; tests may shorten them).
    max_message_size: int = 64 * 1024
    hello_timeout: float = 2.0
    anonymous_join_timeout: float = 10.0
    session_expire: float = 30.0
    read_timeout: float = 60.0
    ping_interval: float = 54.0
    room_ping_interval: float = 10.0
    max_pending: int = 512  # messages queued for a session while its socket is gone
    message_rate: float = 100.0  # [clients] messagerate: messages/s per connection; 0 = off
    message_burst: int = 500  # [clients] messageburst (relay/signaling/ratelimit.py)
    federation_timeout: float = 10.0  # [federation] timeout
    federation_skip_verify: bool = False  # [federation] skipverify
    turn: TurnRestConfig | None = None  # [turn]; None: /turn/credentials answers 404
    geoip_file: str = ""  # [geoip] url as a local path; "" = no database
    geoip_overrides: tuple[tuple[GeoNetwork, str], ...] = ()  # [geoip-overrides]
    max_connections_per_ip: int = 1000  # http.max_connections_per_ip; 0 = no cap
    listen_key: str = "signaling.http.listen"  # the key `host`/`port` came from, for errors

    @property
    def listen_display(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def canonical_url(url: str) -> str | None:
    """scheme://host[:port]/path/ with the default port dropped; None if not http(s)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and not (
        (scheme == "http" and port == 80) or (scheme == "https" and port == 443)
    ):
        host = f"{host}:{port}"
    path = parts.path or "/"
    if not path.endswith("/"):
        path += "/"
    return f"{scheme}://{host}{path}"


def _parse_listen(text: str, key: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(key, f"{text!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port_text)


def _parse_backend(raw: Any, key: str) -> BackendConfig:
    s = Section(raw, key)
    bid = s.get_str("id").strip()
    if not bid:
        raise ConfigError(s.key("id"), "a backend needs an id")
    raw_urls = s.get_list("urls")
    if not raw_urls and s.has("url"):
        raw_urls = [s.get_str("url")]
    else:
        s.get("url")
    urls: list[str] = []
    for i, u in enumerate(raw_urls):
        # server.conf writes `urls = a, b`
        for part in str(u).split(","):
            if not part.strip():
                continue
            c = canonical_url(part)
            if c is None:
                raise ConfigError(
                    f"{s.key('urls')}[{i}]", f"{part.strip()!r} is not an http(s) URL"
                )
            urls.append(c)
    if not urls:
        raise ConfigError(s.key("urls"), f"backend {bid!r} needs at least one URL")
    secret = s.get_str("secret")
    if not secret:
        raise ConfigError(s.key("secret"), f"backend {bid!r} needs a shared secret")
    limit = s.get_int("sessionlimit", 0, min=0)
    s.done()
    return BackendConfig(bid, tuple(urls), secret.encode(), limit)


def parse_signaling(raw: Any, key: str) -> SignalingConfig:
    s = Section(raw, key)
    d = SignalingConfig()
    http = s.section("http")
    listen = http.get_str("listen", "")
    if s.has("listen"):
        if listen:
            raise ConfigError(s.key("listen"), "give either listen or http.listen, not both")
        listen = s.get_str("listen")
        host, port = _parse_listen(listen, s.key("listen"))
        listen_key = s.key("listen")
    else:
        listen_key = http.key("listen")
        s.get("listen")
        host, port = _parse_listen(listen or DEFAULT_LISTEN, http.key("listen"))
    per_ip = http.get_int("max_connections_per_ip", d.max_connections_per_ip, min=0)
    http.done()

    b = s.section("backend")
    allow_all = b.get_bool("allowall", False)
    secret = b.get_str("secret")
    timeout = b.get("timeout", d.backend_timeout)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 600:
        raise ConfigError(b.key("timeout"), f"{timeout!r} is not a number of seconds in (0, 600]")
    per_host = b.get_int("connectionsperhost", d.connections_per_host, min=1, max=1024)
    backends = b.items("backends", _parse_backend)
    seen: set[str] = set()
    for i, be in enumerate(backends):
        if be.id in seen:
            raise ConfigError(f"{b.key('backends')}[{i}].id", f"duplicate backend id {be.id!r}")
        seen.add(be.id)
    if allow_all and not secret:
        raise ConfigError(b.key("secret"), "allowall needs a shared secret")
    if not allow_all and not backends:
        raise ConfigError(b.key("backends"), "configure backends, or allowall with a secret")
    b.done()

    clients = s.section("clients")
    internal_secret = clients.get_str("internalsecret")
    message_rate = clients.get_int("messagerate", int(d.message_rate), min=0, max=1_000_000)
    message_burst = clients.get_int("messageburst", d.message_burst, min=1, max=1_000_000)
    clients.done()
    sess = s.section("sessions")
    hash_key = sess.get_str("hashkey")
    block_key = sess.get_str("blockkey")
    sess.done()
    fed = s.section("federation")
    fed_timeout = fed.get("timeout", d.federation_timeout)
    if isinstance(fed_timeout, bool) or not isinstance(fed_timeout, int | float) \
            or not 0 < fed_timeout <= 600:
        raise ConfigError(
            fed.key("timeout"), f"{fed_timeout!r} is not a number of seconds in (0, 600]")
    skip_verify = fed.get_bool("skipverify", False)
    fed.done()
    turn = _parse_turn_rest(s.section("turn"))
    geoip_file = parse_geoip(s.section("geoip"))
    overrides = parse_geoip_overrides(s.get("geoip-overrides"), s.key("geoip-overrides"))
    s.done()
    return SignalingConfig(
        host=host,
        port=port,
        allow_all=allow_all,
        secret=secret.encode(),
        backends=backends,
        backend_timeout=float(timeout),
        connections_per_host=per_host,
        hash_key=hash_key,
        block_key=block_key,
        federation_timeout=float(fed_timeout),
        federation_skip_verify=skip_verify,
        internal_secret=internal_secret.encode(),
        turn=turn,
        geoip_file=geoip_file,
        geoip_overrides=overrides,
        max_connections_per_ip=per_ip,
        listen_key=listen_key,
        message_rate=float(message_rate),
        message_burst=message_burst,
    )


def _parse_turn_rest(t: Section) -> TurnRestConfig | None:
    apikey = t.get_str("apikey")
    secret = t.get_str("secret")
    raw = t.get("servers", [])
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list):
        raise ConfigError(t.key("servers"), "must be a list of turn:/turns: URIs")
    servers: list[str] = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ConfigError(f"{t.key('servers')}[{i}]", "must be a string")
        uri = item.strip()
        if not uri:
            continue
        if not uri.startswith(("turn:", "turns:")):
            raise ConfigError(f"{t.key('servers')}[{i}]", f"{uri!r} is not a turn: or turns: URI")
        servers.append(uri)
    t.done()
    if not apikey and not secret and not servers:
        return None
    if not apikey:
        raise ConfigError(t.key("apikey"), "the TURN REST API needs an API key")
    if not secret:
        raise ConfigError(t.key("secret"), "the TURN REST API needs the shared TURN secret")
    return TurnRestConfig(apikey, secret.encode(), tuple(servers))
