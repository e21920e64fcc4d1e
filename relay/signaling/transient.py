"""Room transient data: the `transient` client message and the per-room store (sans-IO).

Owns (reference `talk-features.md` §7; upstream `api/transient_data.go`,
`api/signaling.go` `TransientDataClientMessage`, `server/hub.go` `processTransientMsg`,
`isAllowedToUpdateTransientData(Key)`, `server/room.go` l.1311-1414):

- `parse_transient(payload)`: the `transient` object of a client message, checked as
  upstream does (`type` and, for `set`/`remove`, `key` required -> `invalid_format`);
- `TransientStore`: the key/value data of one room. `set` / `remove` apply the checks in
  upstream's order (an unknown type -> `ignored`; missing `transient-data` permission ->
  `not_allowed`; an `sd:<id>` key not the sender's own -> `not_allowed`; internal clients
  skip both) and return the server messages every listener of the room gets. A `set` of
  an equal value (deep compare of decoded JSON) sends nothing and only resets the TTL; a
  `set` with an absent or null value is a `remove`; removing a missing key is silent.
- TTLs are nanoseconds on the wire; the store keeps absolute deadlines in the caller's
  clock (`now`, float seconds). `next_deadline()` tells the caller when to call
  `expire(now)`, which removes an entry only if it still holds the value it was set with.

The caller owns "is the sender in a room" (`not_in_room` "No room joined yet." comes
before the type check), the listener list (every client session in the room, including
the sender; virtual sessions excluded), sending `initial()` to a joiner, calling
`session_left(public_id)` after a session left (it no longer listens), and dropping the
store with the room.
"""

from __future__ import annotations

import heapq
from typing import Any

import attrs

from relay.signaling.permissions import Permissions
from relay.signaling.protocol import SignalingError

SESSION_DATA_PREFIX = "sd:"
INVALID_FORMAT_MESSAGE = "Invalid data format."
NOT_ALLOWED_DATA = "Not allowed to update transient data."
NOT_ALLOWED_KEY = "Not allowed to update this transient data entry."
INT64_MAX = 2**63 - 1
NS_PER_SECOND = 1_000_000_000


def not_in_room() -> SignalingError:
    """The caller's answer when the sender has not joined a room (checked first)."""
    return SignalingError("not_in_room", "No room joined yet.")


def _invalid() -> SignalingError:
    return SignalingError("invalid_format", INVALID_FORMAT_MESSAGE)


@attrs.frozen
class TransientRequest:
    """A client's `transient` message. `value is None` = absent or null."""

    type: str
    key: str = ""
    value: Any = None
    ttl_ns: int = 0


def parse_transient(payload: Any) -> TransientRequest:
    """The `transient` object of a client message, or `invalid_format`."""
    if not isinstance(payload, dict):
        raise _invalid()
    kind = payload.get("type")
    key = payload.get("key")
    ttl = payload.get("ttl")
    if kind is not None and not isinstance(kind, str):
        raise _invalid()
    if key is not None and not isinstance(key, str):
        raise _invalid()
    if ttl is not None and (
        isinstance(ttl, bool) or not isinstance(ttl, int) or not -INT64_MAX - 1 <= ttl <= INT64_MAX
    ):
        raise _invalid()
    kind = kind or ""
    key = key or ""
    if not kind:
        raise _invalid()
    if kind in ("set", "remove") and not key:
        raise _invalid()
    return TransientRequest(kind, key, payload.get("value"), ttl or 0)


@attrs.frozen
class Writer:
    """Who asks for a change: checked against permissions unless `internal`."""

    public_id: str
    permissions: Permissions = attrs.field(factory=Permissions)
    internal: bool = False


def check_allowed(writer: Writer, key: str) -> None:
    """Upstream's two checks, in order; internal clients may write any key."""
    if writer.internal:
        return
    if not writer.permissions.may_write_transient:
        raise SignalingError("not_allowed", NOT_ALLOWED_DATA)
    if key.startswith(SESSION_DATA_PREFIX) and key[len(SESSION_DATA_PREFIX):] != writer.public_id:
        raise SignalingError("not_allowed", NOT_ALLOWED_KEY)


