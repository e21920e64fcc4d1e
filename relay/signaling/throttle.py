"""Brute-force throttling of failed attempts, as spreed-signaling's memory throttler.

Sans-IO: every call takes `now` (seconds, the shell's `trio.current_time()`); the caller
sleeps the returned delay in the task of the client that failed, so nobody else waits.

Per client (an IPv4 address, or an IPv6 address masked to its /64) and action, the times
of failed attempts are kept for 12 h. Upstream's rules:

- `check(ip, action, now)`: blocked (`too_many_requests` / HTTP 429, counted in
  `signaling_throttle_bruteforce_total{action}`) when at least 10 failures are stored and
  the 10th most recent is at most 30 min old; a blocked attempt records nothing more.
- `failed(ip, action, now)`: records one failure and returns the delay to sleep:
  100 ms doubled per failure already stored, at most 25 s (counted in
  `signaling_throttle_delayed_total{action,delay}`, delay in milliseconds).
- A success does not reset the history.

Actions (label values as upstream): `HelloResume` (resume with an unknown id),
`HelloInternal` (internal hello with a bad token), `BackendRoomAuth` (room API request
with an unknown backend or a bad checksum).
"""

from __future__ import annotations

import ipaddress
from collections import deque

import attrs

HELLO_RESUME = "HelloResume"
HELLO_INTERNAL = "HelloInternal"
BACKEND_ROOM_AUTH = "BackendRoomAuth"
ACTIONS = (HELLO_RESUME, HELLO_INTERNAL, BACKEND_ROOM_AUTH)

MAX_ATTEMPTS = 10
BLOCK_WINDOW = 30 * 60.0
MAX_AGE = 12 * 3600.0
BASE_DELAY = 0.1
MAX_DELAY = 25.0


def client_key(ip: str) -> str:
    """IPv4 (and unparsable text) as given; IPv6 masked to its /64."""
    try:
        addr = ipaddress.ip_address(ip.strip("[]"))
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Address(int(addr) >> 64 << 64))
    return str(addr)


def delay_for(stored: int) -> float:
    """The delay after a failure when `stored` failures were already recorded."""
    if stored > 16:
        return MAX_DELAY
    return min(BASE_DELAY * (1 << stored), MAX_DELAY)


def delay_label(delay: float) -> str:
    """The `delay` label: whole milliseconds as a decimal string."""
    return str(round(delay * 1000))


@attrs.define
class Throttler:
    """Failed attempts per (client, action), and the counters the metrics collector reads
    (pass `SignalingStats.throttle_delayed` / `.throttle_bruteforce`)."""

    delayed: dict[tuple[str, str], int] = attrs.Factory(dict)  # (action, delay ms)
    bruteforce: dict[str, int] = attrs.Factory(dict)  # action
    _entries: dict[tuple[str, str], deque[float]] = attrs.Factory(dict)

    def check(self, ip: str, action: str, now: float) -> bool:
        """True when this client is blocked for `action` (counted)."""
        key = (client_key(ip), action)
        entries = self._entries.get(key)
        if not entries:
            return False
        if len(entries) >= MAX_ATTEMPTS and now - entries[-MAX_ATTEMPTS] <= BLOCK_WINDOW:
            self.bruteforce[action] = self.bruteforce.get(action, 0) + 1
            return True
        self._prune(key, entries, now)
        return False

    def failed(self, ip: str, action: str, now: float) -> float:
        """Record a failed attempt; the delay (seconds) the caller sleeps before answering."""
        key = (client_key(ip), action)
        entries = self._entries.setdefault(key, deque())
        delay = delay_for(len(entries))
        entries.append(now)
        label = (action, delay_label(delay))
        self.delayed[label] = self.delayed.get(label, 0) + 1
        return delay

    def cleanup(self, now: float) -> None:
        """Forget failures older than 12 h (the shell calls this every minute)."""
        for key, entries in list(self._entries.items()):
            self._prune(key, entries, now)

    def _prune(self, key: tuple[str, str], entries: deque[float], now: float) -> None:
        while entries and now - entries[0] > MAX_AGE:
            entries.popleft()
        if not entries:
            del self._entries[key]

    @property
    def tracked(self) -> int:
        """How many (client, action) histories are stored."""
        return len(self._entries)


class RecentIds:
    """The resume ids of sessions that ended lately (bounded): resuming one of them is a
    client coming back too late, not a guess, and is not throttled (as upstream, whose
    expired ids still decode)."""

    def __init__(self, limit: int = 65536) -> None:
        self.limit = limit
        self._ids: dict[str, None] = {}

    def add(self, resume_id: str) -> None:
        self._ids[resume_id] = None
        if len(self._ids) > self.limit:
            del self._ids[next(iter(self._ids))]

    def __contains__(self, resume_id: object) -> bool:
        return resume_id in self._ids
