"""Attempt deadlines and the process-wide stop request.

Read timeouts bound the wait for *one* socket read; a server that sends a byte a second never trips
them. A deadline bounds a whole attempt (connect, header block, body, and the robots.txt fetch made
on its behalf). Deadlines are thread-local scopes, so the HTTP layer can enforce them at every
socket read (`http._DeadlineStream`) without the callers threading a value through httpx; nested
scopes keep the earliest deadline.

`request_stop()` is what SIGINT/SIGTERM do in `dtkg` commands: downloads notice it within a fraction
of a second (each body chunk, and each idle socket read wakes up every `POLL_S`), keep their part,
and give their job back. Nothing here imports httpx or Dagster.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from dtkg_assets.core.errors import DtkgError, Reason

# An idle socket read wakes up this often to look at the stop request and the deadline.
POLL_S = 0.25
# The stop reason when an interrupt arrived as an exception (Dagster's own SIGINT/SIGTERM handler).
INTERRUPT = "interrupt"

_local = threading.local()
_stop = threading.Event()
_stop_reason: list[str] = []
_stoppable = [0]  # how many `stoppable()` blocks are running (downloads that watch the stop request)
_stoppable_lock = threading.Lock()


@dataclass(frozen=True)
class Deadline:
    at: float  # time.monotonic() value
    seconds: float  # the budget it was given, for messages
    what: str  # "attempt", "robots.txt", ...

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def expired_error(self) -> DtkgError:
        return DeadlineSpent(self)


class DeadlineSpent(DtkgError):
    """An attempt that used up its whole deadline (reason `timeout`). Not retried in place: the same
    server would most likely spend the next one too, holding a worker; the ledger retries the work
    later, resuming from its part."""

    def __init__(self, spent: Deadline, detail: str = "") -> None:
        super().__init__(Reason.TIMEOUT, detail or f"{spent.what} deadline of {spent.seconds:g} s passed")


def current() -> Deadline | None:
    """The innermost (earliest) deadline of this thread, if any."""
    found: Deadline | None = getattr(_local, "deadline", None)
    return found


@contextmanager
def scope(seconds: float | None, what: str) -> Iterator[Deadline | None]:
    """Run the block under a deadline of `seconds` (None or <= 0: no new deadline).

    An enclosing earlier deadline stays in force: a nested scope can only shorten the budget."""
    outer = current()
    inner = outer
    if seconds is not None and seconds > 0:
        candidate = Deadline(time.monotonic() + seconds, seconds, what)
        if outer is None or candidate.at < outer.at:
            inner = candidate
    _local.deadline = inner
    try:
        yield inner
    finally:
        _local.deadline = outer


@contextmanager
def attempt(seconds: float | None) -> Iterator[Deadline | None]:
    """`scope` for one request attempt: a `timeout` that spent the deadline leaves as `DeadlineSpent`."""
    with scope(seconds, "attempt") as d:
        try:
            yield d
        except DtkgError as exc:
            spent = d is not None and d.remaining() <= 0
            if spent and exc.reason is Reason.TIMEOUT and not isinstance(exc, DeadlineSpent):
                assert d is not None
                raise DeadlineSpent(d, exc.detail) from exc
            raise


def remaining() -> float | None:
    """Seconds left under the current deadline (may be negative), None without one."""
    d = current()
    return None if d is None else d.remaining()


def check() -> None:
    """Raise `interrupted` after a stop request, `timeout` past the current deadline."""
    if _stop.is_set():
        raise interrupted_error()
    d = current()
    if d is not None and d.remaining() <= 0:
        raise d.expired_error()


# ---- stop requests --------------------------------------------------------------------------


def request_stop(reason: str) -> None:
    """Ask every download in this process to stop soon (first reason wins)."""
    if not _stop_reason:
        _stop_reason.append(reason)
    _stop.set()


def stop_requested() -> bool:
    return _stop.is_set()


def stop_reason() -> str | None:
    return _stop_reason[0] if _stop_reason else None


def interrupted_error() -> DtkgError:
    return DtkgError(Reason.INTERRUPTED, f"stopped by {stop_reason() or 'a stop request'}")


@contextmanager
def stoppable() -> Iterator[None]:
    """Mark work that watches `stop_requested()` itself (downloads): a signal handler then only asks
    it to stop, instead of interrupting whatever the main thread is doing."""
    with _stoppable_lock:
        _stoppable[0] += 1
    try:
        yield
    finally:
        with _stoppable_lock:
            _stoppable[0] -= 1


def in_stoppable() -> bool:
    return _stoppable[0] > 0


def sleep(seconds: float) -> None:
    """`time.sleep` that ends early on a stop request (backoff waits between retries)."""
    if seconds > 0:
        _stop.wait(seconds)
