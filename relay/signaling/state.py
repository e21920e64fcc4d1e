"""Signaling state without I/O: the session registry, room membership and routing decisions.

`SignalingState` owns every session (public, private/resume and Talk room-session ids,
client type, user, backend, features, permissions, in-call flags, deadlines, last
activity) and every room of this node (members, properties). Its methods take `now` where
time matters and return what happened as small attrs classes (`Left`, `Joined`,
`InCallChange`, `CallAll`, `Due`, `Route`, `RoomPing`); they never send, await or read a clock. The
async `relay.signaling.hub.Hub` turns those results into messages on the connections, the
bus and Nextcloud.

Room keys are `(backend id, room id)`: the same room id on two Nextclouds is two rooms.

Places meant to grow: the client type of a session (`create(client_type=...)`, one of
`CLIENT_TYPES`; `count` per type), its permissions (`Session.permissions`, asked through
`Session.may`), its features (`Session.features`), sessions owned by another one (an
attribute on `Session`, with `remove` also removing what the session owns), and data kept
per room (an attribute on `Room`, cleared with the room in `leave` / `close_room`).
"""

from __future__ import annotations

import secrets
from typing import Any, NamedTuple

import attrs

from relay.config.signaling import BackendConfig
from relay.signaling.permissions import UNSET, Permissions
from relay.signaling.transient import TransientStore

# Session client types (the `clienttype` metric label). Only `client` sessions are created
# by `hello` today; the others are the kinds upstream also knows.
CLIENT = "client"
INTERNAL = "internal"
VIRTUAL = "virtual"
FEDERATION = "federation"
CLIENT_TYPES = (CLIENT, INTERNAL, VIRTUAL, FEDERATION)

IN_CALL = 1  # Talk's in-call flag bit (2 audio, 4 video, 8 phone)

RoomKey = tuple[str, str]  # (backend id, room id)


def new_id(nbytes: int) -> str:
    """Random URL-safe id: independent per session, so no two share a prefix by design."""
    return secrets.token_urlsafe(nbytes)


@attrs.define(eq=False)
class Session:
    """One signaling session (it outlives its socket for `session_expire`)."""

    public_id: str
    private_id: str  # the resume id
    backend: BackendConfig
    backend_url: str  # where this session's backend requests go
    user_id: str  # "" for anonymous (guest) sessions
    user: Any  # Nextcloud's `user` object from the auth answer, passed on as is
    features: tuple[str, ...]
    client_type: str = CLIENT
    room: Room | None = None
    room_session_id: str = ""  # the Talk session id in `room`
    permissions: Permissions = UNSET  # all but hide-displaynames until Nextcloud sets a list
    expires_at: float | None = None  # set while no socket is attached
    join_deadline: float | None = None  # anonymous sessions must join a room by then
    in_call: int = 0  # Talk's in-call flags
    last_activity: float = 0.0

    @property
    def is_in_call(self) -> bool:
        return bool(self.in_call & IN_CALL)

    def may(self, permission: str) -> bool:
        """Whether this session has `permission` (e.g. `control`), see `Permissions`."""
        return self.permissions.has(permission)

    def entry(self) -> dict[str, Any]:
        """This session as an item of a room `join`/`change` event."""
        e: dict[str, Any] = {"sessionid": self.public_id, "userid": self.user_id}
        if self.user is not None:
            e["user"] = self.user
        if self.client_type == VIRTUAL:
            return e  # no Talk session id of its own to show, no features
        if self.room_session_id:
            e["roomsessionid"] = self.room_session_id
        if self.features:
            e["features"] = list(self.features)
        if self.client_type == FEDERATION:
            e["federated"] = True
        return e


