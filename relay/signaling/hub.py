"""The signaling hub: the async layer over `relay.signaling.state`.

The state decides (sessions, rooms, who receives what); the hub owns what waits or
writes: the Nextcloud requests awaited in the middle of a `hello` or `room`, the timers
(hello 2 s, anonymous room join 10 s, expiry 30 s after the socket went away, room pings
every 10 s) and their nursery, the bus subscriptions, and the client connections.

The hub never touches a socket. A connection is anything with `send_text(str)` (queue a
frame, never blocks) and `close(code, reason)`; the server feeds the hub with
`connect` / `receive` / `disconnect` and runs `run()` for the timers. Time comes from
`trio.current_time()`, so tests drive the timers with a MockClock.

Deliveries go through the in-process bus with upstream's subjects (`session.<id>`,
`user.<..>`, `room.<..>`); a session recipient known locally is written directly, as
upstream does.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import time
from collections import deque
from collections.abc import Iterator
from typing import Any, Protocol

import attrs
import trio

from relay.config.signaling import BackendConfig, SignalingConfig, canonical_url
from relay.signaling import changed_users, chat, permissions, room_ping, transient
from relay.signaling import protocol as p
from relay.signaling import state as st
from relay.signaling.backend import BackendRequester, Backends
from relay.signaling.capabilities import CapabilitiesError, CapabilitiesFetcher, backend_endpoint
from relay.signaling.federation_hub import LOCAL_TYPES, FederationLinks, room_request_actor
from relay.signaling.geoip import GeoIP, is_valid_country
from relay.signaling.hello_v2 import CapabilitiesSource, verify_hello_v2
from relay.signaling.internal_hub import InternalClients
from relay.signaling.metrics import HubGauges, SignalingStats, bump
from relay.signaling.pubsub import (
    LoopbackBus,
    Subscription,
    backend_room_subject,
    room_subject,
    session_subject,
    user_subject,
)
from relay.signaling.state import CLIENT, FEDERATION, Room, Session, SignalingState
from relay.signaling.throttle import HELLO_INTERNAL, HELLO_RESUME, RecentIds, Throttler

log = logging.getLogger("relay.signaling.hub")

CLOSE_NORMAL = 1000
THROTTLE_CLEANUP_INTERVAL = 60.0


def client_ip(conn: Connection) -> str:
    """The client's address as the server saw it (its `remote_ip`; "" for test doubles)."""
    return str(getattr(conn, "remote_ip", "") or "")


class Connection(Protocol):
    """A client socket as the hub sees it: both calls return at once."""

    def send_text(self, text: str) -> None: ...

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None: ...


@attrs.define(eq=False)
class Link:
    """The I/O side of a session: its socket (if any), what waits for a resume, and its
    bus subscriptions."""

    conn: Connection | None = None
    pending: deque[str] = attrs.Factory(deque)
    subs: list[Subscription] = attrs.Factory(list)


@attrs.define(eq=False)
class _RoomSubs:
    room: Subscription  # `room.<..>`: messages and events for the members
    backend: Subscription  # `backend.room.<..>`: Nextcloud's room requests
    # request type -> `received` stamp of the newest applied room-API request of that type
    last_requests: dict[str, int] = attrs.Factory(dict)

    def close(self) -> None:
        self.room.close()
        self.backend.close()


@attrs.frozen
class HelloTarget:
    """Where a `hello` authenticates: the backend, its base URL, and the endpoint ("" to
    derive from the capabilities)."""

    backend: BackendConfig
    base_url: str
    endpoint: str


