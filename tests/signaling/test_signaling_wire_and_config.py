"""Sans-IO pieces: message parsing, the checksum vector, OCS parsing, subjects, config."""

from __future__ import annotations

import base64
import json

import pytest

from relay.config import Config
from relay.config.signaling import BackendConfig, SignalingConfig, canonical_url
from relay.errors import ConfigError
from relay.signaling import protocol as p
from relay.signaling.backend import (
    BackendError,
    Backends,
    checksum,
    parse_ocs,
    verify_checksum,
)
from relay.signaling.metrics import exponential_buckets_range
from relay.signaling.pubsub import LoopbackBus, room_subject, session_subject, user_subject


def test_checksum_test_vector_from_the_api_documentation() -> None:
    body = b'{"type":"auth","auth":{"version":"1.0","params":{"hello":"world"}}}'
    rnd = "afb6b872ab03e3376b31bf0af601067222ff7990335ca02d327071b73c0119c6"
    want = "3c4a69ff328299803ac2879614b707c807b4758cf19450755c60656cac46e3bc"
    assert checksum(b"MySecretValue", rnd, body) == want
    assert verify_checksum(b"MySecretValue", rnd, body, want.upper())
    assert not verify_checksum(b"MySecretValue", rnd, body + b" ", want)
    assert not verify_checksum(b"OtherSecret", rnd, body, want)


@pytest.mark.parametrize(("text", "code"), [
    ("", "invalid_format"),
    ("nul", "invalid_format"),
    ('"str"', "invalid_format"),
    ("{}", "invalid_format"),
    ('{"type":5}', "invalid_format"),
    ('{"id":1,"type":"bye"}', "invalid_format"),
    ('{"type":"hello"}', "invalid_format"),
    ('{"type":"hello","hello":{"version":"1.1"}}', "invalid_hello_version"),
    ('{"type":"hello","hello":{"version":"1.0"}}', "invalid_format"),
    ('{"type":"hello","hello":{"version":"1.0","auth":{"params":{}}}}', "invalid_format"),
    ('{"type":"hello","hello":{"version":"2.0","auth":{"url":"http://x/","params":{}}}}',
     "invalid_format"),
    ('{"type":"room","room":[]}', "invalid_format"),
    ('{"type":"message","message":{"recipient":{"type":"user"},"data":1}}', "invalid_format"),
    ('{"type":"message","message":{"recipient":{"type":"room"}}}', "invalid_format"),
    ('{"type":"control","control":{"recipient":{"type":"bogus"},"data":1}}', "invalid_format"),
    ("[" * 100000, "invalid_format"),
])
def test_invalid_client_messages(text: str, code: str) -> None:
    with pytest.raises(p.SignalingError) as info:
        p.parse_client_message(text)
    assert info.value.code == code


def test_valid_client_messages() -> None:
    m = p.parse_client_message(json.dumps({"id": "7", "type": "hello", "hello": {
        "version": "1.0", "features": ["chat-relay"],
        "auth": {"url": "https://nc/", "params": {"userid": "u", "ticket": "t"}}}}))
    assert m.id == "7" and m.type == "hello"
    assert m.payload == p.Hello("1.0", url="https://nc/", params={"userid": "u", "ticket": "t"},
                                features=("chat-relay",))
    m = p.parse_client_message('{"type":"hello","hello":{"version":"2.0","resumeid":"r"}}')
    assert m.payload == p.Hello("2.0", resume_id="r")
    m = p.parse_client_message('{"type":"room","room":{"roomid":"a b","sessionid":"s"}}')
    assert m.payload == p.Room("a b", "s")
    m = p.parse_client_message(
        '{"type":"message","message":{"recipient":{"type":"call"},"data":{"x":[1]}}}')
    assert m.payload == p.Message("message", p.Recipient("call"), {"x": [1]})
    assert isinstance(p.parse_client_message('{"type":"whatever"}').payload, p.Other)


def test_server_message_omission_rules() -> None:
    assert p.bye_message("3") == {"id": "3", "type": "bye"}
    assert p.bye_message(reason="hello_timeout") == {"type": "bye",
                                                     "bye": {"reason": "hello_timeout"}}
    assert p.error_message(None, "c", "m") == {"type": "error", "error": {"code": "c",
                                                                          "message": "m"}}
    assert p.sender("session", "s", "") == {"type": "session", "sessionid": "s"}
    assert p.room_message(None, "") == {"type": "room", "room": {"roomid": ""}}
    hello = p.hello_message("1", "pub", "priv", "", "v")
    assert hello["hello"]["userid"] == ""  # always present, even for anonymous sessions


def test_parse_ocs() -> None:
    env = {"ocs": {"meta": {"statuscode": 200}, "data": {"type": "auth"}}}
    assert parse_ocs("application/json; charset=utf-8", json.dumps(env).encode()) == {
        "type": "auth"}
    cases = [
        ("text/html", b"<html>", "invalid_content_type"),
        ("application/json", b"nope", "error_decoding_ocs"),
        ("application/json", b'{"x":1}', "error_decoding_ocs"),
        ("application/json", b'{"ocs":{"meta":{},"data":[]}}', "error_incomplete_ocs"),
        ("application/json", b'{"ocs":{"meta":{"statuscode":429},"data":{}}}', "throttled"),
    ]
    for ctype, body, label in cases:
        with pytest.raises(BackendError) as info:
            parse_ocs(ctype, body)
        assert info.value.error_label == label


