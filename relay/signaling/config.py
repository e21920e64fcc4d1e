"""The `signaling` section of relay's config (mirrors spreed-signaling's server.conf)."""

from __future__ import annotations

from typing import Any

import attrs

from relay.config import Section
from relay.errors import ConfigError


@attrs.frozen
class SignalingConfig:
    host: str = "127.0.0.1"
    port: int = 8081

    @property
    def listen_display(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_signaling(raw: Any, key: str) -> SignalingConfig:
    s = Section(raw, key)
    http = s.section("http")
    listen = http.get_str("listen", "127.0.0.1:8081")
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(http.key("listen"), f"{listen!r} is not host:port")
    http.done()
    s.done()
    return SignalingConfig(host.strip("[]") or "0.0.0.0", int(port_text))
