"""The one HTTP client factory: pooled, polite and guarded.

`make_client(settings)` builds the `httpx.Client` a run shares between its threads. Every request,
and so every redirect hop, passes through `PoliteTransport`, which in order:

1. fails fast in offline mode (no socket is opened) with reason ``offline``;
2. refuses schemes other than http/https (``unsupported_scheme``);
3. refuses private, loopback, link-local, multicast and reserved addresses unless allow-listed
   (``private_address``, see `netguard`);
4. refuses hosts whose circuit breaker is open (``breaker_open``, transient: the work is deferred);
5. checks robots.txt (``robots_disallowed`` / ``robots_unavailable``, see `robots`);
6. waits for the host's rate limit (shared by all threads; fractional rates mean what they say);
7. sends, and feeds the outcome to the host's breaker (a good answer once its whole body has arrived).

Policy failures are raised as `DtkgError` from inside the transport; network failures stay httpx
exceptions (translate them with `http_errors.request_error`). Metadata clients (`for_metadata=True`) add an HTTP
cache (hishel) in front of the stack, so a cache hit costs no request, no wait and no network;
PDF clients never cache bodies.
"""

from __future__ import annotations

import base64
import math
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx
from pyrate_limiter import AbstractBucket, BucketFactory, InMemoryBucket, Limiter, MonotonicClock, Rate, RateItem

from dtkg_assets.core import credentials, deadline, fleet, netguard
from dtkg_assets.core.errors import DtkgError, Reason
from dtkg_assets.core.http_errors import error_for_status, request_error
from dtkg_assets.core.retrying import retrying
from dtkg_assets.core.robots import RobotsCache
from dtkg_assets.core.settings import Settings
from dtkg_assets.core.urls import host_of
from dtkg_assets.core.walls import ChallengeTracker

PRODUCT_TOKEN = "dtkg-assets"
METADATA_CACHE_FILE = "metadata-cache.sqlite"


