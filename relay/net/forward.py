"""Client -> peer forwarding shared by the UDP and the stream (TCP/TLS) listeners.

Plain functions over the core's dicts, called once per ChannelData message: no allocation
of objects, no logging, int counters only (DESIGN.md §4).
"""

from __future__ import annotations

import struct

from relay.turn.allocation import Allocation

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
