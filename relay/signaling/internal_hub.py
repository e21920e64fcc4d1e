"""Internal clients, their virtual sessions and dial-out: the hub's async side of them.

The decisions live in the sans-IO modules `relay.signaling.internal` (hello, `internal`
messages, how internal and virtual sessions look to others) and
`relay.signaling.dialout` (the backend `dialout` request and the bridge's answers); the
sessions and rooms live in `relay.signaling.state`. `InternalClients` is what the hub
calls at a few hooks (hello, `internal` messages, joins and leaves, room deletion,
session teardown, `participants/update`, routing to a virtual session, the 1 s timer)
and what the backend room API awaits for `dialout`:

- an internal hello (`auth.type: "internal"`, `[clients] internalsecret`) creates a
  session of client type `internal`: no session limit, no anonymous timer, room joins
  without a backend request, `server.features` = the internal list;
- `addsession` / `updatesession` / `removesession` / `incall` manage virtual sessions
  (client type `virtual`) owned by the internal session: announced to Nextcloud, joined
  to the room (join/leave events, `participants/flags`), messages to them re-addressed
  to the owner, removed with `removesession` or when the owner goes;
- dial-out: candidates are internal sessions that said `start-dialout` at hello, of the
  requesting backend, in no room and attached; each is asked in turn and waited for up to
  `dialout_timeout`; the bridge's status reports become the transient data
  `callstatus_<callid>` of the room.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING, Any

import attrs
import trio

from relay.config.signaling import BackendConfig
from relay.signaling import dialout as d
from relay.signaling import internal as i
from relay.signaling import protocol as p
from relay.signaling.metrics import bump
from relay.signaling.pubsub import Subscription, session_subject
from relay.signaling.state import INTERNAL, VIRTUAL, Left, Room, Session

if TYPE_CHECKING:
    from relay.signaling.hub import Connection, Hub

log = logging.getLogger("relay.signaling.internal")

LOOPBACK_NATS = "nats://loopback"


@attrs.define(eq=False)
class Virtual:
    """What the hub keeps about a virtual session besides its `Session`."""

    session: Session
    owner: Session
    session_id: str  # the id the owner chose in `addsession`
    options: i.ActorOptions | None
    flags: int = 0
    sub: Subscription | None = None  # its `session.<public id>` subject


@attrs.define(eq=False)
class _Pending:
    """A `dialout` request waiting for the candidate's answer (matched by `id`)."""

    session: Session
    done: trio.Event = attrs.Factory(trio.Event)
    answer: i.InternalCommand | None = None
    error: p.SignalingError | None = None


