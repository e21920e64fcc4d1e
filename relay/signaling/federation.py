"""Sans-IO core of a federation link: our server acting as a client of a REMOTE signaling server.

A local client joins a federated Talk room with
`{"type":"room","room":{"roomid":L,"sessionid":S,"federation":{"signaling","url","roomid","token"}}}`.
We then connect to the remote server's `/spreed` as a `federation` client (hello v2 with the
token issued by the remote Nextcloud), join the remote room, and relay messages both ways.
The client keeps seeing its own (local) session id and room id; every other participant
sees the remote ids.

This module decides everything without sockets or clocks:

- `parse_federation_room` validates the client's `room` object (errors carry their wire code);
- `IdMapper` rewrites ids and actors in both directions (upstream's exact field list);
- `LinkCore` is the link's state machine: it takes connection events and remote frames and
  returns effects (`Send` to the remote, `Deliver` to the local client, `Reconnect`,
  `Finish`); `Backoff` decides when to reconnect, given `now`.

The I/O shell that runs it over a WebSocket is `relay.signaling.federation_link`.
"""

from __future__ import annotations

import enum
import json
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs

from relay.signaling import protocol as p

FEATURE = "federation"  # advertised in welcome, hello and the upgrade header
FEATURES_HEADER = "X-Spreed-Signaling-Features"
AUTH_TYPE = "federation"
HELLO_VERSION = "2.0"
SESSION_DATA_PREFIX = "sd:"  # transient session data key of one session
ACTOR_USERS = "users"
ACTOR_FEDERATED_USERS = "federated_users"

INITIAL_RECONNECT_DELAY = 0.1  # seconds; doubled per failed attempt
MAX_RECONNECT_DELAY = 8.0
MAX_PENDING = 64  # local messages queued while the link is not ready
MAX_HELLO_RETRIES = 3  # unexpected answers to our hello before we give up

UNSUPPORTED = ("federation_unsupported", "The target server does not support federation.")
CREATE_FAILED = "Failed to create federation client."

# The four ways a link can end up unable to talk to the remote (the `code` of the
# `details` of a `federation_error`, as upstream sends them).
NETWORK_ERROR = "network_error"
CERTIFICATE_ERROR = "certificate_verification_error"


# --- the client's request -------------------------------------------------------------------


@attrs.frozen
class FederationRequest:
    """A validated federated `room` join as the local client sent it."""

    local_room_id: str
    room_session_id: str  # the client's Talk session id (may be empty)
    signaling_url: str  # the remote signaling server, always with a trailing "/"
    nextcloud_url: str  # the remote Nextcloud, verbatim (goes into the hello's auth.url)
    remote_room_id: str  # federation.roomid, or the local room id when absent
    token: str  # the hello v2 JWT the remote Nextcloud issued

    @property
    def websocket_url(self) -> str:
        """`<signaling>spreed` with http(s) mapped to ws(s)."""
        parts = urlsplit(self.signaling_url)
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        return f"{scheme}://{parts.netloc}{parts.path}spreed"

    def can_reuse(self, other: FederationRequest) -> bool:
        """Whether a link made for `self` may serve `other` (same remote Nextcloud and server)."""
        return (
            self.nextcloud_url == other.nextcloud_url and self.signaling_url == other.signaling_url
        )


def _field(obj: dict[str, Any], key: str, where: str, *, required: bool) -> str:
    v = obj.get(key)
    if v is None or v == "":
        if required:
            raise p.invalid(f"{where}.{key} missing")
        return ""
    if not isinstance(v, str):
        raise p.invalid(f"{where}.{key} must be a string")
    return v


def _valid_url(url: str, schemes: tuple[str, ...]) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return parts.scheme in schemes and bool(parts.hostname)


def parse_federation_room(room: Any) -> FederationRequest:
    """Validate the `room` object of a client's federated join.

    Raises `SignalingError("invalid_format", ...)` naming the bad field.
    """
    if not isinstance(room, dict):
        raise p.invalid("room must be an object")
    fed = room.get("federation")
    if not isinstance(fed, dict):
        raise p.invalid("room.federation must be an object")
    local_room = _field(room, "roomid", "room", required=True)
    room_session = _field(room, "sessionid", "room", required=False)
    where = "room.federation"
    signaling = _field(fed, "signaling", where, required=True)
    if not signaling.endswith("/"):
        signaling += "/"
    if not _valid_url(signaling, ("http", "https", "ws", "wss")):
        raise p.invalid(f"{where}.signaling is not a valid http(s) or ws(s) URL")
    nextcloud = _field(fed, "url", where, required=True)
    if not _valid_url(nextcloud, ("http", "https")):
        raise p.invalid(f"{where}.url is not a valid http(s) URL")
    remote_room = _field(fed, "roomid", where, required=False) or local_room
    token = _field(fed, "token", where, required=True)
    return FederationRequest(local_room, room_session, signaling, nextcloud, remote_room, token)


