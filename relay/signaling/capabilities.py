"""Nextcloud capabilities: fetched per backend URL, cached, parsed for the `spreed` app.

The signaling server reads Talk's capabilities (`GET <base>/ocs/v2.php/cloud/capabilities`)
for the features Talk supports (`signaling-v3`, `federation-v2`, ...) and its signaling
config: `config.signaling.hello-v2-token-key` (the public key hello v2 tokens are checked
with) and `config.signaling.session-ping-limit` (entries per batched ping).

Cache rules (as nextcloud-spreed-signaling applies them):

- one entry per capabilities URL; lifetime = `Cache-Control: max-age` unless `no-cache`,
  never shorter than one minute;
- the ETag is sent back as `If-None-Match`; 304 keeps the entry;
- a bad answer (status, content type, JSON, OCS envelope) also waits out the lifetime and
  keeps the previous capabilities, unless the answer said `must-revalidate`;
- a transport error is not cached: the next lookup tries again;
- a forced refetch (`invalidate`) is honoured at most once a minute per URL.

Layout: `parse_*`/`interpret_response` and `CapabilitiesCache` are pure and take `now`;
`CapabilitiesFetcher` is the thin httpx shell that shares one request among concurrent
lookups of the same URL.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import attrs
import httpx
import trio

from relay.signaling.backend import BackendError
from relay.signaling.protocol import BACKEND_PATH_V1, BACKEND_PATH_V3

log = logging.getLogger("relay.signaling.capabilities")

MIN_CACHE_SECONDS = 60.0
MAX_INVALIDATE_INTERVAL = 60.0
MAX_BODY_BYTES = 1 << 20  # Talk's document is ~20 KiB

CAPABILITIES_PATH = "ocs/v2.php/cloud/capabilities"
APP_SPREED = "spreed"
FEATURE_SIGNALING_V3 = "signaling-v3"
FEATURE_FEDERATION_V2 = "federation-v2"
GROUP_SIGNALING = "signaling"
GROUP_FEDERATION = "federation"
KEY_HELLO_V2_TOKEN_KEY = "hello-v2-token-key"
KEY_SESSION_PING_LIMIT = "session-ping-limit"


class CapabilitiesError(BackendError):
    """No capabilities to answer with; `error_label` names why, `cached` whether this is
    a remembered failure (a bad answer within its lifetime) rather than a fresh one."""

    def __init__(self, error_label: str, message: str, *, cached: bool = False) -> None:
        super().__init__(error_label, message)
        self.cached = cached


def capabilities_url(url: str) -> str:
    """The capabilities URL for a backend URL (base URL or a full OCS endpoint)."""
    parts = urlsplit(url)
    path = parts.path
    if "ocs/v2.php" not in path:
        if not path.endswith("/"):
            path += "/"
        path += CAPABILITIES_PATH
    elif (pos := path.find("/ocs/v2.php/")) >= 0:
        path = path[: pos + len("/ocs/v2.php")] + "/cloud/capabilities"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


# --- the document ----------------------------------------------------------------------


@attrs.frozen
class Capabilities:
    """The `spreed` entry of a Nextcloud capabilities document (empty if Talk is absent)."""

    spreed: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def features(self) -> frozenset[str]:
        raw = self.spreed.get("features")
        if not isinstance(raw, list):
            return frozenset()
        return frozenset(f for f in raw if isinstance(f, str))

    def has_feature(self, feature: str) -> bool:
        return feature in self.features

    def config_group(self, group: str) -> Mapping[str, Any] | None:
        config = self.spreed.get("config")
        if not isinstance(config, dict):
            return None
        value = config.get(group)
        return value if isinstance(value, dict) else None

    def get_string(self, group: str, key: str) -> str | None:
        value = (self.config_group(group) or {}).get(key)
        return value if isinstance(value, str) else None

    def get_int(self, group: str, key: str) -> int | None:
        value = (self.config_group(group) or {}).get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if value != value or value in (float("inf"), float("-inf")):
            return None
        return int(value)

    @property
    def hello_v2_token_key(self) -> str | None:
        """The public key Talk signs hello v2 tokens with (PEM, or base64 for EdDSA)."""
        return self.get_string(GROUP_SIGNALING, KEY_HELLO_V2_TOKEN_KEY)

    @property
    def session_ping_limit(self) -> int | None:
        return self.get_int(GROUP_SIGNALING, KEY_SESSION_PING_LIMIT)

    @property
    def federation(self) -> Mapping[str, Any]:
        """`config.federation` (`enabled`, `incoming-enabled`, `outgoing-enabled`,
        `only-trusted-servers`); Talk fills it only for logged-in users, so the signaling
        server's anonymous fetch sees the defaults. What counts is feature `federation-v2`."""
        return self.config_group(GROUP_FEDERATION) or {}


