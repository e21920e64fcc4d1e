"""A TURN-TLS listener's certificate and key: a PEM file path, inline PEM, or inline base64
of the PEM (what STUNner's gateway operator renders into `listeners[].cert` / `.key`).

`load_cert_chain` loads either form into an `ssl.SSLContext`.  Inline material never touches
the file system: it is written to an anonymous memory file (`memfd_create`) that OpenSSL
reads through `/proc/self/fd`, and closed at once.  Errors name the key and never show key
material: a private key's value is never printed, a certificate's only when it was taken
for a file path.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import ssl
import tempfile
from collections.abc import Iterator

from relay.errors import ConfigError

_PEM_MARK = b"-----BEGIN "
_B64 = re.compile(rb"[A-Za-z0-9+/=\s]+")
_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)-----END \1-----", re.DOTALL)


def _well_formed(pem: bytes, label: bytes) -> bool:
    """Whether `pem` holds at least one whole PEM block whose label has `label` in it."""
    found = False
    for m in _BLOCK.finditer(pem):
        try:
            base64.b64decode(b"".join(m.group(2).split()), validate=True)
        except (binascii.Error, ValueError):
            return False
        found = found or label in m.group(1)
    return found


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError:
        return b""


def inline_pem(value: str) -> bytes | None:
    """The PEM bytes of an inline value (PEM text, or base64 of it); None for a path."""
    raw = value.encode("utf-8", "surrogateescape")
    if _PEM_MARK in raw:
        return raw
    if len(raw) < 32 or not _B64.fullmatch(raw):
        return None
    try:
        decoded = base64.b64decode(b"".join(raw.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded if _PEM_MARK in decoded else None


@contextlib.contextmanager
def _as_path(pem: bytes) -> Iterator[str]:
    """A path OpenSSL can read `pem` from, for as long as the context lasts."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("relay-tls", getattr(os, "MFD_CLOEXEC", 0))
        try:
            os.write(fd, pem)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="relay-tls-")  # mode 0600
    try:
        os.write(fd, pem)
        os.close(fd)
        yield path
    finally:
        os.unlink(path)


def load_cert_chain(ctx: ssl.SSLContext, cert: str, key: str, cert_key: str, key_key: str
                    ) -> None:
    """Load a listener's certificate chain and private key into `ctx`; a ConfigError
    naming the key (and never showing key material) when they do not load."""
    if not cert:
        raise ConfigError(cert_key, "a TURN-TLS listener needs a certificate "
                          "(PEM file path, inline PEM or base64 PEM)")
    if not key:
        raise ConfigError(key_key, "a TURN-TLS listener needs a private key "
                          "(PEM file path, inline PEM or base64 PEM)")
    cert_pem = inline_pem(cert)
    key_pem = inline_pem(key)
    if cert_pem is None and not os.path.isfile(cert):
        shown = repr(cert) if len(cert) <= 200 and "\n" not in cert else "(value not shown)"
        raise ConfigError(cert_key, f"{shown} is neither a readable file nor inline PEM "
                          "or base64 PEM")
    if key_pem is None and not os.path.isfile(key):
        raise ConfigError(key_key, "is neither a readable file nor inline PEM or base64 PEM "
                          "(value not shown)")
    with contextlib.ExitStack() as stack:
        cert_path = stack.enter_context(_as_path(cert_pem)) if cert_pem is not None else cert
        key_path = stack.enter_context(_as_path(key_pem)) if key_pem is not None else key
        try:
            ctx.load_cert_chain(cert_path, key_path)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
            where = "inline PEM" if cert_pem is not None else repr(cert)
            if not _well_formed(key_pem if key_pem is not None else _read(key), b"PRIVATE KEY"):
                raise ConfigError(key_key, f"not a PEM private key "
                                  f"({'inline' if key_pem is not None else 'file'}; value not "
                                  "shown)") from None
            if not _well_formed(cert_pem if cert_pem is not None else _read(cert),
                                b"CERTIFICATE"):
                raise ConfigError(cert_key, f"{where} is not a PEM certificate") from None
            raise ConfigError(cert_key, f"certificate ({where}) and the private key of "
                              f"{key_key} do not load together: {reason}") from None
