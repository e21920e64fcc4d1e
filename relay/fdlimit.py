"""File descriptors: the process's limit, the headroom relay keeps, and refusing one thing
(never the whole server) when the table is full.

Every socket, accepted connection and relay port costs a descriptor, and the common default
soft `RLIMIT_NOFILE` of 1024 is far below what a busy relay holds: `raise_nofile_limit`
lifts the soft limit to the hard one at start (the CLI logs both).

The table is process-wide, so this guard is too (`GUARD`).  It keeps a headroom (`reserve`
descriptors below the soft limit): a relay socket or an accepted TURN/signaling connection
whose descriptor lands in it is closed at once and refused (508 for the Allocate, a closed
connection otherwise), so the admin endpoints (`/ready`, `/metrics`), the self-probe and
the refusals themselves still find descriptors when clients have taken all the others.
Linux hands out the lowest free number, so a new descriptor at or above the threshold means
the table below it is full: the check is one comparison.  EMFILE, ENFILE and ENOBUFS from
`socket()`, `accept()` or `bind()` are refused the same way.  Each refusal is counted
(`relay_fd_exhausted_total{where}`) and logged at most once per second.

`serve_accepts` is the accept loop of the TURN-TCP/TLS, signaling and admin listeners (in
place of `trio.serve_listeners`, which logs a traceback every 0.1 s while accept fails with
EMFILE): it refuses as above (the admin listener may use the reserve) and caps the
connections one source IP holds at once (`relay_connections_refused_total{where, reason}`).
`RateLimitedAcceptLog` quiets any other accept loop built on `trio.serve_listeners`.
"""

from __future__ import annotations

import errno
import logging
import resource
import socket
import struct
import time
from collections.abc import Awaitable, Callable

import trio

__all__ = [
    "FD_ERRNOS",
    "GUARD",
    "WHERE",
    "FdGuard",
    "is_fd_exhaustion",
    "raise_nofile_limit",
    "serve_accepts",
]

log = logging.getLogger("relay.fd")

FD_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Where a descriptor can be refused: the label values of relay_fd_exhausted_total.
WHERE = ("turn_accept", "signaling_accept", "relay_socket", "probe", "admin_accept")
# Listeners with a per-IP connection cap: the `where` of relay_connections_refused_total.
CAPPED = ("turn_accept", "signaling_accept")
LOG_INTERVAL = 1.0  # seconds between two log lines about refusals
ACCEPT_BACKOFF = 0.1  # seconds an accept loop waits after EMFILE before trying again
# Transient accept errors of one connection (it was reset before we took it, ...).
_ACCEPT_TRANSIENT = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EAGAIN})
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends a reset


