"""Helpers for tests with internal clients (SIP bridge, recorder): config and hello."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from benchmarks.mock_nextcloud import MockNextcloud
from tests.signaling.conftest import Client, signaling_config

INTERNAL_SECRET = "the-internal-secret"


def internal_config(nc: MockNextcloud, **backend: Any) -> dict[str, Any]:
    cfg = signaling_config(nc, **backend)
    cfg["signaling"]["clients"] = {"internalsecret": INTERNAL_SECRET}
    return cfg


def internal_params(backend: str, secret: str = INTERNAL_SECRET,
                    random: str | None = None) -> dict[str, str]:
    rnd = random if random is not None else secrets.token_hex(32)
    token = hmac.new(secret.encode(), rnd.encode(), hashlib.sha256).hexdigest()
    return {"random": rnd, "token": token, "backend": backend}


async def internal_hello(c: Client, params: dict[str, Any] | None = None,
                         features: list[str] | None = None,
                         version: str = "1.0") -> dict[str, Any]:
    hello: dict[str, Any] = {"version": version, "auth": {
        "type": "internal", "params": params or internal_params(c.nextcloud.url)}}
    if features is not None:
        hello["features"] = features
    return await c.say_hello(hello)