class Hub:
    """Sessions, rooms and messages of one node, over `SignalingState`.

    Fed by the server: `connect(conn)`, `await receive(conn, text)`, `receive_binary(conn)`,
    `disconnect(conn)`; `run()` in a nursery for the timers and background requests. Fed
    by the room API: `set_in_call`, `session_by_room_session`,
    `publish_backend_room_event`. Read by metrics: `gauges()`, `stats_json()`.
    """

    def __init__(
        self,
        config: SignalingConfig,
        backend: BackendRequester,
        stats: SignalingStats | None = None,
        *,
        version: str = "",
        bus: LoopbackBus | None = None,
        capabilities: CapabilitiesSource | None = None,
        geoip: GeoIP | None = None,
    ) -> None:
        self.config = config
        self.backend = backend
        self.backends = Backends(config)
        self.stats = stats if stats is not None else SignalingStats()
        self.version = version
        self.bus = bus if bus is not None else LoopbackBus()
        self.state = SignalingState(
            session_expire=config.session_expire, join_timeout=config.anonymous_join_timeout
        )
        self._links: dict[str, Link] = {}  # by public id
        self._by_conn: dict[Connection, Session] = {}
        self._waiting: dict[Connection, float] = {}  # connected, no session yet: deadline
        self._busy: set[Connection] = set()  # a hello is in flight for these
        self._room_subs: dict[st.RoomKey, _RoomSubs] = {}
        self._nursery: trio.Nursery | None = None
        self._transient_wakeup: trio.CancelScope | None = None  # the TTL timer's sleep
        self.background_failures = 0
        # hello v2 keys come from Nextcloud's capabilities (fetcher created on first use)
        self._capabilities = capabilities
        self._own_fetcher: CapabilitiesFetcher | None = None
        self.federation = FederationLinks(config, self.state, self._send)
        self.internal = InternalClients(self)  # internal clients, virtual sessions, dial-out
        self.throttler = Throttler(self.stats.throttle_delayed, self.stats.throttle_bruteforce)
        self._ended = RecentIds()  # resume ids of sessions that ended (not throttled)
        self.geoip = geoip if geoip is not None else GeoIP(config.geoip_overrides)
        self.draining = False  # relay drains: new connections get bye at once

    @property
    def capabilities(self) -> CapabilitiesSource:
        if self._capabilities is None:
            self._own_fetcher = CapabilitiesFetcher(
                user_agent=f"relay/{self.version}", timeout=self.config.backend_timeout)
            self._capabilities = self._own_fetcher
        return self._capabilities

    async def backend_endpoint(self, base_url: str) -> str:
        """The backend endpoint under a Nextcloud base URL, from the one capabilities
        cache (the same lookup that gives hello v2 its key)."""
        try:
            caps = (await self.capabilities.get(base_url)).capabilities
        except CapabilitiesError as exc:
            log.info("capabilities of %s unavailable: %s", base_url, exc.message)
            caps = None
        return backend_endpoint(base_url, caps)

    async def aclose(self) -> None:
        """End the federation links and close the capabilities fetcher (bounded)."""
        self.federation.close_all()
        fetcher, self._own_fetcher = self._own_fetcher, None
        if fetcher is not None:
            self._capabilities = None
            with trio.move_on_after(1.0, shield=True):
                await fetcher.aclose()

    @property
    def sessions(self) -> dict[str, Session]:
        return self.state.sessions

    @property
    def rooms(self) -> dict[st.RoomKey, Room]:
        return self.state.rooms

    @property
    def compat_backend(self) -> BackendConfig:
        """The `allowall` backend (id `compat`)."""
        return self.backends.compat

    # --- connection lifecycle ---------------------------------------------------------

    def connect(self, conn: Connection) -> None:
        self._waiting[conn] = trio.current_time() + self.config.hello_timeout
        self._send_conn(conn, p.welcome_message(self.version))
        if self.draining:  # relay is shutting down (relay.signaling.reload.say_goodbye)
            self._send_conn(conn, p.bye_message(reason="shutdown"))
            conn.close(CLOSE_NORMAL, "")

    def disconnect(self, conn: Connection) -> None:
        """The socket is gone: its session (if any) may be resumed for `session_expire`."""
        self._waiting.pop(conn, None)
        self._busy.discard(conn)
        session = self._by_conn.pop(conn, None)
        if session is None:
            return
        link = self._links.get(session.public_id)
        if link is not None and link.conn is conn:
            link.conn = None
            self.state.detach(session, trio.current_time())

    def receive_binary(self, conn: Connection) -> None:
        self._send_conn(
            conn, p.error_message(None, "invalid_format", "binary messages are not supported")
        )

    async def receive(self, conn: Connection, text: str) -> None:
        """Handle one text frame; any protocol error is answered, never raised."""
        try:
            msg = p.parse_client_message(text)
        except p.SignalingError as exc:
            self._send_conn(conn, exc.to_message(_peek_id(text)))
            return
        bump(self.stats.server_messages, p.count_label(msg.type))
        session = self._by_conn.get(conn)
        try:
            if session is None:
                if not isinstance(msg.payload, p.Hello):
                    raise p.SignalingError("hello_expected", "Expected Hello request.")
                await self._hello(conn, msg.id, msg.payload)
                return
            self.state.touch(session, trio.current_time())
            payload = msg.payload
            if isinstance(payload, p.Hello):
                return  # a second hello on an authenticated connection is ignored
            if msg.type not in LOCAL_TYPES and self.federation.is_federated(session):
                self.federation.forward(session, json.loads(text))
                return
            if isinstance(payload, p.Bye):
                self._send_conn(conn, p.bye_message(msg.id))
                self._destroy(session)
                conn.close(CLOSE_NORMAL, "")
            elif isinstance(payload, p.Room):
                await self._room(session, msg.id, payload)
            elif msg.type == "internal" and isinstance(payload, p.Other):
                await self.internal.receive(session, msg.id, payload.body)
            elif isinstance(payload, p.Message):
                if payload.kind == "control" and not session.may("control") \
                        and session.client_type != st.INTERNAL:
                    return  # upstream silently ignores control from unprivileged sessions
                self._route(session, payload)
            elif isinstance(payload, p.Other) and msg.type == "transient":
                self._transient(session, payload.body)
            # unknown types: accepted and ignored
        except p.SignalingError as exc:
            if self._by_conn.get(conn) is None and conn in self._waiting:
                self._waiting[conn] = trio.current_time() + self.config.hello_timeout
            self._send_conn(conn, exc.to_message(msg.id))

    # --- hello / resume -----------------------------------------------------------------

    async def _hello(self, conn: Connection, msg_id: str | None, hello: p.Hello) -> None:
        if hello.resume_id:
            with self._throttled(conn, HELLO_RESUME) as failed:
                try:
                    self._resume(conn, msg_id, hello.resume_id, hello.version)
                except p.SignalingError as exc:
                    if exc.code == "no_such_session" and hello.resume_id not in self._ended:
                        failed.append(exc)
                    else:
                        raise
            await self._after_throttle(conn, HELLO_RESUME, failed)
            return
        if hello.auth_type == st.INTERNAL:  # either version: checked by its secret
            with self._throttled(conn, HELLO_INTERNAL) as failed:
                try:
                    self.internal.hello(conn, msg_id, hello)
                except p.SignalingError as exc:
                    if exc.code != "invalid_token":
                        raise
                    failed.append(exc)
            await self._after_throttle(conn, HELLO_INTERNAL, failed)
            return
        if hello.version == "2.0":
            await self._hello_v2(conn, msg_id, hello)
            return
        if hello.version != "1.0":
            raise p.SignalingError("invalid_hello_version", "The hello version is not supported")
        if hello.auth_type != "client":
            raise p.SignalingError("invalid_client_type", "The client type is not supported")
        if conn in self._busy:
            raise p.SignalingError("hello_expected", "A hello is already being processed.")
        target = self._backend_for(hello.url)
        backend, url = target.backend, target.endpoint
        self._busy.add(conn)
        try:
            if not url:
                url = await self.backend_endpoint(target.base_url)
            answer = await self.backend.request(
                backend, url, {"type": "auth", "auth": {"version": "1.0", "params": hello.params}}
            )
        finally:
            self._busy.discard(conn)
        if conn not in self._waiting:
            return  # the socket went away (or timed out) while Nextcloud answered
        auth = _answer(answer, "auth", "auth_failed", "Authentication failed")
        user_id = auth.get("userid") or ""
        if not isinstance(user_id, str):
            raise p.SignalingError("auth_failed", "The backend answered an invalid user id")
        self._register(conn, msg_id, hello, backend, url, user_id, auth.get("user"))

    @contextlib.contextmanager
    def _throttled(self, conn: Connection, action: str) -> Iterator[list[p.SignalingError]]:
        """Refuse a blocked client (`too_many_requests`); the body appends the error of a
        failed attempt to the list instead of raising it, for `_after_throttle`."""
        if self.throttler.check(client_ip(conn), action, trio.current_time()):
            log.info("bruteforce detected on %s from %s", action, client_ip(conn))
            raise p.SignalingError("too_many_requests", "Too many requests.")
        yield []

    async def _after_throttle(
        self, conn: Connection, action: str, failed: list[p.SignalingError]
    ) -> None:
        """A failed attempt: record it, sleep its delay (in this client's own task, nobody
        else waits), then answer it."""
        if not failed:
            return
        delay = self.throttler.failed(client_ip(conn), action, trio.current_time())
        log.debug("failed attempt on %s from %s, throttling by %.1f s",
                  action, client_ip(conn), delay)
        self._busy.add(conn)  # the hello timer waits for the answer
        try:
            await trio.sleep(delay)
        finally:
            self._busy.discard(conn)
        raise failed[0]

    async def _hello_v2(self, conn: Connection, msg_id: str | None, hello: p.Hello) -> None:
        """JWT hello (Talk's `hello-v2`), also for a remote server's `federation` link."""
        if hello.auth_type not in (CLIENT, FEDERATION):
            raise p.SignalingError("invalid_client_type", "The client type is not supported")
        token = hello.params.get("token") if isinstance(hello.params, dict) else None
        if not isinstance(token, str) or not token:
            raise p.invalid("hello.auth.params.token missing")
        if conn in self._busy:
            raise p.SignalingError("hello_expected", "A hello is already being processed.")
        target = self._backend_for(hello.url)
        backend, url = target.backend, target.endpoint
        self._busy.add(conn)
        try:
            claims = await verify_hello_v2(
                self.capabilities, target.base_url, token,
                federation=hello.auth_type == FEDERATION)
            if not url:
                url = await self.backend_endpoint(target.base_url)
        finally:
            self._busy.discard(conn)
        if conn not in self._waiting:
            return  # the socket went away (or timed out) meanwhile
        self._register(conn, msg_id, hello, backend, url, claims.user_id, claims.userdata,
                       client_type=hello.auth_type)

    def _register(
        self, conn: Connection, msg_id: str | None, hello: p.Hello, backend: BackendConfig,
        url: str, user_id: str, user: Any, *, client_type: str = CLIENT,
    ) -> None:
        """An authenticated hello: the session limit, then the new session."""
        limit = backend.session_limit
        if limit > 0 and (self.state.count(backend.id, CLIENT)
                          + self.state.count(backend.id, FEDERATION)) >= limit:
            bump(self.stats.session_limit_exceeded, backend.id)
            raise p.SignalingError(
                "session_limit_exceeded", "Too many sessions connected for this backend."
            )
        session = self.state.create(
            backend=backend,
            backend_url=url,
            user_id=user_id,
            user=user,
            features=hello.features,
            now=trio.current_time(),
            client_type=client_type,
        )
        self._links[session.public_id] = Link(conn, subs=self._subscribe(session))
        del self._waiting[conn]
        self._by_conn[conn] = session
        bump(self.stats.sessions_total, (backend.id, client_type))
        country = self.geoip.lookup(client_ip(conn)) if self.geoip.enabled else ""
        if is_valid_country(country):
            bump(self.stats.countries, country)
        self._send_conn(conn, p.hello_message(
            msg_id, session.public_id, session.private_id, user_id, self.version,
            hello.version))

    def _backend_for(self, raw_url: str) -> HelloTarget:
        cut = raw_url.find(p.SPREED_PATH_MARK)
        base = canonical_url(raw_url[:cut] if cut >= 0 else raw_url)
        if base is None:
            raise p.SignalingError("invalid_format", "hello.auth.url is not a valid URL")
        # Talk sends the full endpoint URL: keep it. Otherwise derive it from the base.
        full = raw_url.strip() if "/ocs/v2.php/" in raw_url else ""
        backend = self.backends.lookup(base)
        if backend is None:
            raise p.SignalingError("invalid_backend", "The requested backend is not supported")
        return HelloTarget(backend, base, full)

    def _subscribe(self, session: Session) -> list[Subscription]:
        """A session hears its own subject and, if it has a user, the user's."""
        deliver = functools.partial(self._on_direct_event, session)
        subs = [self.bus.subscribe(session_subject(session.public_id), deliver)]
        if session.user_id:
            subs.append(self.bus.subscribe(
                user_subject(session.user_id, session.backend.id), deliver))
        return subs

    def _resume(
        self, conn: Connection, msg_id: str | None, resume_id: str, version: str = "1.0"
    ) -> None:
        if conn not in self._waiting:
            return  # the hello timer already closed this socket
        session = self.state.resume(resume_id, trio.current_time())
        if session is None:
            self.stats.resume_failed_total += 1
            raise p.SignalingError("no_such_session", "The session to resume does not exist.")
        link = self._links[session.public_id]
        old = link.conn
        if old is not None and old is not conn:
            self._by_conn.pop(old, None)
            self._send_conn(old, p.bye_message(reason="session_resumed"))
            old.close(CLOSE_NORMAL, "")
        self._waiting.pop(conn, None)
        link.conn = conn
        self._by_conn[conn] = session
        bump(self.stats.resume_total, (session.backend.id, session.client_type))
        self._send_conn(conn, p.hello_message(
            msg_id, session.public_id, session.private_id, session.user_id, self.version,
            version, features=self.internal.features_of(session)))
        while link.pending and link.conn is conn:
            conn.send_text(link.pending.popleft())

    # --- rooms ---------------------------------------------------------------------------

    async def _room(self, session: Session, msg_id: str | None, req: p.Room) -> None:
        if req.has_federation:
            fed_request = self.federation.parse(req)  # a bad request changes nothing
            left = self.state.leave(session)
            if left is not None:
                self._after_leave(left, notify_backend=True)
            await self.federation.join(session, msg_id, fed_request, self._nursery)
            return
        if self.federation.is_federated(session):
            if not req.room_id:
                self.federation.leave(session, msg_id)  # the remote answers the client
                return
            self.federation.leave(session, reply=False)
        if not req.room_id:
            left = self.state.leave(session)
            if left is not None:
                self._after_leave(left, notify_backend=True)
                self._send(session, p.room_message(msg_id, ""))
            return
        current = session.room
        if current is not None and current.id == req.room_id:
            if req.session_id and self.state.set_room_session(session, req.session_id):
                self._publish_room(current, p.room_event("change", [session.entry()]))
            raise p.SignalingError(
                "already_joined", "Already joined this room.",
                {"room": {"roomid": current.id, "properties": current.properties}},
            )
        request: dict[str, Any] = {
            "version": "1.0", "roomid": req.room_id, "userid": session.user_id,
            "sessionid": req.session_id}
        if session.client_type == FEDERATION:
            request.update(room_request_actor(session))
        payload = {"type": "room", "room": request}
        answer = await self._join_request(session, payload)
        if not self.state.is_live(session):
            return  # destroyed while Nextcloud answered
        room_answer = _answer(answer, "room", "room_join_failed", "Joining the room failed")
        granted = permissions.from_join_answer(room_answer)
        if req.session_id:
            other = self.state.by_room_session(session.backend.id, req.session_id)
            if other is not None and other is not session:
                # One signaling session per Talk session: the newer one wins.
                self._close_conn(other, "room_session_reconnected")
                self._destroy(other)
        left = self.state.leave(session)
        if left is not None:
            self._after_leave(left, notify_backend=True)
        joined = self.state.join(
            session, req.room_id, req.session_id,
            properties=room_answer.get("properties"), permissions=granted,
        )
        room = joined.room
        if joined.created:
            stale = self._room_subs.pop(room.key, None)
            if stale is not None:
                stale.close()
            self._room_subs[room.key] = _RoomSubs(
                self.bus.subscribe(room_subject(room.id, room.backend.id),
                                   functools.partial(self._on_room_event, room)),
                self.bus.subscribe(backend_room_subject(room.id, room.backend.id),
                                   functools.partial(self._on_backend_room_request, room)),
            )
        self._send(session, p.room_message(msg_id, room.id, room.properties))
        self._publish_room(room, p.room_event("join", [session.entry()]))
        if joined.others:
            self._send(session, p.room_event("join", joined.others))
        initial = room.transient.initial() if room.transient is not None else None
        if initial is not None:
            self._send(session, initial)
        self.internal.joined(session, room)

    async def _join_request(self, session: Session, payload: dict[str, Any]) -> Any:
        """Nextcloud's answer to a join; internal clients join any room without asking."""
        if session.client_type == st.INTERNAL:
            return {"type": "room", "room": {}}
        return await self.backend.request(session.backend, session.backend_url, payload)

    def _after_leave(self, left: st.Left, *, notify_backend: bool) -> None:
        """Tell the room (or drop its subscriptions when it is gone) and Nextcloud."""
        if left.room_empty:
            self._drop_room_subs(left.room)
        else:
            self._publish_room(left.room, p.room_event("leave", [left.session.public_id]))
            self._send_transient(left.room, left.transient)
        if notify_backend:
            self._notify_left(left)
        self.internal.left(left)

    def _drop_room_subs(self, room: Room) -> None:
        subs = self._room_subs.get(room.key)
        if subs is not None and self.state.room(room.backend.id, room.id) is not room:
            del self._room_subs[room.key]
            subs.close()

    def _notify_left(self, left: st.Left) -> None:
        session = left.session
        if session.client_type in (st.INTERNAL, st.VIRTUAL):
            return  # Nextcloud never heard of internal sessions; virtual ones: internal_hub
        payload = {"type": "room", "room": {
            "version": "1.0", "roomid": left.room.id, "userid": session.user_id,
            "sessionid": left.room_session_id, "action": "leave"}}
        self._background(session.backend, session.backend_url, payload)

    # --- messages ------------------------------------------------------------------------

    def _route(self, session: Session, msg: p.Message) -> None:
        rec = msg.recipient
        route = self.state.route(session, rec.type, rec.session_id, rec.user_id)
        kind = route.kind
        if kind == st.DROP:
            return
        sender = p.sender(rec.type, session.public_id, session.user_id)
        if kind == st.DIRECT:
            assert route.target is not None
            if route.target.client_type == st.VIRTUAL:
                self.internal.to_virtual(route.target, p.delivered_message(
                    msg.kind, sender, msg.data,
                    {"type": "session", "sessionid": route.target.public_id}))
                return
            self._send(route.target, p.delivered_message(msg.kind, sender, msg.data))
        elif kind == st.SESSION:
            # Maybe another node has it; on the loopback bus nobody does: dropped.
            self.bus.publish(session_subject(rec.session_id), {
                "type": msg.kind, "sender": session.public_id,
                "message": p.delivered_message(
                    msg.kind, sender, msg.data,
                    {"type": "session", "sessionid": rec.session_id}),
            })
        elif kind == st.USER:
            self.bus.publish(user_subject(rec.user_id, session.backend.id), {
                "type": msg.kind, "sender": session.public_id,
                "message": p.delivered_message(msg.kind, sender, msg.data),
            })
        else:
            room = route.room
            assert room is not None
            self.bus.publish(room_subject(room.id, room.backend.id), {
                "type": msg.kind, "sender": session.public_id, "call": route.call_only,
                "message": p.delivered_message(msg.kind, sender, msg.data),
            })

    def _publish_room(self, room: Room, event: dict[str, Any]) -> None:
        subject = room_subject(room.id, room.backend.id)
        self.bus.publish(subject, {"type": "event", "message": event})

    def _on_direct_event(self, session: Session, m: dict[str, Any]) -> None:
        """A message on the session's or its user's subject."""
        if m.get("sender") != session.public_id:
            self._send(session, m["message"])
            if is_disinvite(m["message"], session.room):
                self._kick(session)

    def _on_room_event(self, room: Room, m: dict[str, Any]) -> None:
        msg = m["message"]
        text = None  # encoded once for every member who sees it unfiltered
        for s in room.recipients(m.get("sender"), bool(m.get("call"))):
            if s.permissions.hide_displaynames:
                self._send(s, msg)
                continue
            if text is None:
                text = p.encode(msg)
            self._send_text(s, text)

    # --- the backend room API (Nextcloud -> signaling) ----------------------------------
    # `relay.signaling.room_api` checks and rewrites Nextcloud's requests and publishes the
    # room's share on `backend.room.<..>`; every room of this node listens there.

    def set_in_call(self, backend_id: str, room_id: str, public_id: str, flags: int) -> bool:
        """Record a session's in-call flags (from a Nextcloud `incall` request)."""
        change = self.state.set_in_call(backend_id, room_id, public_id, flags)
        if change is None:
            return False
        self._count_call(change)
        return True

    def _count_call(self, change: st.InCallChange) -> None:
        backend_id = change.session.backend.id
        if change.call_started:
            bump(self.stats.call_rooms_total, backend_id)
        if change.joined_call:
            bump(self.stats.call_sessions_total, (backend_id, change.session.client_type))

    def session_by_room_session(self, backend_id: str, room_session_id: str) -> Session | None:
        return self.state.by_room_session(backend_id, room_session_id)

    def publish_backend_room_event(
        self, backend_id: str, room_id: str, event: dict[str, Any]
    ) -> int:
        """Hand a Nextcloud room request (`{"type": T, T: {...}}`) to the room's listeners,
        stamped with when it was received (`received`, wall-clock ns as upstream, since the
        stamp orders requests across nodes; a stamp already there is kept)."""
        if "received" not in event:
            event = {**event, "received": time.time_ns()}
        return self.bus.publish(backend_room_subject(room_id, backend_id), event)

    def _on_backend_room_request(self, room: Room, m: dict[str, Any]) -> None:
        kind = m.get("type")
        body = m.get(kind) if isinstance(kind, str) else None
        if not isinstance(body, dict) or self.state.room(room.backend.id, room.id) is not room:
            return
        subs = self._room_subs.get(room.key)
        received = m.get("received")
        if subs is not None and isinstance(kind, str) and isinstance(received, int):
            # as upstream: a request older than the last applied one of its type is stale
            last = subs.last_requests.get(kind)
            if last is not None and last > received:
                log.debug("ignoring an old %s request for room %s", kind, room.id)
                return
            subs.last_requests[kind] = received
        if kind == "incall":
            if body.get("all") is True:
                self._in_call_all(room, body.get("incall"))
            else:
                changed = _entries(body.get("changed"))
                changed_users.remember(room.users, room.sessions, changed)
                self._in_call_changed(
                    room, changed, changed_users.users_for_update(kind, body, room.users))
        elif kind == "participants":
            self._participants_changed(room, _entries(body.get("changed")),
                                       changed_users.users_for_update(kind, body, room.users))
        elif kind == "update":
            if self.state.update_properties(room, body.get("properties")):
                self._publish_room(room, p.room_message(None, room.id, room.properties))
        elif kind == "delete":
            self._close_room(room, tell=not changed_users.has_full_list(kind, body))
        elif kind == "message" and body.get("data") is not None:
            self._room_message(room, body["data"])

    def _room_message(self, room: Room, data: Any) -> None:
        """Nextcloud's room `message` as each session may see it: chat comments one event
        each for `chat-relay` clients, a refresh for the others, display names blanked
        under `hide-displaynames` (encoded once per kind of receiver)."""
        texts: dict[tuple[bool, bool], list[tuple[str, bool]]] = {}
        for s in list(room.sessions.values()):
            key = (chat.CHAT_RELAY in s.features, s.permissions.hide_displaynames)
            out = texts.get(key)
            if out is None:
                features = (chat.CHAT_RELAY,) if key[0] else ()
                out = texts[key] = [
                    (p.encode(e), chat.is_chat_refresh(e))
                    for e in chat.room_message_events(room.id, data, features, key[1])]
            link = self._links.get(s.public_id)
            for text, refresh in out:
                if refresh and link is not None and link.conn is None and text in link.pending:
                    continue  # a detached session needs one chat refresh, not many
                self._send_text(s, text)

    def _in_call_changed(
        self, room: Room, changed: list[dict[str, Any]], users: list[dict[str, Any]]
    ) -> None:
        for entry in changed:
            flags = in_call_flags(entry.get("inCall"))
            sid = entry.get("sessionId", entry.get("sessionid"))
            if flags is not None and isinstance(sid, str):
                self.set_in_call(room.backend.id, room.id, sid, flags)
        self._publish_room(room, participants_update(
            room.id, changed, self.internal.users(room, users)))

    def _in_call_all(self, room: Room, raw: Any) -> None:
        """`{"incall": N, "all": true}`: every client session joins or leaves the call."""
        if isinstance(raw, bool):
            flags = 1 if raw else 0
        elif isinstance(raw, int):
            flags = raw
        else:
            return  # upstream ignores other types
        result = self.state.set_in_call_all(room, flags)
        for change in result.changes:
            self._count_call(change)
        if not result.notify:
            return
        event = {"type": "event", "event": {"target": "participants", "type": "update",
                                            "update": {"roomid": room.id, "incall": flags,
                                                       "all": True}}}
        text = p.encode(event)
        for s in result.notify:
            self._send_text(s, text)

    def _participants_changed(
        self, room: Room, changed: list[dict[str, Any]], users: list[dict[str, Any]]
    ) -> None:
        for update in permissions.updates_from_changed(changed):
            self.state.set_permissions(room, update.session_id, update.permissions)
        self._publish_room(room, participants_update(
            room.id, changed, self.internal.users(room, users)))

    def _close_room(self, room: Room, *, tell: bool = False) -> None:
        """The room was deleted: every session leaves it (no `leave` events, as upstream);
        `tell`: each first gets the `roomlist` `disinvite` (reason `deleted`)."""
        if tell:
            text = p.encode(changed_users.deleted_event(room.id))
            for s in list(room.sessions.values()):
                self._send_text(s, text)
        lefts = self.state.close_room(room)
        self._drop_room_subs(room)
        for left in lefts:
            self._notify_left(left)
            self._send(left.session, p.room_message(None, ""))
        self.internal.room_closed(lefts)

    # --- transient data ------------------------------------------------------------------

    def _transient(self, session: Session, body: Any) -> None:
        """A client's `transient` set/remove; errors are raised for the caller to answer."""
        request = transient.parse_transient(body)
        room = session.room
        if room is None:
            raise transient.not_in_room()
        writer = transient.Writer(
            session.public_id, session.permissions, session.client_type == st.INTERNAL)
        store = room.transient_store()
        self.transient_changed(room, store.handle(request, writer, trio.current_time()))

    def transient_changed(self, room: Room, messages: list[dict[str, Any]]) -> None:
        """After a write to `room.transient` (a client's, or the server's own such as a
        dial-out call status with `writer=None`): send what it returned to the room and
        wake the TTL timer earlier if the write set a nearer deadline."""
        self._send_transient(room, messages)
        if room.transient is not None:
            self._transient_armed(room.transient)

    def _send_transient(self, room: Room, messages: list[dict[str, Any]]) -> None:
        """Transient events go to every listener of the room, the writer included."""
        for msg in messages:
            text = p.encode(msg)
            for s in room.transient_listeners():
                self._send_text(s, text)

    def _transient_armed(self, store: transient.TransientStore) -> None:
        deadline = store.next_deadline()
        wakeup = self._transient_wakeup
        if deadline is not None and wakeup is not None and deadline < wakeup.deadline:
            wakeup.deadline = deadline

    def _next_transient_deadline(self) -> float:
        deadlines = [d for r in self.state.rooms.values() if r.transient is not None
                     for d in (r.transient.next_deadline(),) if d is not None]
        return min(deadlines, default=math.inf)

    async def _expire_transient(self) -> None:
        """One timer for all rooms: sleeps until the earliest TTL, then expires."""
        while True:
            with trio.CancelScope(deadline=self._next_transient_deadline()) as wakeup:
                self._transient_wakeup = wakeup
                await trio.sleep_forever()
            self._transient_wakeup = None
            now = trio.current_time()
            for room in list(self.state.rooms.values()):
                if room.transient is not None:
                    self._send_transient(room, room.transient.expire(now))

    def _kick(self, session: Session) -> None:
        """Disinvited from its room: leave it and close the socket (resumable)."""
        left = self.state.leave(session)
        if left is not None:
            self._after_leave(left, notify_backend=True)
        link = self._links.get(session.public_id)
        if link is not None and link.conn is not None:
            link.conn.close(CLOSE_NORMAL, "")

    # --- sending -------------------------------------------------------------------------

    def _send_conn(self, conn: Connection, msg: dict[str, Any]) -> None:
        conn.send_text(p.encode(msg))

    def _send(self, session: Session, msg: dict[str, Any]) -> None:
        if session.permissions.hide_displaynames:
            filtered = permissions.filter_for_session(msg, session.permissions)
            if filtered is None:
                return
            msg = filtered
        self._send_text(session, p.encode(msg))

    def _send_text(self, session: Session, text: str) -> None:
        link = self._links.get(session.public_id)
        if link is None:
            return
        if link.conn is not None:
            link.conn.send_text(text)
            return
        if len(link.pending) >= self.config.max_pending:
            link.pending.popleft()
            self.stats.pending_dropped += 1
        link.pending.append(text)

    def _close_conn(self, session: Session, reason: str) -> None:
        """Say `bye` with `reason` on the session's socket (if any) and close it."""
        link = self._links.get(session.public_id)
        if link is not None and link.conn is not None:
            conn = link.conn
            self._send_conn(conn, p.bye_message(reason=reason))
            conn.close(CLOSE_NORMAL, "")

    # --- teardown, timers, background ----------------------------------------------------

    def _destroy(self, session: Session) -> None:
        if not self.state.is_live(session):
            return
        self.federation.close(session)
        self.internal.session_gone(session)
        self._ended.add(session.private_id)
        left = self.state.remove(session)
        if left is not None:
            self._after_leave(left, notify_backend=True)
        link = self._links.pop(session.public_id, None)
        if link is None:
            return
        for sub in link.subs:
            sub.close()
        if link.conn is not None:
            self._by_conn.pop(link.conn, None)
            link.conn = None
        link.pending.clear()

    def housekeeping(self) -> None:
        """Fire the timers that are due (called every second by `run`)."""
        now = trio.current_time()
        for conn, deadline in list(self._waiting.items()):
            if deadline <= now and conn not in self._busy:
                del self._waiting[conn]
                self._send_conn(conn, p.bye_message(reason="hello_timeout"))
                conn.close(CLOSE_NORMAL, "")
        due = self.state.due(now)
        for session in due.expired:
            self._destroy(session)
        for session in due.join_timed_out:
            self._close_conn(session, "room_join_timeout")
            self._destroy(session)

    def ping_rooms(self) -> None:
        """Tell Nextcloud which Talk sessions are still here (every 10 s): per backend
        URL, batched by its `session-ping-limit` capability (`relay.signaling.room_ping`)."""
        by_url: dict[str, tuple[BackendConfig, list[tuple[str, room_ping.Entries]]]] = {}
        for ping in self.state.pings():
            room = ping.room
            if room.backend_url:
                by_url.setdefault(room.backend_url, (room.backend, []))[1].append(
                    (room.id, ping.entries))
        for url, (backend, rooms) in by_url.items():
            if self._nursery is not None:
                self._nursery.start_soon(self._ping_backend, backend, url, rooms)
        for session, payload in self.federation.pings():
            self._background(session.backend, session.backend_url, payload)

    def _background(self, backend: BackendConfig, url: str, payload: dict[str, Any]) -> None:
        if self._nursery is None or not url:
            return
        self._nursery.start_soon(self._quiet_request, backend, url, payload)

    async def _ping_backend(
        self, backend: BackendConfig, url: str, rooms: list[tuple[str, room_ping.Entries]]
    ) -> None:
        try:
            limit = (await self.capabilities.get(url)).capabilities.session_ping_limit
        except CapabilitiesError:
            limit = None
        for payload in room_ping.ping_requests(rooms, limit):
            await self._quiet_request(backend, url, payload)

    async def _quiet_request(
        self, backend: BackendConfig, url: str, payload: dict[str, Any]
    ) -> None:
        try:
            await self.backend.request(backend, url, payload)
        except p.SignalingError as exc:
            self.background_failures += 1
            log.debug("background backend request failed: %s", exc)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Timers and background backend requests, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._expire_transient)
            task_status.started()
            next_ping = trio.current_time() + self.config.room_ping_interval
            next_cleanup = trio.current_time() + THROTTLE_CLEANUP_INTERVAL
            try:
                while True:
                    await trio.sleep(1.0)
                    self.housekeeping()
                    if trio.current_time() >= next_cleanup:
                        next_cleanup += THROTTLE_CLEANUP_INTERVAL
                        self.throttler.cleanup(trio.current_time())
                    if trio.current_time() >= next_ping:
                        next_ping += self.config.room_ping_interval
                        self.ping_rooms()
            finally:
                self._nursery = None
                await self.aclose()

    # --- for relay.signaling.internal_hub ------------------------------------------------

    def attachable(self, conn: Connection) -> bool:
        """Whether `conn` still waits for its hello to succeed."""
        return conn in self._waiting

    def attach(self, conn: Connection, session: Session) -> None:
        """`session` (new) belongs to `conn` from now on."""
        self._links[session.public_id] = Link(conn, subs=self._subscribe(session))
        del self._waiting[conn]
        self._by_conn[conn] = session

    def attached(self, session: Session) -> bool:
        link = self._links.get(session.public_id)
        return link is not None and link.conn is not None

    def client_of(self, session: Session) -> tuple[str, str]:
        """(address, User-Agent) of the socket a session is attached to ("" if unknown)."""
        link = self._links.get(session.public_id)
        conn = link.conn if link is not None else None
        if conn is None:
            return "", ""
        return client_ip(conn), str(getattr(conn, "user_agent", "") or "")

    def send(self, session: Session, msg: dict[str, Any]) -> None:
        self._send(session, msg)

    def send_text(self, session: Session, text: str) -> None:
        self._send_text(session, text)

    def publish_room(self, room: Room, event: dict[str, Any]) -> None:
        self._publish_room(room, event)

    def after_leave(self, left: st.Left) -> None:
        self._after_leave(left, notify_backend=True)

    def start_background(self, fn: Any, *args: Any) -> None:
        """Run `fn(*args)` in the hub's nursery (dropped when the hub is not running)."""
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    # --- metrics -------------------------------------------------------------------------

    def gauges(self) -> HubGauges:
        sessions: dict[tuple[str, str], int] = {}
        for s in self.state.sessions.values():
            bump(sessions, (s.backend.id, s.client_type))
        rooms: dict[str, int] = {}
        room_sessions: dict[tuple[str, str, str], int] = {}
        call_sessions: dict[tuple[str, str, str], int] = {}
        for room in self.state.rooms.values():
            bump(rooms, room.backend.id)
            for s in room.sessions.values():
                bump(room_sessions, (room.backend.id, room.id, s.client_type))
                if s.is_in_call:
                    bump(call_sessions, (room.backend.id, room.id, s.client_type))
        backends = self.backends.active
        return HubGauges(
            sessions=sessions,
            rooms=rooms,
            room_sessions=room_sessions,
            call_sessions=call_sessions,
            backends_current=len(backends),
            session_limits={b.id: b.session_limit for b in backends if b.session_limit > 0},
        )

    def stats_json(self) -> dict[str, int]:
        return {"rooms": len(self.state.rooms), "sessions": len(self.state.sessions)}


