"""The descriptor guard on its own: the accept loop's per-IP cap and headroom, EMFILE on
accept, the self-probe without descriptors, log rate limiting, raising the soft limit."""

from __future__ import annotations

import errno
import logging
import resource
import socket
import subprocess
import sys
from typing import Any

import pytest
import trio

from relay import fdlimit
from relay.config import Config
from relay.errors import ConfigError
from relay.fdlimit import FdGuard, RateLimitedAcceptLog, serve_accepts
from relay.net import probe
from tests.test_cli import ROOT, _env


def _listening(host: str = "127.0.0.1") -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


async def _connect(target: tuple[str, int], source: str = "127.0.0.1"
                   ) -> trio.SocketStream | None:
    """A connected stream; None when the server reset it before connect() returned."""
    s = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await s.bind((source, 0))
    try:
        await s.connect(target)
    except ConnectionResetError:
        s.close()
        return None
    return trio.SocketStream(s)


async def _closed_by_server(stream: trio.SocketStream | None) -> bool:
    """True when the server closed (or reset) the connection within a bounded wait."""
    if stream is None:
        return True
    with trio.move_on_after(5):
        try:
            return await stream.receive_some(1) == b""
        except trio.BrokenResourceError:
            return True
    return False


class Holder:
    """A handler that holds each connection until the client closes it."""

    def __init__(self) -> None:
        self.served = 0
        self.finished = 0

    async def __call__(self, stream: trio.SocketStream) -> None:
        self.served += 1
        async with stream:
            try:
                while await stream.receive_some(1024):
                    pass
            except trio.BrokenResourceError:
                pass
        self.finished += 1


async def test_connections_over_the_per_ip_cap_are_closed_others_served() -> None:
    guard = FdGuard()
    handler = Holder()
    lsock = _listening()
    await lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    target = lsock.getsockname()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: serve_accepts(
                [lsock], handler, where="turn_accept", per_ip=2, guard=guard,
                task_status=task_status))
            held = [await _connect(target), await _connect(target)]
            third = await _connect(target)
            assert await _closed_by_server(third)
            assert guard.capped["turn_accept"] == 1
            # Another source IP has its own count.
            other = await _connect(target, "127.0.0.2")
            # When one of the first two goes, the IP may connect again.
            assert held[0] is not None
            await held[0].aclose()
            while handler.finished < 1:  # noqa: ASYNC110 (the handler task's counter)
                await trio.sleep(0.01)
            fourth = await _connect(target)
            while handler.served < 4:  # noqa: ASYNC110 (the handler task's counter)
                await trio.sleep(0.01)
            assert guard.capped["turn_accept"] == 1
            for s in (held[1], third, other, fourth):
                if s is not None:
                    await s.aclose()
            nursery.cancel_scope.cancel()
    lsock.close()


async def test_a_connection_landing_in_the_reserve_is_closed_and_counted() -> None:
    guard = FdGuard()
    guard.threshold = 0  # as if the table were full: every new descriptor is in the reserve
    handler = Holder()
    lsock = _listening()
    await lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: serve_accepts(
                [lsock], handler, where="signaling_accept", guard=guard,
                task_status=task_status))
            c = await _connect(lsock.getsockname())
            assert await _closed_by_server(c)
            assert guard.exhausted["signaling_accept"] == 1
            assert handler.served == 0
            guard.configure(guard.limit)  # descriptors free again
            c2 = await _connect(lsock.getsockname())
            while handler.served < 1:  # noqa: ASYNC110 (the handler task's counter)
                await trio.sleep(0.01)
            for s in (c, c2):
                if s is not None:
                    await s.aclose()
            nursery.cancel_scope.cancel()
    lsock.close()