def backend_endpoint(base_url: str, caps: Capabilities | None) -> str:
    """The signaling backend endpoint under a Nextcloud base URL: `api/v3` when Talk
    lists `signaling-v3`, else `api/v1` (also when its capabilities are unavailable)."""
    v3 = caps is not None and caps.has_feature(FEATURE_SIGNALING_V3)
    return base_url + (BACKEND_PATH_V3 if v3 else BACKEND_PATH_V1)


@attrs.frozen
class CacheControl:
    max_age: float | None = None
    no_cache: bool = False
    must_revalidate: bool = False


def parse_cache_control(value: str) -> CacheControl:
    """The directives of a `Cache-Control` response header that the cache uses."""
    max_age: float | None = None
    no_cache = must_revalidate = False
    for part in value.split(","):
        name, _, arg = part.strip().partition("=")
        name = name.strip().lower()
        arg = arg.strip().strip('"')
        if name == "max-age":
            if arg.isdigit():
                max_age = float(int(arg))
        elif name == "no-cache":
            no_cache = True
        elif name == "must-revalidate":
            must_revalidate = True
    return CacheControl(max_age, no_cache, must_revalidate)


def cache_lifetime(cc: CacheControl | None) -> float:
    if cc is None or cc.no_cache or cc.max_age is None or cc.max_age <= 0:
        return MIN_CACHE_SECONDS
    return max(cc.max_age, MIN_CACHE_SECONDS)


Outcome = Literal["updated", "not_modified", "bad_answer"]


@attrs.frozen
class Answer:
    """What one HTTP answer means for the cache."""

    outcome: Outcome
    lifetime: float
    etag: str
    cache_control: CacheControl | None  # None: no (parsable) header
    capabilities: Capabilities | None = None  # for "updated"
    error_label: str = ""  # for "bad_answer"
    message: str = ""


def parse_capabilities_document(body: bytes) -> Capabilities:
    """The `spreed` capabilities of an OCS capabilities answer, or CapabilitiesError."""

    def bad(label: str, message: str) -> CapabilitiesError:
        return CapabilitiesError(label, message)

    try:
        doc = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise bad("error_decoding_ocs", "capabilities answer is not JSON") from None
    ocs = doc.get("ocs") if isinstance(doc, dict) else None
    data = ocs.get("data") if isinstance(ocs, dict) else None
    if data is None or data == [] or data == {} or data == "":
        raise bad("error_incomplete_ocs", "incomplete OCS capabilities answer")
    if not isinstance(data, dict):
        raise bad("error_decoding_ocs", "OCS capabilities data is not an object")
    caps = data.get("capabilities")
    if caps is not None and not isinstance(caps, dict):
        raise bad("error_decoding_ocs", "OCS capabilities are not an object")
    spreed = (caps or {}).get(APP_SPREED)
    if not isinstance(spreed, dict):
        # Nextcloud without Talk (or Talk disabled): valid answer, nothing for us.
        return Capabilities({})
    return Capabilities(spreed)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def interpret_response(status: int, headers: Mapping[str, str], body: bytes) -> Answer:
    """Classify a capabilities answer (headers: lower-case names)."""
    cc_header = headers.get("cache-control")
    cc = parse_cache_control(cc_header) if cc_header else None
    lifetime = cache_lifetime(cc)
    etag = headers.get("etag", "")

    def bad(label: str, message: str) -> Answer:
        return Answer("bad_answer", lifetime, etag, cc, None, label, message)

    if status == 304:
        return Answer("not_modified", lifetime, etag, cc)
    if status != 200:
        return bad("unexpected_http_status", f"capabilities answer has HTTP status {status}")
    ctype = headers.get("content-type", "")
    if not ctype.startswith("application/json"):
        return bad("invalid_content_type", f"capabilities answer is {ctype or 'untyped'}")
    try:
        caps = parse_capabilities_document(body)
    except CapabilitiesError as exc:
        return bad(exc.error_label, exc.message)
    return Answer("updated", lifetime, etag, cc, caps)


