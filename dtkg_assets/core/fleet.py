"""Politeness for a fleet: per-host rate limits, circuit breakers and robots.txt verdicts shared by
every worker process on every host, kept in PostgreSQL (the ledger's database by default).

Used instead of the in-process versions in `core.http` when a PostgreSQL URL is configured
(`DTKG_LEDGER_URL`, or `DTKG_HTTP_SHARED_STATE_URL` for a separate database). Every decision uses the
database server's clock, so the workers' clocks need not agree.

- **Rate limits** are slot reservations, one row per host: a request atomically takes the host's next
  free slot (``next_at = greatest(next_at, now) + interval``) and sleeps until it. One statement, one
  round trip, no table lock, and the spacing holds across processes exactly as it does across threads
  (fractional rates included). pyrate-limiter's PostgreSQL bucket was not used: it creates a table per
  bucket (one per host here) and answers lock contention by failing the attempt, so many waiting
  workers spin on the lock instead of queueing.
- **Breakers** keep the same state machine as `HostBreakers` (closed → open after N consecutive
  failures → one half-open probe after the cooldown) in one row per host; the probe slot is claimed
  with a conditional update, so exactly one worker in the fleet probes.
- **robots.txt** is fetched once per origin per TTL for the whole fleet: the fetching worker holds a
  transaction-scoped advisory lock on the origin while it fetches and stores the body; the others wait
  on that lock, then read the stored verdict. Each process still caches verdicts in memory.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from dtkg_assets.core.errors import DtkgError, Reason
from dtkg_assets.core.ledger.pg_schema import advisory_xact_lock
from dtkg_assets.core.settings import Settings, is_postgres_url

SCHEMA = "dtkg"

_DDL = (
    f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
    f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.fleet_host_slots (
        host TEXT PRIMARY KEY, next_at DOUBLE PRECISION NOT NULL)""",
    f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.fleet_breakers (
        host TEXT PRIMARY KEY, failures INTEGER NOT NULL DEFAULT 0, opened_at DOUBLE PRECISION,
        probing BOOLEAN NOT NULL DEFAULT FALSE)""",
    f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.fleet_robots (
        origin TEXT PRIMARY KEY, status INTEGER, body TEXT, available BOOLEAN NOT NULL, detail TEXT,
        fetched_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL)""",
)
_NOW = "extract(epoch FROM clock_timestamp())::double precision"


def shared_state_url(settings: Settings) -> str | None:
    """The PostgreSQL URL holding the fleet's politeness state, or None (in-process politeness)."""
    url = settings.http.shared_state_url or settings.ledger.url
    return url if url and is_postgres_url(url) else None


def redact_url(url: str) -> str:
    """The URL without its password, for status output and messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class FleetState:
    """A small connection pool on the shared database, with the politeness tables created."""

    def __init__(self, url: str, *, max_size: int = 8) -> None:
        import psycopg
        from psycopg_pool import ConnectionPool

        self.url = url
        try:
            # One direct connection first: fails fast (the pool would retry in the background) and
            # creates the tables, serialized by an advisory lock (concurrent CREATE IF NOT EXISTS races).
            with psycopg.connect(url, connect_timeout=10) as con, con.transaction():
                advisory_xact_lock(con, "fleet-ddl")
                for sql in _DDL:
                    con.execute(sql)
            self.pool = ConnectionPool(url, min_size=1, max_size=max_size, kwargs={"autocommit": True},
                                       open=True, timeout=30, name="dtkg-fleet")
        except psycopg.Error as exc:
            raise _unavailable(exc) from exc

    @contextmanager
    def connection(self) -> Iterator[Any]:
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            with self.pool.connection() as con:
                yield con
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise _unavailable(exc) from exc

    def close(self) -> None:
        self.pool.close()


def _unavailable(exc: BaseException) -> DtkgError:
    # psycopg messages can include the connection string: name the error class and the first line only.
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return DtkgError(Reason.COORDINATION_UNAVAILABLE,
                     f"the fleet's shared politeness state (PostgreSQL) is unreachable: {type(exc).__name__}: {first}")


# ---- rate limits ----------------------------------------------------------------------------


class FleetRateLimiter:
    """`HostRateLimiter` for the fleet: the same ``wait(host)``, one slot reservation per request."""

    def __init__(self, state: FleetState, limits: dict[str, float]) -> None:
        from dtkg_assets.core.http import rate_for

        self._state = state
        self._limits = dict(limits)
        self._rate_for = rate_for
        self.waited_s = 0.0
        self._lock = threading.Lock()

    def rate(self, host: str) -> float:
        return self._rate_for(host, self._limits)

    def reserve(self, host: str) -> float:
        """Take the host's next slot; returns the seconds until it (0 when the host is free now)."""
        rate = self.rate(host)
        if rate <= 0:
            return 0.0
        interval = 1.0 / rate
        with self._state.connection() as con:
            row = con.execute(
                f"""INSERT INTO {SCHEMA}.fleet_host_slots AS s (host, next_at) VALUES (%(host)s, {_NOW} + %(i)s)
                    ON CONFLICT (host) DO UPDATE SET next_at = greatest(s.next_at, {_NOW}) + %(i)s
                    RETURNING s.next_at - %(i)s - {_NOW}""",
                {"host": host, "i": interval},
            ).fetchone()
        return max(0.0, float(row[0])) if row else 0.0

    def wait(self, host: str) -> float:
        delay = self.reserve(host)
        if delay > 0:
            time.sleep(delay)
        with self._lock:
            self.waited_s += delay
        return delay

    def close(self) -> None:
        pass


