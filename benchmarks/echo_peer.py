"""A UDP echo peer: every datagram is sent back to where it came from.

It is the far end of a TURN relay benchmark: the load generator relays packets through the
TURN server to this peer, which bounces them back through the same relay.

The receive loop uses the data-plane technique of relay itself: one task per socket waits
with ``trio.lowlevel.wait_readable`` and then drains the socket with plain non-blocking
``recvfrom_into``/``sendto`` calls until ``BlockingIOError``, yielding every few hundred
datagrams so other tasks still run. No awaited socket call per datagram.

Run it as a script::

    python -m benchmarks.echo_peer --host 127.0.0.1 --port 3480 [--workers 2]

Several workers share the port with ``SO_REUSEPORT``; the kernel spreads relay sockets over
them by 4-tuple hash.
"""

from __future__ import annotations

import argparse
import errno
import functools
import multiprocessing
import socket
import sys

import trio

BUFFER_SIZE = 65536
YIELD_EVERY = 256


class EchoStats:
    """Plain counters of one echo socket."""

    __slots__ = ("dropped", "echoed")

    def __init__(self) -> None:
        self.echoed = 0
        self.dropped = 0


def _family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def open_echo_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A bound, non-blocking stdlib UDP socket with large kernel buffers."""
    sock = socket.socket(_family_of(host), socket.SOCK_DGRAM)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
            except OSError:
                pass
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def echo_loop(sock: socket.socket, stats: EchoStats | None = None) -> None:
    """Echo every datagram arriving on ``sock`` until cancelled."""
    st = stats if stats is not None else EchoStats()
    buf = bytearray(BUFFER_SIZE)
    view = memoryview(buf)
    recv_into = sock.recvfrom_into
    sendto = sock.sendto
    wait_readable = trio.lowlevel.wait_readable
    checkpoint = trio.lowlevel.checkpoint
    while True:
        await wait_readable(sock)
        budget = YIELD_EVERY
        while True:
            try:
                n, addr = recv_into(buf)
            except BlockingIOError:
                break
            except OSError as exc:
                # ICMP errors reported on the socket (ECONNREFUSED etc.): skip them.
                if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    continue
                raise
            try:
                sendto(view[:n], addr)
                st.echoed += 1
            except (BlockingIOError, OSError):
                st.dropped += 1
            budget -= 1
            if budget == 0:
                budget = YIELD_EVERY
                await checkpoint()


async def serve_udp_echo(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    reuse_port: bool = False,
    stats: EchoStats | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve a UDP echo peer on (host, port); reports (host, bound_port) via task_status."""
    sock = open_echo_socket(host, port, reuse_port=reuse_port)
    with sock:
        bound = sock.getsockname()
        task_status.started((host, int(bound[1])))
        await echo_loop(sock, stats)


def _run_worker(host: str, port: int) -> None:
    try:
        trio.run(functools.partial(serve_udp_echo, host, port, reuse_port=True))
    except KeyboardInterrupt:
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.echo_peer",
                                description="UDP echo peer for TURN relay benchmarks.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=3480, help="UDP port (default 3480)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes sharing the port with SO_REUSEPORT (default 1)")
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        p.error("--port must be 0..65535")
    if not 1 <= args.workers <= 64:
        p.error("--workers must be 1..64")
    if args.workers > 1 and args.port == 0:
        p.error("--workers > 1 needs a fixed --port")
    print(f"echo peer on {args.host}:{args.port} ({args.workers} worker(s)); Ctrl-C stops",
          file=sys.stderr)
    if args.workers == 1:
        _run_worker(args.host, args.port)
        return 0
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_run_worker, args=(args.host, args.port), daemon=True)
             for _ in range(args.workers)]
    for proc in procs:
        proc.start()
    try:
        for proc in procs:
            proc.join()
    except KeyboardInterrupt:
        for proc in procs:
            proc.terminate()
            proc.join(2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
