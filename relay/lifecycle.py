"""A running relay's life after start: live reload (SIGHUP, `--watch`) and graceful drain
(SIGTERM).

`Control` holds the parts a reload or a drain reaches (the gateway, the signaling hub, the
health state) and the config in force.  `relay.app` creates it once the parts run and, for
the CLI, runs `handle_signals` (and `watch`) in its root nursery.

Reload: the file is parsed and validated first; a config error is logged with its key, the
old config stays in force and `relay_config_reloads_total{result="failure"}` counts it.
Then the gateway binds what is new before it changes anything (a bind error is a failure
too, nothing applied), and the parts take the new config between two packets: listeners
added, removed (drained) or re-bound, TLS certificates re-read, clusters, credentials,
quotas and lifetimes swapped; the signaling backends re-keyed, added or removed; log levels
set.  Settings read only at start (the admin and signaling listen addresses, `stats`,
`turn.rfc5766_channels`, a part that was not running) are named in a warning.

Drain: `/ready` turns 503 at once, new Allocates get 508, every signaling client gets `bye`
and a close frame, and the allocations keep relaying until they are deleted or expire, or
until `shutdown.grace_period` runs out; then the root nursery is cancelled and relay exits 0.
A second SIGTERM, or a SIGINT, exits at once.
"""

from __future__ import annotations

import hashlib
import logging
import signal
from pathlib import Path

import trio

from relay.config import Config
from relay.errors import ConfigError
from relay.logsetup import apply_loglevel
from relay.net.gateway import Gateway
from relay.net.workers import Workers
from relay.runtime import Runtime
from relay.signaling.hub import Hub
from relay.signaling.reload import open_connections, reconfigure, say_goodbye
from relay.signaling.turn_credentials import TurnServers, listener_uris

log = logging.getLogger("relay")

WATCH_INTERVAL = 1.0  # --watch polls the config file this often
POLL = 0.2  # a drain checks for the last allocation this often
SIGNALING_CLOSE_WAIT = 5.0  # at most this long for signaling clients to close after bye


