"""Credential helpers: password preparation and long-term keys (RFC 8489 §9).

RFC 8489 prepares passwords with the OpaqueString profile (RFC 8265); older clients and the
RFC 5769 vectors use SASLprep (RFC 4013). Both agree on ordinary passwords. We implement the
SASLprep steps, which are what makes "The\\u00adM\\u00aatr\\u2168" become "TheMatrIX":

1. map: non-ASCII spaces (RFC 3454 table C.1.2) to U+0020; "commonly mapped to nothing"
   (table B.1) removed;
2. normalise with Unicode NFKC;
3. refuse prohibited output (control characters, private use, non-characters, surrogates,
   characters inappropriate for plain text or canonical representation, display-changing and
   tagging characters: tables C.2-C.9) with ValueError;
4. the bidirectional rule: a string with right-to-left characters must not contain
   left-to-right ones and must start and end with a right-to-left character.

Unassigned code points are allowed (the "stored strings" rule would refuse them, but which
code points are unassigned depends on the Unicode version of the running Python).
"""

from __future__ import annotations

import hashlib
import unicodedata

__all__ = ["long_term_key", "opaque_string", "user_hash"]

# RFC 3454 B.1: commonly mapped to nothing.
_MAPPED_TO_NOTHING = frozenset(
    [
        0x00AD,
        0x034F,
        0x1806,
        0x180B,
        0x180C,
        0x180D,
        0x200B,
        0x200C,
        0x200D,
        0x2060,
        0xFEFF,
        *range(0xFE00, 0xFE10),
    ]
)
# RFC 3454 C.1.2: non-ASCII space characters (U+200B is in B.1 and removed first).
_NON_ASCII_SPACES = frozenset([0x00A0, 0x1680, 0x202F, 0x205F, 0x3000, *range(0x2000, 0x200B)])
# RFC 3454 C.2.2 (format characters among the non-ASCII controls), C.6, C.7, C.8, C.9 as
# inclusive ranges. Categories Cc (C.2.1 and most of C.2.2), Co (C.3) and Cs (C.5) are
# refused by category; non-characters (C.4) by arithmetic.
_PROHIBITED_RANGES = (
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x180E, 0x180E),
    (0x2028, 0x2029),
    (0x2061, 0x2063),
    (0x1D173, 0x1D17A),
    (0xFFF9, 0xFFFD),  # C.6
    (0x2FF0, 0x2FFB),  # C.7
    (0x0340, 0x0341),  # C.8
    (0x200E, 0x200F),
    (0x202A, 0x202E),
    (0x206A, 0x206F),
    (0xE0001, 0xE0001),  # C.9
    (0xE0020, 0xE007F),
)
_PROHIBITED_CATEGORIES = frozenset(("Cc", "Co", "Cs"))


def _prohibited(cp: int) -> bool:
    if (cp & 0xFFFE) == 0xFFFE or 0xFDD0 <= cp <= 0xFDEF:
        return True
    if unicodedata.category(chr(cp)) in _PROHIBITED_CATEGORIES:
        return True
    return any(lo <= cp <= hi for lo, hi in _PROHIBITED_RANGES)


def opaque_string(s: str) -> str:
    """Prepare a password as RFC 8489 requires (SASLprep steps, see the module docstring).

    Raises ValueError for prohibited characters or a bidirectional-rule violation.
    """
    if s.isascii():
        # Fast path: printable ASCII is unchanged by every step.
        for ch in s:
            if ch < " " or ch == "\x7f":
                raise ValueError(f"prohibited control character U+{ord(ch):04X}")
        return s
    mapped = []
    for ch in s:
        cp = ord(ch)
        if cp in _MAPPED_TO_NOTHING:
            continue
        mapped.append(" " if cp in _NON_ASCII_SPACES else ch)
    out = unicodedata.normalize("NFKC", "".join(mapped))
    for ch in out:
        cp = ord(ch)
        if cp in _NON_ASCII_SPACES or _prohibited(cp):
            raise ValueError(f"prohibited character U+{cp:04X}")
    bidi = [unicodedata.bidirectional(ch) for ch in out]
    if any(b in ("R", "AL") for b in bidi):
        if "L" in bidi:
            raise ValueError("mixes right-to-left and left-to-right characters")
        if bidi[0] not in ("R", "AL") or bidi[-1] not in ("R", "AL"):
            raise ValueError("right-to-left string must start and end right-to-left")
    return out


def long_term_key(username: str, realm: str, password: str, algorithm: int = 1) -> bytes:
    """The long-term credential key: MD5 (algorithm 1) or SHA-256 (algorithm 2) of
    ``username ":" realm ":" OpaqueString(password)`` in UTF-8."""
    material = f"{username}:{realm}:{opaque_string(password)}".encode()
    if algorithm == 1:
        return hashlib.md5(material).digest()
    if algorithm == 2:
        return hashlib.sha256(material).digest()
    raise ValueError(f"unknown password algorithm {algorithm}")


def user_hash(username: str, realm: str) -> bytes:
    """USERHASH value (RFC 8489 §14.4): SHA-256 of ``username ":" realm`` in UTF-8."""
    return hashlib.sha256(f"{username}:{realm}".encode()).digest()
