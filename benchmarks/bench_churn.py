"""Connection churn soak: is relay's memory flat under aborted TLS handshakes and WebSocket
connects?

Starts relay (``python -m relay``) on loopback with a TURN-TLS listener (a self-signed
certificate from trustme) and the signaling server, then runs ``--rounds`` rounds; each
round makes ``--handshakes`` TLS connections that send a ClientHello and reset the
connection mid-handshake, and ``--websockets`` WebSocket connections to ``/spreed`` that
complete the upgrade and reset.  After each round it reads relay's RSS from /proc.

Prints the conditions and RSS per round; ``--json FILE`` writes them.  ``--root DIR`` runs
relay from another source tree (e.g. an exported older commit) for a before/after run.

    python -m benchmarks.bench_churn --rounds 8 --handshakes 2000 --websockets 500
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import select
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from benchmarks.report import conditions, write_json
from benchmarks.servers import stop_process


@dataclass
class ChurnTarget:
    pid: int
    tls: tuple[str, int]
    ws: tuple[str, int]


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tls_port: int, ws_port: int, cert: str, key: str, workers_key: bool = True
            ) -> str:
    """One process (`turn.workers: 1` where the tree knows the key): the RSS measured is
    the process that holds the TLS connections and the signaling sockets."""
    return (
        "version: v1\n"
        "admin: {metrics_endpoint: \"\", healthcheck_endpoint: \"\", loglevel: \"all:ERROR\"}\n"
        "auth: {type: static, realm: churn, credentials: {username: user, password: pass}}\n"
        f"listeners: [{{name: tls, protocol: TURN-TLS, address: 127.0.0.1, port: {tls_port},"
        f" routes: [peers], cert: \"{cert}\", key: \"{key}\"}}]\n"
        "clusters: [{name: peers, type: STATIC, endpoints: [\"127.0.0.1/32\"]}]\n"
        f"signaling: {{listen: \"127.0.0.1:{ws_port}\", "
        "backend: {allowall: true, secret: churn-secret}}\n"
        + ("turn: {workers: 1}\n" if workers_key else "")
    )


def _wait_tcp(addr: tuple[str, int], proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"relay exited with code {proc.returncode}")
        try:
            with socket.create_connection(addr, timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"relay did not listen on {addr} within {timeout} s")


@contextlib.contextmanager
def run_relay_churn(root: str | None = None, python: str | None = None,
                    log_path: str | None = None) -> Iterator[ChurnTarget]:
    """relay with a TURN-TLS listener and signaling on loopback, for the ``with`` block."""
    import trustme

    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(prefix="relay-churn-") as tmp:
        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        cert.private_key_and_cert_chain_pem.write_to_path(cert_path)
        cert.private_key_pem.write_to_path(key_path)
        tls_port, ws_port = _free_tcp_port(), _free_tcp_port()
        cfg = os.path.join(tmp, "relay.yaml")
        with open(cfg, "w") as fh:
            fh.write(_config(tls_port, ws_port, cert_path, key_path, workers_key=os.path.exists(
                os.path.join(root, "relay", "net", "workers.py"))))
        env = dict(os.environ)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        log = open(log_path or os.path.join(tmp, "relay.log"), "wb")
        proc = subprocess.Popen([python or sys.executable, "-m", "relay", "-c", cfg],
                                stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=tmp)
        log.close()
        try:
            tls, ws = ("127.0.0.1", tls_port), ("127.0.0.1", ws_port)
            _wait_tcp(tls, proc, 20)
            _wait_tcp(ws, proc, 20)
            yield ChurnTarget(proc.pid, tls, ws)
        finally:
            stop_process(proc)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a client that vanishes mid-exchange."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


_CLIENT_CTX = ssl.create_default_context()
_CLIENT_CTX.check_hostname = False
_CLIENT_CTX.verify_mode = ssl.CERT_NONE


def aborted_tls_handshake(addr: tuple[str, int], timeout: float = 2.0) -> None:
    """Send a ClientHello, wait for the server's first flight, then reset the connection
    before finishing the handshake.  (A server that answers within the first call finishes
    the handshake at once: then the reset comes after it, and nothing is waited for.)"""
    raw = socket.create_connection(addr, timeout=timeout)
    tls = _CLIENT_CTX.wrap_socket(raw, do_handshake_on_connect=False,
                                  server_hostname="localhost")
    tls.setblocking(False)
    answered = False
    with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLError, OSError):
        tls.do_handshake()  # the ClientHello leaves; the answer is usually not there yet
        answered = True
    if not answered:
        select.select([tls], [], [], timeout)  # the server's hello has arrived
    _reset(tls)


def aborted_websocket(addr: tuple[str, int], timeout: float = 2.0) -> None:
    """Upgrade ``/spreed`` to a WebSocket, read the 101, then reset."""
    key = base64.b64encode(os.urandom(16)).decode()
    req = (f"GET /spreed HTTP/1.1\r\nHost: {addr[0]}:{addr[1]}\r\nUpgrade: websocket\r\n"
           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
           "Sec-WebSocket-Version: 13\r\n\r\n").encode()
    sock = socket.create_connection(addr, timeout=timeout)
    try:
        sock.sendall(req)
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
    except OSError:
        pass
    _reset(sock)


def churn_round(target: ChurnTarget, handshakes: int, websockets: int) -> int:
    """One round of churn; the connections that failed to connect at all."""
    failed = 0
    for _ in range(handshakes):
        try:
            aborted_tls_handshake(target.tls)
        except OSError:
            failed += 1
    for _ in range(websockets):
        try:
            aborted_websocket(target.ws)
        except OSError:
            failed += 1
    return failed


def soak(target: ChurnTarget, rounds: int, handshakes: int, websockets: int,
         settle: float = 1.0, progress: bool = True) -> list[dict[str, Any]]:
    """RSS after each round (and before the first), settled for ``settle`` seconds."""
    time.sleep(settle)
    out = [{"round": 0, "rss": rss_bytes(target.pid), "failed": 0, "seconds": 0.0}]
    for r in range(1, rounds + 1):
        t0 = time.perf_counter()
        failed = churn_round(target, handshakes, websockets)
        took = time.perf_counter() - t0
        time.sleep(settle)
        out.append({"round": r, "rss": rss_bytes(target.pid), "failed": failed,
                    "seconds": took})
        if progress:
            print(f"round {r}: RSS {out[-1]['rss'] / 2**20:.1f} MiB "
                  f"({handshakes} TLS + {websockets} WS in {took:.1f} s, {failed} failed)",
                  file=sys.stderr, flush=True)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_churn", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--handshakes", type=int, default=2000,
                   help="aborted TLS handshakes per round (default 2000)")
    p.add_argument("--websockets", type=int, default=500,
                   help="aborted WebSocket connections per round (default 500)")
    p.add_argument("--root", help="run relay from this source tree instead of this checkout")
    p.add_argument("--json", help="write every figure to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rounds < 1 or args.handshakes < 0 or args.websockets < 0:
        print("--rounds must be >= 1, the counts >= 0", file=sys.stderr)
        return 2
    with run_relay_churn(args.root) as target:
        rows = soak(target, args.rounds, args.handshakes, args.websockets)
    c = conditions()
    print(f"conditions: {c['cpus']} CPUs ({c['cpu']}), Python {c['python']}, "
          f"{args.rounds} rounds of {args.handshakes} aborted TLS handshakes + "
          f"{args.websockets} aborted WebSockets")
    print("RSS MiB per round: " + " ".join(f"{r['rss'] / 2**20:.0f}" for r in rows))
    first, last = rows[1]["rss"], rows[-1]["rss"]
    print(f"growth from round 1 to {args.rounds}: {(last - first) / 2**20:.1f} MiB")
    if args.json:
        write_json(args.json, {"conditions": c, "rounds": rows, "args": vars(args)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