def json_equal(a: Any, b: Any) -> bool:
    """Equality of decoded JSON values as upstream compares them: numbers by value
    (1 == 1.0), but booleans are not numbers; objects by keys, arrays by order."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(v, b[k]) for k, v in a.items())
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is not type(b):
        return False
    return bool(a == b)


def set_message(key: str, value: Any, old: Any = None, had_old: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "set", "key": key}
    if had_old:
        body["oldvalue"] = old
    body["value"] = value
    return {"type": "transient", "transient": body}


def remove_message(key: str, old: Any) -> dict[str, Any]:
    return {"type": "transient", "transient": {"type": "remove", "key": key, "oldvalue": old}}


def initial_message(data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "transient", "transient": {"type": "initial", "data": data}}


@attrs.define
class _Timer:
    deadline: float
    value: Any  # the value the entry was set with


class TransientStore:
    """The transient data of one room. Methods return the messages for all listeners."""

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}
        self._timers: dict[str, _Timer] = {}
        self._heap: list[tuple[float, int, str]] = []  # may hold stale items
        self._seq = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def get(self, key: str) -> Any:
        return self._data.get(key)

    @property
    def data(self) -> dict[str, Any]:
        """A copy of the current key/value data."""
        return dict(self._data)

    # --- client requests ----------------------------------------------------------------

    def handle(self, request: TransientRequest, writer: Writer, now: float) -> list[dict[str, Any]]:
        """A parsed client request from a session that is in this room."""
        if request.type == "set":
            return self.set(request.key, request.value, request.ttl_ns, now, writer)
        if request.type == "remove":
            return self.remove(request.key, writer)
        raise SignalingError("ignored", "Unsupported message type.")

    def set(
        self, key: str, value: Any, ttl_ns: int, now: float, writer: Writer | None = None
    ) -> list[dict[str, Any]]:
        """Set `key`; `writer=None` = the server itself (no checks). `ttl_ns <= 0` = no
        expiry. A null value removes the key."""
        if writer is not None:
            check_allowed(writer, key)
        if value is None:
            return self._remove(key)
        had_old = key in self._data
        old = self._data.get(key)
        if had_old and json_equal(old, value):
            self._arm(key, value, ttl_ns, now)
            return []
        self._data[key] = value
        self._arm(key, value, ttl_ns, now)
        return [set_message(key, value, old, had_old)]

    def remove(self, key: str, writer: Writer | None = None) -> list[dict[str, Any]]:
        if writer is not None:
            check_allowed(writer, key)
        return self._remove(key)

    # --- room events --------------------------------------------------------------------

    def initial(self) -> dict[str, Any] | None:
        """The `initial` message for a session joining the room, if there is data."""
        if not self._data:
            return None
        return initial_message(dict(self._data))

    def session_left(self, public_id: str) -> list[dict[str, Any]]:
        """A session left the room: its `sd:<public id>` entry goes."""
        return self._remove(SESSION_DATA_PREFIX + public_id)

    # --- timers -------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        while self._heap:
            deadline, _, key = self._heap[0]
            timer = self._timers.get(key)
            if timer is not None and timer.deadline == deadline:
                return deadline
            heapq.heappop(self._heap)
        return None

    def expire(self, now: float) -> list[dict[str, Any]]:
        """Remove the entries whose TTL has passed (in deadline order)."""
        out: list[dict[str, Any]] = []
        while True:
            deadline = self.next_deadline()
            if deadline is None or deadline > now:
                return out
            _, _, key = heapq.heappop(self._heap)
            timer = self._timers.pop(key)
            if key in self._data and json_equal(self._data[key], timer.value):
                out.append(self._drop(key))

    # --- internals ----------------------------------------------------------------------

    def _arm(self, key: str, value: Any, ttl_ns: int, now: float) -> None:
        if ttl_ns <= 0:
            self._timers.pop(key, None)
            return
        deadline = now + ttl_ns / NS_PER_SECOND
        self._timers[key] = _Timer(deadline, value)
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, key))

    def _remove(self, key: str) -> list[dict[str, Any]]:
        if key not in self._data:
            return []
        return [self._drop(key)]

    def _drop(self, key: str) -> dict[str, Any]:
        old = self._data.pop(key)
        self._timers.pop(key, None)
        return remove_message(key, old)
