"""Nextcloud -> signaling: `POST /api/v1/room/{roomid}` (upstream's backend server room API).

Nextcloud signs the body like our requests to it (`Spreed-Signaling-Random` +
`Spreed-Signaling-Checksum` = hex HMAC-SHA256(secret, random ‖ body)) and names itself in
`Spreed-Signaling-Backend`. `handle` checks the request the way upstream's
`parseRequestBody` + `roomHandler` do and answers (status, content type, body); it never
raises for anything a client sends. Room ids and Talk session ids are rewritten here
(Talk `sessionId` -> signaling public id through the hub's room-session map), then:

- `invite` / `disinvite` / `update` / `delete` send `roomlist` events to users (and, for
  `disinvite`, to Talk sessions), and `update` / `delete` also reach the room;
- `incall` / `participants` / `message` reach the room on `backend.room.<..>`, where the
  hub updates in-call state and permissions and sends the `participants` / `room` events.

Requests without the user lists Talk stops sending once `changed-users` is advertised
are handled as `relay.signaling.changed_users` describes (`roomlist` updates to the room's
sessions instead of to user ids).

A request for a room nobody on this node is in is accepted and changes nothing there.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import trio

from relay.config.signaling import BackendConfig
from relay.signaling import changed_users, dialout, switchto
from relay.signaling.answers import JSON, Answer, text_answer
from relay.signaling.backend import verify_checksum
from relay.signaling.hub import Hub
from relay.signaling.pubsub import room_subject, session_subject, user_subject
from relay.signaling.throttle import BACKEND_ROOM_AUTH

HEADER_RANDOM = "spreed-signaling-random"
HEADER_CHECKSUM = "spreed-signaling-checksum"
HEADER_BACKEND = "spreed-signaling-backend"
SESSION_NOT_IN_MEETING = "0"  # Talk's session id of a participant not in the conversation
ROOM_PATH_PREFIX = "/api/v1/room/"


Handler = Callable[["Hub", BackendConfig, str, dict[str, Any]], None]



AUTH_FAILED = text_answer(403, "Authentication check failed")
OK = Answer(200, JSON, b"{}")
TOO_MANY_REQUESTS = text_answer(429, "Too many requests")


def find_backend(hub: Hub, headers: dict[str, str], body: bytes) -> BackendConfig | None:
    """The backend whose secret signed this request, or None (-> 403)."""
    backends = hub.backends
    rnd = headers.get(HEADER_RANDOM, "")
    given = headers.get(HEADER_CHECKSUM, "")
    named = headers.get(HEADER_BACKEND, "")
    backend: BackendConfig | None
    if named:
        backend = backends.for_url(named)
        if backend is None:
            return None  # unknown backend URL
    elif backends.allow_all:
        backend = backends.compat
    else:
        # Old Talk versions do not name themselves: find the secret that signed the body.
        for b in backends.configured:
            if verify_checksum(b.secret, rnd, body, given):
                return b
        return None
    return backend if verify_checksum(backend.secret, rnd, body, given) else None


async def handle(
    hub: Hub, room_id: str, headers: dict[str, str], body: bytes, has_length: bool,
    client_ip: str = "",
) -> Answer:
    """Answer one `POST /api/v1/room/{room_id}`; `headers` are keyed in lower case.
    Only `dialout` waits (for a SIP bridge, up to 45 s per candidate); the server runs
    every request in its own task, so other requests go on meanwhile. A signed request
    with an unknown backend or a bad checksum is a failed `BackendRoomAuth` attempt of
    `client_ip`: answered after the throttle's delay (slept in this request's task), and
    with 429 once the client is blocked."""
    if not has_length:
        return text_answer(411, "Length required")
    if not headers.get("content-type", "").startswith("application/json"):
        return text_answer(400, "Unsupported Content-Type")
    if not headers.get(HEADER_RANDOM) or not headers.get(HEADER_CHECKSUM):
        return AUTH_FAILED
    if hub.throttler.check(client_ip, BACKEND_ROOM_AUTH, trio.current_time()):
        return TOO_MANY_REQUESTS
    backend = find_backend(hub, headers, body)
    if backend is None:
        await trio.sleep(hub.throttler.failed(client_ip, BACKEND_ROOM_AUTH, trio.current_time()))
        return AUTH_FAILED
    try:
        request = json.loads(body)
    except (ValueError, RecursionError):
        return text_answer(400, "Could not read body")
    if not isinstance(request, dict) or not isinstance(request.get("type", ""), str):
        return text_answer(400, "Could not read body")
    kind: str = request.get("type", "")
    if kind == "dialout":
        return await _dialout(hub, backend, room_id, headers, request.get(kind))
    handler = _HANDLERS.get(kind)
    if handler is None:
        return text_answer(400, f"Unsupported request type: {kind}")
    payload = request.get(kind)
    if not isinstance(payload, dict):
        return text_answer(400, "Could not read body")
    try:
        handler(hub, backend, room_id, payload)
    except switchto.SwitchToError as exc:
        return text_answer(exc.status, exc.message)
    return OK


# --- request types --------------------------------------------------------------------


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _roomlist(event_type: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"type": "event", "event": {"target": "roomlist", "type": event_type,
                                       event_type: body}}


def _room_body(room_id: str, properties: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"roomid": room_id}
    if properties is not None:
        body["properties"] = properties
    return body


def _to_users(hub: Hub, backend: BackendConfig, user_ids: list[str], msg: dict[str, Any]) -> None:
    for uid in dict.fromkeys(user_ids):
        hub.bus.publish(user_subject(uid, backend.id), {"type": "message", "message": msg})


def _send_update(
    hub: Hub, backend: BackendConfig, room_id: str, notified: list[str], all_ids: list[str],
    properties: Any,
) -> None:
    """`roomlist` `update` to the users of `all_ids` not notified otherwise."""
    skip = set(notified)
    msg = _roomlist("update", _room_body(room_id, properties))
    _to_users(hub, backend, [u for u in all_ids if u not in skip], msg)


def _send_room_update(hub: Hub, backend: BackendConfig, room_id: str, properties: Any) -> None:
    """`roomlist` `update` to the sessions in the room (`changed-users`: no user lists)."""
    hub.bus.publish(room_subject(room_id, backend.id), {
        "type": "message", "message": _roomlist("update", _room_body(room_id, properties))})


def _send_disinvite(
    hub: Hub, backend: BackendConfig, room_id: str, reason: str, user_ids: list[str],
    room_session_ids: list[str],
) -> None:
    msg = _roomlist("disinvite", {"roomid": room_id, "reason": reason})
    _to_users(hub, backend, user_ids, msg)
    for rsid in dict.fromkeys(room_session_ids):
        if rsid == SESSION_NOT_IN_MEETING:
            continue
        session = hub.session_by_room_session(backend.id, rsid)
        if session is not None:
            hub.bus.publish(session_subject(session.public_id),
                            {"type": "message", "message": msg})


def _invite(hub: Hub, backend: BackendConfig, room_id: str, req: dict[str, Any]) -> None:
    users = _strings(req.get("userids"))
    properties = req.get("properties")
    _to_users(hub, backend, users, _roomlist("invite", _room_body(room_id, properties)))
    if changed_users.has_full_list("invite", req):
        _send_update(hub, backend, room_id, users, _strings(req.get("alluserids")), properties)
    else:
        _send_room_update(hub, backend, room_id, properties)


def _disinvite(hub: Hub, backend: BackendConfig, room_id: str, req: dict[str, Any]) -> None:
    users = _strings(req.get("userids"))
    full = changed_users.has_full_list("disinvite", req)
    if not full:  # the room hears the update before anyone is disinvited
        _send_room_update(hub, backend, room_id, req.get("properties"))
    _send_disinvite(hub, backend, room_id, "disinvited", users, _strings(req.get("sessionids")))
    if full:
        _send_update(hub, backend, room_id, users, _strings(req.get("alluserids")),
                     req.get("properties"))


def _update(hub: Hub, backend: BackendConfig, room_id: str, req: dict[str, Any]) -> None:
    hub.publish_backend_room_event(backend.id, room_id, {"type": "update", "update": req})
    if changed_users.has_full_list("update", req):
        _send_update(hub, backend, room_id, [], _strings(req.get("userids")),
                     req.get("properties"))
    else:
        _send_room_update(hub, backend, room_id, req.get("properties"))


def _delete(hub: Hub, backend: BackendConfig, room_id: str, req: dict[str, Any]) -> None:
    # Without `userids` the hub tells each session in the room before it leaves.
    hub.publish_backend_room_event(backend.id, room_id, {"type": "delete", "delete": req})
    if changed_users.has_full_list("delete", req):
        _send_disinvite(hub, backend, room_id, "deleted", _strings(req.get("userids")), [])


def fixup_user_sessions(hub: Hub, backend_id: str, users: Any) -> list[dict[str, Any]]:
    """Entries with their Talk `sessionId` replaced by the signaling public id; entries
    without a known session (or with `sessionId` "0") are dropped, as upstream does."""
    out: list[dict[str, Any]] = []
    if not isinstance(users, list):
        return out
    for entry in users:
        if not isinstance(entry, dict):
            continue
        rsid = entry.get("sessionId")
        if not isinstance(rsid, str) or rsid == SESSION_NOT_IN_MEETING:
            continue
        session = hub.session_by_room_session(backend_id, rsid)
        if session is not None:
            out.append({**entry, "sessionId": session.public_id})
    return out


def _users_changed(kind: str) -> Handler:
    def handler(hub: Hub, backend: BackendConfig, room_id: str, req: dict[str, Any]) -> None:
        if kind == "incall" and req.get("all") is True:
            hub.publish_backend_room_event(backend.id, room_id, {"type": kind, kind: req})
            return
        users = fixup_user_sessions(hub, backend.id, req.get("users"))
        changed = fixup_user_sessions(hub, backend.id, req.get("changed"))
        if not users and not changed:
            return
        body = {**req, "changed": changed}
        if changed_users.has_full_list(kind, req):
            body["users"] = users
        hub.publish_backend_room_event(backend.id, room_id, {"type": kind, kind: body})

    return handler


def _message(hub: Hub, backend: BackendConfig, room_id: str, req: dict[str, Any]) -> None:
    hub.publish_backend_room_event(backend.id, room_id, {"type": "message", "message": req})


async def _dialout(
    hub: Hub, backend: BackendConfig, room_id: str, headers: dict[str, str], req: Any
) -> Answer:
    """Ask a SIP bridge (internal client with `start-dialout`) to call a phone number."""
    try:
        res = await hub.internal.dialout(backend, room_id, headers.get(HEADER_BACKEND, ""), req)
    except dialout.UnreadableRequest:
        return text_answer(400, "Could not read body")
    return Answer(res.status, JSON, json.dumps(res.body).encode())


def _switchto(hub: Hub, backend: BackendConfig, room_id: str, req: dict[str, Any]) -> None:
    """Ask the listed Talk sessions to move to another room (`event/room/switchto`)."""

    def resolve(rsid: str) -> str | None:
        session = hub.session_by_room_session(backend.id, rsid)
        return session.public_id if session is not None else None

    request = switchto.parse_switchto(req, resolve)
    if not request.targets or hub.state.room(backend.id, room_id) is None:
        return  # nobody to tell here (upstream: only when the source room is on this node)
    for public_id, event in request.events():
        session = hub.state.get(public_id)
        if session is not None and session.room is not None:  # room events need a room
            hub.bus.publish(session_subject(public_id), {"type": "message", "message": event})


_HANDLERS: dict[str, Handler] = {
    "invite": _invite,
    "disinvite": _disinvite,
    "update": _update,
    "delete": _delete,
    "incall": _users_changed("incall"),
    "participants": _users_changed("participants"),
    "message": _message,
    "switchto": _switchto,
}
