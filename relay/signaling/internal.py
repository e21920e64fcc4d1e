"""Internal clients and their virtual sessions (sans-IO).

Owns (reference `talk-features.md` §5.1-5.3; upstream `api/signaling.go`
`ClientTypeInternalAuthParams`, `InternalClientMessage` and its parts, `server/hub.go`
`processHelloInternal` / `processInternalMsg`, `server/clientsession.go` l.150-156,
`server/virtualsession.go`, `server/room.go` `addInternalSessionsLocked`,
`PublishSessionJoined`, `publishSessionFlagsChanged`, `talk/api.go` backend requests):

- the internal hello: `parse_auth_params` (`random`, `token`, `backend` with a trailing
  "/"; `invalid_format` when unusable) and `authenticate` (`invalid_client_type` without a
  configured secret, `invalid_token` unless `random` has >= 32 characters and `token` is
  the hex HMAC-SHA256(secret, random), compared in constant time, `invalid_backend`);
- `parse_internal(payload)`: the `internal` client message as typed commands
  (`AddSession`, `UpdateSession`, `RemoveSession`, `InCall`, `Dialout`, `OtherInternal`)
  with upstream's validation and defaults (`initial_in_call`, `virtual_in_call`;
  negative in-call values read as 0);
- the backend requests made for virtual sessions, and how internal and virtual sessions
  appear to others: join-event entries, `participants/update` user entries
  (`add_internal_sessions`), the `participants/flags` event and its per-receiver
  duplicate filter (`SeenFlags`), and what the owning internal client receives for its
  virtual sessions (`readdress_to_owner`, `hangup_control`) or for a deleted room.

Time (`now`) is the Unix time in seconds the caller reads once per event (`lastPing`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from relay.config.signaling import BackendConfig, canonical_url
from relay.signaling.dialout import DialoutMessage, parse_dialout
from relay.signaling.protocol import SignalingError

INTERNAL_INCALL = "internal-incall"  # client feature: the client reports its own in-call
START_DIALOUT = "start-dialout"  # client feature: the client can place phone calls
MIN_RANDOM_LENGTH = 32

# In-call flags (Talk): 1 in call, 2 with audio, 4 with video, 8 via phone.
IN_CALL = 1
WITH_AUDIO = 2
WITH_VIDEO = 4
WITH_PHONE = 8
# Virtual session flags.
MUTED_SPEAKING = 1
MUTED_LISTENING = 2
TALKING = 4

UINT32_MAX = 2**32 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _invalid() -> SignalingError:
    return SignalingError("invalid_format", "Invalid data format.")


def _opt_str(obj: dict[str, Any], key: str) -> str:
    v = obj.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise _invalid()
    return v


def _opt_int(obj: dict[str, Any], key: str, lo: int, hi: int) -> int | None:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _invalid()
    return v


def _obj(obj: dict[str, Any], key: str) -> dict[str, Any] | None:
    v = obj.get(key)
    if v is None:
        return None
    if not isinstance(v, dict):
        raise _invalid()
    return v


# --- the internal hello ---------------------------------------------------------------------


@attrs.frozen
class InternalAuthParams:
    random: str
    token: str
    backend: str  # canonical where it parses, always ending in "/"


def parse_auth_params(params: Any) -> InternalAuthParams:
    """`hello.auth.params` of an internal hello (upstream checks this with the message)."""
    if not isinstance(params, dict):
        raise _invalid()
    rnd, token, backend = (_opt_str(params, k) for k in ("random", "token", "backend"))
    if not backend:
        raise _invalid()
    if not backend.endswith("/"):
        backend += "/"
    return InternalAuthParams(rnd, token, canonical_url(backend) or backend)


def expected_token(secret: bytes, random: str) -> str:
    return hmac.new(secret, random.encode(), hashlib.sha256).hexdigest()


def authenticate(
    params: InternalAuthParams,
    secret: bytes,
    find_backend: Callable[[str], BackendConfig | None],
) -> BackendConfig:
    """The backend an internal client belongs to, or the hello's error. The caller's
    brute-force throttle (`too_many_requests`) goes between the secret and token checks."""
    if not secret:
        raise SignalingError("invalid_client_type", "The client type is not supported.")
    check_token(params, secret)
    backend = find_backend(params.backend)
    if backend is None:
        raise SignalingError("invalid_backend", "The backend URL is not supported.")
    return backend


def check_token(params: InternalAuthParams, secret: bytes) -> None:
    good = hmac.compare_digest(
        expected_token(secret, params.random).encode(), params.token.encode()
    )
    if len(params.random) < MIN_RANDOM_LENGTH or not good:
        raise SignalingError("invalid_token", "The passed token is invalid.")


def backend_finder(
    backends: Sequence[BackendConfig], allow_all: BackendConfig | None = None
) -> Callable[[str], BackendConfig | None]:
    """URL -> configured backend whose URL is a prefix (or the `allowall` backend)."""

    def find(url: str) -> BackendConfig | None:
        if allow_all is not None:
            return allow_all
        return next((b for b in backends if any(url.startswith(u) for u in b.urls)), None)

    return find


def initial_in_call(features: Iterable[str]) -> int:
    """An internal session's in-call flags right after its hello."""
    return 0 if INTERNAL_INCALL in features else IN_CALL | WITH_AUDIO


