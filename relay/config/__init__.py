"""relay's configuration: STUNner's `StunnerConfig` v1 schema plus our own sections.

The native schema is STUNner's (`version`, `admin`, `auth`, `listeners`, `clusters`), so a
STUNner user can bring a config file as it is.  relay's extensions live in sections of their
own: `stats` (access gate of the HTTP endpoints), `turn` (relay ports, quotas, lifetimes,
relay addresses) and `signaling` (the spreed signaling server, parsed by
`relay.config.signaling`).

Everything is validated here, at the edge: a bad value raises `ConfigError` naming the key
and the reason, e.g. ``listeners[0].port: 70000 is not a port``.  The result is a tree of
frozen attrs objects.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import ssl
import urllib.parse
from pathlib import Path
from typing import Any

import attrs
import yaml

from relay.config import tls
from relay.config.environ import expand, stunner_environment
from relay.config.reader import Section
from relay.config.shutdown import ShutdownConfig, parse_shutdown
from relay.config.signaling import SignalingConfig, parse_signaling
from relay.errors import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# --- STUNner defaults (pkg/apis/v1/default.go) -------------------------------------------
DEFAULT_REALM = "stunner.l7mp.io"
DEFAULT_PORT = 3478
DEFAULT_ADMIN_NAME = "default-stunnerd"
DEFAULT_LOGLEVEL = "all:INFO"
DEFAULT_HEALTHCHECK = "http://127.0.0.1:8086"

LISTENER_PROTOCOLS = {
    "UDP": "TURN-UDP",
    "TURN-UDP": "TURN-UDP",
    "TCP": "TURN-TCP",
    "TURN-TCP": "TURN-TCP",
    "TLS": "TURN-TLS",
    "TURN-TLS": "TURN-TLS",
    "DTLS": "TURN-DTLS",
    "TURN-DTLS": "TURN-DTLS",
}
# Protocols relay serves today; the others are refused with a clear error, not ignored.
SUPPORTED_LISTENER_PROTOCOLS = frozenset({"TURN-UDP", "TURN-TCP", "TURN-TLS"})

AUTH_TYPES = {
    "static": "static",
    "plaintext": "static",
    "ephemeral": "ephemeral",
    "longterm": "ephemeral",
    "none": "none",
}

_LOGLEVELS = {"TRACE", "DEBUG", "INFO", "WARN", "WARNING", "ERROR", "DISABLE", "CRITICAL"}


# --- the tree -----------------------------------------------------------------------------


@attrs.frozen
class Endpoint:
    """An HTTP endpoint in STUNner's URL form (``http://127.0.0.1:8080/metrics``)."""

    host: str
    port: int
    path: str

    @property
    def bind_host(self) -> str:
        return self.host or "0.0.0.0"


@attrs.frozen
class StaticUser:
    username: str
    password: str


@attrs.frozen
class AuthConfig:
    type: str = "static"
    realm: str = DEFAULT_REALM
    users: tuple[StaticUser, ...] = ()
    secrets: tuple[str, ...] = ()


@attrs.frozen
class AdminConfig:
    name: str = DEFAULT_ADMIN_NAME
    loglevel: str = DEFAULT_LOGLEVEL
    metrics_endpoint: Endpoint | None = None
    healthcheck_endpoint: Endpoint | None = None
    user_quota: int = 0


@attrs.frozen
class ListenerConfig:
    name: str
    protocol: str = "TURN-UDP"
    address: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    public_address: str = ""
    public_port: int = 0
    routes: tuple[str, ...] = ()
    cert: str = ""  # PEM file path, inline PEM or base64 PEM (STUNner's operator)
    key: str = ""
    # STUNner's per-listener relay port range; 0 = the `turn` section's min_port/max_port
    min_relay_port: int = 0
    max_relay_port: int = 0

    def relay_port_range(self, turn: TurnConfig) -> tuple[int, int]:
        """The ports this listener's relay sockets come from."""
        return (self.min_relay_port or turn.min_port, self.max_relay_port or turn.max_port)


