"""One session cannot flood the signaling server: messages over the per-connection rate are
dropped and answered with upstream's `too_many_requests` error, a client that sends through
that answer is closed with 1008, and other sessions go on unaffected."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio
import trio_websocket

from relay.config import Config
from relay.errors import ConfigError
from tests.signaling.conftest import signaling_config

BURST = 20


def limited_config(nextcloud: Any, rate: int = 1, burst: int = BURST) -> dict[str, Any]:
    raw = signaling_config(nextcloud)
    raw["signaling"]["clients"] = {"messagerate": rate, "messageburst": burst}
    return raw


def bad_message(i: int) -> str:
    """A message the hub answers (invalid_format: a session recipient without an id)."""
    return json.dumps({"id": f"m{i}", "type": "message", "message": {
        "recipient": {"type": "session"}, "data": {}}})


async def test_messages_over_the_rate_get_too_many_requests(
        make_server: Any, nextcloud: Any) -> None:
    with trio.fail_after(20):
        server = await make_server(limited_config(nextcloud))
        c = await server.client()
        await c.hello("alice")  # one token
        for i in range(BURST + 5):
            await c.ws.send_message(bad_message(i))
        replies = await c.drain(0.5)
        answered = [r for r in replies if r["type"] == "error"
                    and r["error"]["code"] == "invalid_format"]
        limited = [r for r in replies if r["type"] == "error"
                   and r["error"]["code"] == "too_many_requests"]
        assert BURST - 1 <= len(answered) < BURST + 5  # the bucket (refill: 1/s)
        assert len(limited) == 1  # one answer per run of refused messages
        assert limited[0]["error"]["message"] == "Too many requests."
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"http://127.0.0.1:{server.port}/metrics")).text
        line = next(x for x in metrics.splitlines()
                    if x.startswith("relay_signaling_client_messages_ratelimited_total "))
        assert float(line.split()[1]) >= 5
        # the connection stays usable once tokens are back
        await trio.sleep(1.5)
        r = await c.request({"type": "message", "message": {
            "recipient": {"type": "session"}, "data": {}}})
        assert r["error"]["code"] == "invalid_format"
        # other sessions are not limited by this one
        d = await server.client()
        assert (await d.hello("dave"))["type"] == "hello"


async def test_a_client_flooding_through_the_answer_is_closed_1008(
        make_server: Any, nextcloud: Any) -> None:
    with trio.fail_after(20):
        server = await make_server(limited_config(nextcloud))
        c = await server.client()
        await c.hello("alice")
        with pytest.raises(trio_websocket.ConnectionClosed) as info:
            for i in range(10 * BURST):
                await c.ws.send_message(bad_message(i))
            while True:
                await c.ws.get_message()
        assert info.value.reason.code == 1008
        d = await server.client()
        assert (await d.hello("dave"))["type"] == "hello"


async def test_default_limit_leaves_a_busy_client_alone(server: Any) -> None:
    """Talk's call start (a few hundred candidates and offers) fits the default burst."""
    with trio.fail_after(20):
        c = await server.client()
        await c.hello("alice")
        for i in range(300):
            await c.ws.send_message(bad_message(i))
        replies = await c.drain(0.5)
        assert [r["error"]["code"] for r in replies] == ["invalid_format"] * 300


@pytest.mark.parametrize(("clients", "key"), [
    ({"messagerate": -1}, "signaling.clients.messagerate"),
    ({"messagerate": "fast"}, "signaling.clients.messagerate"),
    ({"messageburst": 0}, "signaling.clients.messageburst"),
])
def test_bad_limits_are_config_errors_naming_the_key(clients: dict[str, Any], key: str) -> None:
    class Nextcloud:
        url = "http://127.0.0.1:9/"

    raw = signaling_config(Nextcloud())  # type: ignore[arg-type]
    raw["signaling"]["clients"] = clients
    with pytest.raises(ConfigError) as info:
        Config.from_mapping(raw)
    assert info.value.key == key
