"""`$VAR` / `${VAR}` substitution in a config file, as stunnerd does it.

stunnerd (`pkg/config/client/config.go`) runs Go's `os.ExpandEnv` over the whole file text,
then parses it again, except that `auth.credentials` keep their text as written (a password
holding a ``$`` is never altered).  Before that it makes sure `$STUNNER_PORT` has a value: the
number in `STUNNER_PORT` if it is one, else `STUNNER_PUBLIC_PORT` if that is a number, else
3478.  relay does the same, and additionally keeps its own `auth.users` and the whole
`signaling` section as written (spreed-signaling does no substitution, and that section is
full of secrets).

Go's expansion rule, which `expand` follows byte for byte: ``${name}`` takes everything to
the closing brace; ``$`` followed by one of ``*#$@!?-`` or a digit takes that one character;
otherwise the longest run of letters, digits and ``_``.  An unset variable expands to the
empty string; ``${}`` and an unclosed ``${`` are eaten; a ``$`` followed by anything else
(or nothing) stays.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

DEFAULT_STUNNER_PORT = 3478
_SPECIAL = frozenset("*#$@!?-0123456789")
_NAME = re.compile(r"[A-Za-z0-9_]*")


def _shell_name(s: str, i: int) -> tuple[str, int]:
    """The variable name starting at s[i] (just after ``$``) and how many chars it takes."""
    c = s[i]
    if c == "{":
        if len(s) > i + 2 and s[i + 1] in _SPECIAL and s[i + 2] == "}":
            return s[i + 1], 3
        end = s.find("}", i + 1)
        if end < 0:
            return "", 1  # bad syntax: eat "${"
        if end == i + 1:
            return "", 2  # bad syntax: eat "${}"
        return s[i + 1:end], end - i + 1
    if c in _SPECIAL:
        return c, 1
    m = _NAME.match(s, i)
    assert m is not None
    return m.group(), m.end() - i


def expand(text: str, env: Mapping[str, str]) -> str:
    """`text` with ``$VAR`` and ``${VAR}`` replaced from `env` (Go's `os.Expand`)."""
    if "$" not in text:
        return text
    out: list[str] = []
    start = 0
    j = 0
    n = len(text)
    while j < n:
        if text[j] == "$" and j + 1 < n:
            out.append(text[start:j])
            name, width = _shell_name(text, j + 1)
            if name:
                out.append(env.get(name, ""))
            elif width == 0:
                out.append("$")  # valid syntax, but no name: the dollar stays
            j += width
            start = j + 1
        j += 1
    out.append(text[start:])
    return "".join(out)


def stunner_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment stunnerd expands with: `env` (default: the process's) with
    `STUNNER_PORT` defaulted from `STUNNER_PUBLIC_PORT` or 3478 when it is not a number."""
    out = dict(os.environ if env is None else env)
    port = out.get("STUNNER_PORT", "")
    if not re.fullmatch(r"[0-9]+", port):
        public = out.get("STUNNER_PUBLIC_PORT", "")
        out["STUNNER_PORT"] = (str(int(public)) if re.fullmatch(r"[+-]?[0-9]+", public)
                               else str(DEFAULT_STUNNER_PORT))
    return out
