"""Client -> peer forwarding shared by the UDP and the stream (TCP/TLS) listeners.

Plain functions over the core's dicts, called once per ChannelData message or Send
indication: no allocation of objects, no logging, int counters only (DESIGN.md §4).  The
caller looked the allocation up by the client's address (and counted `no_allocation` when
there is none); these decide whether the data may go to the peer and send it through the
allocation's relay socket, or count why not in `drops`.
"""

from __future__ import annotations

import struct

from relay.stun.fastpath import scan_send_indication
from relay.turn.allocation import Allocation
from relay.turn.policy import PeerPolicy
from relay.turn.server import FAMILY_V4, FAMILY_V6

__all__ = ["forward_channel_data", "forward_send_indication"]

_unpack_head = struct.Struct("!HH").unpack_from


def forward_channel_data(alloc: Allocation, view: memoryview, n: int,
                         drops: dict[str, int]) -> None:
    """Send the payload of the ChannelData message in `view[:n]` (n >= 4) from `alloc`'s
    client to the channel's peer through its relay socket, or count why not."""
    number, length = _unpack_head(view)
    chan = alloc.channels.get(number)
    if chan is None:
        drops["unbound_channel"] += 1
    elif length > n - 4:
        drops["malformed"] += 1
    elif (perm := alloc.permissions.get(chan.peer[0])) is None:
        drops["no_permission"] += 1  # lapsed: the channel outlives it
    else:
        try:
            chan.endpoint.sock.sendto(view[4 : 4 + length], chan.peer)  # type: ignore[attr-defined]
            ct = perm.cluster.traffic
            ct.tx_packets += 1
            ct.tx_bytes += length
        except BlockingIOError:
            drops["send_buffer_full"] += 1
        except OSError:
            drops["peer_not_allowed"] += 1


def forward_send_indication(alloc: Allocation, view: memoryview, n: int, policy: PeerPolicy,
                            drops: dict[str, int]) -> None:
    """Send the DATA of the Send indication in `view[:n]` from `alloc`'s client to its
    XOR-PEER-ADDRESS through the relay socket of the peer's family, or count why not."""
    found = scan_send_indication(view, n)
    if found is None:
        drops["malformed"] += 1
        return
    ip, port, payload = found
    perm = alloc.permissions.get(ip)
    if perm is None:
        drops["no_permission"] += 1
        return
    if not perm.any_port and not policy.check(alloc.listener, ip, port).allowed:
        drops["peer_not_allowed"] += 1
        return
    ep = alloc.relays.get(FAMILY_V6 if ":" in ip else FAMILY_V4)
    if ep is None:
        drops["peer_not_allowed"] += 1
        return
    try:
        ep.sock.sendto(payload, (ip, port))  # type: ignore[attr-defined]
        ct = perm.cluster.traffic
        ct.tx_packets += 1
        ct.tx_bytes += len(payload)
    except BlockingIOError:
        drops["send_buffer_full"] += 1
    except OSError:
        drops["peer_not_allowed"] += 1
