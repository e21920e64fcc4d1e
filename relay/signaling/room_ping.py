"""The room ping to Nextcloud, batched as upstream's `RoomPing`.

Every 10 s the hub tells each Nextcloud which Talk sessions are still connected. Without
the capability `config.signaling.session-ping-limit` (or with a limit <= 0) there is one
`ping` per room; with it, the entries of all rooms that go to the same backend URL are sent
together (`roomid` ""), in chunks of at most `limit` entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Entries = list[dict[str, str]]


def ping_request(room_id: str, entries: Entries) -> dict[str, Any]:
    return {"type": "ping", "ping": {"version": "1.0", "roomid": room_id, "entries": entries}}


def ping_requests(rooms: Sequence[tuple[str, Entries]], limit: int | None) -> list[dict[str, Any]]:
    """The requests for one backend URL: per room without a limit, else combined chunks."""
    if limit is None or limit <= 0:
        return [ping_request(room_id, entries) for room_id, entries in rooms if entries]
    combined = [e for _, entries in rooms for e in entries]
    return [ping_request("", combined[i:i + limit]) for i in range(0, len(combined), limit)]
