"""The polite HTTP stack against a real local origin: limits, Retry-After, breakers, offline, cache, redirects."""

from __future__ import annotations

import threading
import time
from email.utils import formatdate

import httpx
import pytest

from dtkg_assets.core.errors import DtkgError, Reason
from dtkg_assets.core.http import (
    get_with_retries,
    make_client,
    polite_transport,
    rate_for,
)
from dtkg_assets.core.http_errors import request_error
from dtkg_assets.core.settings import Settings
from dtkg_assets.core.urls import host_of
from dtkg_assets_tests.support.origin import FaultMode


def make_settings(settings: Settings, **http) -> Settings:
    """The shared test settings (loopback allowed, no limits/robots/cache) plus a contact and overrides."""
    return settings.replace(http={"mailto": "tests@example.org", **http})


def as_localhost(url: str) -> str:
    return url.replace("127.0.0.1", "localhost", 1)


def fetch_all(client: httpx.Client, urls: list[str], threads: int = 8) -> list[int]:
    statuses: list[int] = []
    lock = threading.Lock()
    queue = list(urls)

    def worker() -> None:
        while True:
            with lock:
                if not queue:
                    return
                url = queue.pop()
            status = client.get(url).status_code
            with lock:
                statuses.append(status)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=60)
    return statuses


def gaps(times: list[float]) -> list[float]:
    ordered = sorted(times)
    return [b - a for a, b in zip(ordered, ordered[1:], strict=False)]


def test_user_agent_names_project_and_contact(settings, origin):
    url = origin.add("/ua", b"x" * 10)
    with make_client(make_settings(settings)) as client:
        assert client.get(url).status_code == 200
    ua = origin.stats("/ua").user_agents[0]
    assert ua == "dtkg-assets/0.1 (+https://github.com/dtkg-assets/dtkg-assets; mailto:tests@example.org)"
    assert make_settings(settings, mailto="").http.user_agent_header() == "dtkg-assets/0.1 (+https://github.com/dtkg-assets/dtkg-assets)"


@pytest.mark.serial
def test_rate_limit_spaces_requests_across_8_threads(settings, origin):
    url = origin.add("/limited", b"x" * 100)
    settings = make_settings(settings, rate_limits={"127.0.0.1": 5.0, "*": 0.0})
    with make_client(settings) as client:
        statuses = fetch_all(client, [url] * 12)
    assert statuses == [200] * 12
    times = origin.stats("/limited").request_times
    assert len(times) == 12
    # 5 req/s -> 0.2 s apart, measured where the server saw them (small allowance for scheduling).
    assert min(gaps(times)) >= 0.2 - 0.03
    assert max(times) - min(times) >= 11 * 0.2 - 0.05


@pytest.mark.serial
def test_fractional_rate_means_what_it_says(settings, origin):
    url = origin.add("/slow", b"x" * 100)
    # One request per 0.6 s (rate 1/0.6 = 1.67 req/s): the interval is rounded up, never down.
    settings = make_settings(settings, rate_limits={"127.0.0.1": 1 / 0.6, "*": 0.0})
    with make_client(settings) as client:
        assert fetch_all(client, [url] * 4) == [200] * 4
    assert min(gaps(origin.stats("/slow").request_times)) >= 0.6 - 0.03
    assert rate_for("export.arxiv.org", Settings().http.rate_limits) == pytest.approx(1 / 3)
    assert rate_for("sub.api.crossref.org", Settings().http.rate_limits) == 10.0
    assert rate_for("unknown.example", Settings().http.rate_limits) == 5.0


@pytest.mark.serial
def test_rate_limits_are_per_host(settings, origin):
    a = origin.add("/a", b"a" * 100)
    b = as_localhost(origin.add("/b", b"b" * 100))
    settings = make_settings(settings, rate_limits={"*": 2.0})
    with make_client(settings) as client:
        assert fetch_all(client, [a] * 4 + [b] * 4) == [200] * 8
    ta, tb = origin.stats("/a").request_times, origin.stats("/b").request_times
    assert min(gaps(ta)) >= 0.5 - 0.03
    assert min(gaps(tb)) >= 0.5 - 0.03
    # The two hosts do not share one budget: 8 requests at one shared 2 req/s would span >= 3.5 s.
    assert max(ta + tb) - min(ta + tb) < 3.0


def test_retry_after_seconds_is_honoured(settings, origin):
    url = origin.add("/busy", b"y" * 100, FaultMode(status_sequence=[503], retry_after="1"))
    settings = make_settings(settings, retry_after_cap_s=10.0)
    with make_client(settings) as client:
        start = time.monotonic()
        response = get_with_retries(client, url, settings)
        elapsed = time.monotonic() - start
    assert response.status_code == 200 and response.content == b"y" * 100
    assert origin.stats("/busy").statuses == [503, 200]
    assert 1.0 <= elapsed < 10.0
    times = origin.stats("/busy").request_times
    assert times[1] - times[0] >= 1.0 - 0.03


