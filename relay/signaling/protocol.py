"""Sans-IO wire format of the spreed signaling client protocol (`/spreed`, API v1).

`parse_client_message(text)` turns one text frame into a typed message or raises
`SignalingError` carrying the error code to answer with. The `*_message` builders return
the server messages as plain dicts, with the upstream omit-when-empty rules applied.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

# What we implement and so may advertise (welcome and hello `server.features`).
FEATURES: tuple[str, ...] = (
    "incall-all",
    "join-features",
    "recipient-call",
    "welcome",
    "hello-v2",
    "federation",
    "audio-video-permissions",
    "transient-data",
    "transient-sessiondata",
    "chat-relay",
    "changed-users",
    "switchto",
    "dialout",
)
# Internal clients (SIP bridge, recorder) get the client list with `virtual-sessions`
# instead of `audio-video-permissions`, as upstream; the welcome lists both.
INTERNAL_ONLY_FEATURES: tuple[str, ...] = (
    "virtual-sessions",
)
INTERNAL_FEATURES: tuple[str, ...] = tuple(
    f for f in FEATURES if f != "audio-video-permissions") + INTERNAL_ONLY_FEATURES

HELLO_VERSIONS = ("1.0", "2.0")
CLIENT_TYPES = ("hello", "bye", "room", "message", "control", "internal", "transient")
# Values of the `type` label of signaling_server_messages_total: the client chooses the
# type, so anything else is counted as "unknown" (bounded cardinality).
COUNTED_TYPES = frozenset(CLIENT_TYPES)
RECIPIENT_TYPES = ("session", "user", "room", "call")

# The path Talk appends to the Nextcloud URL, and what upstream cuts hello URLs at.
SPREED_PATH_MARK = "ocs/v2.php/apps/spreed/"
BACKEND_PATH_V1 = "ocs/v2.php/apps/spreed/api/v1/signaling/backend"
BACKEND_PATH_V3 = "ocs/v2.php/apps/spreed/api/v3/signaling/backend"


class SignalingError(Exception):
    """A client-visible error: the `error` message's code, message and details."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details

    def to_message(self, msg_id: str | None) -> dict[str, Any]:
        return error_message(msg_id, self.code, self.message, self.details)


def invalid(message: str) -> SignalingError:
    return SignalingError("invalid_format", message)


@attrs.frozen
class Hello:
    version: str
    resume_id: str = ""
    auth_type: str = "client"
    url: str = ""  # as the client sent it
    params: Any = None
    features: tuple[str, ...] = ()


@attrs.frozen
class Bye:
    pass


@attrs.frozen
class Room:
    room_id: str  # "" = leave
    session_id: str = ""  # the Talk (Nextcloud) room session id
    has_federation: bool = False
    federation: Any = None  # the raw `room.federation` object (see `federation.py`)


@attrs.frozen
class Recipient:
    type: str
    session_id: str = ""
    user_id: str = ""


@attrs.frozen
class Message:
    """A `message` or `control` request: same shape, different key."""

    kind: str  # "message" | "control"
    recipient: Recipient
    data: Any


@attrs.frozen
class Other:
    """Any other type (`internal`, `transient`, unknown types), with its object (`body`,
    the value under the type's key; None if absent) for the hub to read."""

    body: Any = None


Payload = Hello | Bye | Room | Message | Other


@attrs.frozen
class ClientMessage:
    id: str | None
    type: str
    payload: Payload


def count_label(msg_type: str) -> str:
    return msg_type if msg_type in COUNTED_TYPES else "unknown"


def _obj(env: dict[str, Any], key: str, required: bool = True) -> dict[str, Any]:
    v = env.get(key)
    if v is None:
        if required:
            raise invalid(f"{key} missing")
        return {}
    if not isinstance(v, dict):
        raise invalid(f"{key} must be an object")
    return v


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    v = obj.get(key, "")
    if v is None:
        return ""
    if not isinstance(v, str):
        raise invalid(f"{where}.{key} must be a string")
    return v


def parse_client_message(text: str) -> ClientMessage:
    try:
        env = json.loads(text)
    except (ValueError, RecursionError):
        raise invalid("message is not valid JSON") from None
    if not isinstance(env, dict):
        raise invalid("message must be a JSON object")
    raw_id = env.get("id")
    msg_id: str | None
    if raw_id is None or raw_id == "":
        msg_id = None
    elif isinstance(raw_id, str):
        msg_id = raw_id
    else:
        raise invalid("id must be a string")
    msg_type = env.get("type")
    if not isinstance(msg_type, str) or not msg_type:
        raise SignalingError("invalid_format", "type missing")
    payload: Payload
    if msg_type == "hello":
        payload = _parse_hello(_obj(env, "hello"))
    elif msg_type == "bye":
        _obj(env, "bye", required=False)
        payload = Bye()
    elif msg_type == "room":
        payload = _parse_room(_obj(env, "room"))
    elif msg_type in ("message", "control"):
        payload = _parse_message(msg_type, _obj(env, msg_type))
    else:
        payload = Other(env.get(msg_type))
    return ClientMessage(msg_id, msg_type, payload)