# ---- breakers -------------------------------------------------------------------------------


class FleetBreakers:
    """`HostBreakers` for the fleet (same methods and semantics; state in one row per host)."""

    def __init__(self, state: FleetState, fail_max: int, reset_s: float) -> None:
        self._state = state
        self.fail_max = fail_max
        self.reset_s = reset_s

    def state(self, host: str) -> str:
        with self._state.connection() as con:
            row = con.execute(f"SELECT opened_at, {_NOW} FROM {SCHEMA}.fleet_breakers WHERE host = %s",
                              [host]).fetchone()
        if row is None or row[0] is None:
            return "closed"
        return "half-open" if row[1] - row[0] >= self.reset_s else "open"

    def before_request(self, host: str) -> bool:
        """Raise ``breaker_open`` if the host is not to be tried; True if this request is the fleet's probe."""
        if self.fail_max <= 0:
            return False
        with self._state.connection() as con:
            row = con.execute(f"SELECT opened_at, probing, {_NOW} FROM {SCHEMA}.fleet_breakers WHERE host = %s",
                              [host]).fetchone()
            if row is None or row[0] is None:
                return False
            opened_at, _, now = row
            remaining = opened_at + self.reset_s - now
            if remaining <= 0:
                claimed = con.execute(
                    f"UPDATE {SCHEMA}.fleet_breakers SET probing = TRUE WHERE host = %s AND opened_at = %s "
                    "AND NOT probing RETURNING 1", [host, opened_at]).fetchone()
                if claimed is not None:
                    return True
        raise DtkgError(
            Reason.BREAKER_OPEN,
            f"circuit breaker for {host} is open after {self.fail_max} consecutive failures (fleet-wide)",
            retry_after=max(remaining, 0.0),
        )

    def record(self, host: str, success: bool, probe: bool) -> None:
        if self.fail_max <= 0:
            return
        with self._state.connection() as con:
            if success:
                con.execute(f"UPDATE {SCHEMA}.fleet_breakers SET failures = 0, opened_at = NULL, probing = FALSE "
                            "WHERE host = %s AND (failures > 0 OR opened_at IS NOT NULL OR probing)", [host])
                return
            con.execute(
                f"""INSERT INTO {SCHEMA}.fleet_breakers AS b (host, failures, opened_at, probing)
                    VALUES (%(host)s, 1, CASE WHEN %(probe)s OR 1 >= %(max)s THEN {_NOW} END, FALSE)
                    ON CONFLICT (host) DO UPDATE SET failures = b.failures + 1,
                      probing = CASE WHEN %(probe)s THEN FALSE ELSE b.probing END,
                      opened_at = CASE WHEN %(probe)s OR b.failures + 1 >= %(max)s THEN {_NOW}
                                       ELSE b.opened_at END""",
                {"host": host, "probe": probe, "max": self.fail_max},
            )

    def release(self, host: str, probe: bool) -> None:
        if probe:
            with self._state.connection() as con:
                con.execute(f"UPDATE {SCHEMA}.fleet_breakers SET probing = FALSE WHERE host = %s", [host])


# ---- robots.txt -----------------------------------------------------------------------------


@dataclass
class StoredRobots:
    status: int | None
    body: str | None
    available: bool
    detail: str
    ttl_left_s: float  # seconds until the fleet fetches it again (server clock)
    fetched_here: bool  # this process fetched it (False: read from the fleet's store)


class FleetRobots:
    """robots.txt bodies and verdicts shared by the fleet: one fetch per origin per TTL."""

    def __init__(self, state: FleetState) -> None:
        self._state = state

    def get_or_fetch(self, origin: str, fetch: Callable[[], StoredRobots]) -> StoredRobots:
        """The stored verdict for `origin` while it is fresh; else fetch it (one worker at a time per
        origin, the others wait for its result) and store it for the fleet."""
        with self._state.connection() as con, con.transaction():
            advisory_xact_lock(con, origin)
            row = con.execute(
                f"SELECT status, body, available, coalesce(detail, ''), expires_at - {_NOW} "
                f"FROM {SCHEMA}.fleet_robots WHERE origin = %s", [origin]).fetchone()
            if row is not None and row[4] > 0:
                return StoredRobots(row[0], row[1], bool(row[2]), row[3], float(row[4]), fetched_here=False)
            fresh = fetch()
            con.execute(
                f"""INSERT INTO {SCHEMA}.fleet_robots AS r VALUES (%(o)s, %(s)s, %(b)s, %(a)s, %(d)s, {_NOW},
                        {_NOW} + %(ttl)s)
                    ON CONFLICT (origin) DO UPDATE SET status = excluded.status, body = excluded.body,
                      available = excluded.available, detail = excluded.detail, fetched_at = excluded.fetched_at,
                      expires_at = excluded.expires_at""",
                {"o": origin, "s": fresh.status, "b": fresh.body, "a": fresh.available, "d": fresh.detail,
                 "ttl": fresh.ttl_left_s},
            )
            return fresh