def clamp_in_call(value: int) -> int:
    return max(value, 0)


# --- `internal` messages ----------------------------------------------------------------------


@attrs.frozen
class ActorOptions:
    actor_id: str = ""
    actor_type: str = ""

    @property
    def complete(self) -> bool:
        return bool(self.actor_id and self.actor_type)


@attrs.frozen
class AddSession:
    session_id: str  # the client's own id for the virtual session
    room_id: str
    user_id: str = ""
    user: Any = None
    flags: int = 0
    in_call: int | None = None
    options: ActorOptions | None = None


@attrs.frozen
class UpdateSession:
    session_id: str
    room_id: str
    flags: int | None = None
    in_call: int | None = None


@attrs.frozen
class RemoveSession:
    session_id: str
    room_id: str
    user_id: str = ""


@attrs.frozen
class InCall:
    in_call: int


@attrs.frozen
class Dialout:
    dialout: DialoutMessage


@attrs.frozen
class OtherInternal:
    """A type upstream accepts and ignores."""

    type: str


InternalCommand = AddSession | UpdateSession | RemoveSession | InCall | Dialout | OtherInternal


def _in_call(body: dict[str, Any]) -> int | None:
    """`incall` as upstream stores it: an integer, negative values as 0."""
    v = _opt_int(body, "incall", INT64_MIN, INT64_MAX)
    return None if v is None else clamp_in_call(v)


def _common(body: dict[str, Any]) -> tuple[str, str]:
    sid, room = _opt_str(body, "sessionid"), _opt_str(body, "roomid")
    if not sid or not room:
        raise _invalid()
    return sid, room


def parse_internal(payload: Any) -> InternalCommand:
    """The `internal` object of a client message (`invalid_format` when it fails).

    Upstream validates this for every sender; the caller then ignores it unless the
    sender is an internal client, and lets a pending request (dial-out) claim a message
    with its `id` first."""
    if not isinstance(payload, dict):
        raise _invalid()
    kind = _opt_str(payload, "type")
    if not kind:
        raise _invalid()
    if kind in ("addsession", "updatesession", "removesession", "incall", "dialout"):
        if payload.get(kind) is None:
            raise _invalid()
    if kind == "addsession":
        body = _obj(payload, kind) or {}
        sid, room = _common(body)
        raw_opts = _obj(body, "options")
        options = None
        if raw_opts is not None:
            options = ActorOptions(_opt_str(raw_opts, "actorId"), _opt_str(raw_opts, "actorType"))
        return AddSession(
            sid, room, _opt_str(body, "userid"), body.get("user"),
            _opt_int(body, "flags", 0, UINT32_MAX) or 0,
            _in_call(body), options,
        )
    if kind == "updatesession":
        body = _obj(payload, kind) or {}
        sid, room = _common(body)
        return UpdateSession(
            sid, room, _opt_int(body, "flags", 0, UINT32_MAX), _in_call(body),
        )
    if kind == "removesession":
        body = _obj(payload, kind) or {}
        sid, room = _common(body)
        return RemoveSession(sid, room, _opt_str(body, "userid"))
    if kind == "incall":
        body = _obj(payload, kind) or {}
        return InCall(_in_call(body) or 0)
    if kind == "dialout":
        return Dialout(parse_dialout(payload[kind]))
    return OtherInternal(kind)


