"""The artifact job state machine: one explicit table of allowed transitions.

Happy path: PLANNED → LEASED → HEAD_DONE → RESUME_OK → STREAMING → FINALIZED → INDEXED.
Side exits: DEDUPED (the bytes were already stored for another work), SKIPPED_DUPLICATE (the
work completed through another candidate, so this one is not tried), FAILED (with a class).

Decisions (documented in docs/ledger-concurrency.md):
- HEAD_DONE is reached only when a HEAD was sent (setting `http.head_precheck`, or a part without a
  strong validator). A fresh download and a resume with If-Range send no HEAD: the GET's headers are
  the precheck, so the usual path is LEASED -> RESUME_OK. LEASED may also go to
  FINALIZED/DEDUPED (the work's file or a finalized blob is already on disk and verified, e.g.
  after a crash between the rename and the ledger commit), and RESUME_OK may go straight to
  FINALIZED/DEDUPED (the part was already complete).
- In-flight states (LEASED … STREAMING, FINALIZED before INDEX) → LEASED is a lease takeover after
  expiry (new fencing token); → PLANNED is a release (run stopped, reconciler found the lease
  expired). Attempts are counted when a lease is acquired, so expiries are counted too.
- FAILED → LEASED is a retry: only transient failures whose next_eligible_at passed and whose
  attempts are below the limit (the ledger checks this at acquire).
- Terminal states (INDEXED, DEDUPED, SKIPPED_DUPLICATE, permanent FAILED) reopen only through the
  explicit requeue edge → PLANNED (file missing or corrupt, object changed, operator requeue).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class State(StrEnum):
    PLANNED = "PLANNED"
    LEASED = "LEASED"
    HEAD_DONE = "HEAD_DONE"
    RESUME_OK = "RESUME_OK"
    STREAMING = "STREAMING"
    FINALIZED = "FINALIZED"
    INDEXED = "INDEXED"
    DEDUPED = "DEDUPED"
    SKIPPED_DUPLICATE = "SKIPPED_DUPLICATE"
    FAILED = "FAILED"


S = State
IN_FLIGHT: frozenset[State] = frozenset({S.LEASED, S.HEAD_DONE, S.RESUME_OK, S.STREAMING, S.FINALIZED})
COMPLETE: frozenset[State] = frozenset({S.INDEXED, S.DEDUPED})


def sql_list(states: Iterable[State]) -> str:
    """A state set as an SQL list for `state IN …`, e.g. `('INDEXED', 'DEDUPED')`: queries and views take
    their sets from the constants here instead of spelling states out. In the order `State` declares
    them, so the SQL text is stable (a view's text stays what earlier schema versions wrote)."""
    order = list(State)
    return "(" + ", ".join(f"'{s.value}'" for s in sorted(states, key=order.index)) + ")"


COMPLETE_SQL = sql_list(COMPLETE)
IN_FLIGHT_SQL = sql_list(IN_FLIGHT)
# A work with a job in one of these has something finished or left to try: it has not failed (yet).
NOT_FAILED_SQL = sql_list(COMPLETE | IN_FLIGHT | {S.PLANNED})

_forward = {
    (S.PLANNED, S.LEASED),
    (S.LEASED, S.HEAD_DONE),
    (S.LEASED, S.RESUME_OK),  # no HEAD (the usual path: the GET's headers are the precheck)
    (S.LEASED, S.FINALIZED),  # the work's file is already on disk and verified: no network
    (S.LEASED, S.DEDUPED),
    (S.HEAD_DONE, S.RESUME_OK),
    (S.RESUME_OK, S.STREAMING),
    (S.RESUME_OK, S.FINALIZED),  # part already complete
    (S.RESUME_OK, S.DEDUPED),
    (S.STREAMING, S.FINALIZED),
    (S.STREAMING, S.DEDUPED),
    (S.FINALIZED, S.INDEXED),
    (S.FINALIZED, S.DEDUPED),
}
# Every in-flight state can fail, be taken over after lease expiry, or be released back to PLANNED.
_in_flight_exits = {(s, t) for s in IN_FLIGHT for t in (S.FAILED, S.LEASED, S.PLANNED)}
# A work finished through another candidate: this job is not needed.
_skips = {(S.PLANNED, S.SKIPPED_DUPLICATE), (S.FAILED, S.SKIPPED_DUPLICATE)}
_retry = {(S.FAILED, S.LEASED)}
# Explicit reopen (revalidation / requeue): missing or corrupt file, changed object, operator.
_requeue = {(s, S.PLANNED) for s in (S.INDEXED, S.DEDUPED, S.SKIPPED_DUPLICATE, S.FAILED)}

TRANSITIONS: frozenset[tuple[State, State]] = frozenset(_forward | _in_flight_exits | _skips | _retry | _requeue)


class IllegalTransition(Exception):
    """A state write that the transition table does not allow."""

    def __init__(self, job_id: str, from_state: str, to_state: str) -> None:
        super().__init__(f"illegal transition for job {job_id}: {from_state} -> {to_state}")
        self.job_id = job_id
        self.from_state = from_state
        self.to_state = to_state


def check_transition(job_id: str, from_state: str, to_state: str) -> None:
    if (State(from_state), State(to_state)) not in TRANSITIONS:
        raise IllegalTransition(job_id, from_state, to_state)
