"""Signed requests from the signaling server to Nextcloud (the "backend").

Every request is a POST of JSON, signed with `Spreed-Signaling-Random` (64 random chars)
and `Spreed-Signaling-Checksum` = hex(HMAC-SHA256(secret, random ‖ body)), sent with
`OCS-APIRequest: true`, so the answer is an OCS envelope whose `ocs.data` is the payload.
Concurrency per Nextcloud host is bounded (`connectionsperhost`); in-flight requests are the
`signaling_http_client_pool_connections{host}` gauge.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import string
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import trio

from relay.config.signaling import BackendConfig, SignalingConfig, canonical_url
from relay.signaling.metrics import SignalingStats
from relay.signaling.protocol import FEATURES, SignalingError

COMPAT_BACKEND_ID = "compat"
_RANDOM_ALPHABET = string.ascii_letters + string.digits
log = logging.getLogger("relay.signaling.backend")


def random_string(n: int = 64) -> str:
    return "".join(secrets.choice(_RANDOM_ALPHABET) for _ in range(n))


def checksum(secret: bytes, random: str, body: bytes) -> str:
    return hmac.new(secret, random.encode() + body, hashlib.sha256).hexdigest()


def verify_checksum(secret: bytes, random: str, body: bytes, given: str) -> bool:
    # bytes: compare_digest refuses non-ASCII str, and headers are whatever a client sent
    expected = checksum(secret, random, body).encode()
    return hmac.compare_digest(expected, given.lower().encode("utf-8", "replace"))


def signed_headers(secret: bytes, body: bytes, user_agent: str) -> dict[str, str]:
    rnd = random_string(64)
    return {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "OCS-APIRequest": "true",
        "User-Agent": user_agent,
        "X-Spreed-Signaling-Features": ", ".join(sorted(FEATURES)),
        "Spreed-Signaling-Random": rnd,
        "Spreed-Signaling-Checksum": checksum(secret, rnd, body),
    }


class BackendError(SignalingError):
    """A failed backend request, with the `errors_total` label it counts under."""

    def __init__(self, error_label: str, message: str) -> None:
        super().__init__("internal_error", message)
        self.error_label = error_label


def parse_ocs(content_type: str, body: bytes) -> Any:
    """The `ocs.data` payload of a Nextcloud answer, or BackendError."""
    if not content_type.lower().startswith("application/json"):
        raise BackendError(
            "invalid_content_type", f"backend answered {content_type or 'no'} content"
        )
    try:
        env = json.loads(body)
    except ValueError:
        raise BackendError("error_decoding_ocs", "backend answer is not JSON") from None
    if not isinstance(env, dict) or not isinstance(env.get("ocs"), dict):
        raise BackendError("error_decoding_ocs", "backend answer is not an OCS envelope")
    ocs = env["ocs"]
    meta = ocs.get("meta")
    if isinstance(meta, dict) and meta.get("statuscode") == 429:
        raise BackendError("throttled", "backend throttled the request")
    data = ocs.get("data")
    if data is None or data == [] or data == {}:
        raise BackendError("error_incomplete_ocs", "incomplete OCS response")
    return data


class Backends:
    """The Nextcloud instances this server serves, and which one a URL belongs to.

    In `allowall` mode every URL belongs to the one `compat` backend (the allowall secret).
    """

    def __init__(self, config: SignalingConfig) -> None:
        self.allow_all = config.allow_all
        self.compat = BackendConfig(COMPAT_BACKEND_ID, (), config.secret)
        self.configured: tuple[BackendConfig, ...] = config.backends
        # what is served: the compat backend, or the configured ones
        self.active: tuple[BackendConfig, ...] = (
            (self.compat,) if config.allow_all else config.backends
        )

    def lookup(self, base_url: str) -> BackendConfig | None:
        """The backend serving `base_url` (already canonical, see `canonical_url`)."""
        if self.allow_all:
            return self.compat
        for backend in self.configured:
            if any(base_url.startswith(u) for u in backend.urls):
                return backend
        return None

    def for_url(self, url: str) -> BackendConfig | None:
        """The backend serving `url` as a client or Nextcloud wrote it; None if not an
        http(s) URL or no backend serves it."""
        base = canonical_url(url)
        return None if base is None else self.lookup(base)


class BackendRequester(Protocol):
    async def request(self, backend: BackendConfig, url: str, payload: dict[str, Any]) -> Any:
        """POST `payload` signed for `backend` to `url`; the OCS data or BackendError."""


class BackendClient:
    """httpx on Trio, one pool, a concurrency limit per host.

    Only the signed POSTs: Nextcloud's capabilities (which endpoint version, hello v2 keys)
    are read through the hub's one `CapabilitiesFetcher` and its cache."""

    def __init__(
        self,
        stats: SignalingStats,
        *,
        timeout: float,
        connections_per_host: int,
        user_agent: str,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.stats = stats
        self.timeout = timeout
        self.per_host = connections_per_host
        self.user_agent = user_agent
        self._limits: dict[str, trio.Semaphore] = {}
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            follow_redirects=False,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def _slot(self, url: str) -> tuple[str, trio.Semaphore]:
        host = urlsplit(url).netloc
        sem = self._limits.get(host)
        if sem is None:
            sem = self._limits[host] = trio.Semaphore(self.per_host)
        return host, sem

    async def _post(self, backend: BackendConfig, url: str, body: bytes) -> httpx.Response:
        host, sem = self._slot(url)
        async with sem:
            pool = self.stats.pool_connections
            pool[host] = pool.get(host, 0) + 1
            try:
                headers = signed_headers(backend.secret, body, self.user_agent)
                return await self._http.post(url, content=body, headers=headers)
            finally:
                pool[host] -= 1

    async def request(self, backend: BackendConfig, url: str, payload: dict[str, Any]) -> Any:
        body = json.dumps(payload, separators=(",", ":")).encode()
        start = trio.current_time()
        error: str | None = None
        try:
            try:
                resp = await self._post(backend, url, body)
            except httpx.TimeoutException:
                error = "timeout"
                raise BackendError("timeout", f"backend request to {url} timed out") from None
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                error = "unknown"
                raise BackendError("unknown", f"backend request failed: {exc}") from None
            log.debug("backend %s: POST %s (%s) -> %d", backend.id, url,
                      payload.get("type"), resp.status_code)
            try:
                return parse_ocs(resp.headers.get("content-type", ""), resp.content)
            except BackendError as exc:
                error = exc.error_label
                raise
        except trio.Cancelled:
            error = "canceled"
            raise
        finally:
            self.stats.backend_request_done(backend.id, trio.current_time() - start, error)
