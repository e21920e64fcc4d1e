"""Reload and shutdown of the signaling hub: the `signaling` section applied live, and a
goodbye to every client when relay drains.

Backends are matched by id.  A backend that stays keeps its sessions and rooms, which are
pointed at its new entry (a new secret, URLs or session limit count from the next request);
an added backend serves from the next `hello`; a removed backend's sessions get `bye`
(reason `backend_removed`) and end.  The listen address and the other server settings are
read at start only.
"""

from __future__ import annotations

from relay.config.signaling import SignalingConfig
from relay.signaling import protocol as p
from relay.signaling.backend import Backends
from relay.signaling.hub import CLOSE_NORMAL, Hub

SHUTDOWN_REASON = "shutdown"
REMOVED_REASON = "backend_removed"


def reconfigure(hub: Hub, config: SignalingConfig) -> list[str]:
    """Apply a reloaded `signaling` section to `hub`; what changed, one line each."""
    old = {b.id: b for b in hub.backends.active}
    backends = Backends(config)
    new = {b.id: b for b in backends.active}
    changes = [f"signaling backend {bid}: added" for bid in new if bid not in old]
    for bid, b in old.items():
        if bid not in new:
            changes.append(f"signaling backend {bid}: removed")
        elif new[bid] != b:
            what = "re-keyed" if new[bid].secret != b.secret else "updated"
            changes.append(f"signaling backend {bid}: {what}")
    hub.backends = backends
    hub.config = config
    ended = 0
    for session in list(hub.sessions.values()):
        backend = new.get(session.backend.id)
        if backend is None:
            hub._close_conn(session, REMOVED_REASON)
            hub._destroy(session)
            ended += 1
        else:
            session.backend = backend
    for room in hub.rooms.values():
        backend = new.get(room.backend.id)
        if backend is not None:
            room.backend = backend
    if ended:
        changes.append(f"signaling: {ended} session(s) of removed backends ended")
    return changes


def say_goodbye(hub: Hub) -> int:
    """Drain: every client gets `bye` and a close frame, new ones too (`hub.draining`).
    The number of connections told."""
    hub.draining = True
    told = 0
    for session in list(hub.sessions.values()):
        link = hub._links.get(session.public_id)
        if link is not None and link.conn is not None:
            hub._close_conn(session, SHUTDOWN_REASON)
            told += 1
    for conn in list(hub._waiting):
        hub._send_conn(conn, p.bye_message(reason=SHUTDOWN_REASON))
        conn.close(CLOSE_NORMAL, "")
        told += 1
    return told


def open_connections(hub: Hub) -> int:
    """WebSocket connections not yet gone (a drain waits, bounded, for them to close)."""
    return len(hub._by_conn) + len(hub._waiting)
