"""`GET /turn/credentials`: TURN REST API credentials (draft-uberti-behave-turn-rest-00),
answered as spreed-signaling's backend server does.

Query `service=turn`, the API key as `key` (the draft's name) or `api` (what Janus
sends), optional `username`. Answers: 400 "Invalid service and/or key sent." (wrong
service or no key), 403 "Not allowed to access this service." (wrong key), 404 "No TURN
servers available." (no URIs), else 200 with `{"username": "<expiry>:<username>",
"password": base64(HMAC-SHA1(secret, username)), "ttl": 86400, "uris": [...]}` and a
trailing newline. Without a username a random one is used. relay's TURN core accepts
exactly these credentials when its auth is `ephemeral` with the same secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import string
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import parse_qs

import attrs

from relay.config import ListenerConfig
from relay.config.signaling import TurnRestConfig
from relay.signaling.answers import JSON, Answer, text_answer

TTL = 24 * 3600  # upstream's fixed validity
RANDOM_USERNAME_LENGTH = 16
_ALPHABET = string.ascii_letters + string.digits




def credentials(username: str, secret: bytes, now: float, ttl: int = TTL) -> tuple[str, str]:
    """(`<expiry>:<username>`, base64 HMAC-SHA1 password) valid for `ttl` from `now`."""
    user = f"{int(now) + ttl}:{username}"
    mac = hmac.new(secret, user.encode(), hashlib.sha1).digest()
    return user, base64.b64encode(mac).decode()


def own_uris(listeners: Sequence[tuple[str, str, int]]) -> list[str]:
    """URIs of relay's own TURN listeners: (protocol, host, port) with protocol one of
    `TURN-UDP`, `TURN-TCP`, `TURN-TLS` (others are skipped)."""
    out: list[str] = []
    for protocol, host, port in listeners:
        h = f"[{host}]" if ":" in host else host
        if protocol == "TURN-UDP":
            out.append(f"turn:{h}:{port}?transport=udp")
        elif protocol == "TURN-TCP":
            out.append(f"turn:{h}:{port}?transport=tcp")
        elif protocol == "TURN-TLS":
            out.append(f"turns:{h}:{port}?transport=tcp")
    return out


def listener_uris(listeners: Iterable[ListenerConfig], bound_ports: Mapping[str, int]
                  ) -> tuple[str, ...]:
    """URIs of relay's own TURN listeners as clients reach them: the public address/port
    when set, else the bound one; wildcard addresses name no host: left out."""
    parts = []
    for lis in listeners:
        host = lis.public_address or lis.address
        port = lis.public_port or bound_ports.get(lis.name, 0)
        if host in ("", "0.0.0.0", "::") or not port:
            continue
        parts.append((lis.protocol, host, port))
    return tuple(own_uris(parts))


@attrs.define
class TurnServers:
    """The URIs handed out when `[turn] servers` is empty: filled in by the app once the
    gateway's listeners are bound (empty until then: 404), and again after each reload."""

    uris: tuple[str, ...] = ()


def handle(query: str, config: TurnRestConfig | None, own: TurnServers | None,
           now: float) -> Answer:
    """Answer one `/turn/credentials` request (`query` is the raw query string)."""
    try:
        q = parse_qs(query, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (ValueError, UnicodeDecodeError):
        return text_answer(400, "Invalid service and/or key sent.")

    def first(name: str) -> str:
        values = q.get(name)
        return values[0] if values else ""

    service, username = first("service"), first("username")
    key = first("key") or first("api")
    if service != "turn" or not key:
        return text_answer(400, "Invalid service and/or key sent.")
    if config is None or not hmac.compare_digest(key.encode(), config.apikey.encode()):
        return text_answer(403, "Not allowed to access this service.")
    uris = list(config.servers) or (list(own.uris) if own is not None else [])
    if not uris:
        return text_answer(404, "No TURN servers available.")
    if not username:
        username = "".join(secrets.choice(_ALPHABET) for _ in range(RANDOM_USERNAME_LENGTH))
    user, password = credentials(username, config.secret, now)
    body = json.dumps({"username": user, "password": password, "ttl": TTL, "uris": uris})
    return Answer(200, JSON, body.encode() + b"\n")
