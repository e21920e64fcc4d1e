"""A small typed reader of configuration mappings that keeps the key path for errors.

`Section` wraps one mapping of the raw (YAML/JSON) tree with its key path, reads typed
values from it, and refuses keys nobody read, so every mistake becomes a `ConfigError`
naming the key (``listeners[0].port: 70000 is not a port``).  It is the leaf every config
parser builds on (`relay.config`, `relay.config.signaling`) and imports nothing of relay's
but the error type.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from relay.errors import ConfigError

T = TypeVar("T")


class Section:
    """A mapping being read, with its key path, refusing keys nobody read."""

    def __init__(self, raw: Any, path: str) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(path or "<root>", f"must be a mapping, not {_kind(raw)}")
        for k in raw:
            if not isinstance(k, str):
                raise ConfigError(path or "<root>", f"key {k!r} is not a string")
        self.raw: Mapping[str, Any] = raw
        self.path = path
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return name in self.raw and self.raw[name] is not None

    def get(self, name: str, default: Any = None) -> Any:
        self._seen.add(name)
        v = self.raw.get(name)
        return default if v is None else v

    def get_str(self, name: str, default: str = "") -> str:
        v = self.get(name, default)
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise ConfigError(self.key(name), f"must be a string, not {_kind(v)}")
        return str(v)

    def get_int(
        self, name: str, default: int, *, min: int | None = None, max: int | None = None
    ) -> int:
        v = self.get(name, default)
        if isinstance(v, str) and re.fullmatch(r"\s*-?\d+\s*", v):
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(self.key(name), f"{v!r} is not an integer")
        if min is not None and v < min:
            raise ConfigError(self.key(name), f"{v} is below the minimum {min}")
        if max is not None and v > max:
            raise ConfigError(self.key(name), f"{v} is above the maximum {max}")
        return v

    def get_port(self, name: str, default: int, *, allow_zero: bool = False) -> int:
        v = self.get(name, default)
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or not (
            (0 if allow_zero else 1) <= v <= 65535
        ):
            raise ConfigError(self.key(name), f"{v!r} is not a port")
        return v

    def get_bool(self, name: str, default: bool) -> bool:
        v = self.get(name, default)
        words = {"true": True, "yes": True, "on": True, "1": True,
                 "false": False, "no": False, "off": False, "0": False}
        if isinstance(v, str) and v.lower() in words:
            return words[v.lower()]
        if not isinstance(v, bool):
            raise ConfigError(self.key(name), f"{v!r} is not a boolean")
        return v

    def get_list(self, name: str) -> list[Any]:
        v = self.get(name, [])
        if isinstance(v, str):
            return [v]
        if not isinstance(v, Sequence):
            raise ConfigError(self.key(name), f"must be a list, not {_kind(v)}")
        return list(v)

    def section(self, name: str) -> Section:
        return Section(self.get(name, {}), self.key(name))

    def items(self, name: str, parse: Callable[[Any, str], T]) -> tuple[T, ...]:
        key = self.key(name)
        return tuple(parse(item, f"{key}[{i}]") for i, item in enumerate(self.get_list(name)))

    def done(self) -> None:
        unknown = sorted(set(self.raw) - self._seen)
        if unknown:
            raise ConfigError(self.key(unknown[0]), "unknown key")


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, Mapping):
        return "a mapping"
    if isinstance(v, list | tuple):
        return "a list"
    return type(v).__name__
