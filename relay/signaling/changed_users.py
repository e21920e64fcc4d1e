"""`changed-users`: what the server does when Nextcloud no longer sends full user lists (sans-IO).

Reference `talk-features.md` §6.2 (upstream branch `remove-all-users-talk-requests`). Once a
signaling server lists `changed-users`, Talk stops sending `alluserids` (`invite`,
`disinvite`), `userids` (`update`, `delete`) and `users` (`participants`, `incall`); it
never switches back. The server then

- sends the `roomlist` `update` to the sessions currently in the room instead of to user
  ids (`invite` still invites `userids`; `disinvite` sends the update before the
  disinvites);
- on `delete` sends every session in the room a `roomlist` `disinvite` with reason
  `deleted` before it leaves the room;
- keeps per room the last user entry of each session from `incall.changed` (dropped when
  the session leaves) and sends those as the `users` of `participants` `update` events.

Older Talk versions still send the lists; a request that carries its list is handled the
way it always was, so both kinds of Nextcloud work against the same server. The list key
being present (even empty) is what tells the two apart.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any

# The key of the full list each room request type carried before `changed-users`.
LIST_KEYS: dict[str, str] = {
    "invite": "alluserids",
    "disinvite": "alluserids",
    "update": "userids",
    "delete": "userids",
    "participants": "users",
    "incall": "users",
}


def has_full_list(kind: str, request: dict[str, Any]) -> bool:
    """Whether Nextcloud sent the full list for this request type (the old contract)."""
    key = LIST_KEYS.get(kind)
    return key is not None and key in request


def remember(
    users: dict[str, dict[str, Any]], members: Container[str], changed: list[dict[str, Any]]
) -> None:
    """Record the `incall.changed` entries (already rewritten to public ids) of sessions
    that are in the room (`members`) as their last known user entry."""
    for entry in changed:
        sid = entry.get("sessionId", entry.get("sessionid"))
        if isinstance(sid, str) and sid in members:
            users[sid] = entry


def users_for_update(
    kind: str, request: dict[str, Any], users: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """The `users` of the `participants` `update` event: the list Nextcloud sent, or,
    without it, the room's last known entries."""
    if has_full_list(kind, request):
        raw = request.get("users")
        return [e for e in raw if isinstance(e, dict)] if isinstance(raw, list) else []
    return list(users.values())


def deleted_event(room_id: str) -> dict[str, Any]:
    """The `roomlist` `disinvite` every session in a deleted room gets."""
    return {"type": "event", "event": {"target": "roomlist", "type": "disinvite",
                                       "disinvite": {"roomid": room_id, "reason": "deleted"}}}
