"""coturn's turnutils_uclient streams through relay while a real SIGHUP reloads a config
that adds a listener and changes the password: uclient reports 0 lost packets.

relay runs in-process with its signal handling on (`app.run(handle_signals=True)`), so the
SIGHUP goes to this process and takes the path the CLI's does.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
from pathlib import Path

import pytest
import trio
import yaml

from relay import app
from relay.app import Running
from relay.config import Config
from tests.turn.gateway_harness import PASSWORD, USER, free_port_range, listener_address
from tests.turn.test_gateway_interop import LOST, TOTALS, UCLIENT, coturn_peer

pytestmark = pytest.mark.skipif(UCLIENT is None, reason="coturn's turnutils_uclient is not "
                                "installed (tests/run.sh installs the coturn package)")

CLIENTS, MESSAGES, LENGTH = 3, 400, 170  # 400 messages 5 ms apart: the reload lands mid-run


def raw_config(password: str, listeners: list[dict[str, object]], ports: tuple[int, int]
               ) -> dict[str, object]:
    return {
        "version": "v1",
        "admin": {"metrics_endpoint": "", "healthcheck_endpoint": "", "loglevel": "all:WARN"},
        "auth": {"type": "static", "realm": "uclient.test",
                 "credentials": {"username": USER, "password": password}},
        "listeners": listeners,
        "clusters": [{"name": "peers", "type": "STATIC", "endpoints": ["127.0.0.1/32"]}],
        # one process: the test reads the gateway's own counters while uclient streams
        # (tests/net/test_workers_listeners.py reloads listeners with workers)
        "turn": {"workers": 1, "min_port": ports[0], "max_port": ports[1],
                 "rfc5766_channels": True},
    }


async def test_uclient_loses_nothing_across_a_sighup_that_adds_a_listener_and_a_password(
        tmp_path: Path) -> None:
    assert UCLIENT is not None
    ports = free_port_range(64, ("127.0.0.1",))
    udp = {"name": "udp", "protocol": "TURN-UDP", "address": "127.0.0.1", "port": 0,
           "routes": ["peers"]}
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(raw_config(PASSWORD, [udp], ports)))
    cfg = Config.from_file(path)
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            rt: Running = await nursery.start(functools.partial(
                app.run, cfg, config_path=str(path), handle_signals=True))
            server = listener_address(rt)
            async with coturn_peer(nursery) as peer:
                cmd = [UCLIENT, "-p", str(server[1]), "-u", USER, "-w", PASSWORD,
                       "-e", peer[0], "-r", str(peer[1]), "-m", str(CLIENTS),
                       "-n", str(MESSAGES), "-l", str(LENGTH), "-z", "5", "-X", "-c",
                       server[0]]
                result: dict[str, subprocess.CompletedProcess[bytes]] = {}

                async def run_uclient() -> None:
                    result["p"] = await trio.run_process(
                        cmd, capture_stdout=True, capture_stderr=True, check=False, stdin=b"")

                async with trio.open_nursery() as inner:
                    inner.start_soon(run_uclient)
                    # Once uclient streams (all its clients are set up first), rewrite the
                    # file and SIGHUP.
                    traffic = rt.stats.cluster("peers").traffic
                    with trio.move_on_after(20):
                        while traffic.tx_packets < 10 * CLIENTS:  # noqa: ASYNC110
                            await trio.sleep(0.02)
                    assert traffic.tx_packets >= 10 * CLIENTS
                    new_udp = {**udp, "port": server[1]}
                    added = {**udp, "name": "udp2"}
                    path.write_text(yaml.safe_dump(
                        raw_config("rotated-password", [new_udp, added], ports)))
                    os.kill(os.getpid(), signal.SIGHUP)
                    with trio.move_on_after(20):
                        while rt.health.reloads["success"] == 0:  # noqa: ASYNC110
                            await trio.sleep(0.02)
                    assert rt.health.reloads == {"success": 1, "failure": 0}
                    assert rt.health.listeners["udp2"].bound
                    assert rt.stats.allocations_active >= CLIENTS  # none was dropped
                    assert "p" not in result  # uclient was still streaming at the reload
            nursery.cancel_scope.cancel()
    proc = result["p"]
    out = (proc.stdout or b"").decode("utf-8", "replace") + (proc.stderr or b"").decode(
        "utf-8", "replace")
    assert proc.returncode == 0, out[-3000:]
    lost = LOST.search(out)
    assert lost is not None and int(lost.group(1)) == 0, out[-3000:]
    sent, received = (int(x) for x in TOTALS.findall(out)[-1])
    assert sent == received >= CLIENTS * MESSAGES, (sent, received)
