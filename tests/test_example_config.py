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


def test_example_cluster_admits_public_peers_only_in_both_families() -> None:
    """What the example's comment promises: public peers, and no private range of either
    family (nor the SIIT form of the metadata address)."""
    from relay.turn.policy import PeerPolicy

    cfg = Config.from_file(ROOT / "deploy" / "relay.example.yaml")
    policy = PeerPolicy.from_config(cfg)
    for public in ("198.51.100.7", "8.8.8.8", "2001:4860:4860::8888", "2a00:1450::1"):
        assert policy.check_ip("udp", public).cluster == "media", public
    for private in ("10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "198.18.0.1",
                    "fd00::1", "fc00::1", "::ffff:10.0.0.1", "::ffff:0:a9fe:a9fe",
                    "169.254.169.254", "127.0.0.1", "::1"):
        assert not policy.check_ip("udp", private).allowed, private
