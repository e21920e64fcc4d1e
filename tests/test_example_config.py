"""The configuration files shipped in deploy/ stay valid."""

from __future__ import annotations

from pathlib import Path

from relay.config import Config

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_parses_to_what_it_says() -> None:
    cfg = Config.from_file(ROOT / "deploy" / "relay.example.yaml")
    assert cfg.auth.type == "ephemeral"
    assert cfg.auth.secrets == ("change-me-current", "change-me-previous")
    assert [(lis.name, lis.protocol, lis.port, lis.routes) for lis in cfg.listeners] == [
        ("udp", "TURN-UDP", 3478, ("media",))
    ]
    assert [str(ep.network) for ep in cfg.clusters[0].endpoints] == ["0.0.0.0/0", "::/0"]
    assert cfg.turn.relay_address == "203.0.113.10"
    assert cfg.turn.total_quota == 20000
    assert cfg.admin.user_quota == 20
    assert cfg.admin.metrics_endpoint is not None and cfg.admin.metrics_endpoint.port == 8080
