"""The TURN server core (RFC 8656 over RFC 8489), sans-IO.

`TurnServer.handle` takes one STUN message from a client on a listener and returns an
`Outcome`: the bytes to answer with (or None to stay silent) and the effects the I/O layer
performs before sending them (`AllocationCreated`, `AllocationDeleted`, see
`relay.turn.effects`).  `delete`, `sweep` and `close_all` return their effects the same way;
the core never calls back into the gateway.

Relay ports are the one piece of I/O an Allocate needs before it can answer (the port goes
into XOR-RELAYED-ADDRESS, a failure is a 508).  The gateway passes in a narrow
`RelayPortAllocator` (`open` / `release`): binding is a synchronous non-blocking call, so the
core asks for the endpoint where the RFC's order of checks needs it and releases every
endpoint it was given (deleted allocations, lapsed or refused reservations, failed
Allocates).  Unit tests pass a fake allocator and run without sockets.  The I/O layer
(`relay.net.gateway`) owns the sockets, the reader tasks and the clock.  Data-plane
forwarding (ChannelData, Send and Data indications, `relay.net.forward`) reads the plain
dicts kept here.

Request processing follows RFC 8656 §7-§12 (order of checks and error codes), with the
deviations of other servers listed in our TURN reference deliberately not copied.
"""

from __future__ import annotations

import os

import attrs

from relay.config import Config
from relay.stun import (
    AdditionalAddressFamily,
    AddressErrorCode,
    Attribute,
    ChannelNumber,
    DontFragment,
    ErrorCode,
    EvenPort,
    Fingerprint,
    Lifetime,
    Message,
    MessageClass,
    MessageIntegrity,
    MessageIntegritySha256,
    Method,
    Nonce,
    Realm,
    RequestedAddressFamily,
    RequestedTransport,
    ReservationToken,
    Software,
    StunDecodeError,
    UnknownAttributes,
    Username,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
    decode,
    integrity_kind,
    verify_fingerprint,
    verify_integrity,
)
from relay.stun.framing import stun_frame_size
from relay.turn.allocation import (
    Address,
    Allocation,
    Channel,
    Permission,
    RelayEndpoint,
    RelayPortAllocator,
)
from relay.turn.auth import Authenticator, AuthRefused
from relay.turn.effects import AllocationCreated, AllocationDeleted, Effect, Outcome
from relay.turn.policy import PeerPolicy
from relay.turn.quota import QuotaLedger
from relay.turn.ratelimit import ChallengeLimiter
from relay.turn.stats import ConnectionStats, TurnStats

FAMILY_V4 = 1
FAMILY_V6 = 2
UDP = 17
TCP = 6
CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x4FFF
CHANNEL_MAX_RFC5766 = 0x7FFF
QUARANTINE = 300.0  # RFC 8656 §12: no re-pairing for 5 minutes after a channel expires
RESERVATION_LIFETIME = 30.0

# Bounds on the work one message may cost before it is authenticated (README, "Message
# bounds").  The largest request a client can build within RFC 8489's field limits
# (USERNAME < 513, REALM, NONCE and SOFTWARE < 763 bytes each, both integrity attributes,
# FINGERPRINT and the TURN attributes) is under 3.2 KB; browsers send 100-300 bytes, and
# RFC 8489 §6.2.1 asks UDP senders to stay under the path MTU (576 bytes unless known).
MAX_UDP_REQUEST = 4096  # larger datagrams are dropped unread (RFC 8489 §6.3: discard)
MAX_ATTRIBUTES = 64  # more: 400, nothing decoded (a full Allocate carries about 12)
MAX_PEERS_PER_REQUEST = 32  # XOR-PEER-ADDRESS in one CreatePermission: more get 400

METHOD_NAMES = {
    Method.BINDING: "binding",
    Method.ALLOCATE: "allocate",
    Method.REFRESH: "refresh",
    Method.CREATE_PERMISSION: "create_permission",
    Method.CHANNEL_BIND: "channel_bind",
}