@attrs.define(eq=False)
class Room:
    """A room with at least one session of this node in it."""

    id: str
    backend: BackendConfig
    backend_url: str = ""  # where room-wide backend requests (pings) go
    properties: Any = None  # Nextcloud's room properties, passed on as is
    sessions: dict[str, Session] = attrs.Factory(dict)  # by public id, in join order
    transient: TransientStore | None = None  # the room's transient data, made on first use
    # public id -> last user entry Nextcloud sent in `incall.changed` (for `changed-users`)
    users: dict[str, dict[str, Any]] = attrs.Factory(dict)

    @property
    def key(self) -> RoomKey:
        return (self.backend.id, self.id)

    def anyone_in_call(self) -> bool:
        return any(s.is_in_call for s in self.sessions.values())

    def recipients(self, sender_id: str | None, call_only: bool) -> list[Session]:
        """Who receives a message sent to this room (`call_only`: recipient type `call`)."""
        return [
            s for s in self.sessions.values()
            if s.public_id != sender_id and (not call_only or s.is_in_call)
        ]

    def transient_store(self) -> TransientStore:
        if self.transient is None:
            self.transient = TransientStore()
        return self.transient

    def transient_listeners(self) -> list[Session]:
        """Who hears transient data: every session in the room but virtual ones."""
        return [s for s in self.sessions.values() if s.client_type != VIRTUAL]


@attrs.frozen
class Left:
    """A session left `room`; Nextcloud may need to hear about `room_session_id`."""

    session: Session
    room: Room
    room_session_id: str
    room_empty: bool  # the room is gone from this node
    transient: list[dict[str, Any]] = attrs.Factory(list)  # its `sd:` entry's removal


@attrs.frozen
class Joined:
    """A session joined `room`; `others` are the entries of who was there before."""

    room: Room
    others: list[dict[str, Any]]
    created: bool  # the room is new on this node


@attrs.frozen
class InCallChange:
    session: Session
    joined_call: bool  # the session was not in the call and now is
    call_started: bool  # ... and it is the first one in the room's call


@attrs.frozen
class CallAll:
    """An `incall` for everyone: whom to tell (nobody when nothing changed), and who
    joined the call."""

    notify: list[Session]
    changes: list[InCallChange]


@attrs.frozen
class Due:
    """Sessions whose timer fired: the hub destroys them (join timeouts get a `bye`)."""

    expired: list[Session]
    join_timed_out: list[Session]


@attrs.frozen
class RoomPing:
    """The Talk sessions of `room` Nextcloud should keep alive."""

    room: Room
    entries: list[dict[str, str]]


# Route kinds
DROP = "drop"  # nobody receives it
DIRECT = "direct"  # `target`, a session of this node
SESSION = "session"  # a session id unknown here: publish on its subject
USER = "user"  # every session of a user (on its subject)
ROOM = "room"  # the room's members (`call_only`: those in the call)


class Route(NamedTuple):
    """Where one message goes. A NamedTuple, not attrs: one is made per routed message,
    and a frozen attrs instance costs about five times as much to create."""

    kind: str
    target: Session | None = None
    room: Room | None = None
    call_only: bool = False


_DROP = Route(DROP)


