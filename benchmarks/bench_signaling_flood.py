"""One signaling session floods: how much does TURN's Binding latency suffer?

Starts relay (``python -m relay``) on loopback with a TURN-UDP listener and the signaling
server (allowall, against the mock Nextcloud of `benchmarks.mock_nextcloud` served here),
then for ``--duration`` seconds:

* one WebSocket session says hello and sends ``message``s to itself back to back (and
  reads what comes back), up to ``--messages`` in all, until relay closes it (the
  per-connection rate limit); with ``--reconnect`` it then reconnects, says hello again
  and goes on, as a determined client would;
* a separate process sends STUN Binding requests to the TURN listener at
  ``--probe-rate`` and measures each round trip.

Prints the conditions, the messages the flooder sent and how often it was closed, and the
Binding p50/p99/max before and during the flood; ``--json FILE`` writes them.  ``--root DIR``
runs relay from another source tree (e.g. an exported older commit) for before/after.

    python -m benchmarks.bench_signaling_flood --duration 15
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
from typing import Any

import trio
import trio_websocket

from benchmarks.bench_flood import probe
from benchmarks.mock_nextcloud import MockNextcloud
from benchmarks.report import conditions, ms, summarize, write_json
from benchmarks.servers import stop_process

SECRET = "flood-secret"
BACKEND_PATH = "ocs/v2.php/apps/spreed/api/v1/signaling/backend"


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(udp_port: int, ws_port: int, message_rate: int | None = None) -> str:
    clients = "" if message_rate is None else f", clients: {{messagerate: {message_rate}}}"
    return (
        "version: v1\n"
        "admin: {metrics_endpoint: \"\", healthcheck_endpoint: \"\", loglevel: \"all:ERROR\"}\n"
        "auth: {type: static, realm: bench, credentials: {username: user, password: pass}}\n"
        f"listeners: [{{name: udp, protocol: TURN-UDP, address: 127.0.0.1, port: {udp_port},"
        " routes: [peers]}]\n"
        "clusters: [{name: peers, type: STATIC, endpoints: [\"127.0.0.1/32\"]}]\n"
        f"signaling: {{listen: \"127.0.0.1:{ws_port}\", "
        f"backend: {{allowall: true, secret: {SECRET}}}{clients}}}\n"
    )


def _probe_entry(target: tuple[str, int], rate: float, duration: float, timeout: float,
                 out: Any) -> None:
    rtts, lost = probe(target, rate, duration, timeout)
    out.put((rtts, lost))


async def _session(url: str, nc_url: str, budget: list[int], stats: dict[str, int],
                   end: float) -> None:
    """One connection: hello, then flood until closed, the budget is spent or time is up."""
    async with trio_websocket.open_websocket_url(url, message_queue_size=65536) as ws:
        await ws.send_message(json.dumps({"id": "1", "type": "hello", "hello": {
            "version": "1.0", "auth": {"url": nc_url, "params": {"userid": "flooder"}}}}))
        session_id = ""
        while not session_id:
            msg = json.loads(await ws.get_message())
            if msg.get("type") == "hello":
                session_id = msg["hello"]["sessionid"]
            elif msg.get("type") in ("error", "bye"):
                raise RuntimeError(f"hello failed: {msg}")
        text = json.dumps({"type": "message", "message": {
            "recipient": {"type": "session", "sessionid": session_id},
            "data": {"flood": "x" * 64}}})

        async def drain() -> None:
            while True:
                msg = json.loads(await ws.get_message())
                if msg.get("type") == "error" and \
                        msg["error"].get("code") == "too_many_requests":
                    stats["too_many_requests"] += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            try:
                while budget[0] > 0 and trio.current_time() < end:
                    await ws.send_message(text)
                    budget[0] -= 1
                    stats["sent"] += 1
            finally:
                nursery.cancel_scope.cancel()


async def _flood(url: str, nc_url: str, total: int, duration: float,
                 reconnect: bool) -> dict[str, int]:
    stats = {"sent": 0, "closed_by_server": 0, "too_many_requests": 0, "connections": 0}
    budget = [total]
    end = trio.current_time() + duration
    while budget[0] > 0 and trio.current_time() < end:
        stats["connections"] += 1
        closed = False
        try:
            await _session(url, nc_url, budget, stats, end)
        except* (trio_websocket.ConnectionClosed, trio_websocket.HandshakeError,
                 trio.BrokenResourceError, OSError):
            closed = True
        if closed:
            stats["closed_by_server"] += 1
            if not reconnect:
                break
            await trio.sleep(0.05)
    return stats


async def _run(args: argparse.Namespace, proc: subprocess.Popen[bytes], udp_port: int,
               ws_port: int) -> dict[str, Any]:
    nc = MockNextcloud(SECRET.encode(), record=False)
    ctx = mp.get_context("spawn")
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, nc.handle, 0, host="127.0.0.1"))
        nc.port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(20):
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"relay exited with code {proc.returncode}")
                try:
                    await trio.open_tcp_stream("127.0.0.1", ws_port)
                    break
                except OSError:
                    await trio.sleep(0.1)
        target = ("127.0.0.1", udp_port)
        base, base_lost = await trio.to_thread.run_sync(
            probe, target, args.probe_rate, args.baseline, args.probe_timeout)
        out = ctx.Queue()
        prober = ctx.Process(target=_probe_entry, args=(
            target, args.probe_rate, args.duration, args.probe_timeout, out))
        prober.start()
        t0 = trio.current_time()
        url = f"ws://127.0.0.1:{ws_port}/spreed"
        nc_url = f"{nc.url}{BACKEND_PATH}"
        flood = await _flood(url, nc_url, args.messages, args.duration, args.reconnect)
        await trio.sleep(max(0.0, args.duration - (trio.current_time() - t0)))
        rtts, lost = await trio.to_thread.run_sync(out.get, True, args.duration + 30)
        await trio.to_thread.run_sync(prober.join, 10)
        nursery.cancel_scope.cancel()
    return {
        "conditions": conditions(),
        "root": args.root,
        "flood": flood,
        "reconnect": args.reconnect,
        "message_rate": args.message_rate,
        "probe_rate_per_s": args.probe_rate,
        "baseline": {**summarize(base, (50, 99)), "lost": base_lost},
        "during_flood": {**summarize(rtts, (50, 99)), "lost": lost},
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_signaling_flood",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", help="run relay from this source tree instead of this checkout")
    p.add_argument("--duration", type=float, default=15.0, help="flood seconds (default 15)")
    p.add_argument("--messages", type=int, default=300_000,
                   help="messages the flooder sends at most (default 300000)")
    p.add_argument("--baseline", type=float, default=3.0,
                   help="seconds of probes before the flood (default 3)")
    p.add_argument("--probe-rate", type=float, default=200.0, help="probes/s (default 200)")
    p.add_argument("--probe-timeout", type=float, default=1.0,
                   help="seconds before a probe counts as lost (default 1)")
    p.add_argument("--reconnect", action="store_true",
                   help="when relay closes the flooding session, reconnect and go on")
    p.add_argument("--message-rate", type=int,
                   help="set signaling.clients.messagerate (0: no limit; default: relay's)")
    p.add_argument("--json", help="write every figure to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.root = args.root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    udp_port, ws_port = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM)
    with tempfile.TemporaryDirectory(prefix="relay-sigflood-") as tmp:
        cfg = os.path.join(tmp, "relay.yaml")
        with open(cfg, "w") as fh:
            fh.write(_config(udp_port, ws_port, args.message_rate))
        env = dict(os.environ)
        env["PYTHONPATH"] = args.root + os.pathsep + env.get("PYTHONPATH", "")
        proc = subprocess.Popen([sys.executable, "-m", "relay", "-c", cfg], env=env, cwd=tmp,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL)
        try:
            result = trio.run(_run, args, proc, udp_port, ws_port)
        finally:
            stop_process(proc)
    c = result["conditions"]
    f = result["flood"]
    print(f"conditions: {c['cpus']} CPUs ({c['cpu']}), Python {c['python']}, relay from "
          f"{result['root']}")
    print(f"flood: {f['sent']} messages over {f['connections']} connection(s), "
          f"{f['closed_by_server']} closed by the server, "
          f"{f['too_many_requests']} too_many_requests")
    for name in ("baseline", "during_flood"):
        r = result[name]
        print(f"{name}: Binding p50 {ms(r['p50'])} p99 {ms(r['p99'])} max {ms(r['max'])} ms "
              f"({int(r['count'])} answered, {r['lost']} lost)")
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
