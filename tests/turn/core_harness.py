"""What the sans-IO TURN core tests share: a config, fake relay ports, a signing client.

No sockets and no clock: every request carries an explicit `now`, relay endpoints are plain
objects that record `close()`, and every reply is decoded and checked on the wire (same
transaction id, MESSAGE-INTEGRITY(-SHA256) verifying with the request's key when present,
FINGERPRINT exactly when the request had one).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from relay.config import Config
from relay.stun import (
    Attribute,
    ErrorCode,
    Fingerprint,
    Lifetime,
    Message,
    MessageClass,
    MessageIntegrity,
    MessageIntegritySha256,
    Method,
    Nonce,
    Realm,
    RequestedTransport,
    Username,
    XorRelayedAddress,
    decode,
    long_term_key,
    verify_fingerprint,
    verify_integrity,
)
from relay.turn.allocation import Allocation, RelayEndpoint
from relay.turn.auth import rest_password
from relay.turn.effects import AllocationCreated, AllocationDeleted, Effect
from relay.turn.policy import PeerPolicy
from relay.turn.server import FAMILY_V4, FAMILY_V6, TurnServer
from relay.turn.stats import TurnStats

REALM = "example.org"
USERS = {"alice": "alice-pw", "bob": "bob-pw"}
SECRETS = ("first-secret", "second-secret")
LISTENER = "udp"
CLIENT = ("198.51.100.10", 40000)
CLIENT2 = ("198.51.100.11", 40000)
CLIENT6 = ("2001:db8:c::10", 40000, 0, 0)
RELAY_V4 = "203.0.113.1"
RELAY_V6 = "2001:db8:a::1"
T0 = 1_700_000_000.0
UDP = RequestedTransport(17)
BOTH = frozenset((FAMILY_V4, FAMILY_V6))


def make_config(
    *,
    turn: dict[str, Any] | None = None,
    auth: dict[str, Any] | None = None,
    admin: dict[str, Any] | None = None,
    clusters: list[dict[str, Any]] | None = None,
    routes: Sequence[str] = ("open",),
) -> Config:
    """One TURN-UDP listener routed to `routes`; by default a cluster open to everything
    (the dangerous ranges are still refused by the policy)."""
    raw: dict[str, Any] = {
        "version": "v1",
        "admin": admin or {},
        "auth": auth
        or {
            "type": "static",
            "realm": REALM,
            "users": [{"username": u, "password": p} for u, p in USERS.items()],
        },
        "listeners": [
            {"name": LISTENER, "protocol": "TURN-UDP", "address": "192.0.2.1", "port": 3478,
             "routes": list(routes)},
        ],
        "clusters": clusters
        if clusters is not None
        else [{"name": "open", "type": "STATIC", "endpoints": ["0.0.0.0/0", "::/0"]}],
        "turn": turn or {},
    }
    return Config.from_mapping(raw)


def ephemeral_auth(*secrets: str) -> dict[str, Any]:
    return {"type": "ephemeral", "realm": REALM,
            "credentials": {"secret": list(secrets or SECRETS)}}


class FakeEndpoint:
    """A relay endpoint without a socket; `closes` counts its releases."""

    def __init__(self, family: int, ip: str, port: int) -> None:
        self.family = family
        self.ip = ip
        self.port = port
        self.closes = 0

    def __repr__(self) -> str:
        return f"FakeEndpoint({self.ip}:{self.port}, closes={self.closes})"


class FakePorts:
    """The injected `RelayPortAllocator`: hands out endpoints on consecutive ports.

    `free` limits how many endpoints may be open at once (None: unlimited); past it `open`
    raises OSError as the real one does when the port range is exhausted.  `release` counts
    on the endpoint (`closes`), so tests see every endpoint go back exactly once."""

    def __init__(self, free: int | None = None) -> None:
        self.free = free
        self.next_port = 50000
        self.calls: list[tuple[str, int, str]] = []
        self.endpoints: list[FakeEndpoint] = []
        self.failing_families: set[int] = set()

    def in_use(self) -> list[FakeEndpoint]:
        return [ep for ep in self.endpoints if ep.closes == 0]

    def _new(self, family: int, port: int) -> FakeEndpoint:
        ep = FakeEndpoint(family, RELAY_V4 if family == FAMILY_V4 else RELAY_V6, port)
        self.endpoints.append(ep)
        return ep

    def release(self, endpoint: RelayEndpoint) -> None:
        assert isinstance(endpoint, FakeEndpoint) and endpoint in self.endpoints
        endpoint.closes += 1

    def open(self, listener: str, family: int, mode: str
             ) -> tuple[FakeEndpoint, FakeEndpoint | None]:
        self.calls.append((listener, family, mode))
        need = 2 if mode == "pair" else 1
        if family in self.failing_families or (
            self.free is not None and len(self.in_use()) + need > self.free
        ):
            raise OSError("no relay port free")
        if mode != "any" and self.next_port % 2:
            self.next_port += 1
        ep = self._new(family, self.next_port)
        self.next_port += 1
        nxt = None
        if mode == "pair":
            nxt = self._new(family, self.next_port)
            self.next_port += 1
        return ep, nxt


class Reply:
    """A decoded answer and what the harness already checked about it."""

    def __init__(self, raw: bytes, msg: Message, signed: bool) -> None:
        self.raw = raw
        self.msg = msg
        self.signed = signed  # carries an integrity attribute that verifies with the key

    @property
    def code(self) -> int | None:
        err = self.msg.get(ErrorCode)
        return err.code if err is not None else None

    @property
    def success(self) -> bool:
        return self.msg.cls == MessageClass.SUCCESS

    def get(self, kind: Any) -> Any:
        return self.msg.get(kind)

    def get_all(self, kind: Any) -> list[Any]:
        return self.msg.get_all(kind)

    def expect_error(self, code: int, *, signed: bool = True) -> Reply:
        assert self.msg.cls == MessageClass.ERROR, self.msg
        assert self.code == code, self.msg
        assert self.signed is signed, self.msg
        return self

    def expect_success(self) -> Reply:
        assert self.msg.cls == MessageClass.SUCCESS, self.msg
        assert self.signed, self.msg
        return self


def check_reply(raw: bytes, req: Message, key: bytes | None, integrity: str | None,
                fingerprint: bool) -> Reply:
    """Decode `raw` and check it against the request it answers."""
    msg = decode(raw)
    assert msg.transaction_id == req.transaction_id
    assert msg.method == req.method
    assert msg.cls in (MessageClass.SUCCESS, MessageClass.ERROR)
    if fingerprint:
        assert verify_fingerprint(msg)
    else:
        assert not any(type(a) is Fingerprint for a in msg.attributes)
    has_mi = msg.get(MessageIntegrity) is not None
    has_mi256 = msg.get(MessageIntegritySha256) is not None
    signed = False
    if has_mi or has_mi256:
        # Answered with the request's own kind of integrity, and only that one.
        assert (has_mi, has_mi256) == (integrity == "sha1", integrity == "sha256"), msg
        assert key is not None and verify_integrity(msg, key), "reply integrity does not verify"
        signed = True
    return Reply(raw, msg, signed)


def txid() -> bytes:
    return os.urandom(12)


class Harness:
    """A TurnServer on one listener with fake relay ports, driven at explicit times.

    It performs the core's effects the way the gateway does, by recording them: `created`
    and `deleted` list the allocations of `AllocationCreated` / `AllocationDeleted`."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        families: Iterable[int] = (FAMILY_V4,),
        own: Iterable[tuple[str, int]] = (),
        free: int | None = None,
        **config_kw: Any,
    ) -> None:
        self.config = config if config is not None else make_config(**config_kw)
        self.stats = TurnStats()
        self.ports = FakePorts(free)
        self.policy = PeerPolicy.from_config(self.config, own)
        self.created: list[Allocation] = []
        self.deleted: list[Allocation] = []
        self.effects: list[Effect] = []
        self.server = TurnServer(self.config, self.stats, self.policy, self.ports)
        self.lis = self.server.add_listener(LISTENER, frozenset(families))
        self.now = T0

    # -- credentials ----------------------------------------------------------------------

    def password(self, user: str) -> str:
        if self.config.auth.type == "ephemeral":
            return rest_password(self.config.auth.secrets[0], user)
        return USERS.get(user, "no-such-password")

    def key(self, user: str, password: str | None = None) -> bytes:
        return long_term_key(user, REALM, password if password is not None else
                             self.password(user))

    def nonce(self, client: Any = CLIENT, now: float | None = None) -> str:
        return self.server.auth.nonce(client[0], self.now if now is None else now)

    # -- sending --------------------------------------------------------------------------

    def perform(self, effects: Iterable[Effect | None]) -> None:
        for eff in effects:
            if eff is None:
                continue
            self.effects.append(eff)
            if isinstance(eff, AllocationCreated):
                self.created.append(eff.allocation)
            else:
                assert isinstance(eff, AllocationDeleted)
                assert not eff.allocation.alive
                self.deleted.append(eff.allocation)

    def send(self, data: bytes, client: Any = CLIENT, now: float | None = None) -> bytes | None:
        out = self.server.handle(self.lis, client, data, self.now if now is None else now)
        self.perform(out.effects)
        return out.reply

    def request(
        self,
        method: int,
        attrs: Sequence[Attribute] = (),
        *,
        user: str | None = "alice",
        password: str | None = None,
        key: bytes | None = None,
        realm: str | None = REALM,
        nonce: str | None = None,
        client: Any = CLIENT,
        tid: bytes | None = None,
        integrity: str | None = "sha1",
        fingerprint: bool = False,
        now: float | None = None,
    ) -> Reply:
        """Send one request (signed as `user` unless integrity is None) and check the reply.

        `user`, `realm` and `nonce` may be None to leave the attribute out; `nonce` defaults
        to a fresh one for `client`."""
        now = self.now if now is None else now
        attributes: list[Attribute] = list(attrs)
        if integrity is not None:
            if user is not None:
                attributes.append(Username(user))
            if realm is not None:
                attributes.append(Realm(realm))
            attributes.append(Nonce(nonce if nonce is not None else self.nonce(client, now)))
            if key is None:
                key = self.key(user or "", password)
        req = Message(method, MessageClass.REQUEST, tid or txid(), attributes)
        data = req.encode(key=key if integrity else None, integrity=integrity,
                          fingerprint=fingerprint)
        raw = self.send(data, client, now)
        assert raw is not None, "the server stayed silent"
        return check_reply(raw, req, key, integrity, fingerprint)

    def allocate(self, *attrs: Attribute, transport: bool = True, **kw: Any) -> Reply:
        return self.request(Method.ALLOCATE, ([UDP] if transport else []) + list(attrs), **kw)

    def allocated(self, *attrs: Attribute, **kw: Any) -> Allocation:
        """Allocate and return the new allocation (asserting success)."""
        r = self.allocate(*attrs, **kw).expect_success()
        assert r.get(XorRelayedAddress) is not None
        alloc = self.lis.allocations[kw.get("client", CLIENT)]
        assert r.get(Lifetime).seconds == round(alloc.expires - alloc.created)
        return alloc

    def sweep(self, now: float) -> None:
        self.perform(self.server.sweep(now))

    def delete(self, alloc: Allocation, now: float) -> AllocationDeleted | None:
        eff = self.server.delete(alloc, now)
        self.perform([eff])
        return eff

    def close_all(self, now: float) -> None:
        self.perform(self.server.close_all(now))

    def requests(self, method: str, result: str) -> int:
        return self.stats.requests.get((method, result), 0)
