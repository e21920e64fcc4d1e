"""Errors that carry their answer: a config key, a STUN error code, a signaling error code."""

from __future__ import annotations


class RelayError(Exception):
    """Base of relay's own errors."""


class ConfigError(RelayError):
    """An invalid configuration value, named by its key path."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason
