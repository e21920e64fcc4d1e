"""`signaling_server_messages_total{type}`: every client message counted by its type, types
the client invents under one fixed label, shown on the signaling port's /metrics."""

from __future__ import annotations

import re

import httpx
import trio

from tests.signaling.conftest import Server
from tests.signaling.talk_clients import in_room


def counts(text: str) -> dict[str, float]:
    out = {}
    for m in re.finditer(r'^signaling_server_messages_total\{type="([^"]*)"\} (\S+)$', text,
                         re.MULTILINE):
        out[m.group(1)] = float(m.group(2))
    return out


async def test_messages_are_counted_per_type(server: Server) -> None:
    with trio.fail_after(20):
        a, b = await in_room(server, "r1", "alice", "bob")  # 2 hello, 2 room
        for i in range(3):
            await a.message({"type": "session", "sessionid": b.session_id}, {"n": i})
        await a.message({"type": "session", "sessionid": b.session_id}, {"c": 1}, "control")
        await a.send({"type": "transient", "transient": {"type": "set", "key": "k", "value": 1}})
        await a.send({"type": "internal", "internal": {"type": "incall"}})
        for t in ("made-up", "another-one", "x" * 40):
            await a.send({"type": t, t: {}})
        await b.request({"type": "bye", "bye": {}})
        await a.drain(0.2)
        async with httpx.AsyncClient() as http:
            r = await http.get(f"http://127.0.0.1:{server.port}/metrics")
        assert r.status_code == 200
        assert "# TYPE signaling_server_messages_total counter" in r.text
        assert counts(r.text) == {"hello": 2, "room": 2, "message": 3, "control": 1,
                                  "transient": 1, "internal": 1, "unknown": 3, "bye": 1}
