"""chat-relay: what one session receives for a backend `message` request (sans-IO).

Owns (reference `talk-features.md` §6.1 and §2.3; upstream `server/clientsession.go`
`filterMessage` "message" case, `api/signaling.go` `RoomEventMessageDataChat`,
`IsChatRefresh`): turning the `data` of Nextcloud's room `message` request into the
`event/room/message` messages for one receiving session, given whether it announced the
client feature `chat-relay` and whether it has `hide-displaynames`:

- new style (`refresh:true` plus `comment` and/or `comments`): `chat-relay` clients lose
  `refresh`, others lose the comments and get exactly one `{"type":"chat","chat":
  {"refresh":true}}`;
- remaining comments (`comment` first, then `comments`, null ones dropped) go out one
  event per comment, `{"type":"chat","chat":{"comment":{...}}}`;
- under `hide-displaynames` a non-empty `actorDisplayName` of an object comment is
  blanked;
- rewritten data keeps only `type` and `chat.{refresh,comment,comments}`; anything that
  is not a readable chat payload (old-style refresh, other types, unexpected shapes) is
  delivered unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

CHAT_RELAY = "chat-relay"  # the client feature (hello `features`)


def room_message_event(room_id: str, data: Any) -> dict[str, Any]:
    """`event/room/message` as upstream sends it (`data` omitted when null)."""
    message: dict[str, Any] = {"roomid": room_id}
    if data is not None:
        message["data"] = data
    return {"type": "event", "event": {"target": "room", "type": "message", "message": message}}


@attrs.frozen
class _Chat:
    type: str
    refresh: bool
    comment: Any  # None = absent or null
    comments: tuple[Any, ...]  # None items = null entries


class _Unreadable(Exception):
    pass


def _optional(obj: dict[str, Any], key: str, kind: type) -> Any:
    """`obj[key]` if absent/null or of `kind`; _Unreadable otherwise."""
    value = obj.get(key)
    if value is not None and not isinstance(value, kind):
        raise _Unreadable
    return value


def _read(data: Any) -> _Chat | None:
    """The chat payload as upstream's typed decoder sees it; None = not a chat payload.
    Raises _Unreadable where upstream's decoder fails (the message then passes as is)."""
    if not isinstance(data, dict):
        raise _Unreadable
    kind = _optional(data, "type", str)
    chat = _optional(data, "chat", dict)
    if chat is None:
        return None
    refresh = _optional(chat, "refresh", bool)
    comments = _optional(chat, "comments", list)
    if kind != "chat":
        return None
    return _Chat(kind, bool(refresh), chat.get("comment"), tuple(comments or ()))


def _has_comment(c: _Chat) -> bool:
    return c.comment is not None or any(x is not None for x in c.comments)


def _blank_display_name(comment: Any) -> tuple[Any, bool]:
    if not isinstance(comment, dict) or "actorDisplayName" not in comment:
        return comment, False
    if comment["actorDisplayName"] == "" and isinstance(comment["actorDisplayName"], str):
        return comment, False
    return {**comment, "actorDisplayName": ""}, True


def _encode(kind: str, refresh: bool, comment: Any = None) -> dict[str, Any]:
    chat: dict[str, Any] = {}
    if refresh:
        chat["refresh"] = True
    if comment is not None:
        chat["comment"] = comment
    return {"type": kind, "chat": chat}


def room_message_events(
    room_id: str, data: Any, features: Iterable[str], hide_displaynames: bool
) -> list[dict[str, Any]]:
    """The `event/room/message` messages one session gets for a backend `message`
    request whose `data` is `data` (possibly several, never none); `features` are the
    session's hello features, `hide_displaynames` its permission."""
    chat_relay = CHAT_RELAY in features
    unchanged = [room_message_event(room_id, data)]
    if data is None:
        return unchanged
    try:
        chat = _read(data)
    except _Unreadable:
        return unchanged
    if chat is None:
        return unchanged
    refresh, comment, comments = chat.refresh, chat.comment, list(chat.comments)
    update = False
    if refresh and _has_comment(chat):
        if chat_relay:
            refresh = False
        else:
            comment, comments = None, []
        update = True
    if comment is not None or any(x is not None for x in comments):
        comments = [x for x in comments if x is not None]
        if comment is not None:
            comments.insert(0, comment)
            comment = None
        if hide_displaynames:
            for i, c in enumerate(comments):
                comments[i], blanked = _blank_display_name(c)
                update = update or blanked
    if not update and not comments:
        return unchanged
    # Without any real comment, null entries of `comments` are still iterated below, as
    # upstream does: each yields the chat without a comment (e.g. one refresh per entry).
    if not comments:
        return [room_message_event(room_id, _encode(chat.type, refresh))]
    return [room_message_event(room_id, _encode(chat.type, refresh, c)) for c in comments]


def is_chat_refresh(msg: dict[str, Any]) -> bool:
    """Whether a server message is an `event/room/message` chat refresh (upstream keeps
    only one of those queued for a session without a socket)."""
    event = msg.get("event") if msg.get("type") == "event" else None
    if not isinstance(event, dict) or event.get("type") != "message":
        return False
    body = event.get("message")
    if not isinstance(body, dict) or body.get("data") is None:
        return False
    try:
        chat = _read(body["data"])
    except _Unreadable:
        return False
    return chat is not None and chat.refresh