class ListenerState:
    """A listener as the core sees it: its allocations, the relay families it offers and the
    transport of its control connections ("udp", "tcp" or "tls")."""

    def __init__(self, name: str, stats: ConnectionStats, families: frozenset[int],
                 transport: str = "udp") -> None:
        self.name = name
        self.stats = stats
        self.families = families
        self.transport = transport
        self.allocations: dict[Address, Allocation] = {}
        # Removed by a reload (or the whole server draining): no new allocations here, the
        # existing ones run until they end.
        self.draining = False


@attrs.define
class Reservation:
    """A relay endpoint held for a RESERVATION-TOKEN (EVEN-PORT with R) until `until`."""

    endpoint: RelayEndpoint
    until: float


class _Challenge(Exception):
    """A 401/438 challenge (REALM and a fresh NONCE); `reply` is None when rate limited."""

    def __init__(self, code: int, reply: bytes | None) -> None:
        super().__init__(code)
        self.code = code
        self.reply = reply


class _Reply(Exception):
    """Raised inside request processing to answer with an error response."""

    def __init__(self, code: int, reason: str = "", extra: tuple[Attribute, ...] = ()) -> None:
        super().__init__(code)
        self.code = code
        self.reason = reason
        self.extra = extra


def _family_of(ip: str) -> int:
    return FAMILY_V6 if ":" in ip else FAMILY_V4


