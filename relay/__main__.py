"""Command line: `python -m relay [-c FILE]`."""

from __future__ import annotations

import argparse
import functools
import gc
import logging
import sys

import trio

from relay import __version__, fdlimit
from relay.config import (
    DEFAULT_CONFIG_YAML,
    DEMO_PASSWORD,
    DEMO_USERNAME,
    Config,
)
from relay.config.check import check, load
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
        gc.collect()
        gc.freeze()  # modules, config, listeners: never garbage, never scanned again
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
        config, raw = load(args.config)
    except ConfigError as exc:
        print(f"relay: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    findings = check(config, raw)
    if args.watch and not args.config:
        print("relay: --watch follows a config file: give it with -c FILE", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        for warning in findings.warnings:
            print(f"relay: warning: {warning}", file=sys.stderr)
        for error in findings.errors:
            print(f"relay: config error: {error}", file=sys.stderr)
        if findings.errors:
            return EXIT_CONFIG
        print(f"configuration OK: {len(config.listeners)} listener(s), "
              f"{len(config.clusters)} cluster(s), auth {config.auth.type}"
              + (f", {len(findings.warnings)} warning(s)" if findings.warnings else ""))
        return 0
    setup_logging(config.admin.loglevel)
    soft, raised, hard = fdlimit.raise_nofile_limit()
    logging.getLogger("relay").info(
        "file descriptors: soft limit %d -> %d (hard limit %d), %d kept in reserve",
        soft, raised, hard, fdlimit.GUARD.reserve)
    for warning in findings.warnings:  # an address not on this host fails at bind, by key
        logging.getLogger("relay").warning("config: %s", warning)
    # Young-generation collections every 50k allocations keep pauses off the media path;
    # full collections run at Python's own pace (threshold 10 and its 25% rule), so cycles
    # that reach the old generation are freed, and cost little: the start-up heap is frozen
    # (_main) and never scanned again.  README "Memory" has the figures.
    gc.set_threshold(50_000, 50, 10)
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