class InternalClients:
    """Internal and virtual sessions of one hub; see the module docstring."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.dialout_timeout = d.START_TIMEOUT
        self._base_urls: dict[str, str] = {}  # internal public id -> Nextcloud base URL
        self._candidates: dict[str, Session] = {}  # dial-out candidates by public id
        self._virtual: dict[str, Virtual] = {}  # by the virtual session's public id
        self._owned: dict[str, dict[str, Virtual]] = {}  # owner public id -> own id -> ...
        self._pending: dict[str, _Pending] = {}  # dial-out requests by message id
        self._seen_flags: dict[str, i.SeenFlags] = {}  # receiver public id -> flags seen

    # --- hello ---------------------------------------------------------------------------

    def hello(self, conn: Connection, msg_id: str | None, hello: p.Hello) -> None:
        """An internal hello: check the HMAC token and register the session."""
        hub = self.hub
        params = i.parse_auth_params(hello.params)
        finder = i.backend_finder(
            hub.backends.configured, hub.backends.compat if hub.backends.allow_all else None)
        backend = i.authenticate(params, hub.config.internal_secret, finder)
        if not hub.attachable(conn):
            return  # the hello timer already closed this socket
        session = hub.state.create(
            backend=backend, backend_url="", user_id="", user=None,
            features=hello.features, now=trio.current_time(), client_type=INTERNAL,
        )
        session.in_call = i.initial_in_call(hello.features)
        self._base_urls[session.public_id] = params.backend
        if i.START_DIALOUT in hello.features:
            self._candidates[session.public_id] = session
        hub.attach(conn, session)
        bump(hub.stats.sessions_total, (backend.id, INTERNAL))
        hub.send(session, p.hello_message(
            msg_id, session.public_id, session.private_id, "", hub.version,
            features=p.INTERNAL_FEATURES))

    def features_of(self, session: Session) -> tuple[str, ...]:
        """The `server.features` a session's hello reply lists (also on resume)."""
        return p.INTERNAL_FEATURES if session.client_type == INTERNAL else p.FEATURES

    # --- `internal` messages -------------------------------------------------------------

    async def receive(self, session: Session, msg_id: str | None, body: Any) -> None:
        """An `internal` message (any sender; only internal sessions are obeyed)."""
        pending = self._pending.get(msg_id) if msg_id else None
        if pending is not None and pending.session is not session:
            pending = None
        try:
            cmd = i.parse_internal(body)
        except p.SignalingError as exc:
            if pending is not None:
                pending.error = exc
                pending.done.set()
            raise
        if pending is not None:
            pending.answer = cmd
            pending.done.set()
            if not isinstance(cmd, i.Dialout) or d.consumes_reply(cmd.dialout):
                return  # an error answer is not broadcast
        if session.client_type != INTERNAL:
            return  # upstream ignores internal messages of other clients
        if isinstance(cmd, i.AddSession):
            await self._add(session, msg_id, cmd)
        elif isinstance(cmd, i.UpdateSession):
            self._update(session, cmd)
        elif isinstance(cmd, i.RemoveSession):
            virtual = self._owned.get(session.public_id, {}).get(cmd.session_id)
            if virtual is not None and virtual.session.room is not None \
                    and virtual.session.room.id == cmd.room_id:
                self._drop_virtual(virtual, reply_to=msg_id)
        elif isinstance(cmd, i.InCall):
            self._set_in_call(session, cmd.in_call)
        elif isinstance(cmd, i.Dialout):
            self._dialout_report(session, cmd.dialout)

    async def _add(self, owner: Session, msg_id: str | None, add: i.AddSession) -> None:
        hub = self.hub
        room = hub.state.room(owner.backend.id, add.room_id)
        owned = self._owned.setdefault(owner.public_id, {})
        if room is None or add.session_id in owned:
            return  # upstream ignores virtual sessions for rooms it does not have here
        in_call = i.virtual_in_call(add, owner.features)
        virtual = hub.state.create(
            backend=owner.backend, backend_url="", user_id=add.user_id, user=add.user,
            features=(), now=trio.current_time(), client_type=VIRTUAL,
        )
        record = Virtual(virtual, owner, add.session_id, add.options, add.flags)
        owned[add.session_id] = record
        self._virtual[virtual.public_id] = record
        actor = add.options is not None and add.options.complete
        error: p.SignalingError | None = None
        try:
            url = await self._backend_url(owner)
            virtual.backend_url = url
            answer = await hub.backend.request(
                owner.backend, url, i.add_session_request(add, virtual.public_id, in_call))
        except p.SignalingError:
            error = i.add_failed("Could not join virtual session." if actor else
                                 "Could not add virtual session.")
        else:
            if actor and isinstance(answer, dict) and answer.get("type") == "error":
                error = i.add_failed(_error_message(answer))
        if error is not None:
            self._forget(record)
            hub.state.remove(virtual)
            if hub.state.is_live(owner):
                hub.send(owner, error.to_message(msg_id))
            return
        if not hub.state.is_live(owner) or not hub.state.is_live(virtual) \
                or hub.state.room(owner.backend.id, add.room_id) is not room:
            self._forget(record)
            hub.state.remove(virtual)
            return
        hub.state.join(virtual, room.id, virtual.public_id)
        record.sub = hub.bus.subscribe(session_subject(virtual.public_id),
                                       functools.partial(self._on_virtual_event, record))
        bump(hub.stats.sessions_total, (owner.backend.id, VIRTUAL))
        if in_call:
            hub.set_in_call(room.backend.id, room.id, virtual.public_id, in_call)
        hub.publish_room(room, p.room_event("join", [virtual.entry()]))
        self.publish_users(room)
        if record.flags:
            self._send_flags(room, record)

    def _update(self, owner: Session, cmd: i.UpdateSession) -> None:
        record = self._owned.get(owner.public_id, {}).get(cmd.session_id)
        room = record.session.room if record is not None else None
        if record is None or room is None or room.id != cmd.room_id:
            return
        if cmd.flags is not None and cmd.flags != record.flags:
            record.flags = cmd.flags
            self._send_flags(room, record)
        if cmd.in_call is not None and cmd.in_call != record.session.in_call:
            self.hub.set_in_call(room.backend.id, room.id, record.session.public_id,
                                 cmd.in_call)
            self.publish_users(room)

    def _set_in_call(self, session: Session, flags: int) -> None:
        if flags == session.in_call:
            return
        room = session.room
        if room is None:
            session.in_call = flags
            return
        self.hub.set_in_call(room.backend.id, room.id, session.public_id, flags)
        self.publish_users(room)

    async def _backend_url(self, owner: Session) -> str:
        """Where requests for the owner's virtual sessions go (asked once)."""
        if not owner.backend_url:
            base = self._base_urls.get(owner.public_id, "")
            if not base and owner.backend.urls:
                base = owner.backend.urls[0]
            owner.backend_url = await self.hub.backend_endpoint(base)
        return owner.backend_url

    # --- virtual sessions going away ------------------------------------------------------

    def _on_virtual_event(self, record: Virtual, m: dict[str, Any]) -> None:
        """Something for the virtual session on the bus: a `disinvite` from its room
        makes the owner hang up; messages go to the owner, re-addressed."""
        from relay.signaling.hub import is_disinvite

        msg = m.get("message")
        if not isinstance(msg, dict) or not self.hub.state.is_live(record.owner):
            return
        virtual = record.session
        if is_disinvite(msg, virtual.room):
            self.hub.send(record.owner, i.hangup_control(record.session_id, virtual.user_id))
        else:
            self.to_virtual(virtual, msg)

    def _forget(self, record: Virtual) -> None:
        if record.sub is not None:
            record.sub.close()
            record.sub = None
        self._virtual.pop(record.session.public_id, None)
        owned = self._owned.get(record.owner.public_id)
        if owned is not None and owned.get(record.session_id) is record:
            del owned[record.session_id]
        self._seen_flags.pop(record.session.public_id, None)
        for seen in self._seen_flags.values():
            seen.forget(record.session.public_id)

    def _drop_virtual(self, record: Virtual, reply_to: str | None = None,
                      notify: bool = True) -> None:
        """Remove a virtual session: `leave` to the room, Nextcloud told in the background
        (errors reach the owner when `reply_to` is set)."""
        hub = self.hub
        virtual = record.session
        room = virtual.room
        self._forget(record)
        left = hub.state.remove(virtual)
        if left is not None:
            hub.after_leave(left)
        if notify and room is not None and virtual.backend_url:
            payload = i.remove_session_request(
                room.id, virtual.public_id, virtual.user_id, virtual.user, record.options)
            hub.start_background(self._remove_request, record, payload,
                                 reply_to is not None, reply_to)

    async def _remove_request(self, record: Virtual, payload: dict[str, Any], reply: bool,
                              reply_to: str | None) -> None:
        hub = self.hub
        virtual = record.session
        error: p.SignalingError | None = None
        try:
            answer = await hub.backend.request(virtual.backend, virtual.backend_url, payload)
        except p.SignalingError:
            error = i.remove_failed()
        else:
            if payload["type"] == "room" and isinstance(answer, dict) \
                    and answer.get("type") == "error":
                err = answer.get("error")
                if not isinstance(err, dict) or err.get("code") != "no_such_room":
                    error = i.remove_failed(_error_message(answer))
        if error is not None and reply and hub.state.is_live(record.owner):
            hub.send(record.owner, error.to_message(reply_to))

    # --- hooks called by the hub ------------------------------------------------------------

    def session_gone(self, session: Session) -> None:
        """The session is being destroyed: its virtual sessions and dial-outs end."""
        self._candidates.pop(session.public_id, None)
        self._base_urls.pop(session.public_id, None)
        self._seen_flags.pop(session.public_id, None)
        for record in list(self._owned.pop(session.public_id, {}).values()):
            self._drop_virtual(record)
        own = self._virtual.get(session.public_id)
        if own is not None:
            self._forget(own)
        for pending in self._pending.values():
            if pending.session is session:
                pending.done.set()

    def joined(self, session: Session, room: Room) -> None:
        """`session` joined `room`: it learns the flags of the virtual sessions there; a
        joining internal session stops being a dial-out candidate."""
        for other in room.sessions.values():
            record = self._virtual.get(other.public_id)
            if record is not None and record.flags and other is not session:
                self._flags_to(session, room, record)
        if session.client_type == INTERNAL:
            self._candidates.pop(session.public_id, None)

    def left(self, left: Left) -> None:
        """An internal session left a room that still exists: announce the change."""
        if left.session.client_type == INTERNAL and not left.room_empty:
            self.publish_users(left.room)

    def room_closed(self, lefts: list[Left]) -> None:
        """Nextcloud deleted the room: internal sessions get `delete`, virtual ones go."""
        for left in lefts:
            session = left.session
            if session.client_type == INTERNAL:
                self.hub.send(session, i.room_deleted_event())
            record = self._virtual.get(session.public_id)
            if record is not None:
                self._forget(record)
                self.hub.state.remove(session)

    def to_virtual(self, target: Session, msg: dict[str, Any]) -> None:
        """A `message` / `control` for a virtual session goes to its owner, re-addressed."""
        record = self._virtual.get(target.public_id)
        if record is None:
            return
        out = i.readdress_to_owner(msg, target.public_id, record.session_id, target.user_id)
        if out is not None:
            self.hub.send(record.owner, out)

    def users(self, room: Room, users: list[dict[str, Any]]) -> list[Any]:
        """A `participants/update` `users` list with the room's internal and virtual
        sessions added (Talk does not know the internal ones)."""
        internal = [i.InternalEntry(s.public_id, s.in_call, s.features)
                    for s in room.sessions.values() if s.client_type == INTERNAL]
        virtual = [i.VirtualEntry(s.public_id, s.in_call)
                   for s in room.sessions.values() if s.client_type == VIRTUAL]
        if not internal and not virtual:
            return users
        return i.add_internal_sessions(users, internal, virtual, time.time())

    def publish_users(self, room: Room) -> None:
        """The room's internal and virtual sessions as a `participants/update` (after a
        virtual session joined, an internal one left, an in-call change); upstream also
        lists Talk's last users there, which this server does not keep."""
        from relay.signaling.hub import participants_update

        users = self.users(room, [])
        if users:
            self.hub.publish_room(room, participants_update(room.id, [], users))

    # --- flags -------------------------------------------------------------------------------

    def _send_flags(self, room: Room, record: Virtual) -> None:
        for s in room.sessions.values():
            if s is not record.session and s.client_type != VIRTUAL:
                self._flags_to(s, room, record)

    def _flags_to(self, receiver: Session, room: Room, record: Virtual) -> None:
        seen = self._seen_flags.setdefault(receiver.public_id, i.SeenFlags())
        if seen.should_send(record.session.public_id, record.flags):
            self.hub.send(receiver, i.flags_event(room.id, record.session.public_id,
                                                  record.flags))

    # --- dial-out ---------------------------------------------------------------------------

    def candidates(self, backend: BackendConfig) -> list[Session]:
        """Internal sessions that can place the call now (upstream's order: by hello)."""
        return [s for s in self._candidates.values()
                if s.backend.id == backend.id and s.room is None and self.hub.attached(s)]

    def serverinfo(self, version: str) -> dict[str, Any]:
        """`GET /api/v1/serverinfo`: version, features and the dial-out clients (no SFU,
        NATS, GRPC or etcd here)."""
        features = p.welcome_message(version)["welcome"]["features"]  # as upstream
        info: dict[str, Any] = {"version": version, "features": features}
        dialout = []
        for s in sorted(self._candidates.values(), key=lambda s: s.public_id):
            entry: dict[str, Any] = {"sessionid": s.public_id,
                                     "connected": self.hub.attached(s)}
            if entry["connected"]:
                address, user_agent = self.hub.client_of(s)
                if address:
                    entry["address"] = address
                if user_agent:  # "software/version ...": the version as upstream reads it
                    entry["useragent"] = user_agent
                    _, slash, rest = user_agent.partition("/")
                    if slash and rest.split(" ", 1)[0]:
                        entry["version"] = rest.split(" ", 1)[0]
                if s.features:
                    entry["features"] = list(s.features)
            dialout.append(entry)
        if dialout:
            info["dialout"] = dialout
        # the in-process bus is upstream's loopback NATS client, always connected
        info["nats"] = {"urls": [LOOPBACK_NATS], "connected": True, "serverurl": LOOPBACK_NATS}
        return info

    async def dialout(
        self, backend: BackendConfig, room_id: str, header_backend: str, payload: Any
    ) -> d.DialoutResponse:
        """Nextcloud's `dialout` request: ask each candidate in turn until one accepts.
        Raises `dialout.UnreadableRequest` for a request that does not decode."""
        try:
            request = d.validate_request(room_id, payload)
        except d.DialoutError as exc:
            return exc.response()
        url = d.backend_url(header_backend, backend.urls)
        errors: list[p.SignalingError] = []
        for session in self.candidates(backend):
            try:
                return d.success_response(await self._ask(session, request, url))
            except p.SignalingError as exc:
                errors.append(exc)
        return d.all_failed_response(errors)

    async def _ask(self, session: Session, request: d.DialoutRequest, url: str) -> str:
        msg = d.internal_request(request, url)
        msg_id = msg["id"]
        pending = self._pending[msg_id] = _Pending(session)
        try:
            if not self.hub.attached(session):
                raise d.notify_failed_error()
            self.hub.send(session, msg)
            with trio.move_on_after(self.dialout_timeout) as scope:
                await pending.done.wait()
        finally:
            del self._pending[msg_id]
        if scope.cancelled_caught:
            raise d.timeout_error()
        if pending.error is not None:
            raise pending.error
        answer = pending.answer
        if answer is None:
            raise d.no_response_error()
        if not isinstance(answer, i.Dialout):
            raise p.SignalingError("unsupported_type",
                                   f"Unsupported dialout type received: {answer}")
        return d.answer_callid(answer.dialout)

    def _dialout_report(self, session: Session, msg: d.DialoutMessage) -> None:
        """A bridge's report about a call in room `msg.room_id`."""
        room = self.hub.state.room(session.backend.id, msg.room_id)
        if room is None:
            return  # nobody of that room is on this server
        write = d.status_update(msg)
        if write is None:
            self.to_room(room, [d.room_dialout_message(msg)])
            return
        store = room.transient_store()
        self.hub.transient_changed(room, store.set(
            write.key, write.value, write.ttl_ns, trio.current_time(), writer=None))

    def to_room(self, room: Room, messages: list[dict[str, Any]]) -> None:
        """Send each message to every session in the room but the virtual ones."""
        for msg in messages:
            text = p.encode(msg)
            for s in room.transient_listeners():
                self.hub.send_text(s, text)


def _error_message(answer: dict[str, Any]) -> str:
    """The message of a Nextcloud `error` answer ("" when it has none)."""
    err = answer.get("error")
    message = err.get("message") if isinstance(err, dict) else None
    return message if isinstance(message, str) else ""
