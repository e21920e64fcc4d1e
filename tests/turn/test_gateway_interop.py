"""Interop: coturn's turnutils_uclient relays through relay's gateway to an echo peer.

relay runs in-process; turnutils_uclient is a subprocess with a bounded runtime.  The peers
are coturn's turnutils_peer (when installed) and our own UDP echo peer.  uclient reports
"Total lost packets N (x%)"; at this modest rate on loopback it must be zero.

turnutils_uclient picks channel numbers in RFC 5766's range (0x4000-0x7FFF); RFC 8656,
relay's default, narrowed it to 0x4000-0x4FFF, so the channel runs set
`turn.rfc5766_channels: true`, and one test pins the documented default: 400 and uclient
gives up.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from benchmarks.echo_peer import serve_udp_echo
from relay.app import Running
from tests.turn.gateway_harness import (
    PASSWORD,
    USER,
    config,
    listener_address,
    running,
    until,
)

UCLIENT = shutil.which("turnutils_uclient")
PEER = shutil.which("turnutils_peer")

pytestmark = [pytest.mark.skipif(
    UCLIENT is None,
    reason="coturn's turnutils_uclient is not installed (Debian/Ubuntu: apt install coturn; "
           "tests/run.sh installs it when run as root)",
), pytest.mark.usefixtures("datagram_io")]  # on the batched and on the plain datagram path

CLIENTS, MESSAGES, LENGTH = 5, 60, 170
UCLIENT_TIMEOUT = 60.0
LOST = re.compile(r"Total lost packets (\d+) \(([\d.]+)%\)")
TOTALS = re.compile(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$", re.MULTILINE)


def reserved_port(host: str = "127.0.0.1", *, pair: bool = False) -> int:
    """A UDP port from a port-0 reservation (with `pair`, an even one whose successor is
    free too: uclient's RTCP peer is the peer port + 1)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
            if not pair:
                return port
            if port % 2 or port + 1 > 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s2:
                try:
                    s2.bind((host, port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free UDP port pair")


@asynccontextmanager
async def coturn_peer(nursery: trio.Nursery) -> AsyncIterator[tuple[str, int]]:
    """turnutils_peer on 127.0.0.1 when installed, else our echo peer."""
    if PEER is None:
        yield await nursery.start(serve_udp_echo, "127.0.0.1", 0)
        return
    port = reserved_port()
    proc = await trio.lowlevel.open_process(
        [PEER, "-L", "127.0.0.1", "-p", str(port)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        yield ("127.0.0.1", port)
    finally:
        proc.kill()
        with trio.move_on_after(5, shield=True):
            await proc.wait()


async def uclient(server: tuple[str, int], peer: tuple[str, int], *, send: bool,
                  rtcp: bool = False, tcp: bool = False) -> tuple[int, str]:
    assert UCLIENT is not None
    cmd = [UCLIENT, "-p", str(server[1]), "-u", USER, "-w", PASSWORD,
           "-e", peer[0], "-r", str(peer[1]), "-m", str(CLIENTS), "-n", str(MESSAGES),
           "-l", str(LENGTH), "-z", "5", "-X"]
    if not rtcp:
        cmd.append("-c")  # no RTCP allocations
    if send:
        cmd.append("-s")  # Send/Data indications instead of channels
    if tcp:
        cmd.append("-t")  # TURN over a TCP control connection (the relay stays UDP)
    cmd.append(server[0])
    with trio.fail_after(UCLIENT_TIMEOUT):
        proc = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True,
                                      check=False, stdin=b"")
    out = (proc.stdout or b"").decode("utf-8", "replace")
    out += (proc.stderr or b"").decode("utf-8", "replace")
    return proc.returncode, out


def assert_no_loss(rc: int, out: str, what: str) -> None:
    assert rc == 0, f"{what}: turnutils_uclient exited {rc}:\n{out[-3000:]}"
    lost = LOST.search(out)
    assert lost is not None, f"{what}: no 'Total lost packets' line:\n{out[-3000:]}"
    assert int(lost.group(1)) == 0, f"{what}: {lost.group(0)}\n{out[-3000:]}"
    totals = TOTALS.findall(out)
    assert totals, f"{what}: no totals line:\n{out[-3000:]}"
    sent, received = (int(x) for x in totals[-1])
    # (with RTCP, uclient sends RTCP packets on top of the media messages)
    assert sent == received >= CLIENTS * MESSAGES, (what, sent, received)


async def test_uclient_send_indications_and_channels_without_loss() -> None:
    cfg = config(ports=128, turn={"rfc5766_channels": True})
    with trio.fail_after(UCLIENT_TIMEOUT + 30):
        async with trio.open_nursery() as nursery, running(cfg) as rt:
            server = listener_address(rt)
            rtcp_port = reserved_port(pair=True)
            await nursery.start(serve_udp_echo, "127.0.0.1", rtcp_port)
            await nursery.start(serve_udp_echo, "127.0.0.1", rtcp_port + 1)
            results: dict[str, tuple[int, str]] = {}
            async with coturn_peer(nursery) as peer:

                async def run(what: str, peer: tuple[str, int], **kw: bool) -> None:
                    results[what] = await uclient(server, peer, **kw)

                # The three runs at once: they are independent clients of one relay.
                async with trio.open_nursery() as runs:
                    runs.start_soon(lambda: run("send", peer, send=True))
                    runs.start_soon(lambda: run("channel", peer, send=False))
                    # With RTCP: EVEN-PORT with the reserve bit, then RESERVATION-TOKEN.
                    runs.start_soon(lambda: run("channel+rtcp", ("127.0.0.1", rtcp_port),
                                                send=False, rtcp=True))
            for what, (rc, out) in results.items():
                assert_no_loss(rc, out, what)
            _check_counters(rt)
            nursery.cancel_scope.cancel()


def _check_counters(rt: Running) -> None:
    st = rt.stats
    # Each uclient client allocates once more on a probe socket first.
    assert st.allocations_total >= 4 * CLIENTS
    assert st.requests.get(("channel_bind", "400"), 0) == 0
    assert st.requests.get(("allocate", "success"), 0) >= 4 * CLIENTS
    cluster = st.clusters["peers"].traffic
    assert cluster.tx_packets >= 3 * CLIENTS * MESSAGES
    assert cluster.rx_packets >= 3 * CLIENTS * MESSAGES
    assert st.drops["malformed"] == 0
    assert st.drops["unbound_channel"] == 0


async def test_uclient_over_tcp_send_indications_and_channels_without_loss() -> None:
    cfg = config(ports=128, turn={"rfc5766_channels": True}, listeners=[
        {"name": "tcp", "protocol": "TURN-TCP", "address": "127.0.0.1", "port": 0,
         "routes": ["peers"]},
    ])
    with trio.fail_after(UCLIENT_TIMEOUT + 30):
        async with trio.open_nursery() as nursery, running(cfg) as rt:
            server = listener_address(rt, "tcp")
            results: dict[str, tuple[int, str]] = {}
            async with coturn_peer(nursery) as peer:

                async def run(what: str, **kw: bool) -> None:
                    results[what] = await uclient(server, peer, tcp=True, **kw)

                async with trio.open_nursery() as runs:
                    runs.start_soon(lambda: run("tcp send", send=True))
                    runs.start_soon(lambda: run("tcp channel", send=False))
            for what, (rc, out) in results.items():
                assert_no_loss(rc, out, what)
            st = rt.stats
            assert st.requests.get(("allocate", "success"), 0) >= 2 * CLIENTS
            assert st.drops["malformed"] == 0
            assert st.drops["unbound_channel"] == 0
            assert st.listeners["tcp"].traffic.tx_packets >= 2 * CLIENTS * MESSAGES
            await until(lambda: st.allocations_active == 0, "uclient's allocations deleted")
            nursery.cancel_scope.cancel()


async def test_uclient_channel_numbers_past_0x4fff_get_400_by_default() -> None:
    cfg = config()
    assert not cfg.turn.rfc5766_channels
    with trio.fail_after(UCLIENT_TIMEOUT + 30):
        async with trio.open_nursery() as nursery, running(cfg) as rt:
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            rc, out = await uclient(listener_address(rt), peer, send=False)
            assert rc != 0, out[-3000:]
            assert "channel bind: error 400" in out, out[-3000:]
            assert rt.stats.requests.get(("channel_bind", "400"), 0) >= 1
            nursery.cancel_scope.cancel()