def is_fd_exhaustion(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in FD_ERRNOS


def reserve_for(limit: int) -> int:
    """The headroom kept below a soft limit: 1/16 of it, between 16 and 256."""
    return max(16, min(256, limit // 16))


class FdGuard:
    """The headroom threshold and the refusal counters (plain ints, read at scrape time)."""

    __slots__ = ("capped", "exhausted", "last_log", "limit", "reserve", "suppressed",
                 "threshold")

    def __init__(self, limit: int | None = None) -> None:
        self.exhausted: dict[str, int] = dict.fromkeys(WHERE, 0)
        self.capped: dict[str, int] = dict.fromkeys(CAPPED, 0)
        self.last_log = -LOG_INTERVAL
        self.suppressed = 0
        self.limit = 0
        self.reserve = 0
        self.threshold = 0
        self.configure(limit if limit is not None else current_soft_limit())

    def configure(self, limit: int) -> None:
        """Take the soft limit as it now is (after `raise_nofile_limit`)."""
        self.limit = limit
        self.reserve = reserve_for(limit)
        self.threshold = limit - self.reserve

    def in_reserve(self, fd: int) -> bool:
        """True when a descriptor just opened lies in the headroom (the table is full)."""
        return fd >= self.threshold

    def refused(self, where: str, detail: object = None) -> None:
        """Count one refusal; log it unless another was logged within the last second."""
        self.exhausted[where] += 1
        now = time.monotonic()
        if now - self.last_log < LOG_INTERVAL:
            self.suppressed += 1
            return
        self.last_log = now
        more = f" (and {self.suppressed} more since the last report)" if self.suppressed else ""
        self.suppressed = 0
        log.warning("out of file descriptors (limit %d, %d kept in reserve): refused %s%s%s",
                    self.limit, self.reserve, where, f": {detail}" if detail else "", more)


def current_soft_limit() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return int(soft)


GUARD = FdGuard()


def raise_nofile_limit(guard: FdGuard = GUARD) -> tuple[int, int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit: (soft before, soft now, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = soft
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard
        if hard == resource.RLIM_INFINITY:  # Linux caps it at fs.nr_open anyway
            target = 1 << 20
        for value in (target, 1 << 20, 65536):
            if value <= soft:
                break
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (value, hard))
            except (ValueError, OSError):
                continue
            new = value
            break
    guard.configure(current_soft_limit())
    return int(soft), int(new), int(hard)


class RateLimitedAcceptLog(logging.Filter):
    """For loggers of accept loops we do not own (hypercorn's, via trio.serve_listeners):
    an EMFILE there is counted as `admin_accept` and logged by the guard at most once per
    second instead of a traceback every 0.1 s."""

    def __init__(self, guard: FdGuard = GUARD) -> None:
        super().__init__()
        self.guard = guard

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and is_fd_exhaustion(exc):
            self.guard.refused("admin_accept", exc)
            return False
        return True


def quiet_foreign_accept_loops(guard: FdGuard = GUARD) -> None:
    """Install `RateLimitedAcceptLog` on trio's serve_listeners logger (once)."""
    logger = logging.getLogger("trio.serve_listeners")
    if not any(isinstance(f, RateLimitedAcceptLog) for f in logger.filters):
        logger.addFilter(RateLimitedAcceptLog(guard))


Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def serve_accepts(
    listeners: list[trio.socket.SocketType],
    handler: Handler,
    *,
    where: str,
    per_ip: int = 0,
    exempt: Callable[[str], bool] | None = None,
    reserved: bool = False,
    guard: FdGuard = GUARD,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept on every listening socket until cancelled; each connection is served by
    `handler(stream)` in its own task.  A connection is closed at once, unserved, when its
    descriptor lies in the reserve or its source IP already holds `per_ip` connections
    (0: no cap; `exempt(ip)` True: no cap for that IP, e.g. a trusted reverse proxy that
    carries everyone's connections); EMFILE and the like on accept wait `ACCEPT_BACKOFF`
    and retry, counted and logged by the guard.  `reserved`: this listener may use the
    reserve (the admin endpoints, which the reserve is kept for)."""
    active: dict[str, int] = {}  # source IP -> connections served now

    async def serve(sock: trio.socket.SocketType, ip: str) -> None:
        try:
            await handler(trio.SocketStream(sock))
        finally:
            n = active[ip] - 1
            if n:
                active[ip] = n
            else:
                del active[ip]

    async def accept_loop(lsock: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        while True:
            try:
                sock, addr = await lsock.accept()
            except OSError as exc:
                if exc.errno in FD_ERRNOS:
                    guard.refused(where, exc.strerror)
                    await trio.sleep(ACCEPT_BACKOFF)
                    continue
                if exc.errno in _ACCEPT_TRANSIENT:
                    continue
                raise
            if not reserved and guard.in_reserve(sock.fileno()):
                _refuse(sock)
                guard.refused(where, "headroom reached")
                continue
            ip = str(addr[0])
            n = active.get(ip, 0)
            if per_ip and n >= per_ip and not (exempt is not None and exempt(ip)):
                _refuse(sock)
                guard.capped[where] += 1
                continue
            active[ip] = n + 1
            nursery.start_soon(serve, sock, ip)

    async with trio.open_nursery() as nursery:
        for lsock in listeners:
            nursery.start_soon(accept_loop, lsock, nursery)
        task_status.started()


def _refuse(sock: trio.socket.SocketType) -> None:
    """Close an accepted connection at once, with a reset (no TIME_WAIT left behind)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass
    sock.close()