def is_disinvite(msg: dict[str, Any], room: Room | None) -> bool:
    """Whether `msg` is a `roomlist` `disinvite` event for `room`."""
    event = msg.get("event") if msg.get("type") == "event" else None
    if not isinstance(event, dict) or event.get("target") != "roomlist" \
            or event.get("type") != "disinvite":
        return False
    disinvite = event.get("disinvite")
    return room is not None and isinstance(disinvite, dict) and disinvite.get("roomid") == room.id


def _answer(answer: Any, expected: str, code: str, message: str) -> dict[str, Any]:
    """The `expected` object of a backend answer; a Nextcloud error is forwarded as is."""
    if isinstance(answer, dict) and answer.get("type") == "error":
        err = answer.get("error")
        if isinstance(err, dict) and isinstance(err.get("code"), str):
            raise p.SignalingError(err["code"], str(err.get("message", "")), err.get("details"))
        raise p.SignalingError(code, message)
    if not isinstance(answer, dict) or answer.get("type") != expected:
        raise p.SignalingError(code, message)
    body = answer.get(expected)
    if not isinstance(body, dict):
        raise p.SignalingError(code, message)
    return body


def _peek_id(text: str) -> str | None:
    """The `id` of a message that failed validation, when it can still be read."""
    try:
        env = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if isinstance(env, dict) and isinstance(env.get("id"), str) and env["id"]:
        return str(env["id"])
    return None


def in_call_flags(value: Any) -> int | None:
    """Talk's `inCall`: flags (1 = in call, 2 audio, 4 video, 8 phone) or a bool."""
    if isinstance(value, bool):
        return 1 if value else 0
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _entries(value: Any) -> list[dict[str, Any]]:
    return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []


def participants_update(
    room_id: str, changed: list[dict[str, Any]], users: list[dict[str, Any]]
) -> dict[str, Any]:
    """The `participants` `update` event; `permissions` are never sent to clients."""
    update: dict[str, Any] = {"roomid": room_id}
    if changed:
        update["changed"] = permissions.strip_permissions(changed)
    if users:
        update["users"] = permissions.strip_permissions(users)
    return {"type": "event", "event": {"target": "participants", "type": "update",
                                       "update": update}}
