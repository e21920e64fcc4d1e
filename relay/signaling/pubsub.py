"""In-process message bus with spreed-signaling's subject names.

Subjects: `session.<public id>`, `user.<b64(userid|backendid)>`, `room.<b64(roomid|backendid)>`,
`backend.room.<b64(roomid|backendid)>` (base64 because room ids may contain spaces). Delivery
is synchronous: `publish` calls each subscriber's handler in subscription order and returns
how many received it. A networked bus (NATS) can replace this class behind the same three
methods; the payloads are JSON-shaped dicts for that reason.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

Handler = Callable[[dict[str, Any]], None]


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def session_subject(public_id: str) -> str:
    return f"session.{public_id}"


def user_subject(user_id: str, backend_id: str) -> str:
    return f"user.{_b64(f'{user_id}|{backend_id}')}"


def room_subject(room_id: str, backend_id: str) -> str:
    return f"room.{_b64(f'{room_id}|{backend_id}')}"


def backend_room_subject(room_id: str, backend_id: str) -> str:
    return f"backend.room.{_b64(f'{room_id}|{backend_id}')}"


class Subscription:
    __slots__ = ("_bus", "handler", "subject")

    def __init__(self, bus: LoopbackBus, subject: str, handler: Handler) -> None:
        self._bus = bus
        self.subject = subject
        self.handler = handler

    def close(self) -> None:
        self._bus._remove(self)


class LoopbackBus:
    """The single-process bus (upstream's `nats://loopback`)."""

    def __init__(self) -> None:
        # subject -> subscriptions in subscription order (a dict: O(1) unsubscribe)
        self._subs: dict[str, dict[Subscription, None]] = {}
        self.published = 0
        self.dropped = 0  # published with nobody listening

    def subscribe(self, subject: str, handler: Handler) -> Subscription:
        sub = Subscription(self, subject, handler)
        self._subs.setdefault(subject, {})[sub] = None
        return sub

    def _remove(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.subject)
        if subs is None:
            return
        if sub not in subs:
            return
        del subs[sub]
        if not subs:
            del self._subs[sub.subject]

    def has_subscribers(self, subject: str) -> bool:
        return subject in self._subs

    def publish(self, subject: str, message: dict[str, Any]) -> int:
        self.published += 1
        subs = self._subs.get(subject)
        if not subs:
            self.dropped += 1
            return 0
        # A handler may unsubscribe (or subscribe) while we deliver: iterate a copy.
        snapshot = tuple(subs)
        for sub in snapshot:
            sub.handler(message)
        return len(snapshot)