def test_retry_after_http_date_is_honoured(settings, origin):
    when = formatdate(time.time() + 3, usegmt=True)  # whole seconds: the wait is between 2 and 3 s
    url = origin.add("/busy-date", b"z" * 100, FaultMode(status_sequence=[429], retry_after=when))
    settings = make_settings(settings, retry_after_cap_s=20.0)
    with make_client(settings) as client:
        start = time.monotonic()
        assert get_with_retries(client, url, settings).status_code == 200
        elapsed = time.monotonic() - start
    assert origin.stats("/busy-date").statuses == [429, 200]
    assert 1.9 <= elapsed < 20.0


def test_retry_after_is_capped(settings, origin):
    url = origin.add("/greedy", b"w" * 100, FaultMode(status_sequence=[503], retry_after="3600"))
    settings = make_settings(settings, retry_after_cap_s=1.0)
    with make_client(settings) as client:
        start = time.monotonic()
        assert get_with_retries(client, url, settings).status_code == 200
        elapsed = time.monotonic() - start
    assert 1.0 <= elapsed < 1.0 + 10.0


def test_retries_run_out_with_a_reason(settings, origin):
    url = origin.add("/down", b"v", FaultMode(status=503))
    settings = make_settings(settings, max_attempts=3, breaker_fail_max=0)
    with make_client(settings) as client, pytest.raises(DtkgError) as info:
        get_with_retries(client, url, settings)
    assert info.value.reason is Reason.HTTP_5XX and info.value.transient
    assert origin.stats("/down").requests == 3


def refused_then_closed_by_probe(client: httpx.Client, origin, path: str, url: str, requests: int) -> httpx.Response:
    """The open breaker refuses `url` without a request (the origin saw `requests` in all); once `path`
    is healthy again and the 1 s cooldown has passed, one probe goes through, and its success (read
    whole) closes the breaker. Returns the probe's response."""
    with pytest.raises(DtkgError) as info:
        client.get(url)
    assert info.value.reason is Reason.BREAKER_OPEN
    assert origin.stats(path).requests == requests
    origin.set_mode(path, FaultMode())
    time.sleep(1.1)
    probe = client.get(url)
    transport = polite_transport(client)
    assert transport is not None and transport.policy.breakers.state("127.0.0.1") == "closed"
    return probe


def test_breaker_opens_defers_half_opens_and_closes(settings, origin):
    url = origin.add("/flaky", b"f" * 100, FaultMode(status=503))
    settings = make_settings(settings, breaker_fail_max=3, breaker_reset_s=1.0)
    with make_client(settings) as client:
        for _ in range(3):
            assert client.get(url).status_code == 503
        for _ in range(3):
            with pytest.raises(DtkgError) as info:
                client.get(url)
            assert info.value.reason is Reason.BREAKER_OPEN
            assert info.value.transient  # deferred, never a permanent failure
        assert origin.stats("/flaky").requests == 3  # nothing reached the server while open
        transport = polite_transport(client)
        assert transport is not None and transport.policy.breakers.state("127.0.0.1") == "open"

        time.sleep(1.1)
        # Half-open: one probe goes through; it fails, so the breaker opens again at once.
        assert transport.policy.breakers.state("127.0.0.1") == "half-open"
        assert client.get(url).status_code == 503
        assert refused_then_closed_by_probe(client, origin, "/flaky", url, requests=4).status_code == 200
        assert client.get(url).status_code == 200
    assert origin.stats("/flaky").statuses == [503, 503, 503, 503, 200, 200]


def test_breaker_counts_a_good_answer_once_its_body_has_arrived(settings, origin):
    """Bodies that stall open the breaker although each answer's headers come at once (the next
    request's headers must not reset the count); a body closed unread counts as neither; a whole
    body closes the breaker again."""
    body = b"s" * 200_000
    url = origin.add("/stalls", body, FaultMode(stall_s=3.0, stall_after_bytes=1000))
    settings = make_settings(settings, breaker_fail_max=2, breaker_reset_s=1.0, read_timeout_s=0.3)
    with make_client(settings) as client:
        breakers = polite_transport(client).policy.breakers  # type: ignore[union-attr]
        with client.stream("GET", url) as unread:
            assert unread.status_code == 200
        with client.stream("GET", url) as response, pytest.raises(httpx.ReadTimeout):
            response.read()
        assert breakers.state("127.0.0.1") == "closed"  # one failure; the unread body counted nothing
        with client.stream("GET", url) as response, pytest.raises(httpx.ReadTimeout):
            response.read()
        assert breakers.state("127.0.0.1") == "open"
        assert refused_then_closed_by_probe(client, origin, "/stalls", url, requests=3).content == body