@attrs.frozen
class PortRange:
    """One cluster endpoint: a network plus an optional inclusive port range."""

    network: IPNetwork
    min_port: int = 0
    max_port: int = 65535

    def contains(self, ip: IPAddress, port: int) -> bool:
        return ip in self.network and self.min_port <= port <= self.max_port


@attrs.frozen
class ClusterConfig:
    name: str
    type: str = "STATIC"
    protocol: str = "UDP"
    endpoints: tuple[PortRange, ...] = ()
    hostnames: tuple[str, ...] = ()  # STRICT_DNS endpoints, resolved by the gateway


@attrs.frozen
class StatsConfig:
    allowed_ips: tuple[IPNetwork, ...] = (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    trusted_proxies: tuple[IPNetwork, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )


def usable_cpus() -> int:
    """CPUs this process may run on (the default of `turn.workers`)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@attrs.frozen
class TurnConfig:
    min_port: int = 49152
    max_port: int = 65535
    relay_address: str = ""  # IPv4 address put in XOR-RELAYED-ADDRESS; "" = derive
    relay_address_v6: str = ""  # IPv6 relay address; "" = no IPv6 relay unless derivable
    default_lifetime: int = 600
    max_lifetime: int = 3600
    permission_lifetime: int = 300
    channel_lifetime: int = 600
    nonce_lifetime: int = 600
    total_quota: int = 0  # allocations in all; 0 = unlimited
    max_permissions: int = 1024  # per allocation (coturn's cap)
    max_channels: int = 1024  # per allocation
    software: str = "relay"
    # 401/438 answers to UDP sources without an allocation: a token bucket per source IP,
    # refilled at `unauthorized_ratelimit` per second (0 = unlimited) and holding
    # `unauthorized_burst` (200 clients behind one NAT start at once).
    unauthorized_ratelimit: int = 50
    unauthorized_burst: int = 400
    # TURN-TCP/TLS connections one source IP may hold at once (0 = no cap)
    max_connections_per_ip: int = 500
    udp_receive_buffer: int = 4 * 1024 * 1024
    # recvmmsg/sendmmsg on the TURN-UDP listeners where the platform has them (Linux);
    # false (the default: measured no faster) keeps one recvfrom/sendto per datagram
    batch_io: bool = False
    # How TURN-UDP datagrams are forwarded: "native" (compiled with numba: relay/net/native.py),
    # "python" (the interpreter; `batch_io` applies), "auto" (native where numba is installed)
    data_plane: str = "auto"
    # TURN worker processes sharing the listener ports; by default (or 0) one per usable
    # CPU, at most one per two relay ports; 1 runs the gateway in the main process
    # (docs/workers.md)
    workers: int = attrs.field(factory=usable_cpus)
    # RFC 5766 let clients pick channels up to 0x7FFF (coturn's turnutils_uclient does);
    # RFC 8656 narrowed them to 0x4000-0x4FFF, our default.
    rfc5766_channels: bool = False


@attrs.frozen
class Config:
    version: str = "v1"
    admin: AdminConfig = AdminConfig()
    auth: AuthConfig = AuthConfig()
    listeners: tuple[ListenerConfig, ...] = ()
    clusters: tuple[ClusterConfig, ...] = ()
    stats: StatsConfig = StatsConfig()
    turn: TurnConfig = TurnConfig()
    signaling: SignalingConfig | None = None  # the `signaling` section, when configured
    # what was accepted but has no effect here (STUNner fields relay does not implement),
    # each naming its key; printed by --check-config and logged at start
    warnings: tuple[str, ...] = ()
    shutdown: ShutdownConfig = attrs.Factory(ShutdownConfig)  # SIGTERM drain

    @classmethod
    def from_file(cls, path: str | Path) -> Config:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(str(p), f"cannot read: {exc.strerror or exc}") from None
        return cls.from_text(text, source=str(p))

    @classmethod
    def from_text(cls, text: str, source: str = "<config>",
                  env: dict[str, str] | None = None) -> Config:
        return cls.from_mapping(read_raw(text, source, env))

    @classmethod
    def from_mapping(cls, raw: Any) -> Config:
        return _parse_config(raw)

    def cluster(self, name: str) -> ClusterConfig | None:
        for c in self.clusters:
            if c.name == name:
                return c
        return None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _load(text: str, source: str) -> Any:
    try:
        if source.endswith(".json"):
            raw = json.loads(text)
        else:  # YAML is a superset of JSON
            raw = yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(source, f"not valid YAML/JSON: {_one_line(str(exc))}") from None
    return {} if raw is None else raw


# Kept as written by the environment substitution: STUNner's credentials (as stunnerd),
# relay's own static users and the signaling section (secrets; spreed-signaling does not
# substitute either).
_VERBATIM = (("auth", "credentials"), ("auth", "users"), ("signaling",))


def read_raw(text: str, source: str = "<config>", env: dict[str, str] | None = None) -> Any:
    """The raw tree of a config file, `$VAR` / `${VAR}` substituted as stunnerd does
    (`relay.config.environ`): the whole text, then the verbatim parts put back."""
    raw = _load(text, source)
    if "$" not in text:
        return raw
    expanded = _load(expand(text, stunner_environment(env)), source)
    for path in _VERBATIM:
        src: Any = raw
        dst: Any = expanded
        for part in path[:-1]:
            src = src.get(part) if isinstance(src, dict) else None
            dst = dst.get(part) if isinstance(dst, dict) else None
        if isinstance(src, dict) and isinstance(dst, dict) and path[-1] in src:
            dst[path[-1]] = src[path[-1]]
    return expanded


# --- sections ------------------------------------------------------------------------------


def parse_endpoint(value: str, key: str, *, default_port: int, default_path: str) -> Endpoint:
    """STUNner's endpoint URL: ``http://host:port/path``; host may be empty (all addresses)."""
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        u = urllib.parse.urlsplit(text)
        port = u.port
    except ValueError as exc:
        raise ConfigError(key, f"{value!r} is not a valid URL: {exc}") from None
    if u.scheme != "http":
        raise ConfigError(key, f"{value!r}: only http:// is served")
    host = u.hostname or ""
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if host != "localhost":
                raise ConfigError(key, f"{value!r}: host must be an IP address") from None
    return Endpoint(
        host=host, port=port if port is not None else default_port, path=u.path or default_path
    )


# STUNner's admin fields relay accepts but does not act on: (key, values that do nothing)
_ADMIN_UNSUPPORTED = {
    "offload_engine": ("", "none"),
    "offload_interfaces": (),
    "license_config": (),
}


def _parse_admin(raw: Any, key: str, warnings: list[str]) -> AdminConfig:
    s = Section(raw, key)
    name = s.get_str("name", DEFAULT_ADMIN_NAME)
    loglevel = s.get_str("loglevel", DEFAULT_LOGLEVEL)
    _check_loglevel(loglevel, s.key("loglevel"))
    metrics_raw = s.get_str("metrics_endpoint", "")
    metrics = (
        parse_endpoint(metrics_raw, s.key("metrics_endpoint"), default_port=8080,
                       default_path="/metrics")
        if metrics_raw
        else None
    )
    health_val = s.get("healthcheck_endpoint", DEFAULT_HEALTHCHECK)
    if not isinstance(health_val, str):
        raise ConfigError(s.key("healthcheck_endpoint"), "must be a string URL")
    health = (
        parse_endpoint(health_val, s.key("healthcheck_endpoint"), default_port=8086,
                       default_path="/")
        if health_val
        else None
    )
    user_quota = s.get_int("user_quota", 0, min=0)
    for name, inert in _ADMIN_UNSUPPORTED.items():
        v = s.get(name)
        if v is None or v == [] or v == {} or (isinstance(v, str) and v.lower() in inert):
            continue
        shown = f" {v!r}" if isinstance(v, str) else ""
        warnings.append(f"{s.key(name)}:{shown} not supported by relay (STUNner's "
                        f"{'eBPF offload' if name.startswith('offload') else 'licensing'}); "
                        "ignored")
    s.done()
    return AdminConfig(name, loglevel, metrics, health, user_quota)


def _check_loglevel(text: str, key: str) -> None:
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        level = part.split(":", 1)[1] if ":" in part else part
        if level.upper() not in _LOGLEVELS:
            raise ConfigError(key, f"unknown log level {level!r}")


def _parse_auth(raw: Any, key: str) -> AuthConfig:
    s = Section(raw, key)
    type_raw = s.get_str("type", "static").lower()
    if type_raw not in AUTH_TYPES:
        raise ConfigError(s.key("type"), f"{type_raw!r} is not one of static, ephemeral, none")
    auth_type = AUTH_TYPES[type_raw]
    realm = s.get_str("realm", DEFAULT_REALM) or DEFAULT_REALM  # "" as unset (STUNner)
    if len(realm.encode()) > 763:
        raise ConfigError(s.key("realm"), "must be 1..763 bytes")
    creds = s.section("credentials")
    users: list[StaticUser] = []
    secrets: list[str] = []
    if creds.has("username") or creds.has("password"):
        users.append(StaticUser(creds.get_str("username"), creds.get_str("password")))
    if creds.has("secret"):
        v = creds.get("secret")
        items = v if isinstance(v, list) else [v]
        for i, item in enumerate(items):
            if not isinstance(item, str) or not item:
                raise ConfigError(creds.key(f"secret[{i}]"), "must be a non-empty string")
            secrets.append(item)
    creds.done()
    for i, u in enumerate(s.get_list("users")):
        us = Section(u, f"{s.key('users')}[{i}]")
        users.append(StaticUser(us.get_str("username"), us.get_str("password")))
        us.done()
    from_creds = creds.has("username") or creds.has("password")
    for i, u in enumerate(users):
        where = (s.key("credentials") if from_creds and i == 0
                 else s.key(f"users[{i - from_creds}]"))
        if not u.username:
            raise ConfigError(f"{where}.username", "username must not be empty")
        if not u.password:
            raise ConfigError(f"{where}.password", "static auth needs a non-empty password")
        if len(u.username.encode()) > 509:
            raise ConfigError(s.key("credentials.username"), "username longer than 509 bytes")
    if auth_type == "static" and not users:
        raise ConfigError(s.key("credentials"), "static auth needs a username and password")
    if auth_type == "ephemeral" and not secrets:
        raise ConfigError(s.key("credentials.secret"), "ephemeral auth needs a shared secret")
    s.done()
    return AuthConfig(auth_type, realm, tuple(users), tuple(secrets))


_NAME_RE = re.compile(r"^[A-Za-z0-9._/-]{1,253}$")


def _check_name(name: str, key: str) -> None:
    if not _NAME_RE.match(name):
        raise ConfigError(key, f"{name!r} is not a valid name (letters, digits, . _ - /)")


def _parse_listener(raw: Any, key: str) -> ListenerConfig:
    s = Section(raw, key)
    name = s.get_str("name")
    if not name:
        raise ConfigError(s.key("name"), "is required")
    _check_name(name, s.key("name"))
    proto_raw = s.get_str("protocol", "TURN-UDP").upper()
    if proto_raw not in LISTENER_PROTOCOLS:
        raise ConfigError(s.key("protocol"), f"{proto_raw!r} is not a listener protocol")
    protocol = LISTENER_PROTOCOLS[proto_raw]
    if protocol not in SUPPORTED_LISTENER_PROTOCOLS:
        raise ConfigError(s.key("protocol"), f"{protocol} listeners are not supported yet")
    address = s.get_str("address", "0.0.0.0") or "0.0.0.0"  # "" (an unset $VAR) as STUNner
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ConfigError(s.key("address"), f"{address!r} is not an IP address") from None
    port = s.get_port("port", DEFAULT_PORT, allow_zero=True)
    public_address = s.get_str("public_address", "")
    if public_address:
        try:
            ipaddress.ip_address(public_address)
        except ValueError:
            raise ConfigError(s.key("public_address"), f"{public_address!r} is not an IP address"
                              ) from None
    public_port = s.get_port("public_port", 0, allow_zero=True)
    rkey = s.key("routes")
    routes = tuple(_str_item(v, f"{rkey}[{i}]") for i, v in enumerate(s.get_list("routes")))
    cert = s.get_str("cert", "")
    tls_key = s.get_str("key", "")
    if protocol == "TURN-TLS":
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(ctx, cert, tls_key, s.key("cert"), s.key("key"))
    min_relay = s.get_port("min_relay_port", 0, allow_zero=True)
    max_relay = s.get_port("max_relay_port", 0, allow_zero=True)
    if min_relay and max_relay and min_relay > max_relay:
        raise ConfigError(s.key("min_relay_port"),
                          f"{min_relay} is above max_relay_port {max_relay}")
    s.done()
    return ListenerConfig(name, protocol, address, port, public_address, public_port, routes,
                          cert, tls_key, min_relay, max_relay)


def _str_item(v: Any, key: str) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(key, "must be a non-empty string")
    return v


def parse_cluster_endpoint(text: str, key: str) -> PortRange:
    """`IP`, `CIDR`, either with an optional `:<min-max>` port range (STUNner's form)."""
    t = text.strip()
    lo, hi = 0, 65535
    m = re.fullmatch(r"(?P<addr>.+?):<(?P<lo>\d+)-(?P<hi>\d+)>", t)
    if m:
        t = m.group("addr")
        lo, hi = int(m.group("lo")), int(m.group("hi"))
        if not (0 <= lo <= hi <= 65535):
            raise ConfigError(key, f"{text!r}: bad port range {lo}-{hi}")
    if t.startswith("[") and t.endswith("]"):
        t = t[1:-1]
    try:
        net = ipaddress.ip_network(t, strict=False)
    except ValueError:
        raise ConfigError(key, f"{text!r} is not an IP address or CIDR") from None
    return PortRange(net, lo, hi)


def _parse_cluster(raw: Any, key: str) -> ClusterConfig:
    s = Section(raw, key)
    name = s.get_str("name")
    if not name:
        raise ConfigError(s.key("name"), "is required")
    _check_name(name, s.key("name"))
    ctype = s.get_str("type", "STATIC").upper()
    if ctype not in ("STATIC", "STRICT_DNS"):
        raise ConfigError(s.key("type"), f"{ctype!r} is not STATIC or STRICT_DNS")
    proto = s.get_str("protocol", "UDP").upper()
    if proto not in ("UDP", "TCP"):
        raise ConfigError(s.key("protocol"), f"{proto!r} is not UDP or TCP")
    if proto == "TCP":
        raise ConfigError(s.key("protocol"), "TCP clusters are not supported yet")
    eps: list[PortRange] = []
    hosts: list[str] = []
    for i, item in enumerate(s.get_list("endpoints")):
        ekey = f"{s.key('endpoints')}[{i}]"
        text = _str_item(item, ekey)
        if ctype == "STATIC":
            eps.append(parse_cluster_endpoint(text, ekey))
        else:
            if not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", text):
                raise ConfigError(ekey, f"{text!r} is not a DNS name")
            hosts.append(text)
    s.done()
    return ClusterConfig(name, ctype, proto, tuple(eps), tuple(hosts))


def parse_networks(values: list[Any], key: str) -> tuple[IPNetwork, ...]:
    out = []
    for i, v in enumerate(values):
        k = f"{key}[{i}]"
        if not isinstance(v, str):
            raise ConfigError(k, "must be an IP address or CIDR string")
        try:
            out.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError:
            raise ConfigError(k, f"{v!r} is not an IP address or CIDR") from None
    return tuple(out)


def _parse_stats(raw: Any, key: str) -> StatsConfig:
    s = Section(raw, key)
    d = StatsConfig()

    def nets(name: str, default: tuple[IPNetwork, ...]) -> tuple[IPNetwork, ...]:
        if not s.has(name):
            s.get(name)
            return default
        v = s.get(name)
        if isinstance(v, str):  # spreed-signaling's comma-separated form
            v = [p for p in (x.strip() for x in v.split(",")) if p]
        if not isinstance(v, list):
            raise ConfigError(s.key(name), "must be a list of IPs/CIDRs")
        return parse_networks(v, s.key(name))

    allowed = nets("allowed_ips", d.allowed_ips)
    trusted = nets("trusted_proxies", d.trusted_proxies)
    s.done()
    return StatsConfig(allowed, trusted)


def _parse_turn(raw: Any, key: str) -> TurnConfig:
    s = Section(raw, key)
    d = TurnConfig()
    min_port = s.get_port("min_port", d.min_port)
    max_port = s.get_port("max_port", d.max_port)
    if min_port > max_port:
        raise ConfigError(s.key("min_port"), f"{min_port} is above max_port {max_port}")
    relay4 = s.get_str("relay_address", "")
    relay6 = s.get_str("relay_address_v6", "")
    for name, val, ver in (("relay_address", relay4, 4), ("relay_address_v6", relay6, 6)):
        if val:
            try:
                ip = ipaddress.ip_address(val)
            except ValueError:
                raise ConfigError(s.key(name), f"{val!r} is not an IP address") from None
            if ip.version != ver:
                raise ConfigError(s.key(name), f"{val!r} is not an IPv{ver} address")
    default_lifetime = s.get_int("default_lifetime", d.default_lifetime, min=1, max=86400)
    max_lifetime = s.get_int("max_lifetime", d.max_lifetime, min=1, max=86400)
    if max_lifetime < default_lifetime:
        raise ConfigError(s.key("max_lifetime"),
                          f"{max_lifetime} is below default_lifetime {default_lifetime}")
    cfg = TurnConfig(
        min_port=min_port,
        max_port=max_port,
        relay_address=relay4,
        relay_address_v6=relay6,
        default_lifetime=default_lifetime,
        max_lifetime=max_lifetime,
        permission_lifetime=s.get_int("permission_lifetime", d.permission_lifetime,
                                      min=1, max=3600),
        channel_lifetime=s.get_int("channel_lifetime", d.channel_lifetime, min=1, max=3600),
        nonce_lifetime=s.get_int("nonce_lifetime", d.nonce_lifetime, min=10, max=86400),
        total_quota=s.get_int("total_quota", d.total_quota, min=0),
        max_permissions=s.get_int("max_permissions", d.max_permissions, min=1),
        max_channels=s.get_int("max_channels", d.max_channels, min=1, max=0x1000),
        software=s.get_str("software", d.software),
        unauthorized_ratelimit=s.get_int("unauthorized_ratelimit", d.unauthorized_ratelimit, min=0),
        unauthorized_burst=s.get_int("unauthorized_burst", d.unauthorized_burst, min=1),
        max_connections_per_ip=s.get_int("max_connections_per_ip", d.max_connections_per_ip,
                                         min=0),
        udp_receive_buffer=s.get_int("udp_receive_buffer", d.udp_receive_buffer, min=0),
        rfc5766_channels=s.get_bool("rfc5766_channels", d.rfc5766_channels),
        batch_io=s.get_bool("batch_io", d.batch_io),
        data_plane=_data_plane(s, d.data_plane),
        workers=_workers(s, min_port, max_port),
    )
    s.done()
    return cfg


DATA_PLANES = ("auto", "native", "python")


def _data_plane(s: Section, default: str) -> str:
    value = s.get_str("data_plane", default).lower()
    if value not in DATA_PLANES:
        raise ConfigError(s.key("data_plane"), f"{value!r} is not one of {', '.join(DATA_PLANES)}")
    return value


def _workers(s: Section, min_port: int, max_port: int) -> int:
    """`turn.workers`: absent or 0, one per usable CPU, as many as the relay port range
    gives each worker its own slice of at least two ports (an even/odd pair); a number asks
    for exactly that many (an error when the range is too small for them)."""
    n = s.get_int("workers", 0, min=0, max=1024)
    ports = max_port - min_port + 1
    if n == 0:
        return max(1, min(usable_cpus(), ports // 2))
    if n > 1 and ports // n < 2:
        raise ConfigError(s.key("workers"), f"{n} workers need at least {2 * n} relay ports "
                          f"(min_port..max_port has {ports})")
    return n


def _parse_config(raw: Any) -> Config:
    root = Section(raw, "")
    version = root.get_str("version", "")
    if version != "v1":
        raise ConfigError("version", f"{version!r} is not supported (only v1)")
    warnings: list[str] = []
    admin = _parse_admin(root.get("admin"), "admin", warnings)
    auth = _parse_auth(root.get("auth"), "auth")
    listeners = root.items("listeners", _parse_listener)
    clusters = root.items("clusters", _parse_cluster)
    stats = _parse_stats(root.get("stats"), "stats")
    turn = _parse_turn(root.get("turn"), "turn")
    signaling = None
    if root.has("signaling"):
        signaling = parse_signaling(root.get("signaling"), "signaling")
    else:
        root.get("signaling")
    shutdown = parse_shutdown(root.get("shutdown"), "shutdown")
    root.done()

    _check_unique([lis.name for lis in listeners], "listeners")
    _check_unique([c.name for c in clusters], "clusters")
    cluster_names = {c.name for c in clusters}
    for i, lis in enumerate(listeners):
        for j, r in enumerate(lis.routes):
            if r not in cluster_names:
                raise ConfigError(f"listeners[{i}].routes[{j}]", f"no cluster named {r!r}")
    # UDP and TCP (TURN-TCP, TURN-TLS) port spaces are separate: 3478/udp and 3478/tcp.
    seen: dict[tuple[bool, str, int], int] = {}
    for i, lis in enumerate(listeners):
        where = (lis.protocol == "TURN-UDP", lis.address, lis.port)
        if lis.port and where in seen:
            raise ConfigError(f"listeners[{i}].port",
                              f"{lis.address}:{lis.port} is also used by listeners"
                              f"[{seen[where]}]")
        seen[where] = i
    for i, lis in enumerate(listeners):
        lo, hi = lis.relay_port_range(turn)
        if lo > hi:
            raise ConfigError(f"listeners[{i}].min_relay_port",
                              f"relay port range {lo}-{hi} is empty (with turn.min_port/max_port)")
    turn = _workers_for_listeners(turn, listeners, _explicit_workers(raw))
    return Config(version, admin, auth, listeners, clusters, stats, turn, signaling,
                  tuple(warnings), shutdown)


def _explicit_workers(raw: Any) -> bool:
    turn = raw.get("turn") if isinstance(raw, dict) else None
    return isinstance(turn, dict) and turn.get("workers") not in (None, 0)


def _workers_for_listeners(turn: TurnConfig, listeners: tuple[ListenerConfig, ...],
                           explicit: bool) -> TurnConfig:
    """Each worker takes a slice of every listener's own relay port range too: the default
    worker count shrinks so that each slice holds two ports (an even/odd pair); a number
    asked for is an error naming the listener whose range is too small for it."""
    n = turn.workers
    for i, lis in enumerate(listeners):
        if not (lis.min_relay_port or lis.max_relay_port) or n <= 1:
            continue
        lo, hi = lis.relay_port_range(turn)
        if (hi - lo + 1) // n >= 2:
            continue
        if explicit:
            raise ConfigError(f"listeners[{i}].min_relay_port",
                              f"relay port range {lo}-{hi} has {hi - lo + 1} port(s): too few "
                              f"for turn.workers {n} (each worker needs two of them)")
        n = max(1, (hi - lo + 1) // 2)
    return turn if n == turn.workers else attrs.evolve(turn, workers=n)


def _check_unique(names: list[str], key: str) -> None:
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in seen:
            raise ConfigError(f"{key}[{i}].name", f"{n!r} is already used by {key}[{seen[n]}]")
        seen[n] = i


# --- the embedded default ---------------------------------------------------------------

DEMO_USERNAME = "demo"
DEMO_PASSWORD = "demo-password"

DEFAULT_CONFIG_YAML = f"""\
# relay's embedded default: a TURN/UDP listener on loopback with a demo credential.
version: v1
admin:
  name: relay
  loglevel: all:INFO
  metrics_endpoint: http://127.0.0.1:8080/metrics
  healthcheck_endpoint: http://127.0.0.1:8086
auth:
  type: static
  realm: relay.local
  credentials:
    username: {DEMO_USERNAME}
    password: {DEMO_PASSWORD}
listeners:
  - name: udp-listener
    protocol: TURN-UDP
    address: 127.0.0.1
    port: 3478
    routes: [loopback-peers]
clusters:
  - name: loopback-peers
    type: STATIC
    endpoints: [127.0.0.1/32]
turn:
  min_port: 49152
  max_port: 65535
"""


def default_config() -> Config:
    return Config.from_text(DEFAULT_CONFIG_YAML, source="<embedded default>")