class SignalingState:
    """Sessions and rooms of this node; see the module docstring."""

    def __init__(self, *, session_expire: float, join_timeout: float) -> None:
        self.session_expire = session_expire
        self.join_timeout = join_timeout
        self.sessions: dict[str, Session] = {}
        self.rooms: dict[RoomKey, Room] = {}
        self._by_private: dict[str, Session] = {}
        self._by_room_session: dict[tuple[str, str], Session] = {}
        self._timed: set[Session] = set()  # sessions with an expiry or join deadline

    # --- sessions ------------------------------------------------------------------------

    def count(self, backend_id: str, client_type: str = CLIENT) -> int:
        return sum(
            1 for s in self.sessions.values()
            if s.backend.id == backend_id and s.client_type == client_type
        )

    def create(
        self,
        *,
        backend: BackendConfig,
        backend_url: str,
        user_id: str,
        user: Any,
        features: tuple[str, ...],
        now: float,
        client_type: str = CLIENT,
    ) -> Session:
        """A new session with fresh ids; an anonymous one must join a room in time."""
        session = Session(
            public_id=new_id(32),
            private_id=new_id(32),
            backend=backend,
            backend_url=backend_url,
            user_id=user_id,
            user=user,
            features=features,
            client_type=client_type,
            last_activity=now,
        )
        if not user_id and client_type not in (INTERNAL, VIRTUAL):
            session.join_deadline = now + self.join_timeout
            self._timed.add(session)
        self.sessions[session.public_id] = session
        self._by_private[session.private_id] = session
        return session

    def get(self, public_id: str) -> Session | None:
        return self.sessions.get(public_id)

    def is_live(self, session: Session) -> bool:
        """False once the session was removed (e.g. while awaiting Nextcloud)."""
        return self.sessions.get(session.public_id) is session

    def by_room_session(self, backend_id: str, room_session_id: str) -> Session | None:
        return self._by_room_session.get((backend_id, room_session_id))

    def resume(self, private_id: str, now: float) -> Session | None:
        """The session a `hello` with `resumeid` takes over, or None (no such session)."""
        session = self._by_private.get(private_id)
        if session is None or session.client_type not in (CLIENT, FEDERATION, INTERNAL):
            return None  # virtual sessions have no socket to come back on
        session.expires_at = None
        session.last_activity = now
        return session

    def detach(self, session: Session, now: float) -> None:
        """Its socket went away: the session expires unless resumed in time."""
        session.expires_at = now + self.session_expire
        self._timed.add(session)

    def touch(self, session: Session, now: float) -> None:
        session.last_activity = now

    def remove(self, session: Session) -> Left | None:
        """Forget the session (leaving its room first); what it left, if anything."""
        if not self.is_live(session):
            return None
        left = self.leave(session)
        del self.sessions[session.public_id]
        self._timed.discard(session)
        self._by_private.pop(session.private_id, None)
        return left

    def due(self, now: float) -> Due:
        """Sessions whose expiry or room-join deadline has passed (still registered)."""
        expired: list[Session] = []
        join_timed_out: list[Session] = []
        for session in list(self._timed):
            if session.expires_at is None and session.join_deadline is None:
                self._timed.discard(session)
            elif session.expires_at is not None and session.expires_at <= now:
                expired.append(session)
            elif session.join_deadline is not None and session.join_deadline <= now:
                join_timed_out.append(session)
        return Due(expired, join_timed_out)

    # --- rooms ---------------------------------------------------------------------------

    def room(self, backend_id: str, room_id: str) -> Room | None:
        return self.rooms.get((backend_id, room_id))

    def set_room_session(self, session: Session, room_session_id: str) -> bool:
        """Record the session's Talk session id; whether it changed."""
        old = session.room_session_id
        if old == room_session_id:
            return False
        key = (session.backend.id, old)
        if old and self._by_room_session.get(key) is session:
            del self._by_room_session[key]
        session.room_session_id = room_session_id
        if room_session_id:
            self._by_room_session[(session.backend.id, room_session_id)] = session
        return True

    def join(
        self,
        session: Session,
        room_id: str,
        room_session_id: str,
        *,
        properties: Any = None,
        permissions: Permissions | None = None,
    ) -> Joined:
        """Put a session that is in no room into `room_id` (created if new here)."""
        assert session.room is None, "leave the current room first"
        if permissions is not None:
            session.permissions = permissions
        self.set_room_session(session, room_session_id)
        key = (session.backend.id, room_id)
        room = self.rooms.get(key)
        created = room is None
        if room is None:
            room = self.rooms[key] = Room(room_id, session.backend, session.backend_url)
        if properties is not None:
            room.properties = properties
        session.room = room
        session.join_deadline = None
        others = [s.entry() for s in room.sessions.values()]
        room.sessions[session.public_id] = session
        return Joined(room, others, created)

    def leave(self, session: Session) -> Left | None:
        """Take the session out of its room (the room goes when empty)."""
        room = session.room
        if room is None:
            return None
        session.room = None
        room.sessions.pop(session.public_id, None)
        session.in_call = 0
        room.users.pop(session.public_id, None)
        rsid = session.room_session_id
        self.set_room_session(session, "")
        empty = not room.sessions
        if empty:
            self._forget_room(room)
        transient = [] if empty or room.transient is None \
            else room.transient.session_left(session.public_id)
        return Left(session, room, rsid, empty, transient)

    def close_room(self, room: Room) -> list[Left]:
        """The room was deleted: every session is out of it, and it is gone."""
        sessions = list(room.sessions.values())
        room.sessions.clear()
        self._forget_room(room)
        out = []
        for s in sessions:
            s.room = None
            s.in_call = 0
            rsid = s.room_session_id
            self.set_room_session(s, "")
            out.append(Left(s, room, rsid, True))
        return out

    def _forget_room(self, room: Room) -> None:
        if self.rooms.get(room.key) is room:
            del self.rooms[room.key]

    def update_properties(self, room: Room, properties: Any) -> bool:
        """Whether the properties changed (unchanged ones are not announced)."""
        if properties == room.properties:
            return False
        room.properties = properties
        return True

    def set_permissions(self, room: Room, public_id: str, permissions: Permissions) -> bool:
        session = room.sessions.get(public_id)
        if session is None:
            return False
        session.permissions = permissions
        return True

    # --- calls ---------------------------------------------------------------------------

    def set_in_call(
        self, backend_id: str, room_id: str, public_id: str, flags: int
    ) -> InCallChange | None:
        """Record a room member's in-call flags; None if it is not in that room here."""
        room = self.rooms.get((backend_id, room_id))
        session = room.sessions.get(public_id) if room is not None else None
        if room is None or session is None:
            return None
        joined = bool(flags & IN_CALL) and not session.is_in_call
        started = joined and not room.anyone_in_call()
        session.in_call = flags
        return InCallChange(session, joined, started)

    def set_in_call_all(self, room: Room, flags: int) -> CallAll:
        """Every client session joins (flag set; not federation sessions) or everyone
        leaves the call."""
        clients = [s for s in room.sessions.values() if s.client_type == CLIENT]
        if flags & IN_CALL:
            joining = [s for s in clients if not s.is_in_call]
            if not joining:
                return CallAll([], [])
            changes = []
            for s in joining:
                change = self.set_in_call(room.backend.id, room.id, s.public_id, flags)
                if change is not None:
                    changes.append(change)
            return CallAll(clients, changes)
        if not room.anyone_in_call():
            return CallAll([], [])  # nobody was in the call: nothing to tell
        for s in room.sessions.values():
            s.in_call = 0
        # Federation sessions are never pulled into a call, but hear that it ended.
        told = [s for s in room.sessions.values() if s.client_type in (CLIENT, FEDERATION)]
        return CallAll(told, [])

    # --- routing -------------------------------------------------------------------------

    def route(self, sender: Session, recipient_type: str, session_id: str = "",
              user_id: str = "") -> Route:
        """Who receives a `message`/`control` from `sender` to the given recipient."""
        if recipient_type == "session":
            target = self.sessions.get(session_id)
            if target is None:
                return Route(SESSION)  # maybe another node has it
            if target is sender or target.backend.id != sender.backend.id:
                return _DROP
            return Route(DIRECT, target=target)
        if recipient_type == "user":
            return _DROP if user_id == sender.user_id else Route(USER)
        room = sender.room  # room / call
        if room is None:
            return _DROP
        return Route(ROOM, room=room, call_only=recipient_type == "call")

    def pings(self) -> list[RoomPing]:
        """For each room, the Talk sessions in it (rooms without any are left out)."""
        out = []
        for room in self.rooms.values():
            entries = []
            for s in room.sessions.values():
                if s.room_session_id:
                    e = {"sessionid": s.room_session_id}
                    if s.user_id:
                        e["userid"] = s.user_id
                    entries.append(e)
            if entries:
                out.append(RoomPing(room, entries))
        return out