def test_breaker_counts_connect_errors(settings):
    # A port nobody listens on: connection refused, counted as failures.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = make_settings(settings, breaker_fail_max=2, breaker_reset_s=60.0)
    with make_client(settings) as client:
        for _ in range(2):
            with pytest.raises(httpx.ConnectError) as info:
                client.get(f"http://127.0.0.1:{port}/x")
            assert request_error(info.value).reason is Reason.CONNECT_ERROR
        with pytest.raises(DtkgError) as opened:
            client.get(f"http://127.0.0.1:{port}/x")
    assert opened.value.reason is Reason.BREAKER_OPEN


def test_offline_mode_makes_no_connection(settings, origin):
    url = origin.add("/offline", b"o" * 100)
    settings = make_settings(settings, offline=True, robots_enabled=True, cache_enabled=True)
    for metadata in (False, True):
        with make_client(settings, for_metadata=metadata) as client, pytest.raises(DtkgError) as info:
            client.get(url)
        assert info.value.reason is Reason.OFFLINE and not info.value.transient
    assert origin.total_requests() == 0


def test_metadata_cache_hit_serves_zero_origin_requests(settings, origin):
    url = origin.add("/works.json", b'{"results": []}', FaultMode(content_type="application/json"))
    settings = make_settings(settings, cache_enabled=True)
    with make_client(settings, for_metadata=True) as client:
        first = client.get(url)
        second = client.get(url)
    assert first.content == second.content == b'{"results": []}'
    assert first.extensions["caching"]["from_cache"] is False
    assert second.extensions["caching"]["from_cache"] is True
    assert origin.stats("/works.json").requests == 1
    # A new client (a later run) reuses the cache on disk.
    with make_client(settings, for_metadata=True) as client:
        assert client.get(url).content == b'{"results": []}'
    assert origin.stats("/works.json").requests == 1
    assert (settings.http_cache_dir / "metadata-cache.sqlite").exists()


def test_pdf_clients_never_cache(settings, origin):
    url = origin.add("/paper.pdf", b"%PDF-1.7 body")
    with make_client(make_settings(settings)) as client:
        client.get(url)
        client.get(url)
    assert origin.stats("/paper.pdf").requests == 2
    assert not settings.http_cache_dir.exists()


def test_range_and_if_range_survive_every_redirect_hop(settings, origin):
    body = bytes(range(256)) * 40
    url = origin.add("/moved.pdf", body, FaultMode(redirects=2))
    with make_client(make_settings(settings)) as client:
        head = client.head(url)
        etag = head.headers["etag"]
        response = client.get(url, headers={"Range": "bytes=100-", "If-Range": etag, "Accept-Encoding": "identity"})
    assert response.status_code == 206
    assert response.content == body[100:]
    assert len(response.history) == 2
    stats = origin.stats("/moved.pdf")
    assert stats.ranges == ["bytes=100-"] * 3
    assert stats.if_ranges == [etag] * 3


def test_too_many_redirects_has_a_reason(settings, origin):
    url = origin.add("/loop", b"l", FaultMode(redirects=10))
    with make_client(make_settings(settings, max_redirects=3)) as client, pytest.raises(httpx.TooManyRedirects) as info:
        client.get(url)
    assert request_error(info.value).reason is Reason.TOO_MANY_REDIRECTS


def test_host_of():
    assert host_of("https://API.OpenAlex.org/works?x=1") == "api.openalex.org"
    assert host_of(httpx.URL("http://127.0.0.1:8080/a")) == "127.0.0.1"
    assert host_of("not a url") == ""


def test_h11_hands_a_whole_body_chunk_over_and_still_parses_what_follows() -> None:
    """A body chunk that is h11's whole receive buffer leaves as that buffer (not as a copy of a
    copy); the next response on the connection, arriving a few bytes at a time, parses as before."""
    import h11

    import dtkg_assets.core.http  # noqa: F401  (installs the hand-over)

    conn = h11.Connection(our_role=h11.CLIENT)
    first_body, second_body = bytes(range(256)) * 4096, b"%PDF-1.7 second"
    for body, pieces in ((first_body, 1), (second_body, 7)):
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        for i in range(0, len(head), pieces):  # the status and header lines split across reads
            conn.receive_data(head[i : i + pieces])
        assert isinstance(conn.next_event(), h11.Response)
        conn.receive_data(body)
        buffered = conn._receive_buffer._data  # type: ignore[attr-defined]
        data = conn.next_event()
        assert isinstance(data, h11.Data) and bytes(data.data) == body
        assert data.data is buffered  # handed over, not copied
        assert isinstance(conn.next_event(), h11.EndOfMessage)
        conn.start_next_cycle()
