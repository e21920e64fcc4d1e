"""STRICT_DNS clusters admit exactly the addresses their hostnames resolve to."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio

from relay.config import Config
from relay.net.gateway import Gateway
from relay.turn.stats import TurnStats

CONFIG = {
    "version": "v1",
    "auth": {"type": "static", "credentials": {"username": "u", "password": "p"}},
    "listeners": [{"name": "l", "address": "127.0.0.1", "port": 0, "routes": ["dns"]}],
    "clusters": [{"name": "dns", "type": "STRICT_DNS", "endpoints": ["media.example"]}],
}


async def test_strict_dns_cluster_follows_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    answers: dict[str, list[str]] = {"media.example": ["192.0.2.10", "2001:db8::10"]}
    send, recv = trio.open_memory_channel[str](0)  # lockstep: one lookup per receive

    async def fake_getaddrinfo(host: str, port: Any, **kw: Any) -> list[Any]:
        await send.send(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "not found")
        return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM, 17, "",
                 (ip, 0)) for ip in answers[host]]

    async def rounds(n: int) -> None:
        """Wait until n more lookups have started (so the ones before them are applied)."""
        for _ in range(n):
            assert await recv.receive() == "media.example"

    monkeypatch.setattr(trio.socket, "getaddrinfo", fake_getaddrinfo)
    gw = Gateway(Config.from_mapping(CONFIG), TurnStats())
    policy = gw.policy
    assert not policy.check_ip("l", "192.0.2.10").allowed  # nothing resolved yet
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gw.resolve_clusters, 0.001)
            await rounds(2)
            assert policy.check_ip("l", "192.0.2.10").cluster == "dns"
            assert policy.check_ip("l", "2001:db8::10").cluster == "dns"
            assert not policy.check_ip("l", "192.0.2.11").allowed
            # The name now points elsewhere: the old address is no longer admitted.
            answers["media.example"] = ["192.0.2.20"]
            await rounds(2)
            assert not policy.check_ip("l", "192.0.2.10").allowed
            assert policy.check_ip("l", "192.0.2.20").allowed
            # A failed lookup keeps the last good answer.
            del answers["media.example"]
            await rounds(2)
            assert policy.check_ip("l", "192.0.2.20").allowed
            nursery.cancel_scope.cancel()