# --- cache decisions (pure) ------------------------------------------------------------


@attrs.frozen
class Lookup:
    capabilities: Capabilities
    cached: bool  # True: served without a new document (fresh entry, 304, kept on error)


@attrs.define
class CacheEntry:
    capabilities: Capabilities | None = None
    next_update: float = float("-inf")
    etag: str = ""
    must_revalidate: bool = False
    error_label: str = ""  # why `capabilities` is None after a bad answer
    message: str = ""


class CapabilitiesCache:
    """Entries by capabilities URL, plus the once-a-minute forced refetch budget."""

    def __init__(self) -> None:
        self._entries: dict[str, CacheEntry] = {}
        self._next_invalidate: dict[str, float] = {}

    def entry(self, key: str) -> CacheEntry | None:
        return self._entries.get(key)

    def is_fresh(self, key: str, now: float) -> bool:
        e = self._entries.get(key)
        return e is not None and e.next_update > now

    def lookup(self, key: str, now: float) -> Lookup | None:
        """A fresh entry's answer, None if a fetch is due; CapabilitiesError (cached=True)
        for a remembered bad answer that left nothing to serve."""
        e = self._entries.get(key)
        if e is None or not e.next_update > now:
            return None
        if e.capabilities is None:
            raise CapabilitiesError(
                e.error_label or "unexpected_http_status", e.message or "no capabilities",
                cached=True,
            )
        return Lookup(e.capabilities, cached=True)

    def etag(self, key: str) -> str:
        e = self._entries.get(key)
        return e.etag if e is not None else ""

    def apply(self, key: str, answer: Answer, now: float) -> Lookup:
        """Record an HTTP answer; the lookup result, or CapabilitiesError if nothing is left."""
        e = self._entries.setdefault(key, CacheEntry())
        e.etag = answer.etag
        if answer.cache_control is not None:
            e.must_revalidate = answer.cache_control.must_revalidate
        e.next_update = now + answer.lifetime
        if answer.outcome == "updated":
            assert answer.capabilities is not None
            e.capabilities = answer.capabilities
            e.error_label = e.message = ""
            return Lookup(answer.capabilities, cached=False)
        if answer.outcome == "bad_answer":
            if e.must_revalidate:
                e.capabilities = None
            if e.capabilities is None:
                e.error_label, e.message = answer.error_label, answer.message
                raise CapabilitiesError(answer.error_label, answer.message)
        elif e.capabilities is None:  # 304 for something we never had
            e.error_label, e.message = "unexpected_http_status", "304 without a cached document"
            raise CapabilitiesError(e.error_label, e.message)
        return Lookup(e.capabilities, cached=True)

    def may_invalidate(self, key: str, now: float) -> bool:
        return not self._next_invalidate.get(key, float("-inf")) > now

    def invalidate(self, key: str, now: float) -> bool:
        """Expire the entry now, unless one was forced within the last minute."""
        if not self.may_invalidate(key, now):
            return False
        e = self._entries.get(key)
        if e is not None:
            e.next_update = now
        self._next_invalidate[key] = now + MAX_INVALIDATE_INTERVAL
        return True