def virtual_in_call(add: AddSession, owner_features: Iterable[str]) -> int:
    """In-call flags of a new virtual session: `incall` if given, else
    in call via phone (9) unless the owner announced `internal-incall` (then 0)."""
    if add.in_call is not None:
        return add.in_call
    return 0 if INTERNAL_INCALL in owner_features else IN_CALL | WITH_PHONE


def virtual_key(owner_public_id: str, session_id: str) -> str:
    """How upstream keys a virtual session: owner public id + "|" + the client's id."""
    return f"{owner_public_id}|{session_id}"


# --- backend requests for virtual sessions --------------------------------------------------


def add_session_request(add: AddSession, public_id: str, in_call: int) -> dict[str, Any]:
    """The backend request announcing a new virtual session (`public_id`): a `room` join
    with the actor when `options` name one (errors -> `add_failed` with the backend's
    message), else a `session` `add` (only transport errors count)."""
    if add.options is not None and add.options.complete:
        room: dict[str, Any] = {
            "version": "1.0", "roomid": add.room_id, "userid": add.user_id,
            "sessionid": public_id, "actorid": add.options.actor_id,
            "actortype": add.options.actor_type,
        }
        if in_call:
            room["incall"] = in_call
        return {"type": "room", "room": room}
    return _session_request(add.room_id, "add", public_id, add.user_id, add.user)


def remove_session_request(
    room_id: str, public_id: str, user_id: str, user: Any, options: ActorOptions | None
) -> dict[str, Any]:
    """The backend request when a virtual session goes: a `room` `leave` with the actor
    (errors other than `no_such_room` -> `remove_failed`), else a `session` `remove`."""
    if options is not None and options.complete:
        return {"type": "room", "room": {
            "version": "1.0", "roomid": room_id, "action": "leave", "userid": user_id,
            "sessionid": public_id, "actorid": options.actor_id,
            "actortype": options.actor_type,
        }}
    return _session_request(room_id, "remove", public_id, user_id, user)


def _session_request(
    room_id: str, action: str, public_id: str, user_id: str, user: Any
) -> dict[str, Any]:
    session: dict[str, Any] = {
        "version": "1.0", "roomid": room_id, "action": action, "sessionid": public_id,
    }
    if user_id:
        session["userid"] = user_id
    if user is not None:
        session["user"] = user
    return {"type": "session", "session": session}


def add_failed(message: str = "Could not add virtual session.") -> SignalingError:
    return SignalingError("add_failed", message)


def remove_failed(
    message: str = "Could not remove virtual session from backend.",
) -> SignalingError:
    return SignalingError("remove_failed", message)


# --- how internal and virtual sessions appear to others --------------------------------------


def virtual_join_entry(public_id: str, user_id: str, user: Any = None) -> dict[str, Any]:
    """A virtual session in a `room` `join` event (no features / roomsessionid)."""
    e: dict[str, Any] = {"sessionid": public_id, "userid": user_id}
    if user is not None:
        e["user"] = user
    return e


@attrs.frozen
class InternalEntry:
    public_id: str
    in_call: int
    features: tuple[str, ...] = ()


@attrs.frozen
class VirtualEntry:
    public_id: str
    in_call: int


def internal_user_entry(entry: InternalEntry, now: float) -> dict[str, Any]:
    u: dict[str, Any] = {
        "inCall": entry.in_call, "sessionId": entry.public_id, "lastPing": int(now),
        "internal": True,
    }
    if entry.features:
        u["features"] = list(entry.features)
    return u


