"""robots.txt per RFC 9309, fetched once per origin per TTL and shared by every thread of a run.

Parsing and matching (user-agent groups, longest match, ``*`` and ``$``) come from `protego`, the
parser Scrapy maintains. This module adds the fetch rules of RFC 9309 §2.3.1:

- 2xx: parse (at most 512 KiB, the RFC's minimum);
- 4xx (except 429): no rules, everything is allowed;
- 5xx, 429 or unreachable: everything is disallowed. We fail such URLs with ``robots_unavailable``
  (a transient reason) rather than ``robots_disallowed`` so the ledger retries them later instead of
  giving up for good; the failure verdict is cached only briefly (`FAILURE_TTL_S`).
- redirects are followed up to 5 hops, each through the same guards as any request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import httpx
from protego import Protego

from dtkg_assets.core import deadline
from dtkg_assets.core.errors import DtkgError, Reason

if TYPE_CHECKING:
    from dtkg_assets.core.fleet import FleetRobots

MAX_ROBOTS_BYTES = 512 * 1024
MAX_ROBOTS_REDIRECTS = 5
# An unavailable robots.txt is asked for again after this long (or the TTL, if shorter).
FAILURE_TTL_S = 300.0

# Failures that say nothing about the origin's robots.txt: raised to the caller, never cached.
_NOT_A_VERDICT = frozenset({Reason.PRIVATE_ADDRESS, Reason.OFFLINE, Reason.UNSUPPORTED_SCHEME, Reason.INTERRUPTED})

# Sends one request through the transport stack without the robots check.
Sender = Callable[[httpx.Request], httpx.Response]


@dataclass
class RobotsVerdict:
    status: int | None  # HTTP status of robots.txt, None when unreachable
    parser: Protego | None  # None: no rules (allow all) or unavailable (see `available`)
    available: bool
    fetched_at: float
    expires_at: float
    detail: str = ""
    body: str | None = None  # the robots.txt text (kept to share the verdict with the fleet)
    # Why an unavailable robots.txt is unavailable: `timeout` when it did not answer in time.
    reason: Reason = Reason.ROBOTS_UNAVAILABLE

    def allows(self, url: str, product: str) -> bool:
        if not self.available:
            return False
        if self.parser is None:
            return True
        return bool(self.parser.can_fetch(url, product))


def robots_url_for(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{_hostport(parts.netloc)}/robots.txt"


def origin_key(url: str) -> str:
    """RFC 9309 scopes robots.txt to scheme, host and port."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{_hostport(parts.netloc)}".lower()


def _hostport(netloc: str) -> str:
    # Credentials of the page's URL are never sent for (or shown with) its robots.txt.
    return netloc.rpartition("@")[2]


