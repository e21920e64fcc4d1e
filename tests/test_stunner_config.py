"""STUNner configs carry over: inline base64 PEM certificates, `$VAR` substitution as stunnerd
does it, per-listener relay port ranges, empty passwords refused, unsupported fields warned
about by name, and no key material in any error."""

from __future__ import annotations

import base64
import json
import re
import shutil
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from benchmarks.echo_peer import serve_udp_echo
from relay.config import Config
from relay.config.environ import expand, stunner_environment
from relay.errors import ConfigError
from tests.turn.gateway_harness import free_port_range, listener_address, running, until
from tests.turn.stream_client import StreamTurnClient

CHAN = 0x4000


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def pem_pair(ca: trustme.CA) -> tuple[bytes, bytes]:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    return chain, cert.private_key_pem.bytes()


def b64(pem: bytes) -> str:
    return base64.b64encode(pem).decode()


# -- environment substitution ---------------------------------------------------------------

ENV = {"A": "x", "B_1": "y", "1": "one"}


@pytest.mark.parametrize(("text", "out"), [
    ("$A", "x"),
    ("${A}", "x"),
    ("$A.b", "x.b"),  # a name is letters, digits and _
    ("pre$B_1post", "pre"),  # ...so this is the (unset) variable B_1post
    ("${B_1}post", "ypost"),
    ("$UNSET", ""),
    ("$", "$"),
    ("cost: 5$", "cost: 5$"),
    ("$ A", "$ A"),  # no name after the dollar: it stays
    ("$/x", "$/x"),
    ("$$", ""),  # a special shell variable, unset in the environment
    ("$1x", "onex"),
    ("${1}", "one"),
    ("${}", ""),  # bad syntax is eaten, as Go's os.Expand does
    ("${A", "A"),
])
def test_expand_follows_stunnerd(text: str, out: str) -> None:
    assert expand(text, ENV) == out


@pytest.mark.parametrize(("env", "port"), [
    ({}, "3478"),
    ({"STUNNER_PORT": "3479"}, "3479"),
    ({"STUNNER_PORT": "", "STUNNER_PUBLIC_PORT": "30478"}, "30478"),
    ({"STUNNER_PORT": "x", "STUNNER_PUBLIC_PORT": "y"}, "3478"),
])
def test_stunner_port_has_a_default(env: dict[str, str], port: str) -> None:
    assert stunner_environment(env)["STUNNER_PORT"] == port


def stunner_text(**listener: Any) -> str:
    return json.dumps({
        "version": "v1",
        "admin": {"name": "stunner/gw", "metrics_endpoint": "", "healthcheck_endpoint": ""},
        "auth": {"type": "static", "realm": "$REALM",
                 "credentials": {"username": "$USER", "password": "pa$$word"}},
        "listeners": [{"name": "stunner/gw/udp", "protocol": "TURN-UDP",
                       "address": "$STUNNER_ADDR", "port": "$STUNNER_PORT", **listener}],
    })


def test_addresses_and_ports_substituted_credentials_kept_as_written() -> None:
    env = {"STUNNER_ADDR": "127.0.0.1", "REALM": "example.org", "USER": "nobody"}
    cfg = Config.from_text(stunner_text(), "stunnerd.conf", env=env)
    lis = cfg.listeners[0]
    assert (lis.address, lis.port) == ("127.0.0.1", 3478)
    assert cfg.auth.realm == "example.org"
    # stunnerd restores auth.credentials after the substitution
    assert (cfg.auth.users[0].username, cfg.auth.users[0].password) == ("$USER", "pa$$word")


def test_unset_address_falls_back_to_the_wildcard() -> None:
    cfg = Config.from_text(stunner_text(), "stunnerd.conf", env={})
    assert cfg.listeners[0].address == "0.0.0.0"


def test_signaling_section_is_not_substituted() -> None:
    text = """
version: v1
auth: {type: static, credentials: {username: u, password: p}}
signaling:
  backend:
    allowall: true
    secret: "se$cret"
"""
    cfg = Config.from_text(text, env={"cret": "X"})
    assert cfg.signaling is not None and cfg.signaling.secret == b"se$cret"


# -- TLS material ---------------------------------------------------------------------------