def virtual_user_entry(entry: VirtualEntry, now: float) -> dict[str, Any]:
    return {"inCall": entry.in_call, "sessionId": entry.public_id, "lastPing": int(now),
            "virtual": True}


def add_internal_sessions(
    users: Sequence[Any],
    internal: Sequence[InternalEntry],
    virtual: Sequence[VirtualEntry],
    now: float,
    user_ids: Mapping[str, str] | None = None,
) -> list[Any]:
    """The `users` of a `participants/update` with this room's internal and virtual
    sessions added, as upstream does: an entry without `userId` gets the user id a
    session sent with its join (`user_ids`, public id -> user id) or, if it is a virtual
    session, `virtual: true` and the server's `inCall` (and is not added again); then
    every internal session, then every virtual session not listed yet."""
    known = user_ids or {}
    by_id = {v.public_id: v for v in virtual}
    skip: set[str] = set()
    out: list[Any] = []
    for user in users:
        sid = user.get("sessionId") if isinstance(user, dict) else None
        # Only an absent userId or the string "" counts as "no user id" (null does not).
        if not isinstance(sid, str) or not sid or user.get("userId", "") != "":
            out.append(user)
            continue
        if sid in known:
            out.append({**user, "userId": known[sid]})
        elif sid in by_id:
            out.append({**user, "virtual": True, "inCall": by_id[sid].in_call})
            skip.add(sid)
        else:
            out.append(user)
    out.extend(internal_user_entry(e, now) for e in internal)
    for v in virtual:
        if v.public_id not in skip:
            skip.add(v.public_id)
            out.append(virtual_user_entry(v, now))
    return out


def flags_event(room_id: str, public_id: str, flags: int) -> dict[str, Any]:
    return {"type": "event", "event": {"target": "participants", "type": "flags", "flags": {
        "roomid": room_id, "sessionid": public_id, "flags": flags}}}


@attrs.define
class SeenFlags:
    """One receiver's last flags per virtual session: a repeat is not sent again."""

    seen: dict[str, int] = attrs.Factory(dict)

    def should_send(self, public_id: str, flags: int) -> bool:
        if self.seen.get(public_id) == flags:
            return False
        self.seen[public_id] = flags
        return True

    def forget(self, public_id: str) -> None:
        """The session left: a later flags event for the id is new again."""
        self.seen.pop(public_id, None)


# --- deliveries to the internal client that owns a virtual session ----------------------------


def owner_recipient(session_id: str, user_id: str = "") -> dict[str, Any]:
    """How the owning client sees a message for its virtual session: addressed to the id
    it chose in `addsession` (and the virtual session's user id, if any)."""
    r: dict[str, Any] = {"type": "session", "sessionid": session_id}
    if user_id:
        r["userid"] = user_id
    return r


def readdress_to_owner(
    msg: dict[str, Any], virtual_public_id: str, session_id: str, user_id: str = ""
) -> dict[str, Any] | None:
    """A `message` / `control` sent to the virtual session's public id, rewritten for the
    owning internal client; None for anything else (upstream does not forward it)."""
    kind = msg.get("type")
    if kind not in ("message", "control"):
        return None
    body = msg.get(kind)
    recipient = body.get("recipient") if isinstance(body, dict) else None
    if (
        not isinstance(body, dict)
        or not isinstance(recipient, dict)
        or recipient.get("type") != "session"
        or recipient.get("sessionid") != virtual_public_id
    ):
        return None
    return {**msg, kind: {**body, "recipient": owner_recipient(session_id, user_id)}}


def hangup_control(session_id: str, user_id: str = "") -> dict[str, Any]:
    """What the owner gets when the virtual session's room disinvites it (upstream sends
    this control without a sender)."""
    return {"type": "control", "control": {
        "sender": None,
        "recipient": owner_recipient(session_id, user_id),
        "data": {"type": "hangup", "hangup": {"reason": "disinvited"}},
    }}


def room_deleted_event() -> dict[str, Any]:
    """Sent to internal clients in a room Nextcloud deleted (besides the usual leave)."""
    return {"type": "event", "event": {"target": "room", "type": "delete"}}
