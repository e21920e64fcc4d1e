"""Per-session Talk permissions and the delivery filters they switch on (sans-IO).

Owns (reference `talk-features.md` §2, upstream `api/signaling.go` permission names,
`server/clientsession.go` `hasPermissionLocked` / `SetPermissions` / `filterMessage`,
`server/backend_server.go` `sendRoomParticipantsUpdate`, `server/room.go`
`filterPermissions`):

- the permission names and the `Permissions` value of one session: until Nextcloud sets a
  list for the first time every permission is granted except `hide-displaynames`; from
  then on exactly the listed names (an empty list grants nothing). Unknown names are kept
  as given: nothing ever asks for them, as upstream;
- reading permissions from a room join answer (`room.permissions`) and from the `changed`
  entries of a backend `participants` request;
- the filters upstream applies when delivering to a session: `displayname` stripped from
  join-event `user` data and `nickChanged` messages dropped under `hide-displaynames`,
  and `permissions` removed from `participants` `update` user entries for everyone.
  (Blanking `actorDisplayName` in chat comments lives with the chat rewriting in
  `relay.signaling.chat`.)

Nothing here does I/O; every function returns new values and never mutates its input.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from relay.signaling.protocol import SignalingError

PUBLISH_MEDIA = "publish-media"
PUBLISH_AUDIO = "publish-audio"
PUBLISH_VIDEO = "publish-video"
PUBLISH_SCREEN = "publish-screen"
CONTROL = "control"
TRANSIENT_DATA = "transient-data"
HIDE_DISPLAYNAMES = "hide-displaynames"

NAMES: tuple[str, ...] = (
    PUBLISH_MEDIA,
    PUBLISH_AUDIO,
    PUBLISH_VIDEO,
    PUBLISH_SCREEN,
    CONTROL,
    TRANSIENT_DATA,
    HIDE_DISPLAYNAMES,
)

# What a session that never received a list may do, where it differs from "granted".
DEFAULT_OVERRIDES: dict[str, bool] = {HIDE_DISPLAYNAMES: False}


@attrs.frozen
class Permissions:
    """The permissions of one session; `granted is None` until Nextcloud first sets them."""

    granted: frozenset[str] | None = None

    @classmethod
    def of(cls, names: Iterable[str]) -> Permissions:
        """Exactly `names` (after a set; an empty iterable grants nothing)."""
        return cls(frozenset(names))

    @property
    def is_set(self) -> bool:
        return self.granted is not None

    def has(self, name: str) -> bool:
        if self.granted is None:
            return DEFAULT_OVERRIDES.get(name, True)
        return name in self.granted

    def has_any(self, *names: str) -> bool:
        return any(self.has(n) for n in names)

    @property
    def may_control(self) -> bool:
        return self.has(CONTROL)

    @property
    def may_write_transient(self) -> bool:
        return self.has(TRANSIENT_DATA)

    @property
    def hide_displaynames(self) -> bool:
        return self.has(HIDE_DISPLAYNAMES)


UNSET = Permissions()


@attrs.frozen
class PermissionUpdate:
    """New permissions for one session, from a `participants` request's `changed` list."""

    session_id: str  # the signaling public id (after the Talk session id rewrite)
    permissions: Permissions


def from_join_answer(room: Any) -> Permissions | None:
    """The permissions in the `room` object of a join answer; None = keep the current ones.

    Upstream decodes the answer into a typed struct, so a `permissions` value that is not a
    list of strings makes the whole answer unreadable and the join fails with
    `internal_error`.
    """
    if not isinstance(room, dict):
        return None
    raw = room.get("permissions")
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise SignalingError(
            "internal_error", "room.permissions in the backend answer is not a list of strings"
        )
    return Permissions.of(raw)


def updates_from_changed(changed: Any) -> list[PermissionUpdate]:
    """Permission updates from `participants.changed` (entries already rewritten to public
    ids). Entries without `permissions`, without a string `sessionId`, with a non-list
    `permissions`, or with a non-string element in it are skipped entirely."""
    out: list[PermissionUpdate] = []
    if not isinstance(changed, list):
        return out
    for entry in changed:
        if not isinstance(entry, dict) or "permissions" not in entry:
            continue
        sid = entry.get("sessionId")
        perms = entry["permissions"]
        if not isinstance(sid, str) or not isinstance(perms, list):
            continue
        if not all(isinstance(x, str) for x in perms):
            continue
        out.append(PermissionUpdate(sid, Permissions.of(perms)))
    return out


# --- delivery filters -----------------------------------------------------------------------


def strip_permissions(users: Any) -> list[Any]:
    """`users` / `changed` entries of a `participants` `update` without their
    `permissions` key (clients read Talk's integer `participantPermissions` instead)."""
    if not isinstance(users, list):
        return []
    return [
        {k: v for k, v in e.items() if k != "permissions"} if isinstance(e, dict) else e
        for e in users
    ]


def hide_join_displaynames(entries: list[Any]) -> list[Any]:
    """Join-event entries with `displayname` removed from each object-valued `user`; a
    `user` left empty is dropped altogether. Other entries are kept as they are."""
    out: list[Any] = []
    for e in entries:
        user = e.get("user") if isinstance(e, dict) else None
        if not isinstance(user, dict) or "displayname" not in user:
            out.append(e)
            continue
        rest = {k: v for k, v in user.items() if k != "displayname"}
        copy = {k: v for k, v in e.items() if k != "user"}
        if rest:
            copy["user"] = rest
        out.append(copy)
    return out


def is_nick_changed(data: Any) -> bool:
    """Whether `message` data is a `nickChanged` notice (dropped under
    `hide-displaynames`). Data that is not an object with a string `type` is not."""
    return isinstance(data, dict) and data.get("type") == "nickChanged"


def filter_for_session(msg: dict[str, Any], permissions: Permissions) -> dict[str, Any] | None:
    """The server message as this session may see it (None = do not send).

    Covers the permission-driven filters on `event/room/join` and on `message`; chat
    comments in `event/room/message` go through `relay.signaling.chat.room_message_events`.
    """
    if not permissions.hide_displaynames:
        return msg
    kind = msg.get("type")
    if kind == "message":
        body = msg.get("message")
        if isinstance(body, dict) and is_nick_changed(body.get("data")):
            return None
        return msg
    if kind == "event":
        event = msg.get("event")
        if (
            isinstance(event, dict)
            and event.get("target") == "room"
            and event.get("type") == "join"
            and isinstance(event.get("join"), list)
        ):
            return {**msg, "event": {**event, "join": hide_join_displaynames(event["join"])}}
    return msg