def get_with_retries(
    client: httpx.Client,
    url: str,
    settings: Settings,
    *,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """GET a small (metadata) resource, retrying network errors, 429 and 5xx with the shared policy
    (Retry-After honoured up to its cap). Returns the final response, read, whatever its status
    below 500 (a 4xx is the caller's to judge); raises `DtkgError` when retries run out."""
    for attempt in retrying(settings.http):
        with attempt, deadline.attempt(deadline_timeout(settings)):
            try:
                response = client.get(url, params=params, headers=headers)
            except (httpx.HTTPError, DtkgError) as exc:
                raise request_error(exc) from exc
            if response.status_code == 429 or response.status_code >= 500:
                raise error_for_status(response)
            return response
    raise AssertionError("unreachable: retrying re-raises the last error")


def deadline_timeout(settings: Settings) -> float:
    """Seconds one attempt (connect, headers, body, robots.txt) may take in total. Callers open a
    `deadline.scope` with it; every socket read and write of a `make_client` client enforces it."""
    return settings.http.attempt_deadline_s


# Bytes asked of the socket per read (see `_DeadlineStream.read`): a large body arrives in chunks
# of up to this size, a small answer in one read.
READ_BYTES = 1024 * 1024


def _hand_over_whole_buffer() -> None:
    """h11 (0.16) copies each chunk of a body twice on its way out of its receive buffer:
    `maybe_extract_at_most` slices the buffer to see whether it is empty, then `_extract` slices it
    again. A body chunk is normally the whole buffer (one read of up to `READ_BYTES`), so it is handed
    over instead, and the buffer starts empty: one copy of every body byte fewer (a 1 GiB download on
    loopback: 0.1-0.3 s of CPU). Anything else, and an h11 without these internals, is left as it is."""
    from h11._receivebuffer import ReceiveBuffer

    original = getattr(ReceiveBuffer, "maybe_extract_at_most", None)
    if original is None or not hasattr(ReceiveBuffer, "_extract") or getattr(original, "hands_over", False):
        return

    def maybe_extract_at_most(self: Any, count: int) -> bytearray | None:
        data = getattr(self, "_data", None)
        if not isinstance(data, bytearray) or not data or count < len(data):
            return original(self, count)
        self._data = bytearray()
        self._extract(0)  # resets h11's line-search positions, as every extraction does
        return data

    maybe_extract_at_most.hands_over = True  # type: ignore[attr-defined]
    ReceiveBuffer.maybe_extract_at_most = maybe_extract_at_most  # type: ignore[method-assign]


_hand_over_whole_buffer()


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream that honours the thread's attempt deadline and the process's stop request.

    httpx has no total timeout: a server sending one byte per second keeps every read under the
    read timeout forever. Each read here is cut into waits of at most `deadline.POLL_S`, so an idle
    read notices an expired deadline (-> ``ReadTimeout``, reason ``timeout``) or a stop request
    (-> ``interrupted``) within that time, while a read that gets data returns at once.
    """

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        # httpcore asks for 64 KiB at a time; each read costs a pass through h11 and httpx, which on
        # loopback was most of a large download's CPU. Asking for more returns what the socket holds.
        max_bytes = max(max_bytes, READ_BYTES)
        give_up = None if timeout is None else time.monotonic() + timeout
        while True:
            if deadline.stop_requested():
                raise deadline.interrupted_error()
            d = deadline.current()
            now = time.monotonic()
            if d is not None and d.at <= now:
                raise httpcore.ReadTimeout(f"{d.what} deadline of {d.seconds:g} s passed")
            wait = deadline.POLL_S
            if give_up is not None:
                wait = min(wait, give_up - now)
            if d is not None:
                wait = min(wait, d.at - now)
            try:
                return self._inner.read(max_bytes, max(wait, 0.001))
            except httpcore.ReadTimeout:
                if give_up is not None and time.monotonic() >= give_up:
                    raise

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _capped(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, _capped(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def _capped(timeout: float | None) -> float | None:
    """`timeout` shortened to what the thread's deadline leaves (raises once it has passed)."""
    deadline.check()
    left = deadline.remaining()
    if left is None:
        return timeout
    return left if timeout is None else min(timeout, left)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, _capped(timeout), local_address, socket_options)
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.connect_unix_socket(path, _capped(timeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _deadline_transport(limits: httpx.Limits) -> httpx.HTTPTransport:
    """An `httpx.HTTPTransport` whose connections enforce deadlines and stop requests.

    httpx does not let callers pass an httpcore network backend, so the transport's pool is rebuilt
    with the same settings and a `_DeadlineBackend` (httpx 0.28 / httpcore 1.0; the deadline tests
    fail loudly if a new version renames the pool)."""
    transport = httpx.HTTPTransport(limits=limits, trust_env=False, retries=0)
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        retries=0,
        network_backend=_DeadlineBackend(httpcore.SyncBackend()),
    )
    return transport


def rate_for(host: str, limits: dict[str, float] | Any) -> float:
    """Requests per second for ``host``: the most specific matching entry (host or parent domain), else "*"."""
    host = host.lower()
    candidate = host
    while candidate:
        if candidate in limits:
            return float(limits[candidate])
        _, _, candidate = candidate.partition(".")
    return float(limits.get("*", 0.0))


def _interval_ms(rate: float) -> int:
    # Round the spacing up so we never exceed the configured rate (1/3 req/s -> 3334 ms).
    return max(1, math.ceil(1000.0 / rate - 1e-9))


class _HostBuckets(BucketFactory):
    """One pyrate-limiter bucket per host, created on first use; one leaker thread for all of them.

    Each bucket holds ``Rate(1, interval)``: at most one request per interval, which spaces requests
    evenly and expresses fractional rates exactly (one per 3 s is ``Rate(1, 3000)``).
    """

    def __init__(self, limits: dict[str, float]) -> None:
        self._limits = limits
        self._clock = MonotonicClock()
        self._buckets: dict[str, AbstractBucket] = {}
        self._lock = threading.Lock()

    def wrap_item(self, name: str, weight: int = 1) -> RateItem:
        return RateItem(name, self._clock.now(), weight=weight)

    def get(self, item: RateItem) -> AbstractBucket:
        with self._lock:
            bucket = self._buckets.get(item.name)
            if bucket is None:
                rate = rate_for(item.name, self._limits)
                bucket = InMemoryBucket([Rate(1, _interval_ms(rate))])
                self._buckets[item.name] = bucket
                self.schedule_leak(bucket)
            return bucket


class HostRateLimiter:
    """Per-host limits that wait (never fail), held across every thread using the same client."""

    def __init__(self, limits: dict[str, float]) -> None:
        self._limits = dict(limits)
        self._factory = _HostBuckets(self._limits)
        # The limiter re-checks after sleeping the computed wait plus this buffer.
        self._limiter = Limiter(self._factory, buffer_ms=2)
        self.waited_s = 0.0

    def rate(self, host: str) -> float:
        return rate_for(host, self._limits)

    def wait(self, host: str) -> float:
        """Block until ``host`` may be sent another request; returns the seconds waited."""
        if self.rate(host) <= 0:
            return 0.0
        start = time.monotonic()
        self._limiter.try_acquire(host, blocking=True)
        waited = time.monotonic() - start
        self.waited_s += waited
        return waited

    def close(self) -> None:
        self._limiter.close()


@dataclass
class _BreakerState:
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False


class HostBreakers:
    """Per-host circuit breakers: closed -> open after N consecutive failures -> half-open after a cooldown.

    A small state machine rather than pybreaker: pybreaker's ``call`` holds one lock for the whole
    wrapped call (it would serialise every download from a host), counts only exceptions (a 503 is a
    response here) and lets every concurrent caller through when half-open. Here half-open admits a
    single probe; its success closes the breaker, its failure opens it for another cooldown.
    """

    def __init__(self, fail_max: int, reset_s: float) -> None:
        self.fail_max = fail_max
        self.reset_s = reset_s
        self._lock = threading.Lock()
        self._states: dict[str, _BreakerState] = {}

    def state(self, host: str) -> str:
        with self._lock:
            st = self._states.get(host)
            if st is None or st.opened_at is None:
                return "closed"
            if time.monotonic() - st.opened_at >= self.reset_s:
                return "half-open"
            return "open"

    def before_request(self, host: str) -> bool:
        """Raise ``breaker_open`` if the host is not to be tried; True if this request is the half-open probe."""
        if self.fail_max <= 0:
            return False
        with self._lock:
            st = self._states.setdefault(host, _BreakerState())
            if st.opened_at is None:
                return False
            remaining = st.opened_at + self.reset_s - time.monotonic()
            if remaining <= 0 and not st.probing:
                st.probing = True
                return True
        raise DtkgError(
            Reason.BREAKER_OPEN,
            f"circuit breaker for {host} is open after {self.fail_max} consecutive failures",
            retry_after=max(remaining, 0.0),
        )

    def record(self, host: str, success: bool, probe: bool) -> None:
        if self.fail_max <= 0:
            return
        with self._lock:
            st = self._states.setdefault(host, _BreakerState())
            if probe:
                st.probing = False
            if success:
                st.failures = 0
                st.opened_at = None
                return
            st.failures += 1
            if probe or st.failures >= self.fail_max:
                st.opened_at = time.monotonic()

    def release(self, host: str, probe: bool) -> None:
        """The request was stopped before it reached the network: give the probe slot back."""
        if probe:
            with self._lock:
                self._states.setdefault(host, _BreakerState()).probing = False


def _failure_status(status: int) -> bool:
    return status == 429 or status >= 500


class _BreakerCountedBody(httpx.SyncByteStream):
    """A good answer counts as the host's success only once its whole body has arrived.

    Counted at the headers, a host that answers at once and then trickles its body would reset its
    failure count with every new request while each download still runs into its deadline, so its
    breaker would never open and it would keep every worker. A body cut by a timeout or a network
    error counts as a failure; one the client stops reading on purpose counts as neither.
    """

    def __init__(self, inner: httpx.SyncByteStream, breakers: Any, host: str, probe: bool) -> None:
        self._inner = inner
        self._breakers = breakers
        self._host = host
        self._probe = probe
        self._counted = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._inner
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError):
            self._count(success=False)
            raise
        self._count(success=True)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._count(success=None)

    def _count(self, success: bool | None) -> None:
        """The body's outcome for the breaker, once: None (closed before its end) only frees the probe."""
        if self._counted:
            return
        self._counted = True
        if success is None:
            self._breakers.release(self._host, self._probe)
        else:
            self._breakers.record(self._host, success=success, probe=self._probe)


