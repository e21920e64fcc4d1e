"""The gateway's datagram loops on batched I/O (`relay.net.mmsg`): many datagrams per
system call on the listener sockets.

The same decisions as the plain loops in `relay.net.gateway` (DESIGN.md §4: one reader per
listener socket and one for all relay sockets, `wait_readable`, drain, a checkpoint every
`BATCH` datagrams, int counters, nothing per packet but a dict lookup, a slice and a send),
with two changes where the syscalls are:

- a listener socket is read with `recvmmsg`: up to `RECV_SLOTS` datagrams per call;
- what the relay sockets receive for clients of a TURN-UDP listener is received straight
  into a slot of that listener's `SendBatch` (after room for the ChannelData header), and
  the batch goes out with one `sendmmsg` when full and at the end of every drain round,
  before the reader yields.  Allocations of TURN-TCP/TLS listeners are sent one by one.

Client -> peer stays one `sendto` per datagram: each goes out of its own allocation's relay
socket, so there is nothing to batch on one socket.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import TYPE_CHECKING, Any

import trio

from relay.net.forward import forward_channel_data, forward_send_indication
from relay.net.mmsg import RecvBatch, SendBatch, SendResult
from relay.stun.fastpath import data_indication
from relay.stun.framing import CHANNEL_DATA, STUN, demux_table
from relay.turn.server import ListenerState

if TYPE_CHECKING:
    from relay.net.gateway import Gateway

__all__ = ["listener_loop", "relay_reader"]

BATCH = 64  # datagrams handled before yielding to the scheduler
RECV_SLOTS = 32  # datagrams per recvmmsg
SEND_SLOTS = 32  # datagrams per sendmmsg
SLOT = 65536 + 64
_pack_head = struct.Struct("!HH").pack_into


async def listener_loop(gw: Gateway, lis: ListenerState, sock: socket.socket) -> None:
    """Client -> relay: ChannelData and Send indications forwarded, requests answered."""
    batch = RecvBatch(RECV_SLOTS, SLOT)
    recv = batch.recv
    fileno = sock.fileno
    send = sock.sendto
    allocs = lis.allocations
    traffic = lis.stats.traffic
    drops = gw.stats.drops
    policy = gw.policy
    answer = gw.answer
    demux = demux_table(gw.server.channel_max)
    latency = gw.stats.request_latency
    wait = trio.lowlevel.wait_readable
    checkpoint = trio.lowlevel.checkpoint
    perf = time.perf_counter
    while True:
        await wait(sock)
        handled = 0
        while True:
            try:
                got = recv(fileno())  # a closed socket's -1 is EBADF
            except OSError:
                if fileno() < 0:
                    return
                continue  # an error report for an earlier send; nothing to read
            if not got:
                break
            for view, n, addr in got:
                traffic.rx_packets += 1
                traffic.rx_bytes += n
                kind = demux[view[0]]  # the codec's rule: STUN, ChannelData or neither
                if kind == CHANNEL_DATA:
                    alloc = allocs.get(addr)
                    if alloc is None or n < 4:
                        drops["no_allocation" if alloc is None else "malformed"] += 1
                    else:
                        forward_channel_data(alloc, view, n, drops)
                elif kind == STUN and n >= 20:
                    if view[1] == 0x16 and view[0] == 0:  # Send indication
                        alloc = allocs.get(addr)
                        if alloc is None:
                            drops["no_allocation"] += 1
                        else:
                            forward_send_indication(alloc, view, n, policy, drops)
                    else:
                        t0 = perf()
                        reply = answer(lis, addr, view[:n].tobytes())
                        if reply is not None:
                            try:
                                send(reply, addr)
                                traffic.tx_packets += 1
                                traffic.tx_bytes += len(reply)
                            except BlockingIOError:
                                drops["send_buffer_full"] += 1
                            except OSError:
                                pass
                        latency.observe(perf() - t0)
                else:
                    drops["malformed"] += 1
            if len(got) < RECV_SLOTS:
                break  # drained for now: wait_readable again rather than a call for EAGAIN
            handled += len(got)
            if handled >= BATCH:
                handled = 0
                await checkpoint()


class _Out:
    """One TURN-UDP listener's outgoing batch."""

    __slots__ = ("batch", "sock", "traffic")

    def __init__(self, sock: socket.socket, traffic: Any) -> None:
        self.batch = SendBatch(SEND_SLOTS, SLOT)
        self.sock = sock
        self.traffic = traffic


def _flush(out: _Out, result: SendResult, drops: dict[str, int]) -> None:
    out.batch.flush(out.sock, result)
    out.traffic.tx_packets += result.sent
    out.traffic.tx_bytes += result.sent_bytes
    if result.dropped_full:
        drops["send_buffer_full"] += result.dropped_full
    if result.dropped_refused:
        drops["too_large"] += result.dropped_refused
    result.sent = result.sent_bytes = result.dropped_full = result.dropped_refused = 0


async def relay_reader(gw: Gateway) -> None:
    """Peer -> relay -> client for every relay socket: ChannelData when a channel is bound,
    else a Data indication."""
    epoll = gw.epoll
    poll = epoll.poll
    fds = gw.relay_fds
    outs = {name: _Out(sock, gw.server.listeners[name].stats.traffic)
            for name, sock in gw.sockets.items()}
    result = SendResult()
    buf = gw.relay_buf  # for allocations of stream listeners
    view = gw.relay_view
    body = view[4:]
    drops = gw.stats.drops
    policy = gw.policy
    wait = trio.lowlevel.wait_readable
    checkpoint = trio.lowlevel.checkpoint
    while True:
        events = poll(0)
        if not events:
            await wait(epoll)
            continue
        for fd, _mask in events:
            entry = fds.get(fd)
            if entry is None:
                continue
            recv, send, client, perms, chans, ltraffic, v6, alloc = entry
            name = alloc.listener
            out = outs.get(name)
            batch = out.batch if out is not None else None
            for _ in range(BATCH):
                if batch is not None:
                    if batch.full:
                        _flush(out, result, drops)  # type: ignore[arg-type]
                    slot = batch.slot()
                    into = slot[4:]
                else:
                    slot = view
                    into = body
                try:
                    n, addr = recv(into)
                except OSError:  # BlockingIOError: drained; others: nothing to read
                    break
                ip = addr[0]
                perm = perms.get(ip)
                if perm is None:
                    drops["no_permission"] += 1
                    continue
                if v6:
                    addr = addr[:2]
                if not perm.any_port and not policy.check(name, ip, addr[1]).allowed:
                    drops["peer_not_allowed"] += 1
                    continue
                ct = perm.cluster.traffic
                ct.rx_packets += 1
                ct.rx_bytes += n
                chan = chans.get(addr)
                try:
                    if batch is not None:
                        if chan is not None:
                            _pack_head(slot, 0, chan.number, n)
                            batch.push(4 + n, client)
                        else:
                            batch.push_bytes(data_indication(
                                alloc.indication_id(), ip, addr[1], into[:n]), client)
                        continue  # counted when the batch is flushed
                    if chan is not None:
                        _pack_head(buf, 0, chan.number, n)
                        sent = send(view[: 4 + n], client)
                    else:
                        sent = send(
                            data_indication(alloc.indication_id(), ip, addr[1], body[:n]),
                            client,
                        )
                    ltraffic.tx_packets += 1
                    ltraffic.tx_bytes += sent
                except BlockingIOError:
                    drops["send_buffer_full"] += 1
                except (OSError, ValueError):
                    drops["too_large"] += 1
        for out in outs.values():
            if out.batch.pending:
                _flush(out, result, drops)
        await checkpoint()
