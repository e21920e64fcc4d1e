"""hello v2 token verification against Talk-made keys and tokens (no sockets)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from relay.signaling.capabilities import (
    CapabilitiesCache,
    CapabilitiesError,
    Lookup,
    interpret_response,
)
from relay.signaling.hello_v2 import (
    FEDERATION_UNSUPPORTED,
    INVALID_TOKEN,
    TALK_ALGORITHMS,
    TOKEN_EXPIRED,
    TOKEN_LEEWAY,
    TOKEN_NOT_VALID_YET,
    HelloV2Claims,
    TokenError,
    load_public_key,
    token_algorithm,
    verify_hello_v2,
    verify_token,
)
from tests.signaling.talk_tokens import (
    TALK_FEATURES,
    TOKEN_TTL,
    TalkKey,
    b64url,
    capabilities_body,
    encode_token,
    generate_talk_key,
    php_json,
    talk_claims,
    talk_token,
)

NOW = 1_790_000_000  # a Unix time; tokens carry wall-clock seconds

_KEYS: dict[str, TalkKey] = {}


def key_for(alg: str) -> TalkKey:
    if alg not in _KEYS:
        _KEYS[alg] = generate_talk_key(alg)
    return _KEYS[alg]


def refused(code: str, token: str, key: str | None, now: float = NOW) -> TokenError:
    with pytest.raises(TokenError) as info:
        verify_token(token, key, now=now)
    assert info.value.code == code
    return info.value


# --- every algorithm Talk signs with ---------------------------------------------------


@pytest.mark.parametrize("alg", TALK_ALGORITHMS)
def test_talk_user_token_verifies(alg: str) -> None:
    key = key_for(alg)
    token = talk_token(key, now=NOW, user_id="alice", display_name="Alice A.")
    claims = verify_token(token, key.public, now=NOW)
    assert claims == HelloV2Claims(
        user_id="alice",
        userdata={"displayname": "Alice A."},
        issuer="https://cloud.example.test/",
        issued_at=NOW,
        expires_at=NOW + TOKEN_TTL,
        algorithm=alg,
    )


@pytest.mark.parametrize("alg", TALK_ALGORITHMS)
def test_guest_token_has_empty_user_id(alg: str) -> None:
    key = key_for(alg)
    claims = verify_token(talk_token(key, now=NOW), key.public, now=NOW + 30)
    assert (claims.user_id, claims.userdata) == ("", None)


def test_federated_token_carries_cloud_id() -> None:
    key = key_for("ES256")
    token = talk_token(key, now=NOW, cloud_id="bob@other.example", display_name="Bob")
    claims = verify_token(token, key.public, now=NOW)
    assert claims.user_id == "bob@other.example"
    assert claims.userdata == {"displayname": "Bob"}


@pytest.mark.parametrize(
    ("alg", "curve"),
    [("ES384", ec.SECP384R1()), ("ES512", ec.SECP521R1())],
)
def test_ecdsa_curve_need_not_match_algorithm(alg: str, curve: ec.EllipticCurve) -> None:
    key = generate_talk_key(alg, curve=curve)
    assert verify_token(talk_token(key, now=NOW), key.public, now=NOW).algorithm == alg


def test_ed25519_key_may_also_be_pem() -> None:
    key = key_for("EdDSA")
    pem = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    assert verify_token(talk_token(key, now=NOW, user_id="u"), pem, now=NOW).user_id == "u"


@pytest.mark.parametrize(
    ("alg", "label"),
    [("RS256", "RSA PUBLIC KEY"), ("ES256", "ECDSA PUBLIC KEY"), ("EdDSA", "Ed25519 PUBLIC KEY")],
)
def test_pem_label_is_not_checked(alg: str, label: str) -> None:
    key = key_for(alg)
    der = key.private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    body = base64.encodebytes(der).decode()
    pem = f"-----BEGIN {label}-----\n{body}-----END {label}-----\n"
    assert verify_token(talk_token(key, now=NOW, user_id="x"), pem, now=NOW).user_id == "x"


# --- time -------------------------------------------------------------------------------


def test_expiry_and_issue_time_use_one_minute_leeway() -> None:
    key = key_for("ES256")
    token = talk_token(key, now=NOW)
    exp = NOW + TOKEN_TTL
    assert verify_token(token, key.public, now=exp + TOKEN_LEEWAY - 1).issued_at == NOW
    refused(TOKEN_EXPIRED, token, key.public, now=exp + TOKEN_LEEWAY)
    assert verify_token(token, key.public, now=NOW - TOKEN_LEEWAY).expires_at == exp
    refused(TOKEN_NOT_VALID_YET, token, key.public, now=NOW - TOKEN_LEEWAY - 1)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"exp": NOW - 1}, TOKEN_EXPIRED),  # expires before it was issued
        ({"iat": None}, TOKEN_NOT_VALID_YET),  # no iat
        ({"exp": None}, TOKEN_EXPIRED),  # no exp
        ({"nbf": NOW + 3600}, TOKEN_NOT_VALID_YET),
        ({"iat": NOW + 3600, "exp": NOW - 3600}, TOKEN_NOT_VALID_YET),  # both: not yet wins
    ],
)
def test_claim_time_rules(change: dict[str, Any], code: str) -> None:
    key = key_for("RS256")
    claims = talk_claims(now=NOW, user_id="alice")
    for name, value in change.items():
        if value is None:
            del claims[name]
        else:
            claims[name] = value
    refused(code, encode_token(key, claims), key.public)


def test_fractional_times_count_in_whole_seconds() -> None:
    key = key_for("EdDSA")
    claims = talk_claims(now=NOW) | {"iat": NOW + 0.9, "exp": NOW + 60.5}
    got = verify_token(encode_token(key, claims), key.public, now=NOW)
    assert (got.issued_at, got.expires_at) == (NOW, NOW + 60)


# --- refusals ---------------------------------------------------------------------------


def test_signature_of_another_key_is_refused() -> None:
    token = talk_token(generate_talk_key("ES256"), now=NOW, user_id="mallory")
    err = refused(INVALID_TOKEN, token, key_for("ES256").public)
    assert err.key_problem


def test_tampered_claims_are_refused() -> None:
    key = key_for("RS256")
    head, _, sig = talk_token(key, now=NOW, user_id="alice").split(".")
    forged = b64url(php_json(talk_claims(now=NOW, user_id="admin")))
    refused(INVALID_TOKEN, f"{head}.{forged}.{sig}", key.public)


def test_alg_none_is_refused() -> None:
    header = b64url(php_json({"typ": "JWT", "alg": "none"}))
    claims = b64url(php_json(talk_claims(now=NOW, user_id="admin")))
    for token in (f"{header}.{claims}.", f"{header}.{claims}.AAAA"):
        err = refused(INVALID_TOKEN, token, key_for("RS256").public)
        assert not err.key_problem


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_with_the_public_key_as_secret_is_refused(alg: str) -> None:
    key = key_for("RS256")
    signing_input = (
        f"{b64url(php_json({'typ': 'JWT', 'alg': alg}))}."
        f"{b64url(php_json(talk_claims(now=NOW, user_id='admin')))}"
    )
    digest = getattr(hashlib, "sha" + alg[2:])
    mac = hmac.new(key.public.encode(), signing_input.encode(), digest).digest()
    refused(INVALID_TOKEN, f"{signing_input}.{b64url(mac)}", key.public)


def test_token_algorithm_other_than_the_keys_is_refused() -> None:
    # A token claiming RS256 against Talk's EC key: the key cannot serve it.
    rsa_key = key_for("RS256")
    err = refused(INVALID_TOKEN, talk_token(rsa_key, now=NOW), key_for("ES256").public)
    assert err.key_problem


def test_ecdsa_signature_of_wrong_size_is_refused() -> None:
    key = key_for("ES256")
    head, claims, sig = talk_token(key, now=NOW).split(".")
    raw = base64.urlsafe_b64decode(sig + "==")
    refused(INVALID_TOKEN, f"{head}.{claims}.{b64url(raw[:-1])}", key.public)
    longer = b64url(bytes(1) + raw)
    refused(INVALID_TOKEN, f"{head}.{claims}.{longer}", key.public)


def _parts(header: Any, claims: Any) -> str:
    return f"{b64url(php_json(header))}.{b64url(php_json(claims))}.c2ln"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.???.***",
        f"{b64url(b'not json')}.{b64url(b'{}')}.c2ln",
        _parts(["alg", "ES256"], {}),
        _parts({"typ": "JWT"}, {}),
        _parts({"alg": 256}, {}),
        _parts({"alg": "ES256K"}, {}),
        _parts({"alg": "PS256"}, {}),
    ],
)
def test_malformed_tokens_are_invalid(token: str) -> None:
    with pytest.raises(TokenError) as info:
        token_algorithm(token)
    assert info.value.code == INVALID_TOKEN
    refused(INVALID_TOKEN, token, key_for("ES256").public)


@pytest.mark.parametrize(
    "change",
    [
        {"sub": 5},
        {"sub": ["alice"]},
        {"iss": {}},
        {"exp": "soon"},
        {"iat": True},
        {"aud": 1},
        {"jti": 2},
    ],
)
def test_claims_of_the_wrong_type_are_invalid(change: dict[str, Any]) -> None:
    key = key_for("EdDSA")
    refused(INVALID_TOKEN, encode_token(key, talk_claims(now=NOW) | change), key.public)


@pytest.mark.parametrize("payload", [b"[1,2]", b'"x"', b"{", b'{"iat": NaN}', b"[" * 5000])
def test_claims_that_are_not_an_object_are_invalid(payload: bytes) -> None:
    key = key_for("EdDSA")
    header = b64url(php_json({"typ": "JWT", "alg": "EdDSA"}))
    signing_input = f"{header}.{b64url(payload)}".encode()
    token = f"{signing_input.decode()}.{b64url(key.private.sign(signing_input))}"
    refused(INVALID_TOKEN, token, key.public)


@pytest.mark.parametrize(
    ("alg", "published"),
    [
        ("ES256", None),
        ("ES256", ""),
        ("ES256", "not a key"),
        ("ES256", "-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n"),
        ("RS256", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
        ("EdDSA", "AAAA"),  # 3 bytes, not 32
        ("EdDSA", "not base64!"),
    ],
)
def test_missing_or_unusable_key_is_invalid_token(alg: str, published: str | None) -> None:
    err = refused(INVALID_TOKEN, talk_token(key_for(alg), now=NOW), published)
    assert err.key_problem


def test_key_of_the_wrong_family_is_refused_by_load_public_key() -> None:
    with pytest.raises(TokenError) as info:
        load_public_key("EdDSA", key_for("RS256").public)
    assert info.value.code == INVALID_TOKEN


def test_error_carries_upstreams_wire_answer() -> None:
    err = refused(TOKEN_EXPIRED, talk_token(key_for("ES256"), now=NOW), key_for("ES256").public,
                  now=NOW + 3600)
    assert err.to_message("7") == {
        "id": "7",
        "type": "error",
        "error": {"code": "token_expired", "message": "The token is expired."},
    }


# --- with the capabilities lookup (a Talk whose key can change) --------------------------


class TalkCapabilities:
    """A CapabilitiesSource over the real cache and parser, with Talk's answer in memory
    and an explicit clock."""

    def __init__(self, key: TalkKey | None, *, features: tuple[str, ...] = TALK_FEATURES):
        self.key = key
        self.features = features
        self.now = 1000.0
        self.cache = CapabilitiesCache()
        self.fetches = 0
        self.fail = False

    async def get(self, url: str) -> Lookup:
        hit = self.cache.lookup(url, self.now)
        if hit is not None:
            return hit
        if self.fail:
            raise CapabilitiesError("unknown", "connection refused")
        self.fetches += 1
        body = capabilities_body(self.key, features=self.features)
        answer = interpret_response(200, {"content-type": "application/json"}, body)
        return self.cache.apply(url, answer, self.now)

    def invalidate(self, url: str) -> bool:
        return self.cache.invalidate(url, self.now)


URL = "https://cloud.example.test/"


async def verify(source: TalkCapabilities, token: str, **kwargs: Any) -> HelloV2Claims:
    return await verify_hello_v2(source, URL, token, wall_clock=lambda: NOW, **kwargs)


async def test_rotated_key_is_refetched_once_a_minute() -> None:
    old = generate_talk_key("ES256")
    talk = TalkCapabilities(old)
    assert (await verify(talk, talk_token(old, now=NOW, user_id="a"))).user_id == "a"
    assert talk.fetches == 1

    talk.key = new = generate_talk_key("ES256")  # admin rotates the key
    talk.now += 5
    assert (await verify(talk, talk_token(new, now=NOW, user_id="b"))).user_id == "b"
    assert talk.fetches == 2

    talk.key = newest = generate_talk_key("EdDSA")  # and again, 10 s later
    talk.now += 10
    with pytest.raises(TokenError) as info:
        await verify(talk, talk_token(newest, now=NOW, user_id="c"))
    assert info.value.code == INVALID_TOKEN
    assert talk.fetches == 2  # the second forced refetch within the minute was refused

    talk.now += 60  # the budget is back (and the entry expired anyway)
    assert (await verify(talk, talk_token(newest, now=NOW, user_id="c"))).user_id == "c"


async def test_bad_signature_with_fresh_capabilities_does_not_refetch() -> None:
    key = key_for("RS256")
    talk = TalkCapabilities(key)
    with pytest.raises(TokenError) as info:
        await verify(talk, talk_token(generate_talk_key("RS256"), now=NOW))
    assert info.value.code == INVALID_TOKEN
    assert talk.fetches == 1


async def test_key_missing_from_cached_capabilities_is_refetched() -> None:
    key = key_for("ES256")
    talk = TalkCapabilities(None)  # hello v2 not yet enabled in Talk
    with pytest.raises(TokenError):
        await verify(talk, talk_token(key, now=NOW))
    assert talk.fetches == 1  # fresh answer without a key: no second fetch
    talk.key = key
    talk.now += 1
    assert (await verify(talk, talk_token(key, now=NOW, user_id="z"))).user_id == "z"
    assert talk.fetches == 2


async def test_unreachable_nextcloud_is_invalid_token() -> None:
    talk = TalkCapabilities(key_for("ES256"))
    talk.fail = True
    with pytest.raises(TokenError) as info:
        await verify(talk, talk_token(key_for("ES256"), now=NOW))
    assert info.value.code == INVALID_TOKEN


async def test_malformed_token_costs_no_fetch() -> None:
    talk = TalkCapabilities(key_for("ES256"))
    with pytest.raises(TokenError):
        await verify(talk, "not.a.token")
    assert talk.fetches == 0


async def test_federation_needs_federation_v2() -> None:
    key = key_for("ES256")
    token = talk_token(key, now=NOW, cloud_id="alice@local.example")
    talk = TalkCapabilities(key, features=tuple(f for f in TALK_FEATURES if f != "federation-v2"))
    with pytest.raises(TokenError) as info:
        await verify(talk, token, federation=True)
    assert info.value.code == FEDERATION_UNSUPPORTED
    assert info.value.message == "The target server does not support federation."

    talk = TalkCapabilities(key)
    claims = await verify(talk, token, federation=True)
    assert claims.user_id == "alice@local.example"
    assert talk.fetches == 1


async def test_expired_token_is_reported_after_lookup() -> None:
    key = key_for("EdDSA")
    talk = TalkCapabilities(key)
    with pytest.raises(TokenError) as info:
        await verify(talk, talk_token(key, now=NOW - 3600))
    assert info.value.code == TOKEN_EXPIRED
    assert talk.fetches == 1
