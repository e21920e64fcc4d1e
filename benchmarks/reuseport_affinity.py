"""Which SO_REUSEPORT socket gets a client's datagrams, and what happens to that mapping
when one socket of the group goes away (a worker process dying) or comes back.

The question behind `turn.workers`: a TURN client's datagrams must keep reaching the worker
that holds its allocation, also while and after another worker restarts.  This measures, on
loopback, for `--clients` client sockets and `--sockets` listener sockets sharing one port:

1. the share of clients per listener socket (the kernel hashes the 4-tuple);
2. how many clients land on another socket after one listener socket is closed and a new
   one bound (a worker that exits takes its socket out of the group);
3. the same when the socket stays open in a process that outlives the worker (the
   supervisor holding every listener socket and handing each worker its own), i.e. the
   group never changes;
4. with a UDP socket per client connected to it in the group (coturn's way): whether those
   clients stay on their connected socket after another member is closed and re-bound.

Only 127.0.0.1 is used; nothing is sent anywhere else.

    python -m benchmarks.reuseport_affinity --sockets 2 --clients 50
"""

from __future__ import annotations

import argparse
import select
import socket
import time
from collections import Counter

HOST = "127.0.0.1"


def _listener(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((HOST, port))
    s.setblocking(False)
    return s


def _where(listeners: list[socket.socket], clients: list[socket.socket], port: int,
           connected: dict[int, socket.socket] | None = None) -> dict[int, str]:
    """client index -> the socket that received its datagram ("L<i>" or "C<i>")."""
    for i, c in enumerate(clients):
        c.sendto(i.to_bytes(4, "big"), (HOST, port))
    found: dict[int, str] = {}
    names = {s.fileno(): f"L{i}" for i, s in enumerate(listeners) if s.fileno() >= 0}
    socks = [s for s in listeners if s.fileno() >= 0]
    for i, s in (connected or {}).items():
        names[s.fileno()] = f"C{i}"
        socks.append(s)
    deadline = time.monotonic() + 2.0
    while len(found) < len(clients) and time.monotonic() < deadline:
        ready, _, _ = select.select(socks, [], [], 0.2)
        for s in ready:
            while True:
                try:
                    data = s.recv(16)
                except BlockingIOError:
                    break
                found[int.from_bytes(data, "big")] = names[s.fileno()]
    return found


def run(n_sockets: int, n_clients: int, connect: bool) -> None:
    first = _listener(0)
    port = first.getsockname()[1]
    listeners = [first] + [_listener(port) for _ in range(n_sockets - 1)]
    clients = []
    for _ in range(n_clients):
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.bind((HOST, 0))
        clients.append(c)
    try:
        before = _where(listeners, clients, port)
        share = Counter(before.values())
        print(f"{n_clients} clients over {n_sockets} reuseport sockets: "
              + ", ".join(f"{k} {v} ({100 * v / n_clients:.0f} %)"
                          for k, v in sorted(share.items())))

        # a worker dies and is replaced: its socket leaves the group, a new one joins
        victim = 0
        listeners[victim].close()
        during = _where(listeners, clients, port)
        moved = sum(1 for i, w in during.items() if before[i] != w and before[i] != f"L{victim}")
        print(f"socket L{victim} closed: {moved} of the other sockets' clients moved")
        listeners[victim] = _listener(port)
        after = _where(listeners, clients, port)
        moved = sum(1 for i, w in after.items() if before[i] != w)
        print(f"socket L{victim} re-bound: {moved} of {n_clients} clients on another "
              "socket than before")

        # the group held open: nothing changes for anyone (the dead worker's clients queue
        # on its socket until the restarted worker reads it)
        again = _where(listeners, clients, port)
        moved = sum(1 for i, w in again.items() if after[i] != w)
        print(f"group unchanged (sockets held by the supervisor): {moved} clients moved")

        if connect:
            # one socket per client, connected to it, in the same group
            conns: dict[int, socket.socket] = {}
            for i, c in enumerate(clients):
                s = _listener(port)
                s.connect(c.getsockname())
                conns[i] = s
            base = _where(listeners, clients, port, conns)
            on_conn = sum(1 for w in base.values() if w.startswith("C"))
            listeners[1 % n_sockets].close()
            listeners[1 % n_sockets] = _listener(port)
            later = _where(listeners, clients, port, conns)
            kept = sum(1 for i, w in later.items() if w == f"C{i}")
            print(f"connected sockets: {on_conn} of {n_clients} clients reach their own; "
                  f"after a group member is re-bound {kept} still do")
            for s in conns.values():
                s.close()
    finally:
        for s in listeners + clients:
            s.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sockets", type=int, default=2)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--no-connect", action="store_true",
                    help="skip the connected-socket-per-client case")
    args = ap.parse_args()
    print(f"kernel {open('/proc/sys/kernel/osrelease').read().strip()}")
    run(args.sockets, args.clients, not args.no_connect)


if __name__ == "__main__":
    main()