# --- id and actor rewriting -----------------------------------------------------------------


def cloud_url_without_path(url: str) -> str:
    """`https://nc.example/ocs/v2.php/...` → `https://nc.example` (scheme kept)."""
    pos = url.find("/ocs/v")
    return url[:pos] if pos != -1 else url.removesuffix("/")


def cloud_url(url: str) -> str:
    """The host part of a cloud id: `https://nc.example/sub/ocs/v2.php/...` → `nc.example/sub`."""
    for scheme in ("https://", "http://"):
        if url.startswith(scheme):
            url = url[len(scheme) :]
            break
    return cloud_url_without_path(url)


def _obj(parent: Any, key: str) -> dict[str, Any] | None:
    if not isinstance(parent, dict):
        return None
    v = parent.get(key)
    return v if isinstance(v, dict) else None


def _update_actor(
    u: dict[str, Any], id_key: str, type_key: str, local_suffix: str, remote_suffix: str
) -> bool:
    """Actors of the local Nextcloud become local users; remote users become federated."""
    actor_type = u.get(type_key)
    actor_id = u.get(id_key)
    if not isinstance(actor_type, str) or not isinstance(actor_id, str):
        return False
    if actor_type == ACTOR_FEDERATED_USERS:
        if local_suffix and actor_id.endswith(local_suffix):
            u[id_key] = actor_id[: -len(local_suffix)]
            u[type_key] = ACTOR_USERS
            return True
    elif actor_type == ACTOR_USERS:
        u[id_key] = actor_id + remote_suffix
        u[type_key] = ACTOR_FEDERATED_USERS
        return True
    return False