def tls_listener(cert: str, key: str, **extra: Any) -> dict[str, Any]:
    return {"name": "tls", "protocol": "TURN-TLS", "address": "127.0.0.1", "port": 0,
            "cert": cert, "key": key, **extra}


def tls_config(cert: str, key: str) -> Config:
    return Config.from_mapping({
        "version": "v1", "auth": {"credentials": {"username": "u", "password": "p"}},
        "listeners": [tls_listener(cert, key)]})


@pytest.mark.parametrize("form", ["base64", "base64-wrapped", "pem", "file"])
def test_cert_and_key_in_every_form(ca: trustme.CA, tmp_path: Path, form: str) -> None:
    cert, key = pem_pair(ca)
    if form == "base64":
        values = b64(cert), b64(key)
    elif form == "base64-wrapped":  # as `base64` prints it, 76 columns
        values = base64.encodebytes(cert).decode(), base64.encodebytes(key).decode()
    elif form == "pem":
        values = cert.decode(), key.decode()
    else:
        (tmp_path / "c.pem").write_bytes(cert)
        (tmp_path / "k.pem").write_bytes(key)
        values = str(tmp_path / "c.pem"), str(tmp_path / "k.pem")
    lis = tls_config(*values).listeners[0]
    assert (lis.cert, lis.key) == values


def test_errors_name_the_key_and_never_show_key_material(ca: trustme.CA) -> None:
    cert, key = pem_pair(ca)
    other_cert, _ = pem_pair(ca)
    key64 = b64(key)
    body = key.decode().splitlines()[1]  # a line of the key itself
    cases = [
        (b64(cert), key64[:-8], "listeners[0].key"),  # truncated base64 key
        (b64(cert), key64[:60] + "*" + key64[61:], "listeners[0].key"),  # mangled base64
        (b64(cert), key.decode()[:200], "listeners[0].key"),  # truncated inline PEM key
        (b64(other_cert), key64, "listeners[0].cert"),  # key of another certificate
        (b64(cert)[:-8], key64, "listeners[0].cert"),
    ]
    for cert_value, key_value, where in cases:
        with pytest.raises(ConfigError) as exc:
            tls_config(cert_value, key_value)
        assert exc.value.key == where, (where, exc.value)
        text = str(exc.value)
        assert key64[:40] not in text and key64[-40:] not in text and body not in text
        assert "PRIVATE KEY" not in text and len(text) < 300, text


# -- auth, relay ports, unsupported fields ------------------------------------------------


@pytest.mark.parametrize(("auth", "where"), [
    ({"type": "static", "credentials": {"username": "u", "password": ""}},
     "auth.credentials.password"),
    ({"type": "static", "credentials": {"username": "u"}}, "auth.credentials.password"),
    ({"type": "static", "credentials": {"username": "u", "password": "p"},
      "users": [{"username": "v", "password": ""}]}, "auth.users[0].password"),
])
def test_static_auth_without_a_password_is_refused(auth: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError) as exc:
        Config.from_mapping({"version": "v1", "auth": auth})
    assert exc.value.key == where


def test_listener_relay_port_range_is_checked() -> None:
    with pytest.raises(ConfigError) as exc:
        Config.from_mapping({"version": "v1",
                             "auth": {"credentials": {"username": "u", "password": "p"}},
                             "listeners": [{"name": "l", "min_relay_port": 40000,
                                            "max_relay_port": 30000}]})
    assert exc.value.key == "listeners[0].min_relay_port"


def test_unsupported_stunner_fields_are_warned_about_by_name() -> None:
    base = {"version": "v1", "auth": {"credentials": {"username": "u", "password": "p"}}}
    cfg = Config.from_mapping({**base, "admin": {"offload_engine": "Auto",
                                                 "offload_interfaces": ["eth0"]}})
    assert [w.split(":")[0] for w in cfg.warnings] == ["admin.offload_engine",
                                                       "admin.offload_interfaces"]
    assert Config.from_mapping({**base, "admin": {"offload_engine": "None"}}).warnings == ()


# -- the done test: a STUNner operator's config, as rendered, serves TURN-TLS ----------------


