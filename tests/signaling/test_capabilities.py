"""Capabilities: parsing and cache decisions with an explicit `now`, then the fetcher
against a tiny Talk-shaped Nextcloud on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from relay.signaling.capabilities import (
    MAX_INVALIDATE_INTERVAL,
    MIN_CACHE_SECONDS,
    Answer,
    CacheControl,
    Capabilities,
    CapabilitiesCache,
    CapabilitiesError,
    CapabilitiesFetcher,
    cache_lifetime,
    capabilities_url,
    interpret_response,
    parse_cache_control,
)
from relay.signaling.hello_v2 import verify_hello_v2
from tests.signaling.talk_tokens import (
    MockNextcloud,
    capabilities_body,
    capabilities_document,
    generate_talk_key,
    running_nextcloud,
    talk_token,
)

JSON = {"content-type": "application/json; charset=utf-8"}
KEY = generate_talk_key("ES256")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://cloud.example/", "https://cloud.example/ocs/v2.php/cloud/capabilities"),
        ("https://cloud.example/nc", "https://cloud.example/nc/ocs/v2.php/cloud/capabilities"),
        (
            "https://cloud.example/nc/ocs/v2.php/apps/spreed/api/v3/signaling/backend",
            "https://cloud.example/nc/ocs/v2.php/cloud/capabilities",
        ),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/ocs/v2.php/cloud/capabilities"),
    ],
)
def test_capabilities_url(url: str, expected: str) -> None:
    assert capabilities_url(url) == expected


def test_talk_document_is_parsed() -> None:
    answer = interpret_response(200, JSON, capabilities_body(KEY, session_ping_limit=50))
    assert answer.outcome == "updated"
    caps = answer.capabilities
    assert caps is not None
    assert caps.hello_v2_token_key == KEY.public
    assert caps.session_ping_limit == 50
    assert caps.has_feature("signaling-v3") and caps.has_feature("federation-v2")
    assert not caps.has_feature("nope")
    assert caps.federation["only-trusted-servers"] is True


def test_document_without_key_or_talk() -> None:
    caps = interpret_response(200, JSON, capabilities_body(None)).capabilities
    assert caps is not None and caps.hello_v2_token_key is None
    doc = capabilities_document(None)
    del doc["ocs"]["data"]["capabilities"]["spreed"]
    caps = interpret_response(200, JSON, json.dumps(doc).encode()).capabilities
    assert caps == Capabilities({}) and caps.features == frozenset()


@pytest.mark.parametrize(
    "spreed",
    [
        {"features": "signaling-v3", "config": []},
        {"features": [1, None], "config": {"signaling": "x"}},
        {"config": {"signaling": {"hello-v2-token-key": 5, "session-ping-limit": "200"}}},
        {"config": {"signaling": {"session-ping-limit": True}}},
    ],
)
def test_odd_shapes_read_as_absent(spreed: dict[str, object]) -> None:
    caps = Capabilities(spreed)
    assert caps.features == frozenset()
    assert caps.hello_v2_token_key is None and caps.session_ping_limit is None


@pytest.mark.parametrize(
    ("status", "headers", "body", "label"),
    [
        (500, JSON, b"{}", "unexpected_http_status"),
        (200, {"content-type": "text/html"}, b"<html>", "invalid_content_type"),
        (200, {}, b"{}", "invalid_content_type"),
        (200, JSON, b"{not json", "error_decoding_ocs"),
        (200, JSON, b'{"ocs": {"data": NaN}}', "error_decoding_ocs"),
        (200, JSON, b'{"ocs": {"meta": {}, "data": []}}', "error_incomplete_ocs"),
        (200, JSON, b'{"ocs": {"data": {"capabilities": []}}}', "error_decoding_ocs"),
        (200, JSON, b"[]", "error_incomplete_ocs"),
    ],
)
def test_bad_answers(status: int, headers: dict[str, str], body: bytes, label: str) -> None:
    answer = interpret_response(status, headers, body)
    assert (answer.outcome, answer.error_label) == ("bad_answer", label)
    assert answer.message


@pytest.mark.parametrize(
    ("header", "lifetime"),
    [
        ("max-age=300", 300.0),
        ("public, max-age=3600, must-revalidate", 3600.0),
        ("max-age=10", MIN_CACHE_SECONDS),
        ("no-cache, max-age=300", MIN_CACHE_SECONDS),
        ("max-age=abc", MIN_CACHE_SECONDS),
        ("", MIN_CACHE_SECONDS),
    ],
)
def test_cache_lifetime_honours_max_age_with_a_floor(header: str, lifetime: float) -> None:
    assert cache_lifetime(parse_cache_control(header)) == lifetime


def test_must_revalidate_is_parsed() -> None:
    assert parse_cache_control("Must-Revalidate, max-age=5") == CacheControl(5.0, False, True)


# --- cache decisions -------------------------------------------------------------------

K = "https://cloud.example/ocs/v2.php/cloud/capabilities"


def updated(lifetime: float = MIN_CACHE_SECONDS, etag: str = "") -> Answer:
    caps = Capabilities({"features": ["a"]})
    return Answer("updated", lifetime, etag, None, caps)


def bad(must_revalidate: bool | None = None) -> Answer:
    cc = None if must_revalidate is None else CacheControl(None, False, must_revalidate)
    return Answer("bad_answer", MIN_CACHE_SECONDS, "", cc, None, "unexpected_http_status", "500")


def test_entry_is_fresh_for_its_lifetime() -> None:
    cache = CapabilitiesCache()
    assert cache.lookup(K, 0.0) is None
    got = cache.apply(K, updated(120.0, etag='"v1"'), 100.0)
    assert not got.cached and got.capabilities.features == {"a"}
    hit = cache.lookup(K, 219.9)
    assert hit is not None and hit.cached
    assert cache.lookup(K, 220.0) is None
    assert cache.etag(K) == '"v1"'


def test_not_modified_keeps_the_document() -> None:
    cache = CapabilitiesCache()
    first = cache.apply(K, updated(), 0.0)
    again = cache.apply(K, Answer("not_modified", 300.0, '"v1"', None), 60.0)
    assert again.cached and again.capabilities == first.capabilities
    assert cache.is_fresh(K, 359.0) and not cache.is_fresh(K, 360.0)


def test_bad_answer_keeps_previous_document_and_waits_a_minute() -> None:
    cache = CapabilitiesCache()
    first = cache.apply(K, updated(), 0.0)
    kept = cache.apply(K, bad(), 60.0)
    assert kept.cached and kept.capabilities == first.capabilities
    assert cache.lookup(K, 60.0 + MIN_CACHE_SECONDS - 1) is not None


def test_bad_answer_with_must_revalidate_drops_the_document() -> None:
    cache = CapabilitiesCache()
    cache.apply(K, updated(), 0.0)
    with pytest.raises(CapabilitiesError) as info:
        cache.apply(K, bad(must_revalidate=True), 60.0)
    assert info.value.error_label == "unexpected_http_status" and not info.value.cached
    with pytest.raises(CapabilitiesError) as again:
        cache.lookup(K, 61.0)  # remembered: no new request within the lifetime
    assert again.value.cached
    assert cache.lookup(K, 60.0 + MIN_CACHE_SECONDS) is None


def test_first_bad_answer_is_an_error() -> None:
    cache = CapabilitiesCache()
    with pytest.raises(CapabilitiesError):
        cache.apply(K, bad(), 0.0)
    with pytest.raises(CapabilitiesError):
        cache.apply(K, Answer("not_modified", 60.0, "", None), 0.0)


def test_forced_refetch_at_most_once_a_minute() -> None:
    cache = CapabilitiesCache()
    cache.apply(K, updated(3600.0), 0.0)
    assert cache.invalidate(K, 10.0)
    assert cache.lookup(K, 10.0) is None  # expired at once
    cache.apply(K, updated(3600.0), 10.0)
    assert not cache.invalidate(K, 10.0 + MAX_INVALIDATE_INTERVAL - 1)
    assert cache.lookup(K, 20.0) is not None
    assert cache.invalidate(K, 10.0 + MAX_INVALIDATE_INTERVAL)
    assert cache.invalidate("https://other.example/ocs/v2.php/cloud/capabilities", 15.0)


# --- the fetcher against a real (tiny) HTTP server ------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fetcher(clock: Clock | None = None, timeout: float = 5.0) -> CapabilitiesFetcher:
    kwargs = {"clock": clock} if clock is not None else {}
    return CapabilitiesFetcher(user_agent="relay-test/1", timeout=timeout, **kwargs)


@asynccontextmanager
async def fetching(mock: MockNextcloud, clock: Clock | None = None,
                   request_timeout: float = 5.0) -> AsyncIterator[CapabilitiesFetcher]:
    """`mock` served on 127.0.0.1 and a fetcher for it, closed on the way out."""
    async with running_nextcloud(mock):
        f = fetcher(clock, request_timeout)
        try:
            yield f
        finally:
            await f.aclose()


async def test_fetch_sends_ocs_headers_and_caches() -> None:
    clock = Clock()
    mock = MockNextcloud(body=capabilities_body(KEY), cache_control="max-age=300")
    with trio.fail_after(10):
        async with fetching(mock, clock) as f:
            got = await f.get(mock.base_url)
            assert not got.cached and got.capabilities.hello_v2_token_key == KEY.public
            clock.now += 299
            assert (await f.get(mock.base_url)).cached
            assert len(mock.requests) == 1
            clock.now += 1
            await f.get(mock.base_url)
            assert len(mock.requests) == 2
    headers = mock.requests[0]
    assert headers["accept"] == "application/json"
    assert headers["ocs-apirequest"] == "true"
    assert headers["user-agent"] == "relay-test/1"
    assert "if-none-match" not in headers


async def test_etag_revalidation_keeps_document() -> None:
    clock = Clock()
    mock = MockNextcloud(body=capabilities_body(KEY), etag='"caps-1"')
    with trio.fail_after(10):
        async with fetching(mock, clock) as f:
            first = await f.get(mock.base_url)
            clock.now += MIN_CACHE_SECONDS
            again = await f.get(mock.base_url)
    assert mock.requests[1]["if-none-match"] == '"caps-1"'
    assert again.cached and again.capabilities == first.capabilities


async def test_invalidate_refetches_and_sees_a_new_key() -> None:
    clock = Clock()
    mock = MockNextcloud(body=capabilities_body(KEY), cache_control="max-age=3600")
    new = generate_talk_key("EdDSA")
    with trio.fail_after(10):
        async with fetching(mock, clock) as f:
            await f.get(mock.base_url)
            mock.body = capabilities_body(new)
            claims = await verify_hello_v2(
                f, mock.base_url, talk_token(new, now=1_790_000_000, user_id="eve"),
                wall_clock=lambda: 1_790_000_000,
            )
            assert claims.user_id == "eve"
            assert not f.invalidate(mock.base_url)  # within the minute
    assert len(mock.requests) == 2


async def test_concurrent_lookups_share_one_request() -> None:
    mock = MockNextcloud(body=capabilities_body(KEY), gate=trio.Event())
    results = []
    with trio.fail_after(10):
        async with fetching(mock) as f:
            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(lambda: _collect(f, mock.base_url, results))
                await mock.request_seen.wait()
                await trio.testing.wait_all_tasks_blocked(0.05)
                assert mock.gate is not None
                mock.gate.set()
    assert len(mock.requests) == 1
    assert len(results) == 5
    assert {r.capabilities.hello_v2_token_key for r in results} == {KEY.public}


async def _collect(f: CapabilitiesFetcher, url: str, out: list) -> None:
    out.append(await f.get(url))


async def test_cancelled_fetch_lets_a_waiter_fetch() -> None:
    mock = MockNextcloud(body=capabilities_body(KEY), gate=trio.Event())
    results: list = []
    with trio.fail_after(10):
        async with fetching(mock) as f:
            async with trio.open_nursery() as nursery:
                first = trio.CancelScope()

                async def cancelled_lookup() -> None:
                    with first:
                        await f.get(mock.base_url)

                nursery.start_soon(cancelled_lookup)
                await mock.request_seen.wait()
                nursery.start_soon(lambda: _collect(f, mock.base_url, results))
                await trio.testing.wait_all_tasks_blocked(0.05)
                first.cancel()
                await trio.testing.wait_all_tasks_blocked(0.05)
                assert mock.gate is not None
                mock.gate.set()
    assert len(results) == 1 and results[0].capabilities.hello_v2_token_key == KEY.public


@pytest.mark.parametrize(
    ("status", "content_type", "body", "label"),
    [
        (500, "application/json", b"{}", "unexpected_http_status"),
        (200, "text/html", b"<html></html>", "invalid_content_type"),
        (200, "application/json", b"{oops", "error_decoding_ocs"),
    ],
)
async def test_bad_answer_is_a_typed_error_and_cached(
    status: int, content_type: str, body: bytes, label: str
) -> None:
    clock = Clock()
    mock = MockNextcloud(body=body, status=status, content_type=content_type)
    with trio.fail_after(10):
        async with fetching(mock, clock) as f:
            with pytest.raises(CapabilitiesError) as info:
                await f.get(mock.base_url)
            assert info.value.error_label == label
            with pytest.raises(CapabilitiesError) as again:
                await f.get(mock.base_url)
            assert again.value.cached
            assert len(mock.requests) == 1


@pytest.mark.parametrize("chunked", [False, True])
async def test_oversized_answer_is_refused(chunked: bool) -> None:
    mock = MockNextcloud(body=b" " * (1 << 20) + capabilities_body(KEY), chunked=chunked)
    with trio.fail_after(10):
        async with fetching(mock) as f:
            with pytest.raises(CapabilitiesError) as info:
                await f.get(mock.base_url)
    assert info.value.error_label == "response_too_large"
    assert mock.requests


async def test_chunked_answer_is_read() -> None:
    mock = MockNextcloud(body=capabilities_body(KEY), chunked=True)
    with trio.fail_after(10):
        async with fetching(mock) as f:
            got = await f.get(mock.base_url)
    assert got.capabilities.hello_v2_token_key == KEY.public


async def test_unreachable_nextcloud_is_a_typed_error_retried_next_time() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()  # nothing listens there now
    f = fetcher()
    try:
        with trio.fail_after(10):
            for _ in range(2):  # transport errors are not cached
                with pytest.raises(CapabilitiesError) as info:
                    await f.get(f"http://127.0.0.1:{port}/")
                assert info.value.error_label == "unknown" and not info.value.cached
    finally:
        await f.aclose()


async def test_slow_nextcloud_times_out() -> None:
    mock = MockNextcloud(body=capabilities_body(KEY), gate=trio.Event())
    with trio.fail_after(10):
        async with fetching(mock, request_timeout=0.2) as f:
            with pytest.raises(CapabilitiesError) as info:
                await f.get(mock.base_url)
    assert info.value.error_label == "timeout"


@pytest.mark.parametrize("url", ["http://[::1", "ftp://127.0.0.1/", "no url at all", ""])
async def test_unusable_url_is_a_typed_error(url: str) -> None:
    f = fetcher()
    try:
        with trio.fail_after(10):
            with pytest.raises(CapabilitiesError) as info:
                await f.get(url)
        assert info.value.error_label == "invalid_url"
        assert not f.invalidate(url)
    finally:
        await f.aclose()
