"""hello v2: the JWT Nextcloud Talk hands its clients instead of a v1 ticket.

Talk signs `{"iss": <Nextcloud URL>, "iat": now, "exp": now + 60, "sub": <user id or
cloud id>, "userdata": {"displayname": ...}}` (guests: no `sub`/`userdata`) with the
algorithm of app config `signaling_token_alg` (ES256 by default; ES384, RS256, RS384, RS512
or EdDSA) and publishes the public key in its capabilities as
`config.signaling.hello-v2-token-key`: PEM SubjectPublicKeyInfo for RSA and ECDSA, and for
EdDSA the raw 32-byte Ed25519 key in standard base64. Talk's ECDSA keys are P-256 for every
ES algorithm (older Talk versions; php-jwt pads an ES384 signature to 2 * 48 bytes), so the
curve is not required to match the algorithm, exactly as nextcloud-spreed-signaling verifies.

Federation hellos (`auth.type == "federation"`) carry a token of the same shape, issued by
the remote Nextcloud (`sub` = the user's cloud id) and checked with that Nextcloud's key,
i.e. the capabilities of `auth.url`; that Nextcloud must also list `federation-v2`.

`verify_token` is sans-IO (token, key, `now` in Unix seconds). `verify_hello_v2` adds the
key lookup: refetch once if the key is missing from cached capabilities, and — at most once
a minute per backend, via the cache's budget — when the cached key does not verify, so a
key or algorithm change in Talk is picked up without waiting out the cache.

Errors are `TokenError` with the wire code upstream sends: `invalid_token`,
`token_expired`, `token_not_valid_yet`, `federation_unsupported`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import re
import time
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import jwt
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwt.algorithms import Algorithm

from relay.signaling.capabilities import (
    FEATURE_FEDERATION_V2,
    Capabilities,
    CapabilitiesError,
    Lookup,
)
from relay.signaling.protocol import SignalingError

TOKEN_LEEWAY = 60.0  # seconds, for iat/nbf/exp

# What the verifier accepts (upstream's list) and what Talk signs with.
ALLOWED_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "EdDSA")
TALK_ALGORITHMS = ("ES256", "ES384", "RS256", "RS384", "RS512", "EdDSA")

INVALID_TOKEN = "invalid_token"
TOKEN_EXPIRED = "token_expired"
TOKEN_NOT_VALID_YET = "token_not_valid_yet"
FEDERATION_UNSUPPORTED = "federation_unsupported"

_MESSAGES = {
    INVALID_TOKEN: "The passed token is invalid.",
    TOKEN_EXPIRED: "The token is expired.",
    TOKEN_NOT_VALID_YET: "The token is not valid yet.",
    FEDERATION_UNSUPPORTED: "The target server does not support federation.",
}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class TokenError(SignalingError):
    """A refused hello v2 token: `code`/`message` go on the wire, `reason` to the log.

    `key_problem` is set when a newer key might verify the token (key missing, unusable
    for the token's algorithm, or signature mismatch)."""

    def __init__(self, code: str, reason: str, *, key_problem: bool = False) -> None:
        super().__init__(code, _MESSAGES[code])
        self.reason = reason
        self.key_problem = key_problem

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"


def _invalid(reason: str, *, key_problem: bool = False) -> TokenError:
    return TokenError(INVALID_TOKEN, reason, key_problem=key_problem)


@attrs.frozen
class HelloV2Claims:
    """What a verified token says: the session's user id and user data."""

    user_id: str  # `sub`: user id, a cloud id for federation, "" for guests
    userdata: Any  # `userdata` as sent (JSON), None if absent; handed on to clients
    issuer: str | None  # `iss` (Talk's URL; informational, never compared)
    issued_at: int
    expires_at: int
    algorithm: str


# --- signature ---------------------------------------------------------------------------


class _JoseECDSA(Algorithm):
    """ES256/ES384/ES512 verification by signature size, whatever the key's curve.

    JOSE signatures are r ‖ s, each padded to the algorithm's coordinate size; Talk signs
    ES384 with a P-256 key, which PyJWT's own ECAlgorithm refuses."""

    def __init__(self, hash_alg: type[hashes.HashAlgorithm], size: int) -> None:
        self.hash_alg = hash_alg
        self.size = size

    def prepare_key(self, key: Any) -> ec.EllipticCurvePublicKey:
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise jwt.InvalidKeyError("not an ECDSA public key")
        return key

    def sign(self, msg: bytes, key: Any) -> bytes:
        raise NotImplementedError("verification only")

    def verify(self, msg: bytes, key: Any, sig: bytes) -> bool:
        if len(sig) != 2 * self.size:
            return False
        r = int.from_bytes(sig[: self.size], "big")
        s = int.from_bytes(sig[self.size :], "big")
        try:
            key.verify(encode_dss_signature(r, s), msg, ec.ECDSA(self.hash_alg()))
        except (InvalidSignature, ValueError):
            return False
        return True

    @staticmethod
    def to_jwk(key_obj: Any, as_dict: bool = False) -> Any:
        raise NotImplementedError("verification only")

    @staticmethod
    def from_jwk(jwk: Any) -> Any:
        raise NotImplementedError("verification only")


def _make_jws() -> jwt.PyJWS:
    jws = jwt.PyJWS(algorithms=["RS256", "RS384", "RS512", "EdDSA"])
    jws.register_algorithm("ES256", _JoseECDSA(hashes.SHA256, 32))
    jws.register_algorithm("ES384", _JoseECDSA(hashes.SHA384, 48))
    jws.register_algorithm("ES512", _JoseECDSA(hashes.SHA512, 66))
    return jws


_JWS = _make_jws()


# --- keys -------------------------------------------------------------------------------

_PEM_BLOCK = re.compile(
    r"-----BEGIN ([^\r\n-]*)-----\r?\n(.*?)-----END \1-----", re.DOTALL
)


def _pem_der(text: str) -> bytes:
    """The DER bytes of the first PEM block; the label is not checked (Talk and upstream's
    tests use `PUBLIC KEY`, `RSA PUBLIC KEY`, `ECDSA PUBLIC KEY`, `Ed25519 PUBLIC KEY`)."""
    m = _PEM_BLOCK.search(text)
    if m is None:
        raise ValueError("no PEM block")
    lines = [ln.strip() for ln in m.group(2).splitlines()]
    body = "".join(ln for ln in lines if ln and ":" not in ln)  # skip RFC 1421 headers
    return base64.b64decode(body, validate=True)


def _family(alg: str) -> str:
    if alg.startswith("RS"):
        return "rsa"
    if alg.startswith("ES"):
        return "ec"
    return "ed25519"


@functools.lru_cache(maxsize=32)
def _load_key(family: str, text: str) -> PublicKey:
    if family == "ed25519" and not text.startswith("-----BEGIN "):
        raw = base64.b64decode(text.replace("\r", "").replace("\n", ""), validate=True)
        return ed25519.Ed25519PublicKey.from_public_bytes(raw)
    der = _pem_der(text)
    try:
        key: Any = serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm):
        if family == "ed25519":
            raise
        key = x509.load_der_x509_certificate(der).public_key()
    if family == "rsa" and isinstance(key, rsa.RSAPublicKey):
        return key
    if family == "ec" and isinstance(key, ec.EllipticCurvePublicKey):
        return key
    if family == "ed25519" and isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise ValueError(f"not an {family} key")