def _parse_hello(h: dict[str, Any]) -> Hello:
    version = h.get("version")
    if version not in HELLO_VERSIONS:
        raise SignalingError("invalid_hello_version", "The hello version is not supported")
    assert isinstance(version, str)
    raw_features = h.get("features") or []
    if not isinstance(raw_features, list) or not all(isinstance(f, str) for f in raw_features):
        raise invalid("hello.features must be a list of strings")
    features = tuple(raw_features)
    resume_id = _str(h, "resumeid", "hello")
    if resume_id:
        return Hello(str(version), resume_id=resume_id, features=features)
    auth = _obj(h, "auth")
    auth_type = _str(auth, "type", "hello.auth") or "client"
    params = auth.get("params")
    if params is None:
        raise invalid("hello.auth.params missing")
    url = ""
    if auth_type in ("client", "federation"):
        url = _str(auth, "url", "hello.auth")
        if not url:
            raise invalid("hello.auth.url missing")
    if version == "2.0" and (not isinstance(params, dict) or not params.get("token")):
        raise invalid("hello.auth.params.token missing")
    return Hello(str(version), auth_type=auth_type, url=url, params=params, features=features)


def _parse_room(r: dict[str, Any]) -> Room:
    return Room(
        _str(r, "roomid", "room"),
        _str(r, "sessionid", "room"),
        r.get("federation") is not None,
        r.get("federation"),
    )


def _parse_message(kind: str, m: dict[str, Any]) -> Message:
    rec = _obj(m, "recipient")
    rtype = rec.get("type")
    if rtype not in RECIPIENT_TYPES:
        raise invalid(f"{kind}.recipient.type unsupported")
    assert isinstance(rtype, str)
    session_id = user_id = ""
    if rtype == "session":
        session_id = _str(rec, "sessionid", f"{kind}.recipient")
        if not session_id:
            raise invalid(f"{kind}.recipient.sessionid missing")
    elif rtype == "user":
        user_id = _str(rec, "userid", f"{kind}.recipient")
        if not user_id:
            raise invalid(f"{kind}.recipient.userid missing")
    if m.get("data") is None:
        raise invalid(f"{kind}.data missing")
    return Message(kind, Recipient(rtype, session_id, user_id), m["data"])


# --- server messages ------------------------------------------------------------------------


def _with_id(msg_id: str | None, msg: dict[str, Any]) -> dict[str, Any]:
    if msg_id:
        return {"id": msg_id, **msg}
    return msg


def error_message(
    msg_id: str | None, code: str, message: str, details: Any = None
) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        err["details"] = details
    return _with_id(msg_id, {"type": "error", "error": err})


def welcome_message(version: str) -> dict[str, Any]:
    features = sorted({*FEATURES, *INTERNAL_ONLY_FEATURES})
    return {"type": "welcome", "welcome": {"version": version, "features": features}}


def hello_message(
    msg_id: str | None, session_id: str, resume_id: str, user_id: str, version: str,
    hello_version: str = "1.0",
    features: tuple[str, ...] = FEATURES,
) -> dict[str, Any]:
    return _with_id(
        msg_id,
        {
            "type": "hello",
            "hello": {
                "version": hello_version,
                "sessionid": session_id,
                "resumeid": resume_id,
                "userid": user_id,
                "server": {"version": version, "features": sorted(features)},
            },
        },
    )


def bye_message(msg_id: str | None = None, reason: str = "") -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "bye"}
    if reason:
        msg["bye"] = {"reason": reason}
    return _with_id(msg_id, msg)


def room_message(msg_id: str | None, room_id: str, properties: Any = None) -> dict[str, Any]:
    room: dict[str, Any] = {"roomid": room_id}
    if properties is not None:
        room["properties"] = properties
    return _with_id(msg_id, {"type": "room", "room": room})


def sender(kind: str, session_id: str, user_id: str) -> dict[str, Any]:
    s = {"type": kind, "sessionid": session_id}
    if user_id:
        s["userid"] = user_id
    return s


def delivered_message(
    kind: str, sender_obj: dict[str, Any], data: Any, recipient: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"sender": sender_obj}
    if recipient is not None:
        body["recipient"] = recipient
    body["data"] = data
    return {"type": kind, kind: body}


def room_event(event_type: str, value: Any) -> dict[str, Any]:
    return {"type": "event", "event": {"target": "room", "type": event_type, event_type: value}}


def encode(msg: dict[str, Any]) -> str:
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False)
