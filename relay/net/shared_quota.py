"""The quota ledger of a server with worker processes: a table in shared memory.

One row per worker, written only by that worker (and zeroed by the supervisor when the
worker is gone, since its allocations went with it): its allocation count, and per user a
count-min sketch (`HASHES` rows of `SLOTS` counters, a user counted in one slot of each).
A check sums a column over the workers; the user estimate is the smallest of its slots,
never below the true count (two users only share a quota if they collide in every hash).
A POSIX record lock (`lockf`, per process) on the memory's file makes check-and-count one
step across workers; it is taken on Allocate and on deletion only, never on the data path.

The memory is a `memfd` the supervisor creates and passes to each worker by descriptor.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os

from relay.turn.quota import QuotaLedger

__all__ = ["SharedQuota"]

SLOTS = 4096
HASHES = 2
_ROW = 1 + HASHES * SLOTS  # int64 counters: total, then the sketch


class SharedQuota(QuotaLedger):
    """`workers` rows over the memory behind `fd`; this process writes row `index`."""

    def __init__(self, fd: int, workers: int, index: int) -> None:
        self.fd = fd
        self.workers = workers
        self.index = index
        self._map = mmap.mmap(fd, workers * _ROW * 8)
        self._q = memoryview(self._map).cast("q")

    @classmethod
    def create(cls, workers: int) -> SharedQuota:
        """The supervisor's table (zeroed), at index -1: it writes no row of its own."""
        fd = os.memfd_create("relay-quota", 0)
        os.ftruncate(fd, workers * _ROW * 8)
        return cls(fd, workers, -1)

    def close(self) -> None:
        self._q.release()
        self._map.close()

    def _slots(self, user_id: str) -> list[int]:
        h = hashlib.blake2b(user_id.encode(), digest_size=4 * HASHES).digest()
        return [1 + k * SLOTS + int.from_bytes(h[4 * k : 4 * k + 4], "big") % SLOTS
                for k in range(HASHES)]

    def _lock(self) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_EX)

    def _unlock(self) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def total(self) -> int:
        q = self._q
        return sum(q[w * _ROW] for w in range(self.workers))

    def user_count(self, user_id: str) -> int:
        q = self._q
        return min(sum(q[w * _ROW + s] for w in range(self.workers))
                   for s in self._slots(user_id))

    def reserve(self, user_id: str, user_quota: int, total_quota: int) -> str | None:
        slots = self._slots(user_id)
        self._lock()
        try:
            if user_quota and self.user_count(user_id) >= user_quota:
                return "user"
            if total_quota and self.total() >= total_quota:
                return "total"
            q = self._q
            row = self.index * _ROW
            q[row] += 1
            for s in slots:
                q[row + s] += 1
            return None
        finally:
            self._unlock()

    def release(self, user_id: str) -> None:
        slots = self._slots(user_id)
        self._lock()
        try:
            q = self._q
            row = self.index * _ROW
            if q[row] > 0:
                q[row] -= 1
            for s in slots:
                if q[row + s] > 0:
                    q[row + s] -= 1
        finally:
            self._unlock()

    def clear_row(self, index: int) -> None:
        """Worker `index` is gone, and its allocations with it."""
        self._lock()
        try:
            self._q[index * _ROW : (index + 1) * _ROW] = memoryview(bytes(_ROW * 8)).cast("q")
        finally:
            self._unlock()