class Control:
    """Reload and drain of one running relay."""

    def __init__(self, runtime: Runtime, config_path: str | None = None,
                 turn_servers: TurnServers | None = None) -> None:
        self.runtime = runtime
        self.turn_servers = turn_servers  # relay's own TURN URIs (/turn/credentials)
        self.config = runtime.config  # the config in force
        self.config_path = config_path
        self.gateway: Gateway | Workers | None = None  # Workers: turn.workers > 1
        self.hub: Hub | None = None
        self.draining = False
        self._drain_from = 0  # allocations when the drain began
        self._told = 0  # signaling clients told bye

    def set_hub(self, hub: Hub) -> None:
        self.hub = hub

    # -- reload -------------------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the config file and apply it; False (logged, counted) if it was refused."""
        reloads = self.runtime.health.reloads
        if self.config_path is None:
            log.warning("reload: relay runs the embedded default (no -c FILE); nothing to reload")
            reloads["failure"] += 1
            return False
        try:
            new = Config.from_file(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, the running config stays: config error: %s", exc)
            reloads["failure"] += 1
            return False
        return self.apply(new)

    def apply(self, new: Config) -> bool:
        """Apply a validated config; False (logged, counted) if a part could not take it."""
        reloads = self.runtime.health.reloads
        changes: list[str] = []
        try:
            if self.gateway is not None:
                changes += self.gateway.reconfigure(new)
        except (OSError, ConfigError) as exc:
            log.error("reload refused, the running config stays: %s", exc)
            reloads["failure"] += 1
            return False
        if self.hub is not None and new.signaling is not None:
            changes += reconfigure(self.hub, new.signaling)
        apply_loglevel(new.admin.loglevel)
        if self.gateway is not None:
            gw = self.gateway
            live = [lis for lis in new.listeners if lis.name in gw.bound_ports]
            self.runtime.health.set_listeners(live, gw.bound_ports)
            if self.turn_servers is not None:
                self.turn_servers.uris = listener_uris(live, gw.bound_ports)
        restart = needs_restart(self.config, new, gateway=self.gateway is not None,
                                signaling=self.hub is not None)
        if restart:
            log.warning("reload: changes to %s take effect at the next restart",
                        ", ".join(restart))
        self.config = new
        reloads["success"] += 1
        log.info("config reloaded: %s", "; ".join(changes) if changes else "no listener or "
                 "backend changed")
        return True

    async def watch(self, interval: float = WATCH_INTERVAL) -> None:
        """Follow the config file (as `stunnerd -w`): reload when its content changes."""
        assert self.config_path is not None
        path = Path(self.config_path)
        last = _fingerprint(path)
        while True:
            await trio.sleep(interval)
            now = _fingerprint(path)
            if now is not None and now != last:
                last = now
                log.info("config file %s changed, reloading", path)
                self.reload()

    # -- drain --------------------------------------------------------------------------------

    async def drain(self, grace: float | None = None) -> None:
        """Stop taking work and wait, up to the grace period, for the allocations to end."""
        self.begin_drain(grace)
        await self.wait_drained(grace)

    def begin_drain(self, grace: float | None = None) -> None:
        """Readiness down, new Allocates refused, signaling clients told bye (logged)."""
        if grace is None:
            grace = self.config.shutdown.grace_period
        self.draining = True
        health = self.runtime.health
        health.shutting_down = True
        health.draining = True
        self._drain_from = self.gateway.allocations if self.gateway is not None else 0
        if self.gateway is not None:
            self.gateway.drain()
        self._told = say_goodbye(self.hub) if self.hub is not None else 0
        log.info("draining: %d allocation(s) keep relaying (new ones refused), %d signaling "
                 "client(s) told bye; grace period %gs", self._drain_from, self._told, grace)

    async def wait_drained(self, grace: float | None = None) -> None:
        """Until the last allocation ended (and the signaling clients closed, a few seconds
        at most), or the grace period is over."""
        if grace is None:
            grace = self.config.shutdown.grace_period
        ws_deadline = trio.current_time() + min(grace, SIGNALING_CLOSE_WAIT)
        with trio.move_on_after(grace) as scope:
            while True:
                left = self.gateway.allocations if self.gateway is not None else 0
                ws = open_connections(self.hub) if self.hub is not None else 0
                if not left and (not ws or trio.current_time() >= ws_deadline):
                    break
                await trio.sleep(POLL)
        left = self.gateway.allocations if self.gateway is not None else 0
        if scope.cancelled_caught and left:
            log.warning("drained: grace period of %gs over, %d of %d allocation(s) cut",
                        grace, left, self._drain_from)
        else:
            log.info("drained: %d allocation(s) ended, %d signaling client(s) told bye",
                     self._drain_from, self._told)

    # -- signals ------------------------------------------------------------------------------

    async def handle_signals(
        self, root: trio.CancelScope, *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """SIGHUP reloads; SIGTERM drains, then cancels `root`; a second SIGTERM or a SIGINT
        cancels `root` at once."""
        with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as sigs:
            task_status.started()
            async with trio.open_nursery() as nursery:
                async for signum in sigs:
                    name = signal.Signals(signum).name
                    if signum == signal.SIGHUP:
                        log.info("received SIGHUP, reloading %s", self.config_path or "")
                        self.reload()
                    elif signum == signal.SIGTERM and not self.draining:
                        log.info("received SIGTERM, draining")
                        self.begin_drain()
                        nursery.start_soon(self._drain_then_stop, root)
                    else:
                        log.info("received %s, shutting down now", name)
                        self.runtime.health.shutting_down = True
                        root.cancel()
                        return

    async def _drain_then_stop(self, root: trio.CancelScope) -> None:
        await self.wait_drained()
        root.cancel()


def needs_restart(old: Config, new: Config, *, gateway: bool, signaling: bool) -> list[str]:
    """The changed keys a reload does not apply (read at start only)."""
    out = []
    if old.admin.metrics_endpoint != new.admin.metrics_endpoint:
        out.append("admin.metrics_endpoint")
    if old.admin.healthcheck_endpoint != new.admin.healthcheck_endpoint:
        out.append("admin.healthcheck_endpoint")
    if old.stats != new.stats:
        out.append("stats")
    if old.turn.rfc5766_channels != new.turn.rfc5766_channels:
        out.append("turn.rfc5766_channels")
    if not gateway and new.listeners:
        out.append("listeners (no listener was configured at start)")
    old_sig, new_sig = old.signaling, new.signaling
    if (old_sig is None) != (new_sig is None) or (new_sig is not None and not signaling):
        out.append("signaling (the section was added or removed)")
    elif old_sig is not None and new_sig is not None and (
            (old_sig.host, old_sig.port) != (new_sig.host, new_sig.port)):
        out.append("signaling.http.listen")
    return out


def _fingerprint(path: Path) -> tuple[int, int, bytes] | None:
    try:
        st = path.stat()
        digest = hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, digest)