class HostPolicy:
    """Host state shared by every client built with it (a run's, or the runs of one `dtkg backfill`): rate
    limits, breakers, robots cache.

    With a PostgreSQL URL for shared state (`fleet.shared_state_url`), limits, breakers and robots
    verdicts hold for every process of the fleet (`core.fleet`), not only for this one.
    """

    def __init__(self, settings: Settings) -> None:
        http = settings.http
        self.settings = settings
        self.allow = netguard.AllowList.parse(http.allow_hosts)
        self.fleet: Any = None
        self.limiter: Any
        self.breakers: Any
        url = None if http.offline else fleet.shared_state_url(settings)
        if url is not None:
            self.fleet = fleet.FleetState(url, max_size=max(4, settings.run.workers + 2))
            self.limiter = fleet.FleetRateLimiter(self.fleet, dict(http.rate_limits))
            self.breakers = fleet.FleetBreakers(self.fleet, http.breaker_fail_max, http.breaker_reset_s)
        else:
            self.limiter = HostRateLimiter(dict(http.rate_limits))
            self.breakers = HostBreakers(http.breaker_fail_max, http.breaker_reset_s)
        self.robots: RobotsCache | None = None  # set by the first transport (it fetches through it)
        # Hosts that keep answering with bot challenges are deferred like an open breaker.
        self.walls = ChallengeTracker(settings.landing.challenge_max, settings.landing.challenge_defer_s)
        self.resolver: netguard.Resolver = netguard.system_resolver

    def close(self) -> None:
        self.limiter.close()
        if self.fleet is not None:
            self.fleet.close()


