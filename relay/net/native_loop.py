"""The compiled loop of the native datagram plane (relay/net/native.py says what it does).

Compiled by numba on first use and cached beside this file (or in the user's cache when
that is not writable); it calls libc's epoll_wait, recvmmsg, sendto and clock_gettime
directly and runs without the GIL.  recvmmsg reads every datagram a socket holds (up to
READS) in one call, so a readable socket costs no extra call that finds it empty.
Importing this module imports numba.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit
from numba import types as nt
from numba.typed import Dict

from relay.net.native import (
    _AF_INET,
    _AF_INET6,
    _CLOCK_MONOTONIC,
    _EAGAIN,
    _MSG_DONTWAIT,
    _PERM_ROUTE,
    _SEND_ROUTE,
    BUDGET,
    EVENTS,
    IDLE,
    PUNT,
    PUNT_CLIENT,
    PUNT_PEER,
    READS,
    RX_B,
    RX_P,
    SOCKADDR,
    TRIO,
    TX_B,
    TX_P,
)

_i32, _intp, _u32 = nt.int32, nt.intp, nt.uint32
_recvmmsg: Any = nt.ExternalFunction("recvmmsg", _i32(_i32, _intp, _u32, _i32, _intp))
_sendto: Any = nt.ExternalFunction("sendto", _intp(_i32, _intp, _intp, _i32, _intp, _u32))
_epoll_wait: Any = nt.ExternalFunction("epoll_wait", _i32(_i32, _intp, _i32, _i32))
_clock_gettime: Any = nt.ExternalFunction("clock_gettime", _i32(_i32, _intp))
_sendmsg: Any = nt.ExternalFunction("sendmsg", _intp(_i32, _intp, _i32))
_errno: Any = nt.ExternalFunction("__errno_location",
                                  nt.CPointer(_i32)())  # type: ignore[no-untyped-call]
KEY = nt.UniTuple(nt.int64, 4)  # type: ignore[no-untyped-call]


@njit(cache=True, nogil=True, boundscheck=False)
def _key_of(sa: Any) -> Any:  # pragma: no cover - compiled
    port = (np.int64(sa[2]) << 8) | np.int64(sa[3])
    if sa[0] == _AF_INET6 and sa[1] == 0:
        a = np.int64(0)
        b = np.int64(0)
        for i in range(8):
            a = (a << 8) | np.int64(sa[8 + i])
            b = (b << 8) | np.int64(sa[16 + i])
        return a, b, (np.int64(6) << 48) | port
    ip = ((np.int64(sa[4]) << 24) | (np.int64(sa[5]) << 16) | (np.int64(sa[6]) << 8)
          | np.int64(sa[7]))
    return np.int64(0), np.int64(0), (np.int64(4) << 48) | (ip << 16) | port


@njit(cache=True, nogil=True, boundscheck=False)
def _random(rng: Any) -> Any:  # pragma: no cover - compiled
    """xorshift64*: transaction IDs of Data indications (RFC 8489: random, not secret)."""
    x = rng[0]
    x ^= x >> 12
    x ^= x << 25
    x ^= x >> 27
    rng[0] = x
    return x * np.int64(0x2545F4914F6CDD1D)


@njit(cache=True, nogil=True, boundscheck=False)
def _indication_head(ind: Any, sa: Any, body: Any, n: Any, v6: Any,  # pragma: no cover
                     rng: Any) -> Any:
    """STUN header, XOR-PEER-ADDRESS of the peer in `sa` and the DATA attribute's header
    of a Data indication into `ind`; its length."""
    ind[0] = 0x00
    ind[1] = 0x17
    ind[2] = body >> 8
    ind[3] = body & 0xFF
    ind[4] = 0x21
    ind[5] = 0x12
    ind[6] = 0xA4
    ind[7] = 0x42
    r1 = _random(rng)
    r2 = _random(rng)
    for k in range(8):
        ind[8 + k] = (r1 >> (8 * k)) & 0xFF
    for k in range(4):
        ind[16 + k] = (r2 >> (8 * k)) & 0xFF
    ind[20] = 0x00
    ind[21] = 0x12  # XOR-PEER-ADDRESS
    ind[22] = 0
    ind[23] = 20 if v6 else 8
    ind[24] = 0
    ind[25] = 2 if v6 else 1
    ind[26] = sa[2] ^ 0x21  # port ^ the cookie's high half
    ind[27] = sa[3] ^ 0x12
    if v6:
        for k in range(16):  # address ^ (cookie | transaction ID)
            ind[28 + k] = sa[8 + k] ^ ind[4 + k]
        at = 44
    else:
        for k in range(4):
            ind[28 + k] = sa[4 + k] ^ ind[4 + k]
        at = 32
    ind[at] = 0x00
    ind[at + 1] = 0x13  # DATA
    ind[at + 2] = n >> 8
    ind[at + 3] = n & 0xFF
    return at + 4


@njit(cache=True, nogil=True, boundscheck=False)
def parse_send(buf: Any, n: Any, psa: Any, found: Any) -> Any:  # pragma: no cover - compiled
    """A Send indication in `buf[:n]`, read as `stun.fastpath.scan_send_indication` reads
    it (the first XOR-PEER-ADDRESS and the first DATA; anything malformed: False).  On
    success the peer's sockaddr is in `psa` and `found` holds (sockaddr length, payload
    start, payload end, key a, key b, key c) with the key of `_key_of`.

    Every byte read is below `n` (each attribute is checked to end within the message
    before its value is read), and `n` never exceeds the slot: the checks are the bounds
    checks, in compiled code that has none of its own."""
    if n < 20 or buf[0] != 0x00 or buf[1] != 0x16:
        return False
    length = (np.int64(buf[2]) << 8) | np.int64(buf[3])
    if length + 20 != n or length & 3:
        return False
    if buf[4] != 0x21 or buf[5] != 0x12 or buf[6] != 0xA4 or buf[7] != 0x42:
        return False
    pos = np.int64(20)
    family = 0
    start = np.int64(-1)
    end = np.int64(-1)
    while pos < n:
        if pos + 4 > n:
            return False
        atype = (np.int64(buf[pos]) << 8) | np.int64(buf[pos + 1])
        alen = (np.int64(buf[pos + 2]) << 8) | np.int64(buf[pos + 3])
        vstart = pos + 4
        pos = vstart + alen + (-alen & 3)
        if pos > n:
            return False
        if atype == 0x0012:  # XOR-PEER-ADDRESS
            if family == 0:
                if alen < 4:
                    return False
                fam = buf[vstart + 1]
                if fam == 1 and alen == 8:
                    family = 4
                    psa[0] = _AF_INET
                    psa[1] = 0
                    psa[2] = buf[vstart + 2] ^ 0x21
                    psa[3] = buf[vstart + 3] ^ 0x12
                    for k in range(4):
                        psa[4 + k] = buf[vstart + 4 + k] ^ buf[4 + k]
                    for k in range(8):
                        psa[8 + k] = 0
                elif fam == 2 and alen == 20:
                    family = 6
                    psa[0] = _AF_INET6
                    psa[1] = 0
                    psa[2] = buf[vstart + 2] ^ 0x21
                    psa[3] = buf[vstart + 3] ^ 0x12
                    for k in range(4):
                        psa[4 + k] = 0  # flowinfo
                    for k in range(16):  # address ^ (cookie | transaction ID)
                        psa[8 + k] = buf[vstart + 4 + k] ^ buf[4 + k]
                    for k in range(4):
                        psa[24 + k] = 0  # scope
                else:
                    return False
        elif atype == 0x0013:  # DATA
            if start < 0:
                start = vstart
                end = vstart + alen
    if family == 0 or start < 0:
        return False
    a, b, c = _key_of(psa)
    found[0] = 28 if family == 6 else 16
    found[1] = start
    found[2] = end
    found[3] = a
    found[4] = b
    found[5] = c
    return True


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _to_peer(relay_fd: Any, data: Any, length: Any, sa: Any, salen: Any,  # pragma: no cover
             cl: Any, cl_ctr: Any, drops: Any) -> None:
    """Client -> peer: `length` bytes at address `data` out of the relay socket, counted
    for the cluster, or counted as dropped."""
    if _sendto(relay_fd, data, length, _MSG_DONTWAIT, sa, salen) >= 0:
        cl_ctr[cl, TX_P] += 1
        cl_ctr[cl, TX_B] += length
    elif _errno()[0] == _EAGAIN:
        drops[0] += 1
    else:
        drops[1] += 1


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _punt(punts: Any, npunt: Any, kind: Any, fd: Any, slot: Any,  # pragma: no cover
          n: Any) -> Any:
    """List the datagram in `slot` for Python; the new count."""
    punts[npunt, 0] = kind
    punts[npunt, 1] = fd
    punts[npunt, 2] = slot
    punts[npunt, 3] = n
    return npunt + 1


@njit(cache=True, nogil=True, boundscheck=False)
def pump(epfd: int, nest: int, timeout: int, budget: int, now: float,  # pragma: no cover
         evs: Any, slots: Any, names: Any, mm: Any, punts: Any, out: Any,
         ind: Any, msg: Any, iov: Any, rng: Any, psa: Any, found: Any,
         listeners: Any, up: Any, down: Any,
         up_i: Any, up_f: Any, up_sa: Any, dn_i: Any, dn_f: Any, dn_sa: Any,
         lis_ctr: Any, cl_ctr: Any, drops: Any) -> int:
    """Forward what has routes until datagrams need Python (`punts`), Trio has work, the
    wait times out or `budget` readiness events were handled; returns why (module codes).

    A readable socket is read with one recvmmsg of up to READS datagrams into `slots`
    (`mm[0]` for a listener socket, `mm[1]` for a relay socket: its datagrams land 4 bytes
    into the slot, room for the ChannelData header).  The datagrams of that read that need
    Python are listed in `punts` (kind, fd, slot, length) and the loop returns PUNT after
    the read, their slots and `names` untouched until the next call."""
    evp = evs.ctypes.data
    up_sap = up_sa.ctypes.data
    dn_sap = dn_sa.ctypes.data
    msg_p = msg.ctypes.data
    mm_lis = mm.ctypes.data
    mm_rel = mm_lis + READS * 64
    slot_p = slots.ctypes.data
    slot_size = slots.shape[1]
    handled = 0
    wait = timeout
    tsp = out.ctypes.data + 16  # out[2:4]: a struct timespec
    end = 0
    if timeout > 0:
        _clock_gettime(_CLOCK_MONOTONIC, tsp)
        end = out[2] * 1000 + out[3] // 1000000 + timeout  # in milliseconds
    while True:
        ne = _epoll_wait(epfd, evp, EVENTS, wait)
        if ne <= 0:
            return IDLE
        for e in range(ne):
            o = e * 12 + 4  # struct epoll_event is packed: u32 events, u64 data (the fd)
            fd = (np.int64(evs[o]) | (np.int64(evs[o + 1]) << 8)
                  | (np.int64(evs[o + 2]) << 16) | (np.int64(evs[o + 3]) << 24))
            if fd == nest:
                return TRIO
            npunt = 0
            if fd in listeners:
                row = listeners[fd]
                got = _recvmmsg(fd, mm_lis, READS, _MSG_DONTWAIT, 0)
                for i in range(got):
                    n = np.int64(mm[0, i, 14])
                    mm[0, i, 2] = SOCKADDR  # msg_namelen, for the next read
                    buf = slots[i]
                    first = buf[0]
                    if n >= 4 and 0x40 <= first <= 0x7F:
                        a, b, c = _key_of(names[i])
                        key = ((fd << 16) | (np.int64(first) << 8) | np.int64(buf[1]),
                               a, b, c)
                        if key in up:
                            r = up[key]
                            length = (np.int64(buf[2]) << 8) | np.int64(buf[3])
                            if up_f[r] >= now and length <= n - 4:
                                lis_ctr[row, RX_P] += 1
                                lis_ctr[row, RX_B] += n
                                drops[3] += 1
                                _to_peer(up_i[r, 0], slot_p + i * slot_size + 4, length,
                                         up_sap + r * SOCKADDR, up_i[r, 1], up_i[r, 2],
                                         cl_ctr, drops)
                                continue
                    if first == 0 and n >= 20 and buf[1] == 0x16:  # a Send indication?
                        a, b, c = _key_of(names[i])
                        key = ((fd << 16) | 1, a, b, c)  # the client's allocation
                        if key in up and parse_send(buf, n, psa, found):
                            alloc_id = up[key]
                            # the exact peer address (learned), else any port of it
                            key = (alloc_id | _SEND_ROUTE, found[3], found[4], found[5])
                            r = -1
                            if key in up:
                                r = up[key]
                            else:
                                key = (alloc_id | _SEND_ROUTE, found[3], found[4],
                                       found[5] & ~np.int64(0xFFFF))
                                if key in up:
                                    r = up[key]
                            if r >= 0 and up_f[r] >= now:
                                lis_ctr[row, RX_P] += 1
                                lis_ctr[row, RX_B] += n
                                drops[3] += 1
                                _to_peer(up_i[r, 0], slot_p + i * slot_size + found[1],
                                         found[2] - found[1], psa.ctypes.data, found[0],
                                         up_i[r, 2], cl_ctr, drops)
                                continue
                    npunt = _punt(punts, npunt, PUNT_CLIENT, fd, i, n)
            else:
                got = _recvmmsg(fd, mm_rel, READS, _MSG_DONTWAIT, 0)
                for i in range(got):
                    n = np.int64(mm[1, i, 14])
                    mm[1, i, 2] = SOCKADDR
                    a, b, c = _key_of(names[i])
                    key = (fd, a, b, c)  # a bound channel, or a Data indication learned
                    d = -1
                    if key in down:
                        d = down[key]
                    else:  # a permission that admits every port of the peer's address
                        key = (fd | _PERM_ROUTE, a, b, c & ~np.int64(0xFFFF))
                        if key in down:
                            d = down[key]
                    if d >= 0 and dn_f[d] >= now:
                        number = dn_i[d, 4]
                        v6 = c >> 48 == 6
                        body = (24 if v6 else 12) + 4 + n + (-n & 3)
                        if number >= 0 or body <= 0xFFFC:
                            drops[3] += 1
                            cl = dn_i[d, 2]
                            cl_ctr[cl, RX_P] += 1
                            cl_ctr[cl, RX_B] += n
                            if number >= 0:  # ChannelData: the header before the payload
                                buf = slots[i]
                                buf[0] = number >> 8
                                buf[1] = number & 0xFF
                                buf[2] = n >> 8
                                buf[3] = n & 0xFF
                                sent = _sendto(dn_i[d, 0], slot_p + i * slot_size, n + 4,
                                               _MSG_DONTWAIT, dn_sap + d * SOCKADDR,
                                               dn_i[d, 1])
                            else:  # a Data indication: head, payload, padding
                                hlen = _indication_head(ind, names[i], body, n, v6, rng)
                                msg[0] = dn_sap + d * SOCKADDR  # msg_name
                                msg[1] = dn_i[d, 1]  # msg_namelen
                                iov[0, 1] = hlen
                                iov[1, 0] = slot_p + i * slot_size + 4
                                iov[1, 1] = n
                                iov[2, 1] = -n & 3
                                sent = _sendmsg(dn_i[d, 0], msg_p, _MSG_DONTWAIT)
                            if sent >= 0:
                                row = dn_i[d, 3]
                                lis_ctr[row, TX_P] += 1
                                lis_ctr[row, TX_B] += sent
                            elif _errno()[0] == _EAGAIN:
                                drops[0] += 1
                            else:
                                drops[2] += 1
                            continue
                    npunt = _punt(punts, npunt, PUNT_PEER, fd, i, n)
            if npunt:
                out[0] = npunt
                return PUNT
        handled += ne
        if handled >= budget:
            return BUDGET
        if timeout > 0:  # wait on for what is left of the timeout
            _clock_gettime(_CLOCK_MONOTONIC, tsp)
            wait = end - (out[2] * 1000 + out[3] // 1000000)
            if wait <= 0:
                return IDLE


# The forwarding table is changed only through these (compiled once, cached like `pump`):
# numba compiles a typed dict's Python-side methods on their first call in every process,
# about two seconds in all, which would stall the first ChannelBind of every start.

@njit(cache=True)
def new_routes() -> Any:  # pragma: no cover - compiled
    return Dict.empty(KEY, nt.int64)


@njit(cache=True)
def new_fds() -> Any:  # pragma: no cover - compiled
    return Dict.empty(nt.int64, nt.int64)


@njit(cache=True)
def route_set(table: Any, a: int, b: int, c: int, d: int, row: int) -> None:  # pragma: no cover
    table[(a, b, c, d)] = row


@njit(cache=True)
def route_del(table: Any, a: int, b: int, c: int, d: int, row: int) -> None:  # pragma: no cover
    key = (a, b, c, d)
    if key in table and table[key] == row:
        del table[key]


@njit(cache=True)
def route_get(table: Any, a: int, b: int, c: int, d: int) -> int:  # pragma: no cover
    key = (a, b, c, d)
    return table[key] if key in table else -1


@njit(cache=True)
def fd_set(table: Any, fd: int, row: int) -> None:  # pragma: no cover - compiled
    table[fd] = row


@njit(cache=True)
def fd_del(table: Any, fd: int) -> None:  # pragma: no cover - compiled
    if fd in table:
        del table[fd]


@njit(cache=True)
def size(table: Any) -> int:  # pragma: no cover - compiled
    return len(table)