def test_subjects_and_bus() -> None:
    assert session_subject("abc") == "session.abc"
    assert user_subject("u 1", "nc") == "user." + base64.urlsafe_b64encode(b"u 1|nc").decode()
    assert room_subject("my room", "nc") == "room." + base64.urlsafe_b64encode(
        b"my room|nc").decode()
    bus = LoopbackBus()
    got: list[object] = []
    sub = bus.subscribe("room.x", got.append)
    bus.subscribe("room.x", lambda m: sub.close())  # unsubscribing while delivering is fine
    assert bus.publish("room.x", {"n": 1}) == 2
    assert bus.publish("room.x", {"n": 2}) == 1
    assert got == [{"n": 1}]
    assert bus.publish("session.nobody", {}) == 0 and bus.dropped == 1


def test_canonical_url() -> None:
    assert canonical_url("https://Cloud.Example.com:443/nc") == "https://cloud.example.com/nc/"
    assert canonical_url("http://h:8080") == "http://h:8080/"
    assert canonical_url("http://[::1]:80/") == "http://[::1]/"
    assert canonical_url("ftp://h/") is None
    assert canonical_url("http://h:99999/") is None


def test_bucket_ranges_match_go() -> None:
    b = exponential_buckets_range(1, 30000, 50)
    assert len(b) == 50 and b[0] == 1 and abs(b[-1] - 30000) < 1e-6
    b = exponential_buckets_range(0.01, 30, 30)
    assert len(b) == 30 and abs(b[-1] - 30) < 1e-9


def _cfg(sig: object) -> Config:
    return Config.from_mapping({"version": "v1", "auth": {"type": "none"}, "signaling": sig})


def test_config_full() -> None:
    c = _cfg({"http": {"listen": "[::1]:9000"}, "backend": {
        "timeout": 3, "connectionsperhost": 2,
        "backends": [{"id": "a", "urls": "https://a.example/, https://b.example:8443/x",
                      "secret": "s", "sessionlimit": 5}]},
        "sessions": {"hashkey": "h", "blockkey": "b"}}).signaling
    assert (c.host, c.port, c.backend_timeout, c.connections_per_host) == ("::1", 9000, 3.0, 2)
    assert c.listen_display == "[::1]:9000"
    (be,) = c.backends
    assert be.urls == ("https://a.example/", "https://b.example:8443/x/")
    assert (be.id, be.secret, be.session_limit) == ("a", b"s", 5)
    assert _cfg({"backend": {"allowall": True, "secret": "x"}}).signaling.port == 8081
    assert Config.from_mapping({"version": "v1", "auth": {"type": "none"}}).signaling is None


@pytest.mark.parametrize(("sig", "key"), [
    ({"http": {"listen": "nope"}, "backend": {"allowall": True, "secret": "x"}},
     "signaling.http.listen"),
    ({"backend": {"allowall": True}}, "signaling.backend.secret"),
    ({"backend": {}}, "signaling.backend.backends"),
    ({"backend": {"allowall": True, "secret": "x", "timeout": 0}}, "signaling.backend.timeout"),
    ({"backend": {"backends": [{"id": "a", "urls": ["gopher://x"], "secret": "s"}]}},
     "signaling.backend.backends[0].urls[0]"),
    ({"backend": {"backends": [{"id": "a", "urls": ["http://x"]}]}},
     "signaling.backend.backends[0].secret"),
    ({"backend": {"backends": [{"id": "a", "urls": ["http://x"], "secret": "s"},
                               {"id": "a", "urls": ["http://y"], "secret": "s"}]}},
     "signaling.backend.backends[1].id"),
    ({"backend": {"allowall": True, "secret": "x", "typo": 1}}, "signaling.backend"),
])
def test_config_errors_name_the_key(sig: object, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _cfg(sig)
    assert info.value.key.startswith(key)


def test_backends_registry_finds_the_backend_of_a_url() -> None:
    one = BackendConfig("one", ("https://one.example/", "https://shared.example/one/"), b"1")
    two = BackendConfig("two", ("https://shared.example/two/",), b"2")
    reg = Backends(SignalingConfig(backends=(one, two)))
    assert reg.active == (one, two) and not reg.allow_all
    assert reg.for_url("HTTPS://One.Example:443/ocs/v2.php/x") is one
    assert reg.for_url("https://shared.example/two/index.php") is two
    assert reg.lookup("https://shared.example/one/") is one
    assert reg.for_url("https://shared.example/three/") is None
    assert reg.for_url("ftp://one.example/") is None
    assert reg.for_url("not a url") is None


def test_backends_registry_in_allowall_mode() -> None:
    reg = Backends(SignalingConfig(allow_all=True, secret=b"s"))
    assert reg.active == (reg.compat,) and reg.compat.id == "compat"
    assert reg.compat.secret == b"s"
    assert reg.for_url("https://anything.example/") is reg.compat
    assert reg.for_url("mailto:x") is None