class PoliteTransport(httpx.BaseTransport):
    """Applies offline mode, scheme and address guards, breakers, robots and rate limits to every hop."""

    def __init__(
        self,
        inner: httpx.BaseTransport,
        settings: Settings,
        policy: HostPolicy | None = None,
    ) -> None:
        self.inner = inner
        self.settings = settings
        self._owns_policy = policy is None
        self.policy = policy or HostPolicy(settings)
        self._vault = credentials.CredentialVault(settings.home)
        if settings.http.robots_enabled and self.policy.robots is None:
            self.policy.robots = RobotsCache(
                self._send_without_robots,
                user_agent=settings.http.user_agent_header(),
                product=PRODUCT_TOKEN,
                ttl_s=settings.http.robots_ttl_s,
                shared=fleet.FleetRobots(self.policy.fleet) if self.policy.fleet is not None else None,
            )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._send(request, check_robots=True)

    def _send_without_robots(self, request: httpx.Request) -> httpx.Response:
        return self._send(request, check_robots=False)

    def _send(self, request: httpx.Request, *, check_robots: bool) -> httpx.Response:
        deadline.check()  # a stopped process or a spent attempt sends nothing more
        shown = None
        if request.url.userinfo or credentials.has_masked_query(str(request.url)):
            shown = self._put_credentials(request)
        try:
            return self._send_prepared(request, check_robots=check_robots)
        finally:
            if shown is not None:
                request.url = shown  # the response, redirects and errors show the masked URL

    def _send_prepared(self, request: httpx.Request, *, check_robots: bool) -> httpx.Response:
        http = self.settings.http
        url = request.url
        if http.offline:
            raise DtkgError(Reason.OFFLINE, f"offline mode (DTKG_OFFLINE): not fetching {url}")
        if url.scheme not in ("http", "https"):
            raise DtkgError(Reason.UNSUPPORTED_SCHEME, f"only http and https are fetched, not {url}")
        host = url.host.lower()
        port = url.port or (443 if url.scheme == "https" else 80)
        netguard.check_host(host, port, self.policy.allow, self.policy.resolver)
        self.policy.walls.check(host)
        request.extensions["dtkg_walls"] = self.policy.walls  # where a caller that sees a challenge records it
        breakers = self.policy.breakers
        probe = breakers.before_request(host)
        try:
            if check_robots and self.policy.robots is not None:
                self.policy.robots.check(str(url))
            self.policy.limiter.wait(host)
        except BaseException:
            breakers.release(host, probe)
            raise
        try:
            response = self.inner.handle_request(request)
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError):
            breakers.record(host, success=False, probe=probe)
            raise
        except BaseException:
            breakers.release(host, probe)
            raise
        if _failure_status(response.status_code):
            breakers.record(host, success=False, probe=probe)
        else:
            assert isinstance(response.stream, httpx.SyncByteStream)  # a sync transport's answer
            response.stream = _BreakerCountedBody(response.stream, breakers, host, probe)
        return response

    def note_failure(self, url: str) -> None:
        """A failure the transport did not see (a body that spent its attempt deadline) counts
        against the host's breaker like a failed request, so a stalled host stops taking workers."""
        self.policy.breakers.record(host_of(url), success=False, probe=False)

    def _put_credentials(self, request: httpx.Request) -> httpx.URL | None:
        """Send credentials only for this request, never in a URL anything keeps.

        A redacted URL (the only kind the ledger holds) gets its real credentials from the vault
        (`core.credentials`); a URL that carries userinfo itself has it already as httpx's Basic auth.
        Either way the userinfo leaves the URL, so responses and errors never show it. Secret query
        parameters go back into the query of the request sent; the masked URL to restore once it is
        sent is returned (None when the URL sent shows no secret)."""
        real = self._vault.real_url(str(request.url)) if credentials.is_redacted(str(request.url)) else None
        if credentials.has_masked_userinfo(str(request.url)):
            pair = credentials.basic_credentials(real) if real else None
            if pair is None:
                request.headers.pop("Authorization", None)  # unknown: ask without any
            else:
                token = base64.b64encode(f"{pair[0]}:{pair[1]}".encode()).decode()
                request.headers["Authorization"] = f"Basic {token}"
        request.url = request.url.copy_with(username=None, password=None)
        if real is None or not credentials.has_masked_query(str(request.url)):
            return None
        shown = request.url
        request.url = request.url.copy_with(query=httpx.URL(real).query)
        return shown

    def close(self) -> None:
        self.inner.close()
        if self._owns_policy:
            self.policy.close()