@attrs.define
class IdMapper:
    """Rewrites a local client's messages to the remote server and the remote's answers back.

    `local_session_id` is the client's public id on our server, `remote_session_id` its id
    on the remote server (from the remote hello answer; "" until then). Room ids are only
    rewritten where they equal the other side's id, so equal ids make it a no-op.
    """

    local_session_id: str
    local_backend_url: str  # the local client's Nextcloud (its hello auth.url)
    remote_nextcloud_url: str  # federation.url
    local_room_id: str
    remote_room_id: str
    remote_session_id: str = ""

    @property
    def local_suffix(self) -> str:
        return "@" + cloud_url(self.local_backend_url)

    @property
    def remote_suffix(self) -> str:
        return "@" + cloud_url(self.remote_nextcloud_url)

    # local client → remote server

    def to_remote(self, env: dict[str, Any]) -> dict[str, Any]:
        """Map one client message for the remote (in place; returns it).

        Only `message` recipients and the client's own `sd:` transient key change; `control`,
        `internal` and other ids pass verbatim, as upstream forwards them.
        """
        remote, local = self.remote_session_id, self.local_session_id
        if not remote:
            return env
        kind = env.get("type")
        if kind == "message":
            rec = _obj(_obj(env, "message"), "recipient")
            if rec is not None and rec.get("type") == "session" and rec.get("sessionid") == local:
                rec["sessionid"] = remote
        elif kind == "transient":
            body = _obj(env, "transient")
            if body is not None and body.get("key") == SESSION_DATA_PREFIX + local:
                body["key"] = SESSION_DATA_PREFIX + remote
        return env

    # remote server → local client

    def _room(self, obj: dict[str, Any] | None, key: str = "roomid") -> None:
        if obj is not None and obj.get(key) == self.remote_room_id:
            obj[key] = self.local_room_id

    def _party(self, obj: Any) -> None:
        """A `sender`/`recipient` of type session naming our remote id names our local id."""
        remote = self.remote_session_id
        if (
            isinstance(obj, dict)
            and remote
            and obj.get("type") == "session"
            and obj.get("sessionid") == remote
        ):
            obj["sessionid"] = self.local_session_id

    def _users(self, users: Any) -> None:
        """Entries of `participants/update`: actors in every entry, our id in the first match."""
        if not isinstance(users, list):
            return
        remote, local = self.remote_session_id, self.local_session_id
        check = True
        for u in users:
            if not isinstance(u, dict):
                continue
            _update_actor(u, "actorId", "actorType", self.local_suffix, self.remote_suffix)
            if check:
                key = "sessionId"
                sid = u.get(key)
                if not isinstance(sid, str):
                    key = "sessionid"
                    sid = u.get(key)
                if isinstance(sid, str) and sid == remote:
                    u[key] = local
                    check = False

    def _comment(self, comment: dict[str, Any]) -> None:
        loc, rem = self.local_suffix, self.remote_suffix
        _update_actor(comment, "actorId", "actorType", loc, rem)
        _update_actor(comment, "lastEditActorId", "lastEditActorType", loc, rem)
        self._room(comment, "token")
        params = comment.get("messageParameters")
        if not isinstance(params, dict):
            return
        local_url = cloud_url_without_path(self.local_backend_url)
        remote_url = cloud_url_without_path(self.remote_nextcloud_url)
        for key, param in params.items():
            if not isinstance(key, str) or not key.startswith("mention-"):
                continue
            if not isinstance(param, dict):
                continue
            ptype = param.get("type")
            if ptype == "user":
                if param.get("server") == local_url:
                    del param["server"]  # a user of our own Nextcloud
                elif not isinstance(param.get("mention-id"), str):
                    param["mention-id"] = param.get("id")
                    param["server"] = remote_url
            elif ptype == "call":
                self._room(param, "id")

    def _chat(self, message: dict[str, Any] | None) -> None:
        data = _obj(message, "data")
        if data is None or data.get("type") != "chat":
            return
        chat = _obj(data, "chat")
        if chat is None:
            return
        comments: list[Any] = [chat.get("comment")]
        listed = chat.get("comments")
        if isinstance(listed, list):
            comments.extend(listed)
        for comment in comments:
            if isinstance(comment, dict):
                self._comment(comment)
                parent = comment.get("parent")
                if isinstance(parent, dict):
                    self._comment(parent)

    def from_remote(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Map one remote server message for the local client (in place; returns it)."""
        remote, local = self.remote_session_id, self.local_session_id
        kind = msg.get("type")
        if kind in ("message", "control"):
            body = _obj(msg, kind)
            if body is None:
                return msg
            self._party(body.get("recipient"))
            self._party(body.get("sender"))
            data = body.get("data")
            if not remote or not isinstance(data, dict):
                return msg
            if kind == "control":
                if data.get("action") == "forceMute" and data.get("peerId") == remote:
                    data["peerId"] = local
            elif data.get("type") in ("offer", "answer"):
                for key in ("from", "to"):
                    if data.get(key) == remote:
                        data[key] = local
        elif kind == "event":
            self._event(_obj(msg, "event"))
        elif kind == "error":
            err = _obj(msg, "error")
            if err is not None and err.get("code") == "already_joined":
                self._room(_obj(_obj(err, "details"), "room"))
        elif kind == "room":
            self._room(_obj(msg, "room"))
        elif kind == "transient":
            body = _obj(msg, "transient")
            if remote and body is not None and body.get("key") == SESSION_DATA_PREFIX + remote:
                body["key"] = SESSION_DATA_PREFIX + local
        return msg

    def _event(self, ev: dict[str, Any] | None) -> None:
        if ev is None:
            return
        target, etype = ev.get("target"), ev.get("type")
        remote, local = self.remote_session_id, self.local_session_id
        if target == "participants":
            if etype == "update":
                update = _obj(ev, "update")
                self._room(update)
                if update is not None and remote:
                    self._users(update.get("changed"))
                    self._users(update.get("users"))
            elif etype == "flags":
                flags = _obj(ev, "flags")
                self._room(flags)
                if flags is not None and remote and flags.get("sessionid") == remote:
                    flags["sessionid"] = local
            elif etype == "message":
                self._room(_obj(ev, "message"))
        elif target == "room":
            if etype == "join" and remote:
                joined = ev.get("join")
                for entry in joined if isinstance(joined, list) else ():
                    if isinstance(entry, dict) and entry.get("sessionid") == remote:
                        entry["sessionid"] = local
                        break
            elif etype == "leave" and remote:
                left = ev.get("leave")
                if isinstance(left, list):
                    for i, sid in enumerate(left):
                        if sid == remote:
                            left[i] = local
                            break
            elif etype == "message":
                message = _obj(ev, "message")
                self._room(message)
                self._chat(message)
            # switchto keeps the remote room id: it names a room of the remote Nextcloud.
        elif target == "roomlist" and etype in ("invite", "disinvite", "update"):
            self._room(_obj(ev, str(etype)))


# --- events the link sends the local client -------------------------------------------------


def interrupted_event() -> dict[str, Any]:
    return {"type": "event", "event": {"target": "room", "type": "federation_interrupted"}}


def resumed_event(resumed: bool) -> dict[str, Any]:
    return {
        "type": "event",
        "event": {"target": "room", "type": "federation_resumed", "resumed": resumed},
    }


def failure_details(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


# --- reconnect timing -----------------------------------------------------------------------


@attrs.define
class Backoff:
    """Reconnect delays: 0.1 s, doubling per failed attempt, at most 8 s; reset by a hello."""

    initial: float = INITIAL_RECONNECT_DELAY
    maximum: float = MAX_RECONNECT_DELAY
    delay: float = INITIAL_RECONNECT_DELAY

    def schedule(self, now: float) -> float:
        """The time of the next attempt, and back off further for the one after."""
        at = now + self.delay
        self.delay = min(self.delay * 2, self.maximum)
        return at

    def reset(self) -> None:
        self.delay = self.initial


# --- the link state machine -----------------------------------------------------------------


@attrs.frozen
class Send:
    """Send this message to the remote server."""

    message: dict[str, Any]


@attrs.frozen
class Deliver:
    """Hand this message to the local client."""

    message: dict[str, Any]


@attrs.frozen
class Reconnect:
    """Drop the current connection (no bye) and try again after the backoff delay."""


@attrs.frozen
class Finish:
    """The link is over: send `bye` if connected, close, never reconnect."""


Effect = Send | Deliver | Reconnect | Finish


class LinkState(enum.Enum):
    DISCONNECTED = "disconnected"  # no connection (before the first dial or between attempts)
    WELCOME = "welcome"  # connected, waiting for the remote's welcome
    HELLO = "hello"  # our hello is out
    READY = "ready"  # the remote session exists; messages flow
    CLOSED = "closed"


def random_id() -> str:
    return secrets.token_urlsafe(6)  # 8 characters, like upstream's hello ids


class LinkCore:
    """One federated session's link, as a state machine without I/O.

    Feed it `connection_made` / `receive` / `connection_lost` / `connection_failed` /
    `handshake_timed_out` from the shell, and `forward` / `change_room` / `leave` / `close`
    from the hub; apply the returned effects in order.
    """

    def __init__(
        self,
        request: FederationRequest,
        *,
        local_session_id: str,
        local_backend_url: str,
        features: Sequence[str] = (),
        join_id: str | None = None,
        new_id: Callable[[], str] = random_id,
    ) -> None:
        self.request = request
        self.features = tuple(features)
        self.join_id = join_id or None  # the client's join id, echoed on the first answer
        self.mapper = IdMapper(
            local_session_id,
            local_backend_url,
            request.nextcloud_url,
            request.local_room_id,
            request.remote_room_id,
        )
        self.state = LinkState.DISCONNECTED
        self.resume_id = ""
        self.hello_id = ""
        self.ever_ready = False  # a remote session existed at some point
        self.interrupted = False  # `federation_interrupted` sent, `federation_resumed` owed
        self.close_on_leave = False
        self.leave_id: str | None = None  # the client's leave request, while one is out
        self.pending: deque[dict[str, Any]] = deque()
        self._new_id = new_id
        self._hello_retries = 0

    @property
    def remote_session_id(self) -> str:
        return self.mapper.remote_session_id

    @property
    def connected(self) -> bool:
        return self.state in (LinkState.WELCOME, LinkState.HELLO, LinkState.READY)

    # --- connection events (from the shell)

    def connection_made(self, upgrade_features: Iterable[str]) -> list[Effect]:
        """The WebSocket is open; `upgrade_features` = the remote's features header."""
        if self.state is LinkState.CLOSED:
            return [Finish()]
        if FEATURE not in set(upgrade_features):
            if not self.ever_ready:
                return self._fail(*UNSUPPORTED)
            return [Reconnect()]
        self.state = LinkState.WELCOME
        return []

    def connection_failed(self, code: str, message: str) -> list[Effect]:
        """Dialling failed (`code` = network_error / certificate_verification_error)."""
        if self.state is LinkState.CLOSED:
            return []
        self.state = LinkState.DISCONNECTED
        if not self.ever_ready:
            # Nobody is in a remote room yet: answer the client's join instead of retrying.
            return self._fail("federation_error", CREATE_FAILED, failure_details(code, message))
        return [Reconnect()]

    def handshake_timed_out(self) -> list[Effect]:
        """No remote session within the timeout after the WebSocket opened."""
        if self.state not in (LinkState.WELCOME, LinkState.HELLO):
            return []
        return self.connection_failed(NETWORK_ERROR, "Timeout waiting for the hello response.")

    def connection_lost(self) -> list[Effect]:
        """The WebSocket is gone (remote close, read error, ping timeout)."""
        if self.state is LinkState.CLOSED:
            return []
        if self.close_on_leave:
            return self.leave_timed_out()  # nothing left to resume for
        if self.state is not LinkState.READY:
            return self.connection_failed(NETWORK_ERROR, "Connection closed by the remote.")
        self.state = LinkState.DISCONNECTED
        self.interrupted = True
        return [Deliver(interrupted_event()), Reconnect()]

    def leave_timed_out(self) -> list[Effect]:
        """The remote did not answer our leave in time (or the connection went away)."""
        if self.state is LinkState.CLOSED:
            return []
        self.state = LinkState.CLOSED
        return [Deliver(p.room_message(self.leave_id, "")), Finish()]

    # --- remote frames

    def receive(self, text: str) -> list[Effect]:
        if not self.connected:
            return []
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError):
            return []  # upstream logs and ignores frames it cannot decode
        if not isinstance(msg, dict):
            return []
        if self.state is LinkState.WELCOME:
            return self._welcome(msg)
        if self.state is LinkState.HELLO:
            return self._hello_answer(msg)
        return self._relay(msg)

    def _welcome(self, msg: dict[str, Any]) -> list[Effect]:
        if msg.get("type") != "welcome":
            return []  # nothing but the welcome is expected before our hello
        features = (_obj(msg, "welcome") or {}).get("features")
        if not isinstance(features, list) or FEATURE not in features:
            return self._fail(*UNSUPPORTED)
        return self._send_hello()

    def _hello_message(self) -> dict[str, Any]:
        hello: dict[str, Any] = {"version": HELLO_VERSION}
        if self.features:
            hello["features"] = list(self.features)
        if self.resume_id:
            hello["resumeid"] = self.resume_id
        else:
            hello["auth"] = {
                "type": AUTH_TYPE,
                "url": self.request.nextcloud_url,
                "params": {"token": self.request.token},
            }
        return {"id": self.hello_id, "type": "hello", "hello": hello}

    def _send_hello(self) -> list[Effect]:
        self.hello_id = self._new_id()
        self.state = LinkState.HELLO
        return [Send(self._hello_message())]

    def _retry_hello(self) -> list[Effect]:
        self._hello_retries += 1
        if self._hello_retries > MAX_HELLO_RETRIES:
            return self._fail("federation_error", "Invalid hello response from the remote server.")
        return self._send_hello()

    def _hello_answer(self, msg: dict[str, Any]) -> list[Effect]:
        kind = msg.get("type")
        if msg.get("id") != self.hello_id:
            return self._retry_hello()
        if kind == "error":
            err = _obj(msg, "error") or {}
            code = err.get("code")
            if code == "no_such_session" and self.resume_id:
                # The remote session is gone (expired, remote restarted): start a new one;
                # this fails with token_expired once the token is too old.
                self.resume_id = ""
                self.pending.clear()
                return self._send_hello()
            if not isinstance(code, str) or not code:
                return self._fail("federation_error", "Invalid error from the remote server.")
            message = err.get("message")
            return self._fail(code, message if isinstance(message, str) else "", err.get("details"))
        if kind != "hello":
            return self._retry_hello()
        hello = _obj(msg, "hello") or {}
        session_id = hello.get("sessionid")
        if not isinstance(session_id, str) or not session_id:
            return self._fail("federation_error", "The remote server sent no session id.")
        self._hello_retries = 0
        self.mapper.remote_session_id = session_id
        self.state = LinkState.READY
        self.ever_ready = True
        effects: list[Effect] = []
        if not self.resume_id:
            resume_id = hello.get("resumeid")
            self.resume_id = resume_id if isinstance(resume_id, str) else ""
            if self.interrupted:
                # A new remote session: the client gets a new `room` answer and fresh joins.
                self.interrupted = False
                effects.append(Deliver(resumed_event(False)))
            effects.append(Send(self._join_message()))
        elif self.interrupted:
            self.interrupted = False
            effects.append(Deliver(resumed_event(True)))
        while self.pending:
            effects.append(Send(self.mapper.to_remote(self.pending.popleft())))
        return effects

    def _join_message(self) -> dict[str, Any]:
        room: dict[str, Any] = {"roomid": self.request.remote_room_id}
        if self.request.room_session_id:
            room["sessionid"] = self.request.room_session_id
        msg: dict[str, Any] = {"type": "room", "room": room}
        if self.join_id:
            msg = {"id": self.join_id, **msg}
        return msg

    def _relay(self, msg: dict[str, Any]) -> list[Effect]:
        kind = msg.get("type")
        close = False
        if kind == "room":
            if self.join_id and msg.get("id") == self.join_id:
                self.join_id = None  # later (re)joins are not answers to the client's request
            # The answer is for the latest join: map with its room ids from now on.
            self.mapper.local_room_id = self.request.local_room_id
            self.mapper.remote_room_id = self.request.remote_room_id
            room = _obj(msg, "room")
            close = self.close_on_leave and room is not None and room.get("roomid") == ""
        elif kind == "error" and self.close_on_leave:
            close = self.leave_id is not None and msg.get("id") == self.leave_id
        elif kind == "event" and self.close_on_leave:
            ev = _obj(msg, "event") or {}
            left = ev.get("leave")
            close = (
                ev.get("target") == "room"
                and ev.get("type") == "leave"
                and isinstance(left, list)
                and self.remote_session_id in left
            )
        effects: list[Effect] = [Deliver(self.mapper.from_remote(msg))]
        if close:
            self.state = LinkState.CLOSED
            effects.append(Finish())
        return effects

    # --- local requests (from the hub)

    def forward(self, env: dict[str, Any]) -> list[Effect]:
        """A client message other than hello/room/bye, to relay to the remote room.

        Raises `SignalingError` when it cannot be accepted (link closed, queue full).
        """
        if self.state is LinkState.CLOSED:
            raise p.SignalingError("federation_error", "The federation link is closed.")
        if self.state is LinkState.READY:
            return [Send(self.mapper.to_remote(env))]
        if len(self.pending) >= MAX_PENDING:
            raise p.SignalingError(
                "federation_error", "Too many messages pending for the federated room."
            )
        self.pending.append(env)
        return []

    def change_room(self, request: FederationRequest, join_id: str | None) -> list[Effect]:
        """Join another room on the same remote (`can_reuse` must hold)."""
        if not self.request.can_reuse(request):
            raise ValueError("a federation link only changes rooms on the same remote")
        if self.state is LinkState.CLOSED:
            raise p.SignalingError("federation_error", "The federation link is closed.")
        self.request = request
        self.join_id = join_id or None
        self.close_on_leave = False
        if self.state is LinkState.READY:
            return [Send(self._join_message())]
        return []  # sent after the hello

    def leave(self, env: dict[str, Any] | None = None) -> list[Effect]:
        """Leave the remote room (the client's `room` with roomid "", or ours when None).

        The remote's answer reaches the client, then the link finishes. Without a remote
        session there is nothing to leave: the client gets our own answer.
        """
        if self.state is LinkState.CLOSED:
            return []
        msg = env if env is not None else {"type": "room", "room": {"roomid": ""}}
        msg_id = msg.get("id")
        self.leave_id = msg_id if isinstance(msg_id, str) and msg_id else None
        if self.state is LinkState.READY:
            self.close_on_leave = True
            return [Send(msg)]
        self.state = LinkState.CLOSED
        effects: list[Effect] = []
        if env is not None:
            effects.append(Deliver(p.room_message(self.leave_id, "")))
        effects.append(Finish())
        return effects

    def close(self) -> list[Effect]:
        """End the link now (the local session is gone)."""
        if self.state is LinkState.CLOSED:
            return []
        self.state = LinkState.CLOSED
        return [Finish()]

    def internal_error(self) -> list[Effect]:
        """A bug of ours while handling the link: tell the client, end the link."""
        if self.state is LinkState.CLOSED:
            return []
        return self._fail("federation_error", "Internal federation error.")

    def _fail(self, code: str, message: str, details: Any = None) -> list[Effect]:
        """Answer the client's join with an error and end the link."""
        self.state = LinkState.CLOSED
        return [Deliver(p.error_message(self.join_id, code, message, details)), Finish()]


def header_features(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """The features listed in the upgrade response's `X-Spreed-Signaling-Features` header(s)."""
    name = FEATURES_HEADER.lower().encode()
    out: list[str] = []
    for key, value in headers:
        if key.lower() == name:
            out.extend(f.strip() for f in value.decode("latin-1").split(","))
    return [f for f in out if f]