def operator_config(cert: bytes, key: bytes, lo: int, hi: int) -> str:
    """A stunnerd.conf in the shape STUNner's gateway operator renders it: JSON, names
    namespaced with slashes, `$STUNNER_ADDR` addresses, base64 PEM cert and key, the
    listener's own relay port range."""
    return json.dumps({
        "version": "v1",
        "admin": {"name": "stunner/tls-gateway", "loglevel": "all:WARN",
                  "metrics_endpoint": "", "healthcheck_endpoint": "",
                  "offload_engine": "none"},
        "auth": {"type": "static", "realm": "stunner.l7mp.io",
                 "credentials": {"username": "user-1", "password": "pass-1"}},
        "listeners": [{
            "name": "stunner/tls-gateway/tls-listener",
            "address": "$STUNNER_ADDR",
            "port": "${TLS_PORT}",
            "protocol": "TURN-TLS",
            "public_address": "$STUNNER_ADDR",
            "cert": b64(cert),
            "key": b64(key),
            "min_relay_port": lo,
            "max_relay_port": hi,
            "routes": ["stunner/media-plane"],
        }],
        "clusters": [{"name": "stunner/media-plane", "type": "STATIC",
                      "endpoints": ["127.0.0.1/32"]}],
    }, indent=2)


async def test_stunner_operator_config_serves_a_turn_tls_allocation(ca: trustme.CA) -> None:
    cert, key = pem_pair(ca)
    lo, hi = free_port_range(8, ("127.0.0.1",))
    cfg = Config.from_text(operator_config(cert, key, lo, hi), "stunnerd.conf",
                           env={"STUNNER_ADDR": "127.0.0.1", "TLS_PORT": "0"})
    assert cfg.warnings == ()
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    name = "stunner/tls-gateway/tls-listener"
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery, running(cfg) as rt:
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            async with StreamTurnClient(listener_address(rt, name), "user-1", "pass-1",
                                        tls=ctx) as c:
                await c.allocate()
                assert c.relayed is not None and lo <= c.relayed[1] <= hi
                await c.channel_bind(CHAN, peer)
                await c.send_channel(CHAN, b"over tls")
                while True:
                    kind, meta, data = await c.recv(timeout=5)
                    if kind == "channel":
                        break
                assert (meta, data) == (CHAN, b"over tls")
            nursery.cancel_scope.cancel()


UCLIENT = shutil.which("turnutils_uclient")


@pytest.mark.skipif(UCLIENT is None, reason="coturn's turnutils_uclient is not installed "
                    "(apt install coturn; tests/run.sh installs it when run as root)")
async def test_coturn_client_relays_over_tls_through_a_stunner_operator_config(
        ca: trustme.CA) -> None:
    assert UCLIENT is not None
    cert, key = pem_pair(ca)
    lo, hi = free_port_range(48, ("127.0.0.1",))
    cfg = Config.from_text(operator_config(cert, key, lo, hi), "stunnerd.conf",
                           env={"STUNNER_ADDR": "127.0.0.1", "TLS_PORT": "0"})
    name = "stunner/tls-gateway/tls-listener"
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery, running(cfg) as rt:
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            host, port = listener_address(rt, name)
            # -t -S: TURN over TLS; -s: Send/Data indications; -c: no RTCP allocations
            cmd = [UCLIENT, "-t", "-S", "-p", str(port), "-u", "user-1", "-w", "pass-1",
                   "-e", peer[0], "-r", str(peer[1]), "-m", "4", "-n", "40", "-l", "120",
                   "-z", "5", "-X", "-s", "-c", host]
            proc = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True,
                                          check=False, stdin=b"")
            out = (proc.stdout + proc.stderr).decode("utf-8", "replace")
            assert proc.returncode == 0, out[-3000:]
            totals = re.findall(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$", out,
                                re.MULTILINE)
            assert totals, out[-3000:]
            sent, received = (int(x) for x in totals[-1])
            # Relayed both ways; on 2 shared cores under the whole suite, a datagram may
            # come back after uclient stopped counting, so a stray late one is tolerated
            # (tests/turn/test_gateway_interop.py pins zero loss on a quiet run).
            assert sent >= 4 * 40 and received >= sent - 2, out[-3000:]
            # The config sets no turn.workers: on a multi-core host TURN workers serve it
            # and their counters reach relay's every 0.25 s.
            await until(lambda: rt.stats.requests.get(("allocate", "success"), 0) >= 4
                        and rt.stats.listeners[name].traffic.rx_packets >= 4 * 40,
                        "uclient's allocations and datagrams counted")
            nursery.cancel_scope.cancel()