class RobotsCache:
    """Thread-safe cache of robots verdicts: one fetch per origin per TTL, concurrent callers wait for it."""

    def __init__(self, send: Sender, *, user_agent: str, product: str, ttl_s: float,
                 shared: FleetRobots | None = None) -> None:
        self._send = send
        self._shared = shared  # fleet-wide store: one fetch per origin per TTL for every process
        self._user_agent = user_agent
        self._product = product
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._origin_locks: dict[str, threading.Lock] = {}
        self._verdicts: dict[str, RobotsVerdict] = {}
        self.fetches = 0  # robots.txt requests made (for status and tests)

    def check(self, url: str) -> None:
        """Raise ``DtkgError`` (robots_disallowed / robots_unavailable) unless ``url`` may be fetched."""
        if urlsplit(url).path == "/robots.txt":
            return
        verdict = self.verdict(url)
        if verdict.allows(url, self._product):
            return
        if not verdict.available:
            raise DtkgError(
                verdict.reason,
                f"{robots_url_for(url)} unavailable ({verdict.detail}); RFC 9309 says assume everything is disallowed",
                status=verdict.status,
            )
        raise DtkgError(Reason.ROBOTS_DISALLOWED, f"{url} is disallowed by {robots_url_for(url)}")

    def verdict(self, url: str) -> RobotsVerdict:
        key = origin_key(url)
        with self._lock:
            origin_lock = self._origin_locks.setdefault(key, threading.Lock())
        # One fetch per origin; the other threads wait for it and reuse it, but never past their own
        # attempt deadline: a robots.txt that trickles must not hold every worker of the host.
        left = deadline.remaining()
        if not origin_lock.acquire(timeout=-1 if left is None else max(left, 0.0)):
            raise DtkgError(
                Reason.TIMEOUT,
                f"another request is still fetching {robots_url_for(url)}; stopped waiting at this attempt's deadline",
            )
        try:
            cached = self._verdicts.get(key)
            if cached is not None and cached.expires_at > time.monotonic():
                return cached
            if self._shared is None:
                verdict = self._fetch(robots_url_for(url))
            else:
                verdict = self._from_fleet(key, robots_url_for(url))
            self._verdicts[key] = verdict
            return verdict
        finally:
            origin_lock.release()

    def _from_fleet(self, key: str, robots_url: str) -> RobotsVerdict:
        from dtkg_assets.core.fleet import StoredRobots

        assert self._shared is not None

        def fetch() -> StoredRobots:
            v = self._fetch(robots_url)
            return StoredRobots(v.status, v.body, v.available, v.detail, v.expires_at - v.fetched_at, True)

        stored = self._shared.get_or_fetch(key, fetch)
        now = time.monotonic()
        parser = Protego.parse(stored.body) if stored.available and stored.body is not None else None
        # The fleet keeps the detail, not the reason: a timeout's detail starts with its reason code.
        reason = Reason.TIMEOUT if stored.detail.startswith(f"{Reason.TIMEOUT.value}:") else Reason.ROBOTS_UNAVAILABLE
        return RobotsVerdict(stored.status, parser, stored.available, now, now + stored.ttl_left_s, stored.detail,
                             stored.body, reason=reason)

    def _fetch(self, robots_url: str) -> RobotsVerdict:
        now = time.monotonic()
        failure_expiry = now + min(self._ttl_s, FAILURE_TTL_S)
        url = robots_url
        for _ in range(MAX_ROBOTS_REDIRECTS + 1):
            request = httpx.Request(
                "GET", url, headers={"User-Agent": self._user_agent, "Accept-Encoding": "identity"}
            )
            self.fetches += 1
            try:
                response = self._send(request)
            except DtkgError as exc:
                if exc.reason in _NOT_A_VERDICT:
                    raise
                return _unavailable(now, failure_expiry, f"{exc.reason.value}: {exc.detail}", exc)
            except httpx.HTTPError as exc:
                return _unavailable(now, failure_expiry, f"{type(exc).__name__}: {exc}", exc)
            try:
                status = response.status_code
                if status in (301, 302, 303, 307, 308) and "location" in response.headers:
                    _read_limited(response, 64 * 1024)
                    url = urljoin(url, response.headers["location"])
                    continue
                if 200 <= status < 300:
                    body = _read_limited(response, MAX_ROBOTS_BYTES)
                    text = body.decode("utf-8", errors="replace")
                    return RobotsVerdict(status, Protego.parse(text), True, now, now + self._ttl_s, body=text)
                # Drain small error bodies so the pooled connection can be reused.
                _read_limited(response, 64 * 1024)
                if 400 <= status < 500 and status != 429:
                    return RobotsVerdict(status, None, True, now, now + self._ttl_s, f"HTTP {status}: allow all")
                return RobotsVerdict(status, None, False, now, failure_expiry, f"HTTP {status}")
            except httpx.HTTPError as exc:
                return _unavailable(now, failure_expiry, f"{type(exc).__name__}: {exc}", exc)
            finally:
                response.close()
        return RobotsVerdict(None, None, False, now, failure_expiry, "too many redirects")


def _unavailable(now: float, expires_at: float, detail: str, exc: BaseException) -> RobotsVerdict:
    """The verdict for a robots.txt that could not be read; a timeout keeps its own reason."""
    timed_out = isinstance(exc, httpx.TimeoutException) or (
        isinstance(exc, DtkgError) and exc.reason == Reason.TIMEOUT
    )
    if not timed_out:
        return RobotsVerdict(None, None, False, now, expires_at, detail)
    if not detail.startswith(f"{Reason.TIMEOUT.value}:"):
        detail = f"{Reason.TIMEOUT.value}: {detail}"  # so a verdict shared through the fleet keeps it
    return RobotsVerdict(None, None, False, now, expires_at, detail, reason=Reason.TIMEOUT)


def _read_limited(response: httpx.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_raw():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]
