"""The readiness self-probe: a STUN Binding request through every bound TURN-UDP listener.

A listener that is bound but no longer answers (a wedged drain loop, a full socket buffer,
a blocked event loop) must turn `/ready` into 503 so a load balancer or Kubernetes stops
sending clients to this instance.  Every `interval` seconds the probe sends one Binding
request (with FINGERPRINT) from an ephemeral UDP socket to each bound TURN-UDP listener and
waits up to `wait` seconds for a Binding success response with the same transaction ID and
our own port in XOR-MAPPED-ADDRESS.  After `failures` consecutive failed rounds
`HealthState.probe_ok` turns False; the first fully answered round turns it True again.

TURN-TCP and TURN-TLS listeners are skipped, not probed: their accept loops run in the same
Trio run as the UDP listeners, so a blocked event loop already fails the UDP probe, and a
TCP (or TLS) round trip every few seconds would add a connection per round for little more.
A configuration with only stream listeners therefore has nothing to probe and stays ready
while they are bound.

It logs only when the state changes (never once per round).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket

import trio

from relay.fdlimit import GUARD, is_fd_exhaustion
from relay.health import HealthState, ListenerStatus
from relay.stun import (
    Message,
    MessageClass,
    Method,
    StunDecodeError,
    XorMappedAddress,
    decode,
    has_fingerprint,
    verify_fingerprint,
)

log = logging.getLogger("relay.probe")

PROBE_INTERVAL = 5.0  # seconds between rounds
PROBE_TIMEOUT = 1.0  # seconds to wait for each listener's answer
PROBE_FAILURES = 3  # consecutive failed rounds before readiness fails

PROBED_PROTOCOLS = frozenset({"TURN-UDP"})  # stream listeners are skipped (see above)


def binding_request(transaction_id: bytes) -> bytes:
    """A STUN Binding request with a FINGERPRINT (RFC 8489 §5, §14.7)."""
    if len(transaction_id) != 12:
        raise ValueError("a STUN transaction ID is 12 bytes")
    return Message(Method.BINDING, MessageClass.REQUEST, transaction_id).encode(fingerprint=True)


def is_binding_success(data: bytes, transaction_id: bytes, local_port: int | None = None) -> bool:
    """True for a well-formed Binding success response to `transaction_id`.

    It must carry XOR-MAPPED-ADDRESS (with our source port when `local_port` is given: the
    listener really saw our datagram) and a valid FINGERPRINT when it has one.
    """
    try:
        msg = decode(data)
    except StunDecodeError:
        return False
    if (
        msg.method != Method.BINDING
        or msg.cls != MessageClass.SUCCESS
        or msg.transaction_id != transaction_id
    ):
        return False
    mapped = msg.get(XorMappedAddress)
    if mapped is None or (local_port is not None and mapped.port != local_port):
        return False
    return not has_fingerprint(msg) or verify_fingerprint(msg)


def probe_target(status: ListenerStatus) -> tuple[str, int]:
    """Where to send the probe for a listener: wildcard addresses become loopback."""
    try:
        ip = ipaddress.ip_address(status.address)
    except ValueError:
        return status.address, status.port
    if ip.is_unspecified:
        return ("::1" if ip.version == 6 else "127.0.0.1"), status.port
    return str(ip), status.port


async def probe_once(target: tuple[str, int], wait: float) -> bool:
    """One Binding round trip to `target`; True when a matching success came back in time."""
    host, port = target
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    tid = os.urandom(12)
    request = binding_request(tid)
    try:
        sock = trio.socket.socket(family, socket.SOCK_DGRAM)
    except OSError as exc:  # out of descriptors: this round fails, the probe goes on
        if is_fd_exhaustion(exc):
            GUARD.refused("probe", exc.strerror)
        return False
    with sock:
        try:
            # connect(): an ephemeral source port, and the kernel drops other senders.
            await sock.connect((host, port))
            local_port = sock.getsockname()[1]
            await sock.send(request)
        except OSError:
            return False
        with trio.move_on_after(wait):
            while True:
                try:
                    data = await sock.recv(2048)
                except OSError:  # e.g. ICMP port unreachable surfaced as ECONNREFUSED
                    return False
                if is_binding_success(data, tid, local_port):
                    return True
    return False


async def probe_round(health: HealthState, wait: float) -> bool:
    """Probe every bound UDP listener concurrently; True when all of them answered."""
    targets = [
        probe_target(st)
        for st in list(health.listeners.values())
        if st.bound and st.protocol in PROBED_PROTOCOLS and st.port
    ]
    if not targets:
        return True
    results: list[bool] = [False] * len(targets)

    async def one(i: int, target: tuple[str, int]) -> None:
        results[i] = await probe_once(target, wait)

    async with trio.open_nursery() as nursery:
        for i, t in enumerate(targets):
            nursery.start_soon(one, i, t)
    return all(results)


def record_round(health: HealthState, ok: bool, failures_allowed: int) -> None:
    """Fold one round's result into the health state (and log only on a change)."""
    if ok:
        if not health.probe_ok:
            log.info("self-probe: listeners answer again; ready")
        health.probe_failures = 0
        health.probe_ok = True
        return
    health.probe_failures += 1
    if health.probe_ok and health.probe_failures >= failures_allowed:
        health.probe_ok = False
        log.warning(
            "self-probe: a listener did not answer STUN Binding %d times in a row; not ready",
            health.probe_failures,
        )


async def run_probe(
    health: HealthState,
    *,
    interval: float = PROBE_INTERVAL,
    wait: float = PROBE_TIMEOUT,
    failures: int = PROBE_FAILURES,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Probe forever (until cancelled), updating `health.probe_ok`."""
    task_status.started()
    while True:
        ok = await probe_round(health, wait)
        record_round(health, ok, failures)
        await trio.sleep(interval)