def _metadata_cache(settings: Settings, next_transport: httpx.BaseTransport) -> httpx.BaseTransport:
    from hishel import SqliteStorage
    from hishel.httpx import CacheTransport

    settings.http_cache_dir.mkdir(parents=True, exist_ok=True)
    storage = SqliteStorage(
        database_path=settings.http_cache_dir / METADATA_CACHE_FILE,
        default_ttl=settings.http.cache_ttl_s,
    )
    # rfc=False: cache successful GETs by URL for the TTL whatever the API's cache headers say
    # (metadata changes slowly; a fresh query is one `cache_ttl_s` away or a new cache dir).
    return CacheTransport(next_transport=next_transport, storage=storage, rfc=False)


def make_client(
    settings: Settings,
    *,
    for_metadata: bool = False,
    policy: HostPolicy | None = None,
) -> httpx.Client:
    """The client for a run: pooled, shared by threads, polite (see module doc).

    Pass one `HostPolicy` to several clients (e.g. metadata and PDFs) to make them share rate limits,
    breakers and robots verdicts; by default each client owns its own.
    """
    http = settings.http
    limits = httpx.Limits(
        max_connections=http.pool_connections,
        max_keepalive_connections=http.pool_connections,
    )
    # trust_env=False: an environment proxy would bypass the address guard.
    inner = _deadline_transport(limits)
    transport: httpx.BaseTransport = PoliteTransport(inner, settings, policy)
    if for_metadata and http.cache_enabled:
        transport = _metadata_cache(settings, transport)
    timeout = httpx.Timeout(
        connect=http.connect_timeout_s,
        read=http.read_timeout_s,
        write=http.read_timeout_s,
        pool=http.connect_timeout_s,
    )
    return httpx.Client(
        transport=transport,
        timeout=timeout,
        follow_redirects=True,
        max_redirects=http.max_redirects,
        headers={"User-Agent": http.user_agent_header()},
        trust_env=False,
    )


def polite_transport(client: httpx.Client) -> PoliteTransport | None:
    """The `PoliteTransport` inside a client from `make_client` (under the cache, if any)."""
    transport: Any = getattr(client, "_transport", None)
    while transport is not None and not isinstance(transport, PoliteTransport):
        transport = getattr(transport, "next_transport", None)
    return transport