# --- the I/O shell ---------------------------------------------------------------------


def _cache_key(url: str) -> str:
    try:
        key = capabilities_url(url)
    except ValueError as exc:
        raise CapabilitiesError("invalid_url", f"{url!r} is not a URL: {exc}") from None
    if urlsplit(key).scheme not in ("http", "https"):
        raise CapabilitiesError("invalid_url", f"{url!r} is not an http(s) URL")
    return key


@attrs.define
class _Flight:
    done: trio.Event = attrs.field(factory=trio.Event)
    result: Lookup | None = None
    error: tuple[str, str] | None = None  # (label, message)


class CapabilitiesFetcher:
    """Looks capabilities up by backend URL; one request per URL at a time."""

    def __init__(
        self,
        *,
        user_agent: str,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.user_agent = user_agent
        self.timeout = timeout
        self.clock = clock
        self.cache = CapabilitiesCache()
        self._inflight: dict[str, _Flight] = {}
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            follow_redirects=True,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def get(self, url: str) -> Lookup:
        """Capabilities for a backend URL, or CapabilitiesError."""
        key = _cache_key(url)
        while True:
            hit = self.cache.lookup(key, self.clock())
            if hit is not None:
                return hit
            flight = self._inflight.get(key)
            if flight is None:
                break
            await flight.done.wait()
            if flight.result is not None:
                return flight.result
            if flight.error is not None:
                raise CapabilitiesError(*flight.error)
            # The fetching task was cancelled: look again (and maybe fetch ourselves).
        flight = self._inflight[key] = _Flight()
        try:
            try:
                flight.result = await self._fetch(key)
            except CapabilitiesError as exc:
                flight.error = (exc.error_label, exc.message)
                raise
        finally:
            del self._inflight[key]
            flight.done.set()
        return flight.result

    def invalidate(self, url: str) -> bool:
        """Force the next lookup to refetch; False if one was forced within the minute."""
        try:
            key = _cache_key(url)
        except CapabilitiesError:
            return False
        return self.cache.invalidate(key, self.clock())

    async def _fetch(self, key: str) -> Lookup:
        headers = {
            "Accept": "application/json",
            "OCS-APIRequest": "true",
            "User-Agent": self.user_agent,
        }
        etag = self.cache.etag(key)
        if etag:
            headers["If-None-Match"] = etag
        log.debug("capabilities of %s expired, updating", key)
        try:
            with trio.fail_after(self.timeout):
                async with self._http.stream("GET", key, headers=headers) as resp:
                    body = bytearray()
                    length = resp.headers.get("content-length", "")
                    oversized = length.isdigit() and int(length) > MAX_BODY_BYTES
                    if not oversized:
                        # Read to the end (bounded by the timeout): leaving httpx's chain of
                        # async generators half-consumed leaks them to the garbage collector.
                        async for chunk in resp.aiter_bytes():
                            if len(body) + len(chunk) > MAX_BODY_BYTES:
                                oversized = True
                            if not oversized:
                                body += chunk
                    status = resp.status_code
                    resp_headers = {k.lower(): v for k, v in resp.headers.items()}
        except trio.TooSlowError:
            raise CapabilitiesError("timeout", f"capabilities request to {key} timed out") from None
        except httpx.TimeoutException:
            raise CapabilitiesError("timeout", f"capabilities request to {key} timed out") from None
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
            raise CapabilitiesError("unknown", f"capabilities request failed: {exc}") from None
        if oversized:
            answer = attrs.evolve(
                interpret_response(500, resp_headers, b""),
                error_label="response_too_large",
                message=f"capabilities answer exceeds {MAX_BODY_BYTES} bytes",
            )
        else:
            answer = interpret_response(status, resp_headers, bytes(body))
        if answer.outcome == "bad_answer":
            log.info("capabilities of %s: %s", key, answer.message)
        return self.cache.apply(key, answer, self.clock())

