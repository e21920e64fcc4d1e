"""Batched datagram I/O: `recvmmsg(2)` and `sendmmsg(2)` through `ctypes`.

Many datagrams per system call where the kernel allows it (Linux on a 64-bit libc), with no
compiler at install time.  `AVAILABLE` says whether this platform has them; the gateway
keeps the plain `recvfrom_into` / `sendto` path for the rest (and for `turn.batch_io:
false`).

Two small objects, each owning preallocated C arrays (`mmsghdr`, `iovec`, socket address
slots) over one bytearray of datagram slots, so a batch allocates nothing per datagram but
the address tuple (cached) and its list entry:

- `RecvBatch.recv(fd)`: up to `size` datagrams in one call, as `(view, length, address)`
  with the same address tuples as `socket.recvfrom` gives.
- `SendBatch`: `slot()` gives the next slot's buffer, to receive into or copy into;
  `push(length, address)` queues it; `flush(fd)` sends all queued datagrams in as few calls
  as the kernel takes, and returns what was sent and what was dropped (full send buffer, or
  a datagram the kernel refused).

Neither object blocks: both use `MSG_DONTWAIT`; the caller waits for readability with Trio
(`trio.lowlevel.wait_readable`) as on the plain path (DESIGN.md §4).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as _errno
import os
import socket
import struct
import sys
from typing import Any

__all__ = ["AVAILABLE", "RecvBatch", "SendBatch", "SendResult"]

MSG_DONTWAIT = 0x40
NAME_SIZE = 128  # sizeof(struct sockaddr_storage)
_ADDR_CACHE_MAX = 4096


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint32)]


_HDR = ctypes.sizeof(_MMsgHdr)
_IOV = ctypes.sizeof(_IoVec)
# Offsets in 32-bit words (namelen, msg_len) and 64-bit words (iov_len) of one entry.
_NAMELEN_W = _MsgHdr.msg_namelen.offset // 4
_MSGLEN_W = _MMsgHdr.msg_len.offset // 4
_HDR_W = _HDR // 4
_NAME_Q = NAME_SIZE // 8
_IOVLEN_Q = _IoVec.iov_len.offset // 8


def _load() -> tuple[Any, Any] | None:
    if not sys.platform.startswith("linux") or ctypes.sizeof(ctypes.c_void_p) != 8:
        return None
    if _HDR % 8 or _IOV != 16 or _IoVec.iov_len.offset % 8:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        recvmmsg = libc.recvmmsg
        sendmmsg = libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                         ctypes.c_void_p]
    recvmmsg.restype = ctypes.c_int
    sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    sendmmsg.restype = ctypes.c_int
    return recvmmsg, sendmmsg


_FUNCS = _load()
AVAILABLE = _FUNCS is not None
_get_errno = ctypes.get_errno

_port = struct.Struct("!H")
_v6 = struct.Struct("!I16s")  # flowinfo, address (after family and port; scope id follows)


def _decode_name(raw: bytes) -> Any:
    """A socket address as `socket.recvfrom` spells it."""
    family = int.from_bytes(raw[:2], sys.byteorder)
    port = _port.unpack_from(raw, 2)[0]
    if family == socket.AF_INET:
        return (socket.inet_ntop(socket.AF_INET, raw[4:8]), port)
    if family == socket.AF_INET6:
        flow, addr = _v6.unpack_from(raw, 4)
        host = socket.inet_ntop(socket.AF_INET6, addr)
        scope = int.from_bytes(raw[24:28], sys.byteorder)
        if scope:
            try:
                host = f"{host}%{socket.if_indextoname(scope)}"
            except OSError:
                host = f"{host}%{scope}"
        return (host, port, flow, scope)
    return None


def _encode_name(addr: Any) -> bytes:
    """`struct sockaddr_in(6)` for an address tuple as `socket.sendto` takes it."""
    host = addr[0]
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    head = fam.to_bytes(2, sys.byteorder) + _port.pack(addr[1])
    if fam == socket.AF_INET:
        return head + socket.inet_pton(socket.AF_INET, host) + bytes(8)
    scope = addr[3] if len(addr) > 3 else 0
    if "%" in host:
        host, _, ifname = host.partition("%")
        if not scope:
            scope = int(ifname) if ifname.isdigit() else socket.if_nametoindex(ifname)
    flow = addr[2] if len(addr) > 2 else 0
    return (head + _v6.pack(flow, socket.inet_pton(socket.AF_INET6, host))
            + scope.to_bytes(4, sys.byteorder))


class _Arrays:
    """`count` mmsghdr entries, each with one iovec over a `slot`-byte datagram slot and a
    socket address slot."""

    def __init__(self, count: int, slot: int) -> None:
        self.count = count
        self.slot = slot
        self.data = bytearray(count * slot)
        self.names = bytearray(count * NAME_SIZE)
        self.hdrs = bytearray(count * _HDR)
        self.iovs = bytearray(count * _IOV)
        data_c = (ctypes.c_char * len(self.data)).from_buffer(self.data)
        names_c = (ctypes.c_char * len(self.names)).from_buffer(self.names)
        self.hdr_c = (_MMsgHdr * count).from_buffer(self.hdrs)
        iov_c = (_IoVec * count).from_buffer(self.iovs)
        self._keep = (data_c, names_c, iov_c)
        data_at = ctypes.addressof(data_c)
        names_at = ctypes.addressof(names_c)
        iov_at = ctypes.addressof(iov_c)
        for i in range(count):
            iov_c[i].iov_base = data_at + i * slot
            iov_c[i].iov_len = slot
            h = self.hdr_c[i].msg_hdr
            h.msg_name = names_at + i * NAME_SIZE
            h.msg_namelen = NAME_SIZE
            h.msg_iov = iov_at + i * _IOV
            h.msg_iovlen = 1
        self.base = ctypes.addressof(self.hdr_c)
        self.words = memoryview(self.hdrs).cast("I")
        self.iov_q = memoryview(self.iovs).cast("Q")
        self.names_q = memoryview(self.names).cast("Q")
        view = memoryview(self.data)
        self.slots = [view[i * slot : (i + 1) * slot] for i in range(count)]
        nview = memoryview(self.names)
        self.name_slots = [nview[i * NAME_SIZE : (i + 1) * NAME_SIZE] for i in range(count)]


def _syscall(index: int, name: str) -> Any:
    """recvmmsg (0) or sendmmsg (1) from libc; OSError(ENOSYS) where there is none."""
    if _FUNCS is None:
        raise OSError(_errno.ENOSYS, f"{name} is not available")
    return _FUNCS[index]


class RecvBatch:
    """Receive up to `count` datagrams of up to `slot` bytes per system call."""

    def __init__(self, count: int = 32, slot: int = 65536 + 64) -> None:
        self._recvmmsg = _syscall(0, "recvmmsg")
        self._a = _Arrays(count, slot)
        self._names: dict[bytes, Any] = {}

    def recv(self, fd: int) -> list[tuple[memoryview, int, Any]]:
        """The datagrams waiting on `fd` (at most `count`): `(slot view, length, address)`;
        empty when none is waiting.  The slots are reused by the next call.  Other errors
        raise OSError (as `recvfrom_into`)."""
        a = self._a
        got = self._recvmmsg(fd, a.base, a.count, MSG_DONTWAIT, None)
        if got <= 0:
            if got < 0:
                err = _get_errno()
                if err not in (_errno.EAGAIN, _errno.EWOULDBLOCK):
                    raise OSError(err, os.strerror(err))
            return []
        words = a.words
        slots = a.slots
        q = a.names_q
        cache = self._names
        out = []
        for i in range(got):
            w = i * _HDR_W
            j = i * _NAME_Q
            # the address's bytes as the cache key: one 64-bit word for IPv4 (family, port,
            # address), four for IPv6 (flow, address, scope; the slot is zeroed beyond)
            if words[w + _NAMELEN_W] <= 16:
                key: Any = q[j]
            else:
                key = (q[j], q[j + 1], q[j + 2], q[j + 3])
            words[w + _NAMELEN_W] = NAME_SIZE
            addr = cache.get(key)
            if addr is None:
                if len(cache) >= _ADDR_CACHE_MAX:
                    cache.clear()
                addr = cache[key] = _decode_name(a.name_slots[i][:28].tobytes())
            out.append((slots[i], words[w + _MSGLEN_W], addr))
        return out


class SendResult:
    """What one `SendBatch.flush` did."""

    __slots__ = ("dropped_full", "dropped_refused", "sent", "sent_bytes")

    def __init__(self) -> None:
        self.sent = 0
        self.sent_bytes = 0
        self.dropped_full = 0  # EAGAIN: the socket's send buffer is full
        self.dropped_refused = 0  # the kernel refused the datagram (too large, unroutable)


class SendBatch:
    """Queue up to `count` datagrams of up to `slot` bytes, sent by `flush` in one call."""

    def __init__(self, count: int = 32, slot: int = 65536 + 64) -> None:
        self._sendmmsg = _syscall(1, "sendmmsg")
        self._a = _Arrays(count, slot)
        self.count = count
        self.pending = 0
        self._lens: list[int] = []
        self._addrs: list[Any] = []
        self._names: dict[Any, bytes] = {}

    @property
    def full(self) -> bool:
        return self.pending >= self.count

    def slot(self) -> memoryview:
        """The buffer of the next datagram to queue (valid until `push` or `flush`)."""
        return self._a.slots[self.pending]

    def push(self, length: int, addr: Any) -> None:
        """Queue the first `length` bytes of `slot()` for `addr`; the caller flushes when
        `full`."""
        i = self.pending
        a = self._a
        name = self._names.get(addr)
        if name is None:
            if len(self._names) >= _ADDR_CACHE_MAX:
                self._names.clear()
            name = self._names[addr] = _encode_name(addr)
        nl = len(name)
        a.name_slots[i][:nl] = name
        a.words[i * _HDR_W + _NAMELEN_W] = nl
        a.iov_q[i * 2 + _IOVLEN_Q] = length
        self._lens.append(length)
        self._addrs.append(addr)
        self.pending = i + 1

    def push_bytes(self, data: bytes, addr: Any) -> None:
        """Queue a copy of `data` for `addr`."""
        n = len(data)
        if n > self._a.slot:
            raise ValueError("datagram larger than a slot")
        self._a.slots[self.pending][:n] = data
        self.push(n, addr)

    def flush(self, sock: socket.socket, result: SendResult) -> None:
        """Send every queued datagram on `sock`; add what happened to `result`.  A lone
        datagram goes out with a plain `sendto` (cheaper than a `sendmmsg` through ctypes)."""
        count = self.pending
        if not count:
            return
        lens = self._lens
        if count == 1:
            self.pending = 0
            try:
                result.sent_bytes += sock.sendto(self._a.slots[0][: lens[0]], self._addrs[0])
                result.sent += 1
            except (BlockingIOError, InterruptedError):
                result.dropped_full += 1
            except OSError:
                result.dropped_refused += 1
            lens.clear()
            self._addrs.clear()
            return
        fd = sock.fileno()
        start = 0
        base = self._a.base
        while start < count:
            got = self._sendmmsg(fd, base + start * _HDR, count - start, MSG_DONTWAIT)
            if got > 0:
                result.sent += got
                result.sent_bytes += sum(lens[start : start + got])
                start += got
                continue
            err = _get_errno() if got < 0 else _errno.EAGAIN
            if err in (_errno.EAGAIN, _errno.EWOULDBLOCK, _errno.ENOBUFS):
                result.dropped_full += count - start
                break
            if err == _errno.EINTR:
                continue
            result.dropped_refused += 1  # this datagram only; go on with the next
            start += 1
        self.pending = 0
        lens.clear()
        self._addrs.clear()
