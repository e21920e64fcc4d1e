"""switchto: Nextcloud asks sessions of a room to move to another room (sans-IO).

Owns (reference `talk-features.md` §3; upstream `talk/api.go`
`BackendRoomSwitchToMessageRequest`, `server/backend_server.go` `sendRoomSwitchTo`,
`server/room.go` `publishSwitchTo`): reading the `switchto` object of a
`POST /api/v1/room/<source room>` request in its two forms, chosen by the JSON shape of
`sessions`:

- list: `{"roomid": "<target>", "sessions": ["<talk sid>", ...]}`;
- map: `{"roomid": "<target>", "sessions": {"<talk sid>": {...} | null, ...}}`;

skipping Talk's "0" (not in the conversation), resolving Talk room-session ids to
signaling public ids with a lookup the caller passes in (unknown ids dropped), and
building the event each resolved session gets:
`{"type":"event","event":{"target":"room","type":"switchto","switchto":{"roomid":
"<target>","details":{...}?}}}` (`details` only in map form and only when not null).

The caller answers HTTP 200 `{}` in every successful case (also when nothing resolved),
delivers each event to its session only while that session is in a room, and answers a
`SwitchToError` with its status and text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

SESSION_NOT_IN_MEETING = "0"

Resolver = Mapping[str, str] | Callable[[str], str | None]


class SwitchToError(Exception):
    """A request upstream cannot process: plain-text HTTP answer `status` / `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


UNREADABLE = (400, "Could not read body")  # the request body does not decode at all
NOT_PROCESSED = (500, "Error while processing")  # `sessions` has an unusable shape


@attrs.frozen
class SwitchToTarget:
    session_id: str  # signaling public id
    details: Any = None  # map form only; None = no `details` key


@attrs.frozen
class SwitchTo:
    room_id: str  # the room the sessions are asked to switch to
    targets: tuple[SwitchToTarget, ...] = ()

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        """(public id, event) for every resolved session, in request order."""
        return [(t.session_id, switchto_event(self.room_id, t.details)) for t in self.targets]


def switchto_event(room_id: str, details: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"roomid": room_id}
    if details is not None:
        body["details"] = details
    return {"type": "event", "event": {"target": "room", "type": "switchto", "switchto": body}}


def _lookup(resolve: Resolver) -> Callable[[str], str | None]:
    if isinstance(resolve, Mapping):
        return resolve.get
    return resolve


def parse_switchto(payload: Any, resolve: Resolver) -> SwitchTo:
    """The `switchto` object of a backend room request with Talk ids resolved."""
    if not isinstance(payload, dict):
        raise SwitchToError(*UNREADABLE)
    room_id = payload.get("roomid")
    if room_id is None:
        room_id = ""
    if not isinstance(room_id, str):
        raise SwitchToError(*UNREADABLE)
    sessions = payload.get("sessions")
    lookup = _lookup(resolve)
    targets: list[SwitchToTarget] = []
    if sessions is None:
        pass
    elif isinstance(sessions, list):
        if not all(s is None or isinstance(s, str) for s in sessions):
            raise SwitchToError(*NOT_PROCESSED)
        for rsid in sessions:
            if not rsid or rsid == SESSION_NOT_IN_MEETING:
                continue
            sid = lookup(rsid)
            if sid:
                targets.append(SwitchToTarget(sid))
    elif isinstance(sessions, dict):
        resolved: dict[str, Any] = {}
        for rsid, details in sessions.items():
            if rsid == SESSION_NOT_IN_MEETING:
                continue
            sid = lookup(rsid)
            if sid:
                resolved[sid] = details
        targets = [SwitchToTarget(sid, details) for sid, details in resolved.items()]
    else:
        raise SwitchToError(*NOT_PROCESSED)
    return SwitchTo(room_id, tuple(targets))
