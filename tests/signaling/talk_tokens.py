"""A Talk-shaped mock Nextcloud for hello v2: keys, capabilities and tokens as Talk makes them.

- Keys (Talk's `Config::ensureSignalingTokenKeys`): ES* on P-256 for every ES algorithm,
  RS* 2048-bit RSA, both published as PEM SubjectPublicKeyInfo; EdDSA a libsodium
  keypair published as standard base64 of the raw 32-byte public key.
- Tokens (`Config::getSignalingTicketV2` through php-jwt): header `{"typ":"JWT","alg":...}`,
  claims `iss`, `iat`, `exp = iat + 60`, plus `sub`/`userdata` for users (cloud id for
  federated users); ES signatures as r ‖ s padded to 32 (ES256) or 48 (ES384) bytes.
- Capabilities (`Capabilities::getCapabilities`, anonymous request): the `spreed` entry
  with `features`, `config.signaling.session-ping-limit` and, if a key exists,
  `config.signaling.hello-v2-token-key`, wrapped in an OCS v2 envelope.
- `MockNextcloud`: a tiny HTTP/1.1 server (h11) on 127.0.0.1, port 0, serving that document.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import h11
import trio
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ISSUER = "https://cloud.example.test/"
TOKEN_TTL = 60

TALK_FEATURES = (
    "audio", "video", "chat-v2", "conversation-v4", "guest-signaling", "empty-group-room",
    "guest-display-names", "multi-room-users", "favorites", "last-room-activity", "no-ping",
    "system-messages", "delete-messages", "mention-flag", "in-call-flags",
    "conversation-call-flags", "notification-levels", "invite-groups-and-mails",
    "locked-one-to-one-rooms", "read-only-rooms", "listable-rooms", "chat-read-marker",
    "chat-unread", "webinary-lobby", "start-call-flag", "chat-replies", "circles-support",
    "force-mute", "sip-support", "sip-support-nopin", "chat-read-status", "phonebook-search",
    "raise-hand", "room-description", "rich-object-sharing", "temp-user-avatar-api",
    "geo-location-sharing", "voice-message-sharing", "signaling-v3",
    "publishing-permissions", "clear-history", "direct-mention-flag", "notification-calls",
    "conversation-permissions", "rich-object-list-media", "rich-object-delete",
    "unified-search", "chat-permission", "silent-send", "silent-call",
    "send-call-notification", "talk-polls", "breakout-rooms-v1", "recording-v1", "avatar",
    "chat-get-context", "single-conversation-status", "chat-keep-notifications",
    "typing-privacy", "remind-me-later", "bots-v1", "markdown-messages", "media-caption",
    "session-state", "note-to-self", "recording-consent", "sip-support-dialout",
    "delete-messages-unlimited", "edit-messages", "silent-send-state", "chat-read-last",
    "federation-v1", "federation-v2", "ban-v1", "chat-reference-id",
)

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512,
}
_PHP_JWT_EC_SIZE = {"ES256": 32, "ES384": 48, "ES512": 66}


@attrs.frozen
class TalkKey:
    alg: str
    private: Any
    public: str  # the capabilities' hello-v2-token-key


def _spki_pem(public_key: Any) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def generate_talk_key(alg: str, *, curve: ec.EllipticCurve | None = None) -> TalkKey:
    """A key pair for `alg` as Talk creates it (`curve` overrides Talk's P-256)."""
    if alg.startswith("ES"):
        priv: Any = ec.generate_private_key(curve or ec.SECP256R1())
        return TalkKey(alg, priv, _spki_pem(priv.public_key()))
    if alg.startswith("RS"):
        priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return TalkKey(alg, priv, _spki_pem(priv.public_key()))
    if alg == "EdDSA":
        priv = ed25519.Ed25519PrivateKey.generate()
        raw = priv.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return TalkKey(alg, priv, base64.b64encode(raw).decode())
    raise ValueError(f"Talk does not sign with {alg}")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def php_json(obj: Any) -> bytes:
    """json_encode(..., JSON_UNESCAPED_SLASHES), as php-jwt encodes header and claims."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode()


def sign(key: TalkKey, alg: str, signing_input: bytes) -> bytes:
    """The JOSE signature php-jwt produces for `alg` with Talk's private key."""
    if alg.startswith("RS"):
        return bytes(key.private.sign(signing_input, padding.PKCS1v15(), _HASHES[alg[2:]]()))
    if alg.startswith("ES"):
        der = key.private.sign(signing_input, ec.ECDSA(_HASHES[alg[2:]]()))
        r, s = decode_dss_signature(der)
        size = _PHP_JWT_EC_SIZE[alg]
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if alg == "EdDSA":
        return bytes(key.private.sign(signing_input))
    raise ValueError(f"cannot sign {alg}")


def encode_token(
    key: TalkKey, claims: dict[str, Any], *, header: dict[str, Any] | None = None
) -> str:
    hdr = header if header is not None else {"typ": "JWT", "alg": key.alg}
    signing_input = f"{b64url(php_json(hdr))}.{b64url(php_json(claims))}".encode()
    return f"{signing_input.decode()}.{b64url(sign(key, hdr.get('alg', key.alg), signing_input))}"


def talk_claims(
    *,
    now: int,
    user_id: str | None = None,
    display_name: str | None = None,
    cloud_id: str | None = None,
    issuer: str = ISSUER,
) -> dict[str, Any]:
    claims: dict[str, Any] = {"iss": issuer, "iat": now, "exp": now + TOKEN_TTL}
    if user_id:
        claims["sub"] = user_id
        claims["userdata"] = {"displayname": display_name or user_id}
    elif cloud_id:
        claims["sub"] = cloud_id
        if display_name:
            claims["userdata"] = {"displayname": display_name}
    return claims


def talk_token(key: TalkKey, *, now: int, **kwargs: Any) -> str:
    """A hello v2 token as Talk issues it at Unix time `now`."""
    return encode_token(key, talk_claims(now=now, **kwargs))


def capabilities_document(
    key: TalkKey | None,
    *,
    features: tuple[str, ...] = TALK_FEATURES,
    session_ping_limit: int = 200,
    version: str = "21.1.0",
) -> dict[str, Any]:
    """The OCS capabilities answer of a Nextcloud running Talk, seen anonymously."""
    signaling: dict[str, Any] = {"session-ping-limit": session_ping_limit}
    if key is not None:
        signaling["hello-v2-token-key"] = key.public
    spreed = {
        "features": list(features),
        "features-local": ["favorites", "chat-read-status", "listable-rooms", "avatar"],
        "config": {
            "attachments": {"allowed": False},
            "call": {"enabled": True, "breakout-rooms": True, "recording": False},
            "chat": {"max-length": 32000, "read-privacy": 0, "typing-privacy": 0},
            "conversations": {"can-create": False},
            "federation": {
                "enabled": False,
                "incoming-enabled": False,
                "outgoing-enabled": False,
                "only-trusted-servers": True,
            },
            "previews": {"max-gif-size": 3145728},
            "signaling": signaling,
        },
        "version": version,
    }
    return {
        "ocs": {
            "meta": {"status": "ok", "statuscode": 200, "message": "OK"},
            "data": {
                "version": {"major": 31, "minor": 0, "micro": 0, "string": "31.0.0",
                            "edition": "", "extendedSupport": False},
                "capabilities": {"core": {"pollinterval": 60}, "spreed": spreed},
            },
        }
    }


def capabilities_body(key: TalkKey | None, **kwargs: Any) -> bytes:
    return php_json(capabilities_document(key, **kwargs))


# --- the HTTP side ----------------------------------------------------------------------

CAPS_PATH = "/ocs/v2.php/cloud/capabilities"


@attrs.define
class MockNextcloud:
    """Serves `body` at the capabilities path; records every request's headers."""

    body: bytes = b""
    status: int = 200
    content_type: str = "application/json; charset=utf-8"
    cache_control: str | None = None
    etag: str | None = None
    gate: trio.Event | None = None  # when set, requests wait for it before answering
    chunked: bool = False  # answer without Content-Length
    requests: list[dict[str, str]] = attrs.field(factory=list)
    request_seen: trio.Event = attrs.field(factory=trio.Event)
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def _response(self, target: bytes, headers: dict[str, str]) -> tuple[int, list, bytes]:
        extra: list[tuple[str, str]] = []
        if self.cache_control is not None:
            extra.append(("Cache-Control", self.cache_control))
        if self.etag is not None:
            extra.append(("ETag", self.etag))
        if target.split(b"?")[0].decode() != CAPS_PATH:
            return 404, [("Content-Type", "text/plain"), *extra], b"not found"
        if self.etag is not None and headers.get("if-none-match") == self.etag:
            return 304, extra, b""
        return self.status, [("Content-Type", self.content_type), *extra], self.body

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request: h11.Request | None = None
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                        continue
                    if isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        return
                assert request is not None
                headers = {k.decode().lower(): v.decode() for k, v in request.headers}
                self.requests.append(headers)
                self.request_seen.set()
                if self.gate is not None:
                    await self.gate.wait()
                status, resp_headers, body = self._response(request.target, headers)
                if status != 304 and not self.chunked:
                    resp_headers.append(("Content-Length", str(len(body))))
                data = conn.send(h11.Response(status_code=status, headers=resp_headers))
                if status != 304:
                    data += conn.send(h11.Data(data=body))
                data += conn.send(h11.EndOfMessage())
                await stream.send_all(data)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await stream.aclose()


@asynccontextmanager
async def running_nextcloud(mock: MockNextcloud) -> AsyncIterator[MockNextcloud]:
    """Serve `mock` on 127.0.0.1 (port 0) for the duration of the block."""
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        mock.port = listeners[0].socket.getsockname()[1]
        await nursery.start(trio.serve_listeners, mock._handle, listeners)
        try:
            yield mock
        finally:
            nursery.cancel_scope.cancel()
