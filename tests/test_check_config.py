"""`--check-config` catches what would fail at start and reports what was left in a config;
every bind error at start names its key and port.  Runs `python -m relay` as an operator
does (a subprocess under a timeout); only loopback is bound."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from relay.config import Config
from relay.config.check import check, load
from tests.test_cli import ROOT, assert_config_error, minimal, relay, write

BASE = """\
version: v1
admin: {metrics_endpoint: "", healthcheck_endpoint: ""}
auth: {type: static, credentials: {username: u, password: p}}
"""


def _not_local() -> str:
    """An IPv4 address this host does not have (the benchmarking range, RFC 2544)."""
    for last in range(254, 200, -1):
        ip = f"198.18.{last}.{last}"
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((ip, 0))
        except OSError:
            return ip
    pytest.skip("every probed 198.18.x.x address is on this host")


def test_a_listener_address_not_on_this_host_fails_the_check(tmp_path: Path) -> None:
    ip = _not_local()
    path = write(tmp_path, BASE + f"""\
listeners:
  - {{name: here, address: 127.0.0.1, port: 0}}
  - {{name: elsewhere, address: {ip}, port: 3478}}
""")
    proc = relay("-c", path, "--check-config")
    assert_config_error(proc, "listeners[1].address")
    assert ip in proc.stderr and "listeners[0]" not in proc.stderr
    assert "configuration OK" not in proc.stdout


def test_http_endpoints_not_on_this_host_fail_the_check(tmp_path: Path) -> None:
    ip = _not_local()
    text = BASE.replace('metrics_endpoint: ""', f'metrics_endpoint: "http://{ip}:8080/metrics"')
    text += f"""\
signaling:
  listen: "{ip}:8081"
  backend: {{allowall: true, secret: s3cr3t-value}}
"""
    config, raw = load(write(tmp_path, text))
    assert [e.key for e in check(config, raw).errors] == ["admin.metrics_endpoint",
                                                          "signaling.listen"]


def test_placeholders_and_documentation_addresses_are_warned_about(tmp_path: Path) -> None:
    path = write(tmp_path, """\
version: v1
admin: {metrics_endpoint: "", healthcheck_endpoint: ""}
auth: {type: ephemeral, credentials: {secret: [change-me-current, real-secret-0123]}}
listeners:
  - {name: udp, address: 127.0.0.1, port: 0, public_address: 198.51.100.4, routes: [c]}
clusters:
  - {name: c, type: STATIC, endpoints: ["0.0.0.0/0", "192.0.2.0/24:<3000-4000>", "10.0.0.0/8",
                                        "2001:db8::/48"]}
turn: {relay_address: 203.0.113.10}
""")
    proc = relay("-c", path, "--check-config")
    assert proc.returncode == 0, proc.stderr
    assert "configuration OK" in proc.stdout and "5 warning(s)" in proc.stdout
    warned = sorted(line.split(": ")[2] for line in proc.stderr.splitlines()
                    if line.startswith("relay: warning: "))
    assert warned == ["auth.credentials.secret[0]", "clusters[0].endpoints[1]",
                      "clusters[0].endpoints[3]", "listeners[0].public_address",
                      "turn.relay_address"]
    assert "change-me-current" not in proc.stderr + proc.stdout  # secrets are never shown


def test_credentials_written_as_variables_are_warned_about(tmp_path: Path) -> None:
    config, raw = load(write(tmp_path, """\
version: v1
auth: {type: ephemeral, credentials: {secret: $STUNNER_SHARED_SECRET}}
"""))
    assert config.auth.secrets == ("$STUNNER_SHARED_SECRET",)  # as stunnerd: not substituted
    [warning] = check(config, raw).warnings
    assert warning.startswith("auth.credentials.secret: looks like an environment variable")


def test_a_clean_config_has_no_findings() -> None:
    config = Config.from_text(BASE + "listeners: [{name: l, address: 127.0.0.1, port: 0}]\n")
    assert check(config, {}).errors == () and check(config, {}).warnings == ()


def test_the_shipped_example_passes_with_its_placeholders_named() -> None:
    proc = relay("-c", str(ROOT / "deploy" / "relay.example.yaml"), "--check-config")
    assert proc.returncode == 0, proc.stderr
    assert "auth.credentials.secret[0]: a placeholder secret" in proc.stderr
    assert "turn.relay_address: 203.0.113.10 is a documentation address" in proc.stderr


def test_offload_engine_is_warned_about_at_check(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace('healthcheck_endpoint: ""',
                                        'healthcheck_endpoint: "", offload_engine: XDP'))
    proc = relay("-c", path, "--check-config")
    assert proc.returncode == 0, proc.stderr
    assert "relay: warning: admin.offload_engine: 'XDP' not supported" in proc.stderr


# -- bind errors at start name the key and the port ---------------------------------------


def test_signaling_port_in_use_names_key_and_port(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        text = minimal() + f"""\
signaling:
  http: {{listen: "127.0.0.1:{port}"}}
  backend: {{allowall: true, secret: s3cr3t-value}}
"""
        proc = relay("-c", write(tmp_path, text))
    assert_config_error(proc, "signaling.http.listen")
    assert f"127.0.0.1:{port}" in proc.stderr
    assert "relay is ready" not in proc.stdout


def test_turn_listener_port_in_use_names_key_and_port(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        text = minimal().replace("protocol: TURN-UDP", "protocol: TURN-TCP").replace(
            "port: 0", f"port: {port}")
        proc = relay("-c", write(tmp_path, text))
    assert proc.returncode == 1, proc.stderr
    assert f"listeners[0].port (listener udp-cli): cannot bind 127.0.0.1:{port}/tcp" \
        in proc.stderr
    assert "Traceback" not in proc.stderr