class EmfileThenListener:
    """A listening socket whose accept fails with EMFILE `n` times, then blocks."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.calls = 0
        self.done = trio.Event()

    async def accept(self) -> Any:
        self.calls += 1
        if self.left:
            self.left -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        self.done.set()
        await trio.sleep_forever()


async def test_emfile_on_accept_backs_off_counts_and_logs_once_a_second(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    guard = FdGuard()
    fake = EmfileThenListener(30)
    with caplog.at_level(logging.WARNING, logger="relay.fd"), trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: serve_accepts([fake], Holder(), where="turn_accept",
                                                     guard=guard))
            await fake.done.wait()
            nursery.cancel_scope.cancel()
    assert guard.exhausted["turn_accept"] == 30
    assert fake.calls == 31  # one try per back-off, not a busy loop
    # 30 refusals within a moment of wall time: one line, not thirty tracebacks.
    lines = [r for r in caplog.records if r.name == "relay.fd"]
    assert 1 <= len(lines) < 30
    assert not any(r.exc_info for r in lines)


def test_refusals_are_logged_at_most_once_a_second(caplog: pytest.LogCaptureFixture) -> None:
    guard = FdGuard()
    with caplog.at_level(logging.WARNING, logger="relay.fd"):
        for _ in range(1000):
            guard.refused("relay_socket", "Too many open files")
    assert guard.exhausted["relay_socket"] == 1000
    assert len([r for r in caplog.records if r.name == "relay.fd"]) <= 2  # a second boundary


def test_emfile_tracebacks_of_foreign_accept_loops_are_counted_not_logged() -> None:
    guard = FdGuard()
    flt = RateLimitedAcceptLog(guard)
    try:
        raise OSError(errno.EMFILE, "Too many open files")
    except OSError:
        record = logging.LogRecord("trio.serve_listeners", logging.ERROR, __file__, 1,
                                   "accept returned EMFILE", (), sys.exc_info())
    assert flt.filter(record) is False
    assert guard.exhausted["admin_accept"] == 1
    other = logging.LogRecord("trio.serve_listeners", logging.ERROR, __file__, 1,
                              "something else", (), None)
    assert flt.filter(other) is True


async def test_the_self_probe_survives_running_out_of_descriptors(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fd(*args: Any, **kw: Any) -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    before = fdlimit.GUARD.exhausted["probe"]
    monkeypatch.setattr(probe.trio.socket, "socket", no_fd)
    with trio.fail_after(5):
        assert await probe.probe_once(("127.0.0.1", 9), 0.1) is False
    assert fdlimit.GUARD.exhausted["probe"] == before + 1


def test_the_soft_limit_is_raised_to_the_hard_limit_at_start() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1024:
        pytest.skip(f"hard RLIMIT_NOFILE {hard} is below the test's 512/1024 setting")

    def low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, 1024))

    code = ("import resource; from relay import fdlimit; print(fdlimit.raise_nofile_limit());"
            " print(resource.getrlimit(resource.RLIMIT_NOFILE)); print(fdlimit.GUARD.threshold)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, cwd=ROOT, env=_env(), preexec_fn=low)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "(512, 1024, 1024)"
    assert lines[1] == "(1024, 1024)"
    assert int(lines[2]) == 1024 - fdlimit.reserve_for(1024)


@pytest.mark.parametrize(("raw", "key"), [
    ({"turn": {"max_connections_per_ip": -1}}, "turn.max_connections_per_ip"),
    ({"turn": {"unauthorized_burst": 0}}, "turn.unauthorized_burst"),
    ({"signaling": {"http": {"max_connections_per_ip": "many"}, "backend": {
        "allowall": True, "secret": "x"}}}, "signaling.http.max_connections_per_ip"),
])
def test_the_caps_are_config_keys_and_bad_values_name_them(raw: dict[str, Any],
                                                           key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_mapping({"version": "v1", "auth": {"type": "none"}, **raw})
    assert info.value.key == key


def test_the_caps_default_and_parse() -> None:
    cfg = Config.from_mapping({"version": "v1", "auth": {"type": "none"},
                               "turn": {"max_connections_per_ip": 7},
                               "signaling": {"http": {"max_connections_per_ip": 0},
                                             "backend": {"allowall": True, "secret": "x"}}})
    assert cfg.turn.max_connections_per_ip == 7
    assert cfg.signaling is not None and cfg.signaling.max_connections_per_ip == 0
    default = Config.from_mapping({"version": "v1", "auth": {"type": "none"}})
    assert default.turn.max_connections_per_ip > 0
    assert default.turn.unauthorized_burst >= 200  # a NAT of 200 clients starting at once
