"""The `shutdown` section: how long a draining relay waits for its allocations.

On SIGTERM relay drains: readiness turns 503, new Allocates are refused, signaling clients
get `bye`, and the existing allocations keep relaying until they are deleted or expire, or
until `grace_period` seconds have passed; then relay exits.  The default is 3600 s, the
`terminationGracePeriodSeconds` STUNner's Helm chart gives its `stunnerd` pods, so a pod
spec written for STUNner fits: keep Kubernetes' own grace period at least this long.
"""

from __future__ import annotations

from typing import Any

import attrs

from relay.config.reader import Section

DEFAULT_GRACE_PERIOD = 3600.0


@attrs.frozen
class ShutdownConfig:
    grace_period: float = DEFAULT_GRACE_PERIOD  # seconds; 0 = exit at once


def parse_shutdown(raw: Any, key: str) -> ShutdownConfig:
    s = Section(raw, key)
    grace = s.get_int("grace_period", int(DEFAULT_GRACE_PERIOD), min=0, max=7 * 86400)
    s.done()
    return ShutdownConfig(float(grace))
