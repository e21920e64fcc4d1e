"""What `--check-config` finds beyond parsing: what would fail at start, and what was left in.

* Errors (exit 2, each naming its key): a listener or HTTP endpoint address that is not on
  this host, found by binding a socket to it at port 0 (nothing listens, nothing is sent).
* Warnings (exit 0, printed): placeholder secrets (``change-me...``, as the shipped
  example and docs write them), credentials written as ``$VAR`` (kept as written, as
  stunnerd does), documentation-range addresses (RFC 5737 192.0.2.0/24, 198.51.100.0/24,
  203.0.113.0/24; RFC 3849 2001:db8::/32) anywhere in the file, and the parser's own
  warnings (STUNner fields relay does not implement).  The values of secrets are never
  printed: a warning names the key.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from relay.config import DEFAULT_CONFIG_YAML, Config, read_raw
from relay.errors import ConfigError

DOC_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"))
_PLACEHOLDER = re.compile(r"change-?me", re.IGNORECASE)
_ENV_REF = re.compile(r"\$(\{\w+\}|[A-Za-z_]\w*)$")
_VERBATIM_KEYS = ("auth.credentials.", "auth.users[")
_TOKEN_SPLIT = re.compile(r"[\s,;()'\"]+")


@attrs.frozen
class Findings:
    errors: tuple[ConfigError, ...] = ()
    warnings: tuple[str, ...] = ()


def load(path: str | None) -> tuple[Config, Any]:
    """The config of `path` (the embedded default for None) and its raw tree, substituted."""
    if path is None:
        raw = read_raw(DEFAULT_CONFIG_YAML, "<embedded default>")
    else:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(str(p), f"cannot read: {exc.strerror or exc}") from None
        raw = read_raw(text, str(p))
    return Config.from_mapping(raw), raw


def check(config: Config, raw: Any) -> Findings:
    errors = list(_addresses_not_here(config))
    warnings = list(config.warnings)
    for key, value in _strings(raw, ""):
        if key.startswith(_VERBATIM_KEYS) and _ENV_REF.match(value):
            warnings.append(f"{key}: looks like an environment variable, but credentials "
                            "are used as written (stunnerd does not substitute them either)")
            continue
        if _PLACEHOLDER.search(value):
            warnings.append(f"{key}: a placeholder secret is left in the config; set a "
                            "random one (e.g. `openssl rand -hex 32`)")
            continue
        for ip in _addresses_in(value):
            warnings.append(f"{key}: {ip} is a documentation address (RFC 5737/3849), "
                            "not a real one; put this host's address there")
            break
    return Findings(tuple(errors), tuple(warnings))


# -- addresses that must be on this host ---------------------------------------------------


def _addresses_not_here(config: Config) -> Iterator[ConfigError]:
    for i, lis in enumerate(config.listeners):
        reason = _not_here(lis.address)
        if reason:
            yield ConfigError(f"listeners[{i}].address", f"{lis.address}: {reason}")
    for name in ("metrics_endpoint", "healthcheck_endpoint"):
        ep = getattr(config.admin, name)
        if ep is not None and ep.host and ep.host != "localhost":
            reason = _not_here(ep.host)
            if reason:
                yield ConfigError(f"admin.{name}", f"{ep.host}: {reason}")
    sig = config.signaling
    if sig is not None:
        reason = _not_here(sig.host)
        if reason:
            yield ConfigError(sig.listen_key, f"{sig.host}: {reason}")


def _not_here(address: str) -> str | None:
    """None when `address` can be bound on this host, else why not."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None  # a host name: resolved at start, not judged here
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((address, 0))
    except OSError as exc:
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.EINVAL):
            return "not an address of this host (binding it fails at start)"
        return f"cannot bind: {exc.strerror or exc}"
    return None


# -- what is left in the file ---------------------------------------------------------------


def _strings(node: Any, key: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield from _strings(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{key}[{i}]")
    elif isinstance(node, str):
        yield key, node


def _addresses_in(text: str) -> Iterator[str]:
    """Documentation-range addresses in a string: plain, CIDR, host:port, [v6]:port, a URL,
    STUNner's `addr:<lo-hi>` cluster endpoints."""
    for token in _TOKEN_SPLIT.split(text):
        if not token or not any(c.isdigit() for c in token):
            continue
        for candidate in _candidates(token):
            try:
                net = ipaddress.ip_network(candidate, strict=False)
            except ValueError:
                continue
            if any(net.version == d.version and net.subnet_of(d)  # type: ignore[arg-type]
                   for d in DOC_NETWORKS):
                yield candidate
            break


def _candidates(token: str) -> Iterator[str]:
    yield token
    if "://" in token:
        try:
            host = urllib.parse.urlsplit(token).hostname
        except ValueError:
            host = None
        if host:
            yield host
        return
    if token.startswith("["):
        yield token[1:].split("]", 1)[0]
    head = token.split(":<", 1)[0]
    if head != token:
        yield head
    host, sep, port = token.rpartition(":")
    if sep and port.isdigit() and host.count(":") == 0:
        yield host
