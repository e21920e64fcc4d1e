"""Long-term credentials for TURN: static users, TURN REST API (ephemeral) users, nonces.

Sans-IO: every decision takes `now` (seconds since the epoch) from the caller.

* `static`: a fixed list of users; the key is MD5(user:realm:OpaqueString(password)).
* `ephemeral` (TURN REST API, draft-uberti-behave-turn-rest-00, STUNner's reading): the
  username is ``<expiry>:<user>`` (the first colon-separated field that is an integer is the
  expiry, so ``<user>:<expiry>``, ``<expiry>:`` and a bare ``<expiry>`` work too); the password is
  base64(HMAC-SHA1(secret, username)).  Several secrets may be configured so a secret can be
  rotated without dropping clients: each one is tried.
* `none`: STUN only; TURN requests are refused.

Nonces are stateless: hex(expiry) + HMAC-SHA256(process key, expiry | client IP), so no
per-client state exists before a request authenticates (a spoofed-source flood costs us
nothing but the answer, and the answers are rate limited per source IP).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct

from relay.config import AuthConfig
from relay.stun.credentials import long_term_key

_NONCE_MAC_BYTES = 12
_MAX_TS_DIGITS = 12  # 10^12 s is year 33658: anything longer is not a timestamp
_KEY_CACHE_MAX = 8192


class Credential:
    """What a username maps to: candidate keys, the quota identity, and an expiry."""

    __slots__ = ("expires", "keys", "user_id")

    def __init__(self, keys: tuple[bytes, ...], user_id: str, expires: float | None) -> None:
        self.keys = keys
        self.user_id = user_id
        self.expires = expires


class AuthRefused(Exception):
    """A username that cannot authenticate; `reason` is one of AUTH_FAILURE_REASONS."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_rest_username(username: str) -> tuple[int, str]:
    """(expiry timestamp, user id) of a TURN REST API username; AuthRefused if malformed.

    STUNner's reading: the first field (split on ``:``) made only of ASCII digits is the
    expiry; the other fields, joined with ``:``, are the user id.  Other fields may be empty,
    so ``<expiry>:`` (what STUNner's auth service issues without a user id) is valid; its
    user id is empty and the whole username is then the quota identity.  A zero timestamp
    and more than 12 digits are malformed."""
    fields = username.split(":")
    for i, field in enumerate(fields):
        if field.isascii() and field.isdigit():
            if len(field) > _MAX_TS_DIGITS:
                raise AuthRefused("malformed_username")
            ts = int(field)
            if ts == 0:
                raise AuthRefused("malformed_username")
            return ts, ":".join(f for f in fields[:i] + fields[i + 1 :] if f)
    raise AuthRefused("malformed_username")


def rest_password(secret: str, username: str) -> str:
    """The TURN REST API password for `username` under `secret`."""
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


class Authenticator:
    """Finds keys for usernames and issues and checks nonces."""

    def __init__(
        self, auth: AuthConfig, *, nonce_lifetime: int = 600, nonce_key: bytes | None = None
    ) -> None:
        self.type = auth.type
        self.realm = auth.realm
        self.nonce_lifetime = nonce_lifetime
        self._nonce_key = nonce_key if nonce_key is not None else os.urandom(32)
        self._secrets = tuple(auth.secrets)
        self._static: dict[str, Credential] = {}
        for user in auth.users:
            key = long_term_key(user.username, auth.realm, user.password)
            old = self._static.get(user.username)
            keys = (*old.keys, key) if old else (key,)
            self._static[user.username] = Credential(keys, user.username, None)
        self._rest_cache: dict[str, Credential] = {}

    @property
    def nonce_key(self) -> bytes:
        """The key nonces are signed with (kept across a reload, so nonces stay good)."""
        return self._nonce_key

    @property
    def turn_enabled(self) -> bool:
        return self.type != "none"

    # -- credentials ----------------------------------------------------------------------

    def credential(self, username: str, now: float) -> Credential:
        """The credential of `username`, or AuthRefused with the reason."""
        if self.type == "static":
            cred = self._static.get(username)
            if cred is None:
                raise AuthRefused("unknown_user")
            return cred
        if self.type == "ephemeral":
            cred = self._rest_cache.get(username)
            if cred is None:
                expiry, user_id = parse_rest_username(username)
                keys = tuple(
                    long_term_key(username, self.realm, rest_password(s, username))
                    for s in self._secrets
                )
                cred = Credential(keys, user_id or username, float(expiry))
                if len(self._rest_cache) >= _KEY_CACHE_MAX:
                    self._rest_cache.clear()
                self._rest_cache[username] = cred
            if cred.expires is not None and cred.expires < now:
                raise AuthRefused("expired_credential")
            return cred
        raise AuthRefused("unknown_user")

    # -- nonces ---------------------------------------------------------------------------

    def _mac(self, expiry: int, client_ip: str) -> str:
        msg = struct.pack("!Q", expiry) + client_ip.encode()
        return hmac.new(self._nonce_key, msg, hashlib.sha256).hexdigest()[: 2 * _NONCE_MAC_BYTES]

    def nonce(self, client_ip: str, now: float) -> str:
        """A fresh nonce for this client, valid for `nonce_lifetime` seconds."""
        expiry = int(now) + self.nonce_lifetime
        return f"{expiry:x}{self._mac(expiry, client_ip)}"

    def check_nonce(self, nonce: str, client_ip: str, now: float) -> str | None:
        """None if the nonce is ours, for this client and current; else "stale_nonce" or
        "bad_nonce" (both answered with 438 and a fresh nonce)."""
        mac_len = 2 * _NONCE_MAC_BYTES
        if not 1 + mac_len <= len(nonce) <= 16 + mac_len:
            return "bad_nonce"
        head, mac = nonce[:-mac_len], nonce[-mac_len:]
        try:
            expiry = int(head, 16)
        except ValueError:
            return "bad_nonce"
        if expiry >= 1 << 64 or not hmac.compare_digest(mac, self._mac(expiry, client_ip)):
            return "bad_nonce"
        if expiry < now:
            return "stale_nonce"
        return None
