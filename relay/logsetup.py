"""Log levels in STUNner's `all:INFO,turn:DEBUG` form: `all` sets the root, the others name
`relay.<scope>` loggers.  Used at start and again on every config reload."""

from __future__ import annotations

import logging

LEVELS = {
    "TRACE": logging.DEBUG,
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
    "DISABLE": logging.CRITICAL + 10,
}

_scoped: set[str] = set()  # loggers a previous call set, reset when a reload drops them


def parse_loglevel(loglevel: str) -> tuple[int, dict[str, int]]:
    """(root level, logger name -> level)."""
    root_level = logging.INFO
    per_logger: dict[str, int] = {}
    for part in loglevel.split(","):
        part = part.strip()
        if not part:
            continue
        scope, _, level = part.rpartition(":")
        lvl = LEVELS.get(level.upper(), logging.INFO)
        if scope in ("", "all"):
            root_level = lvl
        else:
            per_logger[f"relay.{scope}"] = lvl
    return root_level, per_logger


def apply_loglevel(loglevel: str) -> None:
    """Set the root and the named loggers' levels; loggers named before but not now go
    back to following the root."""
    root_level, per_logger = parse_loglevel(loglevel)
    logging.getLogger().setLevel(root_level)
    # httpx logs every request (Nextcloud's room pings every 10 s) at INFO; relay's
    # backend client logs its requests at DEBUG instead.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(root_level, logging.WARNING))
    for name in _scoped - per_logger.keys():
        logging.getLogger(name).setLevel(logging.NOTSET)
    for name, lvl in per_logger.items():
        logging.getLogger(name).setLevel(lvl)
    _scoped.clear()
    _scoped.update(per_logger)