def load_public_key(alg: str, key_text: str) -> PublicKey:
    """Parse Talk's published key for a token algorithm, or TokenError (key_problem)."""
    try:
        return _load_key(_family(alg), key_text)
    except (ValueError, TypeError, binascii.Error, UnsupportedAlgorithm) as exc:
        raise _invalid(f"key unusable for {alg}: {exc}", key_problem=True) from None


# --- tokens ------------------------------------------------------------------------------


def token_algorithm(token: str) -> str:
    """The `alg` of a token's header if it is one we accept, else TokenError."""
    if not isinstance(token, str) or not token or token.count(".") != 2:
        raise _invalid("malformed token")
    try:
        header = _JWS.get_unverified_header(token)
    except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
        raise _invalid("malformed token header") from None
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
        raise _invalid(f"algorithm {alg!r} not accepted")
    return alg


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _numeric_date(claims: dict[str, Any], name: str) -> int | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"claim {name} is not a number")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _invalid(f"claim {name} is not a number")
        return math.floor(value)  # whole seconds, as upstream
    return value


def _optional_str(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is not None and not isinstance(value, str):
        raise _invalid(f"claim {name} is not a string")
    return value


def verify_token(
    token: str, key_text: str | None, *, now: float, leeway: float = TOKEN_LEEWAY
) -> HelloV2Claims:
    """Verify a hello v2 token against Talk's published key at Unix time `now`."""
    alg = token_algorithm(token)
    if not key_text:
        raise _invalid("no key published", key_problem=True)
    key = load_public_key(alg, key_text)
    try:
        decoded = _JWS.decode_complete(token, key=key, algorithms=[alg])
    except jwt.InvalidSignatureError:
        raise _invalid("signature mismatch", key_problem=True) from None
    except jwt.InvalidKeyError as exc:
        raise _invalid(f"key unusable: {exc}", key_problem=True) from None
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise _invalid(f"malformed token: {exc}") from None
    try:
        claims = json.loads(decoded["payload"], parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise _invalid("claims are not JSON") from None
    if not isinstance(claims, dict):
        raise _invalid("claims are not an object")

    issuer = _optional_str(claims, "iss")
    subject = _optional_str(claims, "sub") or ""
    _optional_str(claims, "jti")
    aud = claims.get("aud")
    if aud is not None and not isinstance(aud, str) and not (
        isinstance(aud, list) and all(isinstance(a, str) for a in aud)
    ):
        raise _invalid("claim aud is not a string or list of strings")
    exp = _numeric_date(claims, "exp")
    iat = _numeric_date(claims, "iat")
    nbf = _numeric_date(claims, "nbf")

    # The standard checks, each with the leeway; "not yet valid" wins if both apply.
    if (nbf is not None and now < nbf - leeway) or (iat is not None and now < iat - leeway):
        raise TokenError(TOKEN_NOT_VALID_YET, "issued in the future")
    if exp is not None and now >= exp + leeway:
        raise TokenError(TOKEN_EXPIRED, "expired")
    # Then Talk's tokens must carry both iat and exp, in that order.
    if iat is not None and exp is not None and exp < iat:
        raise TokenError(TOKEN_EXPIRED, "expires before it was issued")
    if iat is None:
        raise TokenError(TOKEN_NOT_VALID_YET, "no iat")
    if exp is None or exp < now - leeway:
        raise TokenError(TOKEN_EXPIRED, "no exp")
    return HelloV2Claims(
        user_id=subject,
        userdata=claims.get("userdata"),
        issuer=issuer,
        issued_at=iat,
        expires_at=exp,
        algorithm=alg,
    )


# --- with the key lookup -----------------------------------------------------------------


class CapabilitiesSource(Protocol):
    """What `verify_hello_v2` needs of the capabilities cache (CapabilitiesFetcher)."""

    async def get(self, url: str) -> Lookup: ...

    def invalidate(self, url: str) -> bool: ...


async def _lookup(source: CapabilitiesSource, url: str) -> tuple[Capabilities | None, bool]:
    try:
        found = await source.get(url)
    except CapabilitiesError as exc:
        return None, exc.cached
    return found.capabilities, found.cached


async def verify_hello_v2(
    source: CapabilitiesSource,
    url: str,
    token: str,
    *,
    federation: bool = False,
    wall_clock: Callable[[], float] = time.time,
    leeway: float = TOKEN_LEEWAY,
) -> HelloV2Claims:
    """Verify the token of a hello v2 (`auth.params.token`) sent for backend `url`.

    `url` is the normalised `auth.url` that selected the backend (its capabilities hold
    the key). `wall_clock` gives Unix seconds: tokens carry wall-clock times."""
    caps: Capabilities | None = None
    cached = False
    if federation:
        caps, cached = await _lookup(source, url)
        if caps is None or not caps.has_feature(FEATURE_FEDERATION_V2):
            raise TokenError(FEDERATION_UNSUPPORTED, "backend lacks federation-v2")
    token_algorithm(token)  # refuse malformed tokens before any fetch
    if caps is None:
        caps, cached = await _lookup(source, url)
    key = caps.hello_v2_token_key if caps is not None else None
    if key is None and cached and source.invalidate(url):
        # Talk may have enabled hello v2 since we cached its capabilities.
        caps, cached = await _lookup(source, url)
        key = caps.hello_v2_token_key if caps is not None else None
    try:
        return verify_token(token, key, now=wall_clock(), leeway=leeway)
    except TokenError as exc:
        if not (exc.key_problem and key is not None and cached and source.invalidate(url)):
            raise
        first = exc
    # The cached key failed: Talk may have rotated it (or changed the algorithm).
    caps, _ = await _lookup(source, url)
    fresh = caps.hello_v2_token_key if caps is not None else None
    if not fresh or fresh == key:
        raise first
    return verify_token(token, fresh, now=wall_clock(), leeway=leeway)