class TurnServer:
    def __init__(
        self,
        config: Config,
        stats: TurnStats,
        policy: PeerPolicy,
        ports: RelayPortAllocator,
        *,
        authenticator: Authenticator | None = None,
        ledger: QuotaLedger | None = None,
        share: int = 1,
    ) -> None:
        """`ledger`: quotas kept over every worker process; `share`: the number of worker
        processes, which split the 401/438 guard's rate and burst between them."""
        self.config = config
        self.turn = config.turn
        self.stats = stats
        self.policy = policy
        self.ports = ports
        self.auth = authenticator or Authenticator(
            config.auth, nonce_lifetime=config.turn.nonce_lifetime
        )
        self.listeners: dict[str, ListenerState] = {}
        self.user_counts: dict[str, int] = {}
        self.user_quota = config.admin.user_quota
        self.ledger = ledger  # quotas over every worker of the server, when there are several
        self.channel_max = CHANNEL_MAX_RFC5766 if config.turn.rfc5766_channels else CHANNEL_MAX
        self.software = Software(config.turn.software) if config.turn.software else None
        # (listener, token) -> reservation: a token is good on its listener only
        self.reservations: dict[tuple[str, bytes], Reservation] = {}
        # The 401/438 reflection guard: a token bucket per source IP (None: unlimited).
        self.share = share
        self.challenge_limiter: ChallengeLimiter | None = None
        self._set_limiter(config)
        self._effects: list[Effect] = []  # of the message being handled
        self.draining = False  # SIGTERM: every Allocate is refused, the rest goes on

    def apply(self, config: Config) -> None:
        """Take a reloaded config: credentials, quotas, lifetimes and SOFTWARE change for
        the next message; the allocations, their keys and the outstanding nonces (the nonce
        key is kept) stay.  Called between two messages, so a request sees one config.
        The channel-number range (`turn.rfc5766_channels`) is fixed at start."""
        self.config = config
        self.turn = config.turn
        self.auth = Authenticator(config.auth, nonce_lifetime=config.turn.nonce_lifetime,
                                  nonce_key=self.auth.nonce_key)
        self.user_quota = config.admin.user_quota
        self.software = Software(config.turn.software) if config.turn.software else None
        self._set_limiter(config)

    def _set_limiter(self, config: Config) -> None:
        """The 401/438 guard for `config`; with `share` worker processes each gets its share
        of the rate and of the burst, so the server as a whole never exceeds either (the
        kernel keeps a source's 5-tuples spread over the workers, each counting its own)."""
        limiter = self.challenge_limiter
        rate = config.turn.unauthorized_ratelimit / self.share
        burst = max(1, config.turn.unauthorized_burst // self.share)
        if rate <= 0:
            self.challenge_limiter = None
        elif limiter is None or (limiter.rate, limiter.burst) != (rate, burst):
            self.challenge_limiter = ChallengeLimiter(rate, burst)

    def remove_listener(self, name: str, now: float) -> list[Effect]:
        """Forget a listener: its allocations are deleted (the effects, for the I/O layer)
        and its reservations released."""
        lis = self.listeners.get(name)
        if lis is None:
            return []
        effects: list[Effect] = [self._delete(a, now) for a in list(lis.allocations.values())
                                 if a.alive]
        for tok, held in list(self.reservations.items()):
            if tok[0] == name:
                del self.reservations[tok]
                self.ports.release(held.endpoint)
        del self.listeners[name]
        lis.draining = True  # connections still holding it get no new allocation
        return effects

    def add_listener(self, name: str, families: frozenset[int],
                     transport: str = "udp") -> ListenerState:
        st = ListenerState(name, self.stats.listener(name), families, transport)
        self.listeners[name] = st
        return st

    # -- entry point ----------------------------------------------------------------------

    def handle(
        self, lis: ListenerState, client: Address, data: bytes, now: float,
        wall: float | None = None,
    ) -> Outcome:
        """Process one STUN message from `client`: the response to send (or None) and the
        effects to perform first.

        `now` is the monotonic (Trio) clock every lifetime runs on (a wall-clock step must not
        expire allocations); `wall` is Unix time for nonces and REST credential expiry
        (defaults to `now`, for callers that use one clock)."""
        effects = self._effects
        try:
            reply = self._handle(lis, client, data, now, now if wall is None else wall)
            return Outcome(reply, tuple(effects)) if effects else Outcome(reply)
        finally:
            effects.clear()

    def _handle(
        self, lis: ListenerState, client: Address, data: bytes, now: float, wall: float
    ) -> bytes | None:
        if len(data) > MAX_UDP_REQUEST and lis.transport == "udp":
            self.stats.drops["too_large"] += 1
            return None
        try:
            msg = decode(data, MAX_ATTRIBUTES)
        except StunDecodeError:
            self.stats.drops["malformed"] += 1
            return self._bad_header_reply(data)
        if msg.cls != MessageClass.REQUEST:
            return None  # responses and indications to the server are ignored
        if msg.raw is not None and _has_fingerprint(msg) and not verify_fingerprint(msg):
            self.stats.drops["malformed"] += 1
            return None
        method_name = METHOD_NAMES.get(msg.method, "other")  # type: ignore[call-overload]
        key: bytes | None = None
        try:
            unknown = msg.unknown_required()
            if msg.method == Method.BINDING:
                if unknown:
                    raise _Reply(420, extra=(UnknownAttributes(tuple(unknown)),))
                out = self._binding(msg, client)
                self.stats.count_request(method_name, "success")
                return out
            if msg.method not in METHOD_NAMES:
                raise _Reply(400, "method not supported over UDP")
            if not self.auth.turn_enabled:
                raise _Reply(403, "TURN is disabled (auth type none)")
            try:
                # Guarded: UDP sources that hold no allocation (see relay.turn.ratelimit).
                username, user_id, key = self._authenticate(
                    msg, client, wall,
                    lis.transport == "udp" and client not in lis.allocations,
                    lis.allocations.get(client))
            except _Challenge as ch:
                self.stats.count_request(method_name, str(ch.code))
                return ch.reply
            # RFC 8489 §6.3: unknown attributes are checked once the request authenticated,
            # so the 420 is signed and an unauthenticated sender only ever sees a challenge.
            if unknown:
                raise _Reply(420, extra=(UnknownAttributes(tuple(unknown)),))
            alloc = lis.allocations.get(client)
            if alloc is not None and alloc.expires <= now:
                self._deleted(alloc, now)  # expired, not swept yet: already gone
                alloc = None
            if msg.method == Method.ALLOCATE:
                if alloc is not None:
                    if alloc.alloc_txid == msg.transaction_id and alloc.username == username:
                        self.stats.count_request(method_name, "success")
                        return alloc.alloc_response
                    raise _Reply(437, "allocation exists for this 5-tuple")
                out = self._allocate(lis, msg, client, username, user_id, key, now)
            else:
                if alloc is None:
                    raise _Reply(437, "no allocation for this 5-tuple")
                if alloc.username != username:
                    self.stats.auth_failures["wrong_user"] += 1
                    raise _Reply(441)
                if msg.method == Method.REFRESH:
                    out = self._refresh(lis, alloc, msg, key, now)
                elif msg.method == Method.CREATE_PERMISSION:
                    out = self._create_permission(lis, alloc, msg, key, now)
                else:
                    out = self._channel_bind(lis, alloc, msg, key, now)
            self.stats.count_request(method_name, "success")
            return out
        except _Reply as r:
            self.stats.count_request(method_name, str(r.code))
            return self._error(msg, r, key)

    # -- helpers --------------------------------------------------------------------------

    def _bad_header_reply(self, data: bytes) -> bytes | None:
        """400 for a request whose header is sound but whose body is not; else silence.

        A length field that disagrees with the datagram breaks the header rules (RFC 8489
        §5, §6.3): such a message is discarded, not answered."""
        if stun_frame_size(data) != len(data):
            return None
        mtype = int.from_bytes(data[0:2], "big")
        if mtype & 0x0110:  # not the request class
            return None
        method = (mtype & 0x000F) | ((mtype & 0x00E0) >> 1) | ((mtype & 0x3E00) >> 2)
        resp = Message(method, MessageClass.ERROR, bytes(data[8:20]), [ErrorCode(400)])
        self.stats.count_request(
            METHOD_NAMES.get(method, "other"), "400"  # type: ignore[call-overload]
        )
        return resp.encode()

    def _answer(
        self,
        req: Message,
        cls: int,
        attributes: list[Attribute],
        key: bytes | None,
        integrity: str = "sha1",
    ) -> bytes:
        resp = Message(req.method, cls, req.transaction_id, attributes)
        fp = _has_fingerprint(req)
        if key is not None:
            return resp.encode(key=key, integrity=integrity, fingerprint=fp)
        return resp.encode(fingerprint=fp)

    def _error(self, req: Message, r: _Reply, key: bytes | None) -> bytes:
        attrs: list[Attribute] = [ErrorCode(r.code, r.reason) if r.reason else ErrorCode(r.code)]
        attrs.extend(r.extra)
        return self._answer(req, MessageClass.ERROR, attrs, key, _integrity_of(req))

    def _binding(self, msg: Message, client: Address) -> bytes:
        attrs: list[Attribute] = [XorMappedAddress(client[0], client[1])]
        if self.software is not None:
            attrs.append(self.software)
        return self._answer(msg, MessageClass.SUCCESS, attrs, None)

    def _challenge(self, msg: Message, client: Address, now: float, limited: bool,
                   code: int) -> _Challenge:
        """The challenge; rate limited per source IP when `limited` (UDP without an
        allocation: against spoofed floods; a TCP/TLS client completed a handshake and never
        retransmits, so silence would stall it; a 5-tuple holding an allocation must get its
        438 to refresh)."""
        ip = client[0]
        limiter = self.challenge_limiter
        if limited and limiter is not None and not limiter.allow(ip, now):
            self.stats.drops["ratelimited"] += 1
            return _Challenge(code, None)
        attrs: list[Attribute] = [
            ErrorCode(code),
            Realm(self.auth.realm),
            Nonce(self.auth.nonce(ip, now)),
        ]
        return _Challenge(code, self._answer(msg, MessageClass.ERROR, attrs, None))

    def _authenticate(self, msg: Message, client: Address, now: float,
                      limited: bool = True, current: Allocation | None = None
                      ) -> tuple[str, str, bytes]:
        """(username, user id, key) when the request authenticates; else raises _Challenge
        (401/438) or _Reply (400).

        `current` is the allocation of this 5-tuple, if any: a request signed with the key it
        was created with is accepted even when a reload has since rotated the secret or the
        password, so live calls survive a credential rotation (coturn keeps a session's key
        the same way); an expired REST credential is still refused."""
        stats = self.stats.auth_failures
        if msg.get(MessageIntegrity) is None and msg.get(MessageIntegritySha256) is None:
            stats["missing_credentials"] += 1
            raise self._challenge(msg, client, now, limited, 401)
        user = msg.get(Username)
        realm = msg.get(Realm)
        nonce = msg.get(Nonce)
        if user is None or realm is None or nonce is None:
            stats["missing_credentials"] += 1
            raise _Reply(400, "USERNAME, REALM and NONCE are required with MESSAGE-INTEGRITY")
        bad = self.auth.check_nonce(nonce.value, client[0], now)
        if bad is not None:
            stats[bad] += 1
            raise self._challenge(msg, client, now, limited, 438)
        if realm.value != self.auth.realm:
            stats["wrong_realm"] += 1
            raise self._challenge(msg, client, now, limited, 401)
        try:
            cred = self.auth.credential(user.value, now)
        except AuthRefused as exc:
            if exc.reason != "expired_credential" and self._kept_key(msg, user.value, current):
                assert current is not None
                return current.username, current.user_id, current.key
            stats[exc.reason] += 1
            raise self._challenge(msg, client, now, limited, 401) from None
        for key in cred.keys:
            if verify_integrity(msg, key):
                return user.value, cred.user_id, key
        if self._kept_key(msg, user.value, current):
            assert current is not None
            return current.username, current.user_id, current.key
        stats["bad_integrity"] += 1
        raise self._challenge(msg, client, now, limited, 401)

    @staticmethod
    def _kept_key(msg: Message, username: str, current: Allocation | None) -> bool:
        return (current is not None and current.alive and current.username == username
                and current.key is not None and verify_integrity(msg, current.key))

    def _lifetime(self, msg: Message) -> int:
        req = msg.get(Lifetime)
        t = self.turn
        if req is None:
            return t.default_lifetime
        return max(t.default_lifetime, min(req.seconds, t.max_lifetime))

    # -- Allocate -------------------------------------------------------------------------

    def _allocate(
        self,
        lis: ListenerState,
        msg: Message,
        client: Address,
        username: str,
        user_id: str,
        key: bytes,
        now: float,
    ) -> bytes:
        if self.draining or lis.draining:
            # 508 Insufficient Capacity: this server (or listener) takes no new allocations
            # while it drains; a client tries its other TURN servers, as when one is full.
            self.stats.quota_rejections["draining"] += 1
            raise _Reply(508, "server is draining" if self.draining else "listener is draining")
        transport = msg.get(RequestedTransport)
        if transport is None:
            raise _Reply(400, "REQUESTED-TRANSPORT is required")
        if transport.protocol == TCP:
            if lis.transport == "udp":
                raise _Reply(400, "TCP allocations need a TCP control connection")
            raise _Reply(442, "TCP allocations (RFC 6062) are not supported")
        if transport.protocol != UDP:
            raise _Reply(442)
        if msg.get(DontFragment) is not None:
            raise _Reply(420, extra=(UnknownAttributes((0x001A,)),))
        token = msg.get(ReservationToken)
        even = msg.get(EvenPort)
        raf = msg.get(RequestedAddressFamily)
        aaf = msg.get(AdditionalAddressFamily)
        if token is not None and (even is not None or raf is not None):
            raise _Reply(400, "RESERVATION-TOKEN excludes EVEN-PORT and REQUESTED-ADDRESS-FAMILY")
        if raf is not None and aaf is not None:
            raise _Reply(400, "REQUESTED- and ADDITIONAL-ADDRESS-FAMILY are exclusive")
        if aaf is not None and aaf.family != FAMILY_V6:
            raise _Reply(400, "ADDITIONAL-ADDRESS-FAMILY must be IPv6")
        reserved: RelayEndpoint | None = None
        if token is not None:
            held = self.reservations.pop((lis.name, token.token), None)
            if held is None or held.until < now:
                if held is not None:
                    self.ports.release(held.endpoint)
                raise _Reply(508, "unknown or expired reservation token")
            reserved = held.endpoint
            if aaf is not None and reserved.family != FAMILY_V4:
                # ADDITIONAL-ADDRESS-FAMILY adds IPv6 to an IPv4 allocation; keep the token.
                self.reservations[(lis.name, token.token)] = held
                raise _Reply(400, "ADDITIONAL-ADDRESS-FAMILY needs an IPv4 reservation")
        # quotas
        if self.user_quota and self.user_counts.get(user_id, 0) >= self.user_quota:
            self.stats.quota_rejections["user"] += 1
            if reserved is not None:
                self.ports.release(reserved)
            raise _Reply(486)
        if self.turn.total_quota and self.stats.allocations_active >= self.turn.total_quota:
            self.stats.quota_rejections["total"] += 1
            if reserved is not None:
                self.ports.release(reserved)
            raise _Reply(508, "server allocation quota reached")
        family = raf.family if raf is not None else FAMILY_V4
        if reserved is not None:
            family = reserved.family
        if family not in (FAMILY_V4, FAMILY_V6) or family not in lis.families:
            raise _Reply(440)
        if self.ledger is not None:
            refused = self.ledger.reserve(user_id, self.user_quota, self.turn.total_quota)
            if refused is not None:
                self.stats.quota_rejections[refused] += 1
                if reserved is not None:
                    self.ports.release(reserved)
                if refused == "user":
                    raise _Reply(486)
                raise _Reply(508, "server allocation quota reached")
        lifetime = self._lifetime(msg)
        relays: list[RelayEndpoint] = []
        extra: list[Attribute] = []
        try:
            if reserved is not None:
                relays.append(reserved)
            else:
                mode = "any" if even is None else ("pair" if even.reserve else "even")
                ep, nxt = self.ports.open(lis.name, family, mode)
                relays.append(ep)
                if nxt is not None:
                    tok = os.urandom(8)
                    self.reservations[(lis.name, tok)] = Reservation(
                        nxt, now + RESERVATION_LIFETIME
                    )
                    extra.append(ReservationToken(tok))
            if aaf is not None:
                if FAMILY_V6 in lis.families:
                    try:
                        relays.append(self.ports.open(lis.name, FAMILY_V6, "any")[0])
                    except OSError:
                        extra.append(AddressErrorCode(FAMILY_V6, 508))
                else:
                    extra.append(AddressErrorCode(FAMILY_V6, 440))
        except OSError:
            for ep in relays:
                self.ports.release(ep)
            if self.ledger is not None:
                self.ledger.release(user_id)
            self.stats.quota_rejections["ports"] += 1
            raise _Reply(508, "no relay port available") from None
        alloc = Allocation(lis.name, client, username, user_id, key, now, now + lifetime)
        alloc.integrity = _integrity_of(msg)
        for ep in relays:
            alloc.relays[ep.family] = ep
        attrs: list[Attribute] = [XorRelayedAddress(ep.ip, ep.port) for ep in relays]
        attrs.append(Lifetime(lifetime))
        attrs.extend(extra)
        attrs.append(XorMappedAddress(client[0], client[1]))
        if self.software is not None:
            attrs.append(self.software)
        resp = self._answer(msg, MessageClass.SUCCESS, attrs, key, alloc.integrity)
        alloc.alloc_txid = msg.transaction_id
        alloc.alloc_response = resp
        lis.allocations[client] = alloc
        self.user_counts[user_id] = self.user_counts.get(user_id, 0) + 1
        self.stats.allocations_active += 1
        self.stats.allocations_total += 1
        lis.stats.opened()
        self._effects.append(AllocationCreated(alloc))
        return resp

    # -- Refresh --------------------------------------------------------------------------

    def _refresh(
        self, lis: ListenerState, alloc: Allocation, msg: Message, key: bytes, now: float
    ) -> bytes:
        raf = msg.get(RequestedAddressFamily)
        if raf is not None and raf.family not in alloc.relays:
            raise _Reply(443)
        req = msg.get(Lifetime)
        if req is not None and req.seconds == 0:
            self._deleted(alloc, now)
            lifetime = 0
        else:
            lifetime = self._lifetime(msg)
            alloc.expires = now + lifetime
        return self._answer(
            msg, MessageClass.SUCCESS, [Lifetime(lifetime)], key, _integrity_of(msg)
        )

    # -- permissions and channels ---------------------------------------------------------

    def _admit(self, lis: ListenerState, alloc: Allocation, peer: XorPeerAddress,
               with_port: bool) -> tuple[str, bool]:
        """Policy check of one peer: (admitting cluster, any_port) or _Reply 443/403."""
        fam = _family_of(peer.ip)
        if fam not in alloc.relays:
            self.stats.peer_refusals["family_mismatch"] += 1
            raise _Reply(443)
        if with_port:
            verdict = self.policy.check(lis.name, peer.ip, peer.port)
        else:
            verdict = self.policy.check_ip(lis.name, peer.ip)
        if verdict.cluster is None:
            reason = verdict.reason or "no_route"
            self.stats.peer_refusals[reason] = self.stats.peer_refusals.get(reason, 0) + 1
            raise _Reply(403, "peer address not allowed")
        return verdict.cluster, verdict.any_port

    def _permit(self, alloc: Allocation, ip: str, cluster: str, any_port: bool,
                now: float) -> Permission:
        expires = now + self.turn.permission_lifetime
        perm = alloc.permissions.get(ip)
        if perm is None:
            cst = self.stats.cluster(cluster)
            perm = Permission(expires, cst, any_port)
            alloc.permissions[ip] = perm
            cst.opened()
            self.stats.permissions_active += 1
        else:
            perm.expires = expires
        alloc.note_deadline(expires)
        return perm

    def _create_permission(
        self, lis: ListenerState, alloc: Allocation, msg: Message, key: bytes, now: float
    ) -> bytes:
        peers = msg.get_all(XorPeerAddress)
        if not peers:
            raise _Reply(400, "XOR-PEER-ADDRESS is required")
        if len(peers) > MAX_PEERS_PER_REQUEST:
            raise _Reply(400, f"more than {MAX_PEERS_PER_REQUEST} XOR-PEER-ADDRESS")
        admitted = [(p.ip, *self._admit(lis, alloc, p, with_port=False)) for p in peers]
        new = {ip for ip, _, _ in admitted if ip not in alloc.permissions}
        if len(alloc.permissions) + len(new) > self.turn.max_permissions:
            self.stats.quota_rejections["permissions"] += 1
            raise _Reply(508, "too many permissions on this allocation")
        for ip, cluster, any_port in admitted:
            self._permit(alloc, ip, cluster, any_port, now)
        return self._answer(msg, MessageClass.SUCCESS, [], key, _integrity_of(msg))

    def _channel_bind(
        self, lis: ListenerState, alloc: Allocation, msg: Message, key: bytes, now: float
    ) -> bytes:
        num_attr = msg.get(ChannelNumber)
        peer_attr = msg.get(XorPeerAddress)
        if num_attr is None or peer_attr is None:
            raise _Reply(400, "CHANNEL-NUMBER and XOR-PEER-ADDRESS are required")
        number = num_attr.number
        if not CHANNEL_MIN <= number <= self.channel_max:
            raise _Reply(400, f"channel number outside 0x4000-0x{self.channel_max:04X}")
        peer = (peer_attr.ip, peer_attr.port)
        chan = alloc.channels.get(number)
        if chan is not None and chan.peer != peer:
            raise _Reply(400, "channel is bound to another peer")
        other = alloc.peer_channels.get(peer)
        if other is not None and other.number != number:
            raise _Reply(400, "peer is bound to another channel")
        q = alloc.quarantine_numbers.get(number)
        if q is not None and q[1] > now and q[0] != peer:
            raise _Reply(400, "channel number was bound to another peer less than 5 min ago")
        qp = alloc.quarantine_peers.get(peer)
        if qp is not None and qp[1] > now and qp[0] != number:
            raise _Reply(400, "peer was bound to another channel less than 5 min ago")
        cluster, any_port = self._admit(lis, alloc, peer_attr, with_port=True)
        if chan is None and len(alloc.channels) >= self.turn.max_channels:
            self.stats.quota_rejections["channels"] += 1
            raise _Reply(508, "too many channels on this allocation")
        if peer[0] not in alloc.permissions and len(alloc.permissions) >= self.turn.max_permissions:
            self.stats.quota_rejections["permissions"] += 1  # ChannelBind installs one too
            raise _Reply(508, "too many permissions on this allocation")
        perm = self._permit(alloc, peer[0], cluster, any_port, now)
        expires = now + self.turn.channel_lifetime
        if chan is None:
            ep = alloc.relays[_family_of(peer[0])]
            chan = Channel(number, peer, expires, ep, perm)
            alloc.channels[number] = chan
            alloc.peer_channels[peer] = chan
            alloc.quarantine_numbers.pop(number, None)
            alloc.quarantine_peers.pop(peer, None)
            self.stats.channels_active += 1
        else:
            chan.expires = expires
            chan.permission = perm
        alloc.note_deadline(expires)
        return self._answer(msg, MessageClass.SUCCESS, [], key, _integrity_of(msg))

    # -- lifecycle ------------------------------------------------------------------------

    def delete(self, alloc: Allocation, now: float) -> AllocationDeleted | None:
        """Remove an allocation (counters, quota, relay endpoints); the effect for the I/O
        layer, or None if it was already gone."""
        if not alloc.alive:
            return None
        return self._delete(alloc, now)

    def _deleted(self, alloc: Allocation, now: float) -> None:
        """Delete while handling a message: the effect joins the message's `Outcome`."""
        eff = self.delete(alloc, now)
        if eff is not None:
            self._effects.append(eff)

    def _delete(self, alloc: Allocation, now: float) -> AllocationDeleted:
        alloc.alive = False
        lis = self.listeners.get(alloc.listener)
        if lis is not None and lis.allocations.get(alloc.client) is alloc:
            del lis.allocations[alloc.client]
            lis.stats.closed()
        st = self.stats
        st.allocations_active -= 1
        st.allocation_lifetime.observe(max(0.0, now - alloc.created))
        for perm in alloc.permissions.values():
            perm.cluster.closed()
        st.permissions_active -= len(alloc.permissions)
        st.channels_active -= len(alloc.channels)
        alloc.permissions.clear()
        alloc.channels.clear()
        alloc.peer_channels.clear()
        n = self.user_counts.get(alloc.user_id, 0) - 1
        if n > 0:
            self.user_counts[alloc.user_id] = n
        else:
            self.user_counts.pop(alloc.user_id, None)
        if self.ledger is not None:
            self.ledger.release(alloc.user_id)
        for ep in alloc.relays.values():
            self.ports.release(ep)
        return AllocationDeleted(alloc)

    def sweep(self, now: float) -> list[Effect]:
        """Expire allocations, permissions, channels, quarantines and reservations; the
        deletions, for the I/O layer to perform."""
        effects: list[Effect] = []
        for lis in self.listeners.values():
            for alloc in list(lis.allocations.values()):
                if alloc.expires <= now and alloc.alive:
                    effects.append(self._delete(alloc, now))
                elif alloc.next_deadline <= now:
                    self._sweep_allocation(alloc, now)
        if self.reservations:
            for tok, held in list(self.reservations.items()):
                if held.until <= now:
                    del self.reservations[tok]
                    self.ports.release(held.endpoint)
        return effects

    def _sweep_allocation(self, alloc: Allocation, now: float) -> None:
        nxt = float("inf")
        for number, chan in list(alloc.channels.items()):
            if chan.expires <= now:
                del alloc.channels[number]
                alloc.peer_channels.pop(chan.peer, None)
                self.stats.channels_active -= 1
                until = chan.expires + QUARANTINE  # from the expiry, however late the sweep
                alloc.quarantine_numbers[number] = (chan.peer, until)
                alloc.quarantine_peers[chan.peer] = (number, until)
                nxt = min(nxt, until)
            else:
                nxt = min(nxt, chan.expires)
        for ip, perm in list(alloc.permissions.items()):
            if perm.expires <= now:
                del alloc.permissions[ip]
                perm.cluster.closed()
                self.stats.permissions_active -= 1
            else:
                nxt = min(nxt, perm.expires)
        for number, (_peer, until) in list(alloc.quarantine_numbers.items()):
            if until <= now:
                del alloc.quarantine_numbers[number]
            else:
                nxt = min(nxt, until)
        for peer, (_num, until) in list(alloc.quarantine_peers.items()):
            if until <= now:
                del alloc.quarantine_peers[peer]
            else:
                nxt = min(nxt, until)
        alloc.next_deadline = nxt

    def close_all(self, now: float) -> list[Effect]:
        """Delete every allocation (shutdown): ports are released, counters settle; the
        deletions, for the I/O layer to perform."""
        effects: list[Effect] = []
        for lis in self.listeners.values():
            for alloc in list(lis.allocations.values()):
                if alloc.alive:
                    effects.append(self._delete(alloc, now))
        for held in self.reservations.values():
            self.ports.release(held.endpoint)
        self.reservations.clear()
        return effects


def _has_fingerprint(msg: Message) -> bool:
    return bool(msg.attributes) and type(msg.attributes[-1]) is Fingerprint


def _integrity_of(msg: Message) -> str:
    """The integrity flavour to answer with: the client's, SHA1 when it sent none."""
    return integrity_kind(msg) or "sha1"

