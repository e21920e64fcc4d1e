"""Long-term credentials on the wire: challenges, nonces, static and TURN REST users,
the 401 rate limit and `auth.type: none`; plus the Authenticator on its own."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from relay.config import AuthConfig, StaticUser
from relay.stun import (
    ErrorCode,
    Lifetime,
    Message,
    MessageClass,
    MessageIntegrity,
    MessageIntegritySha256,
    Method,
    Nonce,
    Realm,
    Username,
    XorMappedAddress,
    long_term_key,
)
from relay.turn.auth import Authenticator, AuthRefused, parse_rest_username, rest_password
from tests.turn.core_harness import (
    CLIENT,
    CLIENT2,
    REALM,
    SECRETS,
    T0,
    UDP,
    Harness,
    Reply,
    check_reply,
    ephemeral_auth,
    txid,
)

EXPIRY = int(T0) + 3600


def _challenge(r: Reply, code: int) -> str:
    """Check a 401/438 challenge and return its nonce."""
    r.expect_error(code, signed=False)
    assert r.get(Realm) == Realm(REALM)
    nonce = r.get(Nonce)
    assert nonce is not None
    return str(nonce.value)


# -- the challenge ------------------------------------------------------------------------


@pytest.mark.parametrize("fingerprint", [False, True])
def test_request_without_integrity_gets_401_with_realm_and_nonce(fingerprint: bool) -> None:
    h = Harness()
    r = h.allocate(integrity=None, fingerprint=fingerprint)
    nonce = _challenge(r, 401)
    assert r.get(XorMappedAddress) is None and r.get(MessageIntegrity) is None
    assert h.stats.auth_failures["missing_credentials"] == 1
    assert h.requests("allocate", "401") == 1
    assert h.lis.allocations == {} and h.ports.calls == []
    # the nonce from the challenge authenticates the retry
    h.allocate(nonce=nonce, now=T0 + 5).expect_success()


@pytest.mark.parametrize("missing", ["user", "realm", "nonce"])
def test_integrity_without_username_realm_or_nonce_gets_400(missing: str) -> None:
    h = Harness()
    kw: dict[str, object] = {missing: None}
    if missing == "user":
        kw["key"] = h.key("alice")
    if missing == "nonce":
        # build by hand: the harness always adds a NONCE
        key = h.key("alice")
        req = Message(Method.ALLOCATE, MessageClass.REQUEST, txid(),
                      [UDP, Username("alice"), Realm(REALM)])
        raw = h.send(req.encode(key=key, integrity="sha1"))
        assert raw is not None
        r = check_reply(raw, req, key, "sha1", False)
    else:
        r = h.allocate(**kw)  # type: ignore[arg-type]
    r.expect_error(400, signed=False)  # RFC 8489 §9.2.4: no MESSAGE-INTEGRITY on this 400
    assert r.get(Nonce) is None
    assert h.stats.auth_failures["missing_credentials"] == 1
    assert h.lis.allocations == {}


def test_unknown_user_gets_401_not_400() -> None:
    h = Harness()
    r = h.allocate(user="mallory", password="whatever")
    _challenge(r, 401)
    assert h.stats.auth_failures["unknown_user"] == 1


def test_bad_integrity_gets_401_not_400() -> None:
    h = Harness()
    _challenge(h.allocate(password="wrong-pw"), 401)
    assert h.stats.auth_failures["bad_integrity"] == 1
    # a tampered message signed with the right key fails the same way
    key = h.key("alice")
    req = Message(Method.ALLOCATE, MessageClass.REQUEST, txid(),
                  [UDP, Username("alice"), Realm(REALM), Nonce(h.nonce())])
    data = bytearray(req.encode(key=key, integrity="sha1"))
    data[24] ^= 0xFF  # inside REQUESTED-TRANSPORT's value
    raw = h.send(bytes(data))
    assert raw is not None
    _challenge(check_reply(raw, req, key, "sha1", False), 401)
    assert h.stats.auth_failures["bad_integrity"] == 2
    assert h.lis.allocations == {}


def test_wrong_realm_gets_401() -> None:
    h = Harness()
    r = h.allocate(realm="other.example", key=long_term_key("alice", "other.example",
                                                            "alice-pw"))
    _challenge(r, 401)
    assert h.stats.auth_failures["wrong_realm"] == 1


def test_bad_nonce_gets_438_with_a_fresh_nonce_that_works() -> None:
    h = Harness()
    fresh = _challenge(h.allocate(nonce="not-a-nonce-of-ours"), 438)
    assert h.stats.auth_failures["bad_nonce"] == 1
    assert h.server.auth.check_nonce(fresh, CLIENT[0], T0) is None
    h.allocate(nonce=fresh).expect_success()


def test_tampered_nonce_gets_438() -> None:
    h = Harness()
    good = h.nonce()
    bad = good[:-1] + ("0" if good[-1] != "0" else "1")
    _challenge(h.allocate(nonce=bad), 438)
    assert h.stats.auth_failures["bad_nonce"] == 1


def test_stale_nonce_gets_438_with_a_fresh_nonce() -> None:
    h = Harness()
    old = h.nonce(now=T0)
    h.allocate(nonce=old, now=T0 + 600).expect_success()  # valid up to its expiry
    same_ip = (CLIENT[0], 5000)
    fresh = _challenge(h.allocate(nonce=old, now=T0 + 601, client=same_ip), 438)
    assert h.stats.auth_failures["stale_nonce"] == 1
    assert fresh != old
    h.allocate(nonce=fresh, now=T0 + 602, client=same_ip).expect_success()


def test_nonce_is_bound_to_the_client_ip() -> None:
    h = Harness()
    theirs = h.nonce(client=CLIENT2)
    _challenge(h.allocate(nonce=theirs), 438)
    assert h.stats.auth_failures["bad_nonce"] == 1
    # another port of the same IP is the same client as far as nonces go
    h.allocate(nonce=theirs, client=(CLIENT2[0], 5555)).expect_success()


def test_sha256_integrity_is_accepted_and_answered_with_sha256() -> None:
    h = Harness()
    r = h.allocate(integrity="sha256", fingerprint=True).expect_success()
    assert r.get(MessageIntegritySha256) is not None and r.get(MessageIntegrity) is None
    assert h.lis.allocations[CLIENT].integrity == "sha256"
    # errors and later requests answer in the kind each request used
    h.allocate(integrity="sha256").expect_error(437)
    h.request(Method.REFRESH, integrity="sha1").expect_success()
    h.request(Method.REFRESH, integrity="sha256").expect_success()


def test_sha256_with_the_wrong_key_gets_401() -> None:
    h = Harness()
    _challenge(h.allocate(integrity="sha256", password="nope"), 401)


def test_auth_type_none_refuses_turn_with_403_but_answers_binding() -> None:
    h = Harness(auth={"type": "none", "realm": REALM})
    for method in (Method.ALLOCATE, Method.REFRESH, Method.CREATE_PERMISSION,
                   Method.CHANNEL_BIND):
        r = h.request(method, [UDP], integrity=None)
        r.expect_error(403, signed=False)
        assert r.get(Nonce) is None
    assert h.request(Method.BINDING, integrity=None).success
    assert h.requests("allocate", "403") == 1 and h.requests("binding", "success") == 1
    assert h.ports.calls == []


# -- the 401 rate limit -------------------------------------------------------------------


def test_401_answers_are_limited_by_a_token_bucket_per_source_ip() -> None:
    h = Harness(turn={"unauthorized_ratelimit": 2, "unauthorized_burst": 3})

    def unauth(client: tuple[str, int], now: float) -> bytes | None:
        req = Message(Method.ALLOCATE, MessageClass.REQUEST, txid(), [UDP])
        return h.send(req.encode(), client, now)

    # The burst: three at once, from any port of the IP.
    assert unauth(CLIENT, T0) is not None
    assert unauth((CLIENT[0], 1), T0) is not None
    assert unauth((CLIENT[0], 2), T0) is not None
    assert unauth(CLIENT, T0) is None
    assert h.stats.drops["ratelimited"] == 1
    assert unauth(CLIENT2, T0) is not None  # another IP has its own bucket
    # Refilled at 2 per second: one token after half a second, not before.
    assert unauth(CLIENT, T0 + 0.4) is None
    assert unauth(CLIENT, T0 + 0.9) is not None
    # a bad-nonce challenge costs from the same bucket
    h.allocate(nonce="junk", now=T0 + 1.4).expect_error(438, signed=False)
    assert unauth(CLIENT, T0 + 1.4) is None
    assert h.stats.drops["ratelimited"] == 3
    # authenticated requests are never limited
    h.allocate(now=T0 + 1.4).expect_success()


def test_438_to_a_five_tuple_holding_an_allocation_is_never_limited() -> None:
    h = Harness(turn={"unauthorized_ratelimit": 1, "unauthorized_burst": 1, "nonce_lifetime": 60})
    h.allocated(now=T0)
    old = h.nonce(CLIENT, T0)
    later = T0 + 120  # the nonce is stale by now
    # An attacker on the same IP (another port) empties the bucket.
    for i in range(20):
        h.send(Message(Method.ALLOCATE, MessageClass.REQUEST, txid(), [UDP]).encode(),
               (CLIENT[0], 41000 + i), later)
    assert h.stats.drops["ratelimited"] >= 19
    # The allocation's own 5-tuple still gets its 438 and refreshes with the new nonce.
    nonce = _challenge(h.request(Method.REFRESH, nonce=old, now=later), 438)
    h.request(Method.REFRESH, nonce=nonce, now=later).expect_success()
    # A new client on that IP (no allocation) is still limited.
    assert h.send(Message(Method.ALLOCATE, MessageClass.REQUEST, txid(), [UDP]).encode(),
                  (CLIENT[0], 50000), later) is None


def test_401_rate_limit_zero_is_unlimited() -> None:
    h = Harness(turn={"unauthorized_ratelimit": 0})
    for i in range(100):
        req = Message(Method.ALLOCATE, MessageClass.REQUEST, txid(), [UDP])
        assert h.send(req.encode(), CLIENT, T0 + i / 1000) is not None
    assert h.stats.drops["ratelimited"] == 0


# -- TURN REST (ephemeral) credentials ----------------------------------------------------


def ephemeral(**kw: object) -> Harness:
    return Harness(auth=ephemeral_auth(), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("username", "user_id"), [
    (f"{EXPIRY}:alice", "alice"),
    (f"alice:{EXPIRY}", "alice"),
    (f"{EXPIRY}", f"{EXPIRY}"),  # a bare expiry: the whole username is the quota identity
    (f"{EXPIRY}:team:alice", "team:alice"),
    # STUNner's auth service issues `<expiry>:` when no user id is asked for; empty
    # fields are skipped in the user id, as STUNner accepts them
    (f"{EXPIRY}:", f"{EXPIRY}:"),
    (f":{EXPIRY}", f":{EXPIRY}"),
    (f"{EXPIRY}::alice", "alice"),
    (f"a:b:c:d:{EXPIRY}", "a:b:c:d"),
])
def test_ephemeral_username_forms_authenticate(username: str, user_id: str) -> None:
    h = ephemeral()
    h.allocate(user=username).expect_success()
    alloc = h.lis.allocations[CLIENT]
    assert (alloc.username, alloc.user_id) == (username, user_id)


@pytest.mark.parametrize(("username", "reason"), [
    (f"{int(T0) - 1}:alice", "expired_credential"),
    ("0:alice", "malformed_username"),
    ("soon:alice", "malformed_username"),
    ("1234567890123:alice", "malformed_username"),  # 13 digits
    ("", "malformed_username"),
    (":", "malformed_username"),
])
def test_ephemeral_bad_usernames_get_401(username: str, reason: str) -> None:
    h = ephemeral()
    # signed with the password a REST service would have issued for that username
    _challenge(h.allocate(user=username), 401)
    assert h.stats.auth_failures[reason] == 1
    assert h.lis.allocations == {}


def test_ephemeral_credential_expires_for_later_requests() -> None:
    h = ephemeral()
    user = f"{int(T0) + 100}:alice"
    h.allocate(user=user).expect_success()
    h.request(Method.REFRESH, user=user, now=T0 + 100).expect_success()
    _challenge(h.request(Method.REFRESH, user=user, now=T0 + 101), 401)
    assert h.stats.auth_failures["expired_credential"] == 1


def test_ephemeral_with_two_secrets_accepts_passwords_of_both() -> None:
    h = ephemeral()
    user = f"{EXPIRY}:alice"
    for i, secret in enumerate(SECRETS):
        client = ("198.51.100.20", 1000 + i)
        h.allocate(user=user, password=rest_password(secret, user), client=client
                   ).expect_success()
    _challenge(h.allocate(user=user, password=rest_password("retired", user)), 401)
    assert h.stats.auth_failures["bad_integrity"] == 1


def test_ephemeral_user_quota_counts_the_user_id_not_the_username() -> None:
    h = ephemeral(admin={"user_quota": 1})
    h.allocate(user=f"{EXPIRY}:alice").expect_success()
    h.allocate(user=f"alice:{EXPIRY + 1}", client=CLIENT2).expect_error(486)
    h.allocate(user=f"{EXPIRY}:bob", client=CLIENT2).expect_success()
    assert h.server.user_counts == {"alice": 1, "bob": 1}
    assert h.stats.quota_rejections["user"] == 1


def test_other_username_of_the_same_user_id_on_the_5_tuple_gets_441() -> None:
    h = ephemeral()
    h.allocate(user=f"{EXPIRY}:alice").expect_success()
    r = h.request(Method.REFRESH, [Lifetime(600)], user=f"{EXPIRY + 5}:alice")
    r.expect_error(441)
    assert h.stats.auth_failures["wrong_user"] == 1


# -- the pieces on their own --------------------------------------------------------------


@pytest.mark.parametrize(("username", "parsed"), [
    ("1700003600:alice", (1700003600, "alice")),
    ("alice:1700003600", (1700003600, "alice")),
    ("1700003600", (1700003600, "")),
    ("a:1700003600:b", (1700003600, "a:b")),
    ("999999999999:x", (999999999999, "x")),  # 12 digits is still a timestamp
    ("12:34", (12, "34")),  # the first numeric field is the expiry
    ("1700003600:", (1700003600, "")),  # STUNner's auth service without a user id
    (":1700003600", (1700003600, "")),
    ("a::1700003600", (1700003600, "a")),
])
def test_parse_rest_username(username: str, parsed: tuple[int, str]) -> None:
    assert parse_rest_username(username) == parsed


@pytest.mark.parametrize("username", [
    "", ":", "alice", "0", "0:alice", "00:alice", "1000000000000:alice", "١٢٣:alice",
    "-5:alice",
])
def test_parse_rest_username_refuses(username: str) -> None:
    with pytest.raises(AuthRefused) as exc:
        parse_rest_username(username)
    assert exc.value.reason == "malformed_username"


def test_rest_password_is_base64_hmac_sha1() -> None:
    # draft-uberti-behave-turn-rest-00: base64(HMAC-SHA1(secret, username))
    mac = hmac.new(b"s3", b"1700003600:alice", hashlib.sha1).digest()
    assert rest_password("s3", "1700003600:alice") == base64.b64encode(mac).decode()


def test_static_credential_and_key() -> None:
    auth = Authenticator(AuthConfig("static", REALM, (StaticUser("alice", "pw"),)))
    cred = auth.credential("alice", T0)
    assert cred.keys == (long_term_key("alice", REALM, "pw"),)
    assert (cred.user_id, cred.expires) == ("alice", None)
    with pytest.raises(AuthRefused) as exc:
        auth.credential("bob", T0)
    assert exc.value.reason == "unknown_user"


def test_nonces_check_their_client_expiry_and_key() -> None:
    auth = Authenticator(AuthConfig("none", REALM), nonce_lifetime=600, nonce_key=b"k" * 32)
    n = auth.nonce("192.0.2.5", T0)
    assert auth.check_nonce(n, "192.0.2.5", T0 + 600) is None
    assert auth.check_nonce(n, "192.0.2.5", T0 + 601) == "stale_nonce"
    assert auth.check_nonce(n, "192.0.2.6", T0) == "bad_nonce"
    other = Authenticator(AuthConfig("none", REALM), nonce_key=b"x" * 32)
    assert other.check_nonce(n, "192.0.2.5", T0) == "bad_nonce"
    for junk in ("", "zz" * 20, "0" * 100, n[:-1], "g" + n[1:]):
        assert auth.check_nonce(junk, "192.0.2.5", T0) == "bad_nonce"


def test_error_code_reason_of_challenges() -> None:
    h = Harness()
    r = h.allocate(integrity=None)
    assert r.get(ErrorCode) == ErrorCode(401, "Unauthorized")
