"""The signaling hub: sessions, rooms and message routing (spreed-signaling semantics).

The hub never touches a socket. A connection is anything with `send_text(str)` (queue a
frame, never blocks) and `close(code, reason)`; the server feeds the hub with
`connect` / `receive` / `disconnect` and runs `run()` for the timers (hello 2 s,
anonymous room join 10 s, expiry 30 s after the socket went away) and the room pings.
Time comes from `trio.current_time()`, so tests drive the timers with a MockClock.

Deliveries go through the in-process bus with upstream's subjects (`session.<id>`,
`user.<..>`, `room.<..>`); a session recipient known locally is written directly, as
upstream does.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
from collections import deque
from typing import Any, Protocol

import attrs
import trio

from relay.signaling import protocol as p
from relay.signaling.backend import BackendRequester
from relay.signaling.config import BackendConfig, SignalingConfig, canonical_url
from relay.signaling.metrics import HubGauges, SignalingStats, bump
from relay.signaling.pubsub import (
    LoopbackBus,
    Subscription,
    backend_room_subject,
    room_subject,
    session_subject,
    user_subject,
)

log = logging.getLogger("relay.signaling.hub")

CLIENT = "client"  # the clienttype label of sessions created by `hello` with auth type client
COMPAT_BACKEND_ID = "compat"
CLOSE_NORMAL = 1000


class Connection(Protocol):
    def send_text(self, text: str) -> None: ...

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None: ...


def new_id(nbytes: int) -> str:
    """Random URL-safe id: independent per session, so no two share a prefix by design."""
    return secrets.token_urlsafe(nbytes)


@attrs.define(eq=False)
class Session:
    public_id: str
    private_id: str
    backend: BackendConfig
    backend_url: str  # where this session's backend requests go
    user_id: str
    user: Any
    features: tuple[str, ...]
    client_type: str = CLIENT
    conn: Connection | None = None
    room: Room | None = None
    room_session_id: str = ""
    permissions: frozenset[str] = frozenset()
    pending: deque[str] = attrs.Factory(deque)
    expires_at: float | None = None  # set while no socket is attached
    join_deadline: float | None = None  # anonymous sessions must join a room by then
    in_call: int = 0  # Talk's in-call flags (1 = in call)
    subs: list[Subscription] = attrs.Factory(list)

    def entry(self) -> dict[str, Any]:
        """This session as an item of a room `join`/`change` event."""
        e: dict[str, Any] = {"sessionid": self.public_id, "userid": self.user_id}
        if self.user is not None:
            e["user"] = self.user
        if self.room_session_id:
            e["roomsessionid"] = self.room_session_id
        if self.features:
            e["features"] = list(self.features)
        return e


@attrs.define(eq=False)
class Room:
    id: str
    backend: BackendConfig
    properties: Any = None
    sessions: dict[str, Session] = attrs.Factory(dict)
    sub: Subscription | None = None
    backend_url: str = ""
    backend_sub: Subscription | None = None  # `backend.room.<..>`: Nextcloud's room requests


@attrs.define(eq=False)
class _Waiting:
    deadline: float


class Hub:
    def __init__(
        self,
        config: SignalingConfig,
        backend: BackendRequester,
        stats: SignalingStats | None = None,
        *,
        version: str = "",
        bus: LoopbackBus | None = None,
    ) -> None:
        self.config = config
        self.backend = backend
        self.stats = stats if stats is not None else SignalingStats()
        self.version = version
        self.bus = bus if bus is not None else LoopbackBus()
        self.sessions: dict[str, Session] = {}
        self._by_private: dict[str, Session] = {}
        self._by_conn: dict[Connection, Session] = {}
        self._by_room_session: dict[tuple[str, str], Session] = {}
        self._waiting: dict[Connection, _Waiting] = {}  # connected, no session yet
        self._busy: set[Connection] = set()  # a hello is in flight for these
        self._timed: set[Session] = set()  # sessions with an expiry or join deadline
        self.rooms: dict[tuple[str, str], Room] = {}
        self._compat = BackendConfig(COMPAT_BACKEND_ID, (), config.secret)
        self._nursery: trio.Nursery | None = None
        self.background_failures = 0

    @property
    def compat_backend(self) -> BackendConfig:
        """The `allowall` backend (id `compat`)."""
        return self._compat

    # --- connection lifecycle ---------------------------------------------------------

    def connect(self, conn: Connection) -> None:
        self._waiting[conn] = _Waiting(trio.current_time() + self.config.hello_timeout)
        self._send_conn(conn, p.welcome_message(self.version))

    def disconnect(self, conn: Connection) -> None:
        """The socket is gone: its session (if any) may be resumed for `session_expire`."""
        self._waiting.pop(conn, None)
        self._busy.discard(conn)
        session = self._by_conn.pop(conn, None)
        if session is not None and session.conn is conn:
            session.conn = None
            session.expires_at = trio.current_time() + self.config.session_expire
            self._timed.add(session)

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
            payload = msg.payload
            if isinstance(payload, p.Hello):
                return  # a second hello on an authenticated connection is ignored
            if isinstance(payload, p.Bye):
                self._send_conn(conn, p.bye_message(msg.id))
                self._destroy(session)
                conn.close(CLOSE_NORMAL, "")
            elif isinstance(payload, p.Room):
                await self._room(session, msg.id, payload)
            elif isinstance(payload, p.Message):
                if payload.kind == "control" and "control" not in session.permissions:
                    return  # upstream silently ignores control from unprivileged sessions
                self._route(session, payload)
            # internal / transient / unknown types: accepted and ignored
        except p.SignalingError as exc:
            if self._by_conn.get(conn) is None and conn in self._waiting:
                self._waiting[conn].deadline = trio.current_time() + self.config.hello_timeout
            self._send_conn(conn, exc.to_message(msg.id))

    # --- hello / resume -----------------------------------------------------------------

    async def _hello(self, conn: Connection, msg_id: str | None, hello: p.Hello) -> None:
        if hello.resume_id:
            self._resume(conn, msg_id, hello.resume_id)
            return
        if hello.version != "1.0":
            raise p.SignalingError("invalid_hello_version", "The hello version is not supported")
        if hello.auth_type != "client":
            raise p.SignalingError("invalid_client_type", "The client type is not supported")
        if conn in self._busy:
            raise p.SignalingError("hello_expected", "A hello is already being processed.")
        backend, base_url, url = self._backend_for(hello.url)
        self._busy.add(conn)
        try:
            if not url:
                url = await self.backend.signaling_url(backend, base_url)
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
        limit = backend.session_limit
        if limit > 0:
            count = sum(
                1 for s in self.sessions.values()
                if s.backend.id == backend.id and s.client_type == CLIENT
            )
            if count >= limit:
                bump(self.stats.session_limit_exceeded, backend.id)
                raise p.SignalingError(
                    "session_limit_exceeded", "Too many sessions connected for this backend."
                )
        session = Session(
            public_id=new_id(32),
            private_id=new_id(32),
            backend=backend,
            backend_url=url,
            user_id=user_id,
            user=auth.get("user"),
            features=hello.features,
            conn=conn,
        )
        if not user_id:
            session.join_deadline = trio.current_time() + self.config.anonymous_join_timeout
            self._timed.add(session)
        self._register(session)
        del self._waiting[conn]
        self._by_conn[conn] = session
        bump(self.stats.sessions_total, (backend.id, CLIENT))
        self._send_conn(conn, p.hello_message(
            msg_id, session.public_id, session.private_id, user_id, self.version))

    def _backend_for(self, raw_url: str) -> tuple[BackendConfig, str, str]:
        """(backend, base URL, backend endpoint or "" to derive from capabilities)."""
        cut = raw_url.find(p.SPREED_PATH_MARK)
        base = canonical_url(raw_url[:cut] if cut >= 0 else raw_url)
        if base is None:
            raise p.SignalingError("invalid_format", "hello.auth.url is not a valid URL")
        # Talk sends the full endpoint URL: keep it. Otherwise derive it from the base.
        full = raw_url.strip() if "/ocs/v2.php/" in raw_url else ""
        if self.config.allow_all:
            return self._compat, base, full
        for backend in self.config.backends:
            if any(base.startswith(u) for u in backend.urls):
                return backend, base, full
        raise p.SignalingError("invalid_backend", "The requested backend is not supported")

    def _register(self, session: Session) -> None:
        self.sessions[session.public_id] = session
        self._by_private[session.private_id] = session
        session.subs.append(
            self.bus.subscribe(session_subject(session.public_id),
                               functools.partial(self._on_session_event, session))
        )
        if session.user_id:
            session.subs.append(
                self.bus.subscribe(user_subject(session.user_id, session.backend.id),
                                   functools.partial(self._on_user_event, session))
            )

    def _resume(self, conn: Connection, msg_id: str | None, resume_id: str) -> None:
        if conn not in self._waiting:
            return  # the hello timer already closed this socket
        session = self._by_private.get(resume_id)
        if session is None or session.client_type != CLIENT:
            self.stats.resume_failed_total += 1
            raise p.SignalingError("no_such_session", "The session to resume does not exist.")
        old = session.conn
        if old is not None and old is not conn:
            self._by_conn.pop(old, None)
            self._send_conn(old, p.bye_message(reason="session_resumed"))
            old.close(CLOSE_NORMAL, "")
        self._waiting.pop(conn, None)
        session.conn = conn
        session.expires_at = None
        self._by_conn[conn] = session
        bump(self.stats.resume_total, (session.backend.id, session.client_type))
        self._send_conn(conn, p.hello_message(
            msg_id, session.public_id, session.private_id, session.user_id, self.version))
        while session.pending and session.conn is conn:
            conn.send_text(session.pending.popleft())

    # --- rooms ---------------------------------------------------------------------------

    async def _room(self, session: Session, msg_id: str | None, req: p.Room) -> None:
        if req.has_federation:
            raise p.SignalingError("federation_unsupported", "Federation is not supported")
        if not req.room_id:
            was_in_room = session.room is not None
            self._leave_room(session, notify_backend=True)
            if was_in_room:
                self._send(session, p.room_message(msg_id, ""))
            return
        current = session.room
        if current is not None and current.id == req.room_id:
            if req.session_id and req.session_id != session.room_session_id:
                self._set_room_session(session, req.session_id)
                self._publish_room(current, p.room_event("change", [session.entry()]))
            raise p.SignalingError(
                "already_joined", "Already joined this room.",
                {"room": {"roomid": current.id, "properties": current.properties}},
            )
        payload = {"type": "room", "room": {
            "version": "1.0", "roomid": req.room_id, "userid": session.user_id,
            "sessionid": req.session_id}}
        answer = await self.backend.request(session.backend, session.backend_url, payload)
        if self.sessions.get(session.public_id) is not session:
            return  # destroyed while Nextcloud answered
        room_answer = _answer(answer, "room", "room_join_failed", "Joining the room failed")
        if req.session_id:
            other = self._by_room_session.get((session.backend.id, req.session_id))
            if other is not None and other is not session:
                # One signaling session per Talk session: the newer one wins.
                if other.conn is not None:
                    conn = other.conn
                    self._send_conn(conn, p.bye_message(reason="room_session_reconnected"))
                    conn.close(CLOSE_NORMAL, "")
                self._destroy(other)
        if session.room is not None:
            self._leave_room(session, notify_backend=True)
        perms = room_answer.get("permissions")
        if isinstance(perms, list):
            session.permissions = frozenset(x for x in perms if isinstance(x, str))
        self._set_room_session(session, req.session_id)
        room = self._room_for(req.room_id, session)
        properties = room_answer.get("properties")
        if properties is not None:
            room.properties = properties
        session.room = room
        session.join_deadline = None
        others = [s.entry() for s in room.sessions.values()]
        room.sessions[session.public_id] = session
        self._send(session, p.room_message(msg_id, room.id, room.properties))
        self._publish_room(room, p.room_event("join", [session.entry()]))
        if others:
            self._send(session, p.room_event("join", others))

    def _room_for(self, room_id: str, session: Session) -> Room:
        key = (session.backend.id, room_id)
        room = self.rooms.get(key)
        if room is None:
            room = Room(room_id, session.backend, backend_url=session.backend_url)
            room.sub = self.bus.subscribe(
                room_subject(room_id, session.backend.id),
                functools.partial(self._on_room_event, room),
            )
            room.backend_sub = self.bus.subscribe(
                backend_room_subject(room_id, session.backend.id),
                functools.partial(self._on_backend_room_request, room),
            )
            self.rooms[key] = room
        return room

    def _set_room_session(self, session: Session, room_session_id: str) -> None:
        key = (session.backend.id, session.room_session_id)
        if session.room_session_id and self._by_room_session.get(key) is session:
            del self._by_room_session[key]
        session.room_session_id = room_session_id
        if room_session_id:
            self._by_room_session[(session.backend.id, room_session_id)] = session

    def _leave_room(self, session: Session, *, notify_backend: bool) -> None:
        room = session.room
        if room is None:
            return
        session.room = None
        room.sessions.pop(session.public_id, None)
        session.in_call = 0
        rsid = session.room_session_id
        self._set_room_session(session, "")
        if room.sessions:
            self._publish_room(room, p.room_event("leave", [session.public_id]))
        else:
            self._drop_room(room)
        if notify_backend:
            self._notify_left(session, room, rsid)

    def _notify_left(self, session: Session, room: Room, rsid: str) -> None:
        payload = {"type": "room", "room": {
            "version": "1.0", "roomid": room.id, "userid": session.user_id,
            "sessionid": rsid, "action": "leave"}}
        self._background(session.backend, session.backend_url, payload)

    # --- messages ------------------------------------------------------------------------

    def _route(self, session: Session, msg: p.Message) -> None:
        rec = msg.recipient
        sender = p.sender(rec.type, session.public_id, session.user_id)
        if rec.type == "session":
            target = self.sessions.get(rec.session_id)
            if target is None:
                # Maybe another node has it; on the loopback bus nobody does: dropped.
                self.bus.publish(session_subject(rec.session_id), {
                    "type": msg.kind, "sender": session.public_id,
                    "message": p.delivered_message(
                        msg.kind, sender, msg.data,
                        {"type": "session", "sessionid": rec.session_id}),
                })
                return
            if target is session or target.backend.id != session.backend.id:
                return
            self._send(target, p.delivered_message(msg.kind, sender, msg.data))
        elif rec.type == "user":
            if rec.user_id == session.user_id:
                return
            self.bus.publish(user_subject(rec.user_id, session.backend.id), {
                "type": msg.kind, "sender": session.public_id,
                "message": p.delivered_message(msg.kind, sender, msg.data),
            })
        else:  # room / call
            room = session.room
            if room is None:
                return
            self.bus.publish(room_subject(room.id, room.backend.id), {
                "type": msg.kind, "sender": session.public_id, "call": rec.type == "call",
                "message": p.delivered_message(msg.kind, sender, msg.data),
            })

    def _publish_room(self, room: Room, event: dict[str, Any]) -> None:
        subject = room_subject(room.id, room.backend.id)
        self.bus.publish(subject, {"type": "event", "message": event})

    def _on_session_event(self, session: Session, m: dict[str, Any]) -> None:
        if m.get("sender") != session.public_id:
            self._send(session, m["message"])
            self._kick_if_disinvited(session, m["message"])

    def _on_user_event(self, session: Session, m: dict[str, Any]) -> None:
        if m.get("sender") != session.public_id:
            self._send(session, m["message"])
            self._kick_if_disinvited(session, m["message"])

    def _on_room_event(self, room: Room, m: dict[str, Any]) -> None:
        sender = m.get("sender")
        call_only = bool(m.get("call"))
        text = p.encode(m["message"])  # once for every member
        for s in tuple(room.sessions.values()):
            if s.public_id == sender or (call_only and not s.in_call & 1):
                continue
            self._send_text(s, text)

    # --- the backend room API (Nextcloud -> signaling) ----------------------------------
    # `relay.signaling.room_api` checks and rewrites Nextcloud's requests and publishes the
    # room's share on `backend.room.<..>`; every room of this node listens there.

    def set_in_call(self, backend_id: str, room_id: str, public_id: str, flags: int) -> bool:
        """Record a session's in-call flags (from a Nextcloud `incall` request)."""
        room = self.rooms.get((backend_id, room_id))
        session = room.sessions.get(public_id) if room is not None else None
        if room is None or session is None:
            return False
        was, now = bool(session.in_call & 1), bool(flags & 1)
        if now and not was:
            if not any(s.in_call & 1 for s in room.sessions.values()):
                bump(self.stats.call_rooms_total, backend_id)
            bump(self.stats.call_sessions_total, (backend_id, session.client_type))
        session.in_call = flags
        return True

    def session_by_room_session(self, backend_id: str, room_session_id: str) -> Session | None:
        return self._by_room_session.get((backend_id, room_session_id))

    def publish_backend_room_event(
        self, backend_id: str, room_id: str, event: dict[str, Any]
    ) -> int:
        """Hand a Nextcloud room request (`{"type": T, T: {...}}`) to the room's listeners."""
        return self.bus.publish(backend_room_subject(room_id, backend_id), event)

    def _on_backend_room_request(self, room: Room, m: dict[str, Any]) -> None:
        kind = m.get("type")
        body = m.get(kind) if isinstance(kind, str) else None
        if not isinstance(body, dict) or self.rooms.get((room.backend.id, room.id)) is not room:
            return
        if kind == "incall":
            if body.get("all") is True:
                self._in_call_all(room, body.get("incall"))
            else:
                self._in_call_changed(room, _entries(body.get("changed")),
                                      _entries(body.get("users")))
        elif kind == "participants":
            self._participants_changed(room, _entries(body.get("changed")),
                                       _entries(body.get("users")))
        elif kind == "update":
            self._update_properties(room, body.get("properties"))
        elif kind == "delete":
            self._close_room(room)
        elif kind == "message" and body.get("data") is not None:
            self._publish_room(room, {"type": "event", "event": {
                "target": "room", "type": "message",
                "message": {"roomid": room.id, "data": body["data"]}}})

    def _in_call_changed(
        self, room: Room, changed: list[dict[str, Any]], users: list[dict[str, Any]]
    ) -> None:
        for entry in changed:
            flags = in_call_flags(entry.get("inCall"))
            sid = entry.get("sessionId", entry.get("sessionid"))
            if flags is not None and isinstance(sid, str):
                self.set_in_call(room.backend.id, room.id, sid, flags)
        self._publish_room(room, participants_update(room.id, changed, users))

    def _in_call_all(self, room: Room, raw: Any) -> None:
        """`{"incall": N, "all": true}`: every client session joins or leaves the call."""
        if isinstance(raw, bool):
            flags = 1 if raw else 0
        elif isinstance(raw, int):
            flags = raw
        else:
            return  # upstream ignores other types
        clients = [s for s in room.sessions.values() if s.client_type == CLIENT]
        if flags & 1:
            joining = [s for s in clients if not s.in_call & 1]
            if not joining:
                return
            for s in joining:
                self.set_in_call(room.backend.id, room.id, s.public_id, flags)
        elif any(s.in_call & 1 for s in room.sessions.values()):
            for s in room.sessions.values():
                s.in_call = 0
        else:
            return  # nobody was in the call: nothing to tell
        event = {"type": "event", "event": {"target": "participants", "type": "update",
                                            "update": {"roomid": room.id, "incall": flags,
                                                       "all": True}}}
        text = p.encode(event)
        for s in clients:
            self._send_text(s, text)

    def _participants_changed(
        self, room: Room, changed: list[dict[str, Any]], users: list[dict[str, Any]]
    ) -> None:
        for entry in changed:
            perms = entry.get("permissions")
            sid = entry.get("sessionId")
            if not isinstance(perms, list) or not isinstance(sid, str):
                continue
            if not all(isinstance(x, str) for x in perms):
                continue  # upstream skips an entry with an invalid permission
            session = room.sessions.get(sid)
            if session is not None:
                session.permissions = frozenset(perms)
        self._publish_room(room, participants_update(room.id, changed, users))

    def _update_properties(self, room: Room, properties: Any) -> None:
        if properties == room.properties:
            return  # upstream does not notify unchanged properties
        room.properties = properties
        self._publish_room(room, p.room_message(None, room.id, properties))

    def _close_room(self, room: Room) -> None:
        """The room was deleted: every session leaves it (no `leave` events, as upstream)."""
        sessions = list(room.sessions.values())
        room.sessions.clear()
        self._drop_room(room)
        for s in sessions:
            s.room = None
            s.in_call = 0
            rsid = s.room_session_id
            self._set_room_session(s, "")
            self._notify_left(s, room, rsid)
            self._send(s, p.room_message(None, ""))

    def _kick_if_disinvited(self, session: Session, msg: dict[str, Any]) -> None:
        """A `roomlist` `disinvite` for the session's current room closes its socket."""
        event = msg.get("event") if msg.get("type") == "event" else None
        if not isinstance(event, dict) or event.get("target") != "roomlist" \
                or event.get("type") != "disinvite":
            return
        room = session.room
        disinvite = event.get("disinvite")
        if room is None or not isinstance(disinvite, dict) or disinvite.get("roomid") != room.id:
            return
        self._leave_room(session, notify_backend=True)
        conn = session.conn
        if conn is not None:
            conn.close(CLOSE_NORMAL, "")

    def _drop_room(self, room: Room) -> None:
        for sub in (room.sub, room.backend_sub):
            if sub is not None:
                sub.close()
        room.sub = room.backend_sub = None
        if self.rooms.get((room.backend.id, room.id)) is room:
            del self.rooms[(room.backend.id, room.id)]

    # --- sending -------------------------------------------------------------------------

    def _send_conn(self, conn: Connection, msg: dict[str, Any]) -> None:
        conn.send_text(p.encode(msg))

    def _send(self, session: Session, msg: dict[str, Any]) -> None:
        self._send_text(session, p.encode(msg))

    def _send_text(self, session: Session, text: str) -> None:
        if session.conn is not None:
            session.conn.send_text(text)
            return
        if len(session.pending) >= self.config.max_pending:
            session.pending.popleft()
            self.stats.pending_dropped += 1
        session.pending.append(text)

    # --- teardown, timers, background ----------------------------------------------------

    def _destroy(self, session: Session) -> None:
        if self.sessions.get(session.public_id) is not session:
            return
        self._leave_room(session, notify_backend=True)
        for sub in session.subs:
            sub.close()
        session.subs.clear()
        del self.sessions[session.public_id]
        self._timed.discard(session)
        self._by_private.pop(session.private_id, None)
        if session.conn is not None:
            self._by_conn.pop(session.conn, None)
            session.conn = None
        session.pending.clear()

    def housekeeping(self) -> None:
        """Fire the timers that are due (called every second by `run`)."""
        now = trio.current_time()
        for conn, w in list(self._waiting.items()):
            if w.deadline <= now and conn not in self._busy:
                del self._waiting[conn]
                self._send_conn(conn, p.bye_message(reason="hello_timeout"))
                conn.close(CLOSE_NORMAL, "")
        for session in list(self._timed):
            if session.expires_at is None and session.join_deadline is None:
                self._timed.discard(session)
            elif session.expires_at is not None and session.expires_at <= now:
                self._destroy(session)
            elif session.join_deadline is not None and session.join_deadline <= now:
                sconn = session.conn
                if sconn is not None:
                    self._send_conn(sconn, p.bye_message(reason="room_join_timeout"))
                    sconn.close(CLOSE_NORMAL, "")
                self._destroy(session)

    def ping_rooms(self) -> None:
        """Tell Nextcloud which Talk sessions are still here (every 10 s per room)."""
        for room in self.rooms.values():
            entries = []
            for s in room.sessions.values():
                if s.room_session_id:
                    e = {"sessionid": s.room_session_id}
                    if s.user_id:
                        e["userid"] = s.user_id
                    entries.append(e)
            if entries:
                payload = {"type": "ping", "ping": {
                    "version": "1.0", "roomid": room.id, "entries": entries}}
                self._background(room.backend, room.backend_url, payload)

    def _background(self, backend: BackendConfig, url: str, payload: dict[str, Any]) -> None:
        if self._nursery is None or not url:
            return
        self._nursery.start_soon(self._quiet_request, backend, url, payload)

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
            task_status.started()
            next_ping = trio.current_time() + self.config.room_ping_interval
            try:
                while True:
                    await trio.sleep(1.0)
                    self.housekeeping()
                    if trio.current_time() >= next_ping:
                        next_ping += self.config.room_ping_interval
                        self.ping_rooms()
            finally:
                self._nursery = None

    # --- metrics -------------------------------------------------------------------------

    def gauges(self) -> HubGauges:
        sessions: dict[tuple[str, str], int] = {}
        for s in self.sessions.values():
            bump(sessions, (s.backend.id, s.client_type))
        rooms: dict[str, int] = {}
        room_sessions: dict[tuple[str, str, str], int] = {}
        call_sessions: dict[tuple[str, str, str], int] = {}
        for room in self.rooms.values():
            bump(rooms, room.backend.id)
            for s in room.sessions.values():
                bump(room_sessions, (room.backend.id, room.id, s.client_type))
                if s.in_call & 1:
                    bump(call_sessions, (room.backend.id, room.id, s.client_type))
        cfg = self.config
        backends = (self._compat,) if cfg.allow_all else cfg.backends
        return HubGauges(
            sessions=sessions,
            rooms=rooms,
            room_sessions=room_sessions,
            call_sessions=call_sessions,
            backends_current=len(backends),
            session_limits={b.id: b.session_limit for b in backends if b.session_limit > 0},
        )

    def stats_json(self) -> dict[str, int]:
        return {"rooms": len(self.rooms), "sessions": len(self.sessions)}


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
        update["changed"] = [{k: v for k, v in e.items() if k != "permissions"} for e in changed]
    if users:
        update["users"] = [{k: v for k, v in e.items() if k != "permissions"} for e in users]
    return {"type": "event", "event": {"target": "participants", "type": "update",
                                       "update": update}}
