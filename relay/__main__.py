"""Command line: `python -m relay [-c FILE]`."""

from __future__ import annotations

import argparse
import functools
import gc
import logging
import sys

import trio

from relay import __version__
from relay.config import (
    DEFAULT_CONFIG_YAML,
    DEMO_PASSWORD,
    DEMO_USERNAME,
    Config,
    default_config,
)
from relay.errors import ConfigError
from relay.logsetup import apply_loglevel

EXIT_CONFIG = 2

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m relay",
        description=(
            "relay: a WebRTC relay. TURN/STUN media gateway (STUNner-style listeners and "
            "clusters), nextcloud-spreed-signaling compatible signaling server, and "
            "Prometheus metrics with health endpoints. Without -c it runs an embedded "
            "default: TURN/UDP on 127.0.0.1:3478 with a demo credential."
        ),
    )
    p.add_argument("-c", "--config", metavar="FILE",
                   help="configuration file (StunnerConfig v1, YAML or JSON)")
    p.add_argument("-w", "--watch", action="store_true",
                   help="follow the configuration file and apply changes live (as SIGHUP)")
    p.add_argument("--check-config", action="store_true",
                   help="validate the configuration, print a summary and exit")
    p.add_argument("--print-default-config", action="store_true",
                   help="print the embedded default configuration and exit")
    p.add_argument("--version", action="version", version=f"relay {__version__}")
    return p.parse_args(argv)


def setup_logging(loglevel: str) -> None:
    """STUNner's `all:INFO,turn:DEBUG` form: `all` sets the root, others name loggers."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    apply_loglevel(loglevel)


async def _main(config: Config, announce_demo: bool, config_path: str | None = None,
                watch: bool = False) -> None:
    # Imported here, not for a cycle: --check-config and --version need not load the
    # servers (hypercorn, h11, wsproto...).
    from relay.app import describe, run

    async with trio.open_nursery() as nursery:
        # relay.app owns the signals: SIGHUP reloads, SIGTERM drains, SIGINT stops.
        running = await nursery.start(functools.partial(
            run, config, config_path=config_path, watch=watch, handle_signals=True))
        for line in describe(running):
            print(line, flush=True)
        if announce_demo:
            print(
                f"demo TURN credential: username={DEMO_USERNAME} password={DEMO_PASSWORD} "
                f"realm={config.auth.realm}",
                flush=True,
            )
        print("relay is ready; Ctrl-C stops it, SIGTERM drains it, SIGHUP reloads the config",
              flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_default_config:
        sys.stdout.write(DEFAULT_CONFIG_YAML)
        return 0
    try:
        config = Config.from_file(args.config) if args.config else default_config()
    except ConfigError as exc:
        print(f"relay: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.watch and not args.config:
        print("relay: --watch follows a config file: give it with -c FILE", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        print(f"configuration OK: {len(config.listeners)} listener(s), "
              f"{len(config.clusters)} cluster(s), auth {config.auth.type}")
        return 0
    setup_logging(config.admin.loglevel)
    # Long-lived state (allocations, sessions) would make frequent full GC passes costly;
    # young-generation collections every 50k allocations keep pauses off the media path.
    gc.set_threshold(50_000, 50, 1000)
    try:
        trio.run(_main, config, args.config is None, args.config, args.watch)
    except KeyboardInterrupt:
        pass
    except (OSError, ConfigError, BaseExceptionGroup) as exc:
        # Typically a port already in use: say which, no traceback.
        problems = _startup_errors(exc)
        if problems is None:
            raise
        for problem in problems:
            print(f"relay: cannot start: {problem}", file=sys.stderr)
        return EXIT_CONFIG if any(isinstance(p, ConfigError) for p in problems) else 1
    return 0


def _startup_errors(exc: BaseException) -> list[BaseException] | None:
    """The OSError/ConfigError leaves of a (possibly grouped) startup failure, or None if
    anything else is in there (a bug: let the traceback show)."""
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for sub in exc.exceptions:
            leaves = _startup_errors(sub)
            if leaves is None:
                return None
            out.extend(leaves)
        return out
    if isinstance(exc, (OSError, ConfigError)):
        return [exc]
    return None


if __name__ == "__main__":
    sys.exit(main())
