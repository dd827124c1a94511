"""Read-only questions asked of the ledger: by the automation (sensors read them from the snapshot), the
commands (`summary`, which every command that reports on the ledger prints), verification,
reconciliation and revalidation. The SQL lives here and in the rest of `core/ledger/`, nowhere else;
state sets come from `states` (`COMPLETE_SQL` …), not spelled out."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from dtkg_assets.core.errors import WEAK_REASONS
from dtkg_assets.core.ledger.db import Ledger
from dtkg_assets.core.ledger.states import COMPLETE, COMPLETE_SQL, IN_FLIGHT_SQL, NOT_FAILED_SQL, State, sql_list
from dtkg_assets.core.store import resolve_store_path

# A work's reason, as the orchestrator reports a failed work: its last candidate's reason that says
# something about the work (not one of `WEAK_REASONS`: a connect error on the DOI after a 403 on the
# PDF URL reports the 403), else its last candidate's. (array_agg … ORDER BY)[1] is arg_max in SQL both
# backends (DuckDB, PostgreSQL) speak; false sorts before true in both.
WORK_REASON_SQL = (
    "(array_agg(last_reason ORDER BY coalesce(last_reason IN "
    + "(" + ", ".join(f"'{r}'" for r in sorted(WEAK_REASONS)) + "), true), candidate_rank DESC))[1]"
)


def works_seen_since(ledger: Ledger, after: float, limit: int) -> list[tuple[str, float]]:
    """Works first seen at or after `after` (epoch seconds), oldest first: (work_id, first_seen)."""
    rows = ledger.query(
        "SELECT work_id, first_seen FROM works WHERE first_seen >= ? ORDER BY first_seen, work_id LIMIT ?",
        [after, limit],
    )
    return [(str(r[0]), float(r[1])) for r in rows]


def works_needing_work(ledger: Ledger, *, now: float | None = None, limit: int = 100_000) -> list[str]:
    """Works without a finished artifact that have something to do now: a planned candidate, a
    transient failure whose backoff has passed, or an in-flight job whose lease has expired. Oldest
    first, by when the first such candidate was planned."""
    now = time.time() if now is None else now
    # The jobs that have something to do, in order, a page at a time (a top-N), then each work once.
    # Grouping every job by work to order the works held a hash table of every work: 110 MB and
    # 0.12 s for the 2,000 works a backfill asked for at a million works (this: 12 MB and 14 ms).
    found: dict[str, None] = {}
    after: tuple[float, str] = (-1.0, "")
    while len(found) < limit:
        page = limit - len(found)  # at least one job per work still wanted
        rows = ledger.query(
            f"""
            SELECT work_id, coalesce(created_at, 0) AS planned_at FROM artifact_jobs j
            WHERE (state = 'PLANNED'
                   OR (state = 'FAILED' AND failure_class = 'transient' AND coalesce(next_eligible_at, 0) <= ?)
                   OR (state IN {IN_FLIGHT_SQL} AND coalesce(lease_expires_at, 0) <= ?))
              AND (coalesce(created_at, 0), work_id) > (?, ?)
              AND NOT EXISTS (SELECT 1 FROM artifact_jobs c WHERE c.work_id = j.work_id AND c.state IN {COMPLETE_SQL})
            ORDER BY planned_at, work_id
            LIMIT ?
            """,
            [now, now, after[0], after[1], page],
        )
        found.update((str(r[0]), None) for r in rows)
        if len(rows) < page:
            break
        after = (float(rows[-1][1]), str(rows[-1][0]))
    return list(found)


def finished_artifacts(
    ledger: Ledger, *, run_id: str | None = None, work_ids: Sequence[str] | None = None
) -> list[tuple[str, str, str, int]]:
    """(work_id, sha256, file, bytes) of every finished artifact, or only those a run finished, or
    only those of the given works; the ledger's store-relative path is resolved under this home's store."""
    root = ledger.settings.store_dir
    sql = f"SELECT work_id, sha256, path, bytes FROM artifact_jobs WHERE state IN {COMPLETE_SQL}"
    by_run = [run_id] if run_id else []
    if work_ids is not None:
        sql += " AND work_id IN (SELECT unnest($1))" + (" AND run_id = $2" if run_id else "")
        rows = ledger.query_keys(sql + " ORDER BY work_id", work_ids, by_run)
    else:
        rows = ledger.query(sql + (" AND run_id = ?" if run_id else "") + " ORDER BY work_id", by_run)
    return [(str(r[0]), str(r[1]), str(resolve_store_path(str(r[2]), root)), int(r[3] or 0)) for r in rows]


def summary(ledger: Ledger) -> dict[str, object]:
    """The ledger's one summary, in the words every command prints: works counted once each by outcome
    (`works_by_outcome`: stored, deduplicated, in_flight, pending, retrying, failed), the reasons of
    works that failed (`WORK_REASON_SQL`), input problems by reason, candidate jobs by state,
    the store's blobs and bytes, and the bytes of finished artifacts."""
    failed_by_reason = ledger.query(
        f"""
        WITH last_fail AS (
            SELECT work_id, {WORK_REASON_SQL} AS reason FROM artifact_jobs
            -- Only works with a failed job can qualify: grouping just those keeps this query from
            -- sorting every work's jobs (0.6 s of `dtkg status` at a million planned works).
            WHERE work_id IN (SELECT work_id FROM artifact_jobs WHERE state = 'FAILED')
            GROUP BY work_id
            HAVING NOT bool_or(state IN {sql_list(COMPLETE | {State.PLANNED})}) AND bool_or(state = 'FAILED'))
        SELECT reason, count(*) FROM last_fail GROUP BY reason ORDER BY count(*) DESC, reason
        """
    )
    problems = ledger.query("SELECT reason, count(*) FROM input_problems GROUP BY reason ORDER BY reason")
    stored = ledger.query("SELECT count(*), coalesce(sum(size), 0) FROM blobs")[0]
    finished_bytes = ledger.query(
        f"SELECT coalesce(sum(bytes), 0) FROM artifact_jobs WHERE state IN {COMPLETE_SQL}"
    )[0][0]
    return {
        "works": int(ledger.query("SELECT count(*) FROM works")[0][0]),
        "by_outcome": works_by_outcome(ledger),
        "failed_by_reason": {str(k): int(v) for k, v in failed_by_reason},
        "input_problems": {str(k): int(v) for k, v in problems},
        "jobs_by_state": jobs_by_state(ledger),
        "blobs": int(stored[0]),
        "blob_bytes": int(stored[1]),
        "artifact_bytes": int(finished_bytes),
    }


def jobs_by_state(ledger: Ledger) -> dict[str, int]:
    """Candidate jobs (one per candidate URL) counted by state."""
    rows = ledger.query("SELECT state, count(*) FROM artifact_jobs GROUP BY state ORDER BY state")
    return {str(k): int(v) for k, v in rows}


def automation_view(ledger: Ledger, *, now: float | None = None) -> dict[str, str]:
    """Each work's class for automation: "complete", "redo" (reconciliation may request it: a
    transient failure whose backoff passed, an expired lease, a work reopened after it was tried or
    finished), "new" (never attempted: downloading it is the user's choice), or "hold" (permanent
    failure, backoff not passed, or in flight)."""
    now = time.time() if now is None else now
    rows = ledger.query(
        f"""
        SELECT work_id,
          CASE
            WHEN bool_or(state IN {COMPLETE_SQL}) THEN 'complete'
            WHEN bool_or((state = 'FAILED' AND failure_class = 'transient' AND coalesce(next_eligible_at, 0) <= ?)
                 OR (state IN {IN_FLIGHT_SQL} AND coalesce(lease_expires_at, 0) <= ?)
                 OR (state = 'PLANNED' AND (attempts > 0 OR reopened_at IS NOT NULL))) THEN 'redo'
            WHEN bool_and(state IN ('PLANNED', 'SKIPPED_DUPLICATE') AND attempts = 0 AND reopened_at IS NULL)
                 THEN 'new'
            ELSE 'hold'
          END
        FROM artifact_jobs GROUP BY work_id
        """,
        [now, now],
    )
    return {str(r[0]): str(r[1]) for r in rows}


def finished_files(ledger: Ledger) -> list[tuple[str, str, int]]:
    """(work_id, sha256, bytes) of every finished work (one row per work: its first finished candidate)."""
    # (array_agg … ORDER BY)[1], not any_value: PostgreSQL has any_value only from version 16.
    rows = ledger.query(
        "SELECT work_id, (array_agg(sha256 ORDER BY candidate_rank))[1], (array_agg(bytes ORDER BY candidate_rank))[1] "
        f"FROM artifact_jobs WHERE state IN {COMPLETE_SQL} GROUP BY work_id ORDER BY work_id"
    )
    return [(str(r[0]), str(r[1]), int(r[2] or 0)) for r in rows]


# The outcomes a work is counted under, in the order reports list them.
OUTCOMES = ("stored", "deduplicated", "in_flight", "pending", "retrying", "failed")


def works_by_outcome(ledger: Ledger) -> dict[str, int]:
    """Works counted once each by outcome: stored, deduplicated, failed, retrying, pending."""
    # A work is counted under the best outcome of its jobs (`OUTCOMES` order): one small aggregate per
    # work. Five bool_or per work made DuckDB's table of a million works 30 MB larger and 40% slower.
    best = f"""CASE WHEN state = 'INDEXED' THEN 1 WHEN state = 'DEDUPED' THEN 2 WHEN state IN {IN_FLIGHT_SQL} THEN 3
                    WHEN state = 'PLANNED' THEN 4 WHEN state = 'FAILED' AND failure_class = 'transient' THEN 5
                    ELSE 6 END"""
    rows = ledger.query(
        f"SELECT best, count(*) FROM (SELECT min({best}) AS best FROM artifact_jobs GROUP BY work_id) per_work "
        "GROUP BY best"
    )
    return dict(sorted((OUTCOMES[int(rank) - 1], int(n)) for rank, n in rows))


def failed_jobs(ledger: Ledger) -> list[tuple[str, str, str, str, str]]:
    """Failed jobs of works with nothing finished or left to try: (work_id, job_id, the job's reason,
    its URL's host (the host that served a DOI's page), the work's reported reason: `WORK_REASON_SQL`)."""
    rows = ledger.query(
        f"""
        WITH failed_works AS (
            SELECT work_id, {WORK_REASON_SQL} AS work_reason
            FROM artifact_jobs
            GROUP BY work_id
            HAVING bool_or(state = 'FAILED')
               AND NOT bool_or(state IN {NOT_FAILED_SQL}))
        SELECT j.work_id, j.job_id, coalesce(j.last_reason, ''), coalesce(j.host, ''), coalesce(f.work_reason, '')
        FROM artifact_jobs j JOIN failed_works f USING (work_id)
        WHERE j.state = 'FAILED' ORDER BY j.work_id, j.candidate_rank
        """
    )
    return [(str(a), str(b), str(c), str(d), str(e)) for a, b, c, d, e in rows]


def finished_with_reference(
    ledger: Ledger, *, run_id: str | None = None
) -> list[tuple[str, str, str | None, str | None]]:
    """(work_id, file, doi, title) of finished artifacts (or those a run finished), for the right-paper check;
    the file is resolved under this home's store."""
    root = ledger.settings.store_dir
    sql = (
        "SELECT j.work_id, j.path, w.doi, w.title FROM artifact_jobs j JOIN works w USING (work_id) "
        f"WHERE j.state IN {COMPLETE_SQL}" + (" AND j.run_id = ?" if run_id else "") + " ORDER BY j.work_id"
    )
    return [(str(r[0]), str(resolve_store_path(str(r[1]), root)), r[2], r[3])
            for r in ledger.query(sql, [run_id] if run_id else [])]


def work_references(ledger: Ledger, work_ids: list[str]) -> dict[str, tuple[str | None, str | None]]:
    """work id -> (doi, title), for the right-paper check."""
    rows = ledger.query_keys("SELECT work_id, doi, title FROM works WHERE work_id IN (SELECT unnest($1))", work_ids)
    return {str(r[0]): (r[1], r[2]) for r in rows}


def yield_tables(ledger: Ledger) -> dict[str, list[dict[str, object]]]:
    """The yield views (issue 11) as lists of rows: by host, by candidate source, by how the PDF was found,
    and failures by reason."""
    return {name: ledger.query_dicts(f"SELECT * FROM {view}") for name, view in (
        ("by_host", "v_yield_hosts"), ("by_source", "v_yield_sources"), ("by_via", "v_yield_via"),
        ("failures", "v_yield_failures"))}


def work_results(ledger: Ledger) -> dict[str, tuple[bool, str | None]]:
    """work id -> (finished?, the work's reason: `WORK_REASON_SQL`), for comparing with expectations."""
    rows = ledger.query(
        f"SELECT work_id, bool_or(state IN {COMPLETE_SQL}), {WORK_REASON_SQL} FROM artifact_jobs GROUP BY work_id"
    )
    return {str(r[0]): (bool(r[1]), r[2]) for r in rows}


def input_problem_reasons(ledger: Ledger) -> dict[str, str]:
    """work id (or input line) -> the reason it was not imported."""
    return {str(r[0]): str(r[1]) for r in ledger.query("SELECT work_id, reason FROM input_problems")}


def jobs_of_works(ledger: Ledger, work_ids: Sequence[str]) -> list[tuple[str, str, str, str | None, int | None,
                                                                       str | None]]:
    """(job_id, work_id, state, sha256, bytes, last_reason) of the works' jobs, by work and candidate rank."""
    rows = ledger.query_keys(
        """
        SELECT job_id, work_id, state, sha256, bytes, last_reason FROM artifact_jobs
        WHERE work_id IN (SELECT unnest($1)) ORDER BY work_id, candidate_rank, job_id
        """,
        work_ids,
    )
    return [(str(r[0]), str(r[1]), str(r[2]), r[3], r[4], r[5]) for r in rows]


def finished_jobs_with_validators(ledger: Ledger) -> list[tuple[Any, ...]]:
    """(job_id, work_id, url, etag, last_modified, sha256, bytes) of finished jobs, by work, for
    revalidation: the URL is where the bytes came from (after redirects)."""
    return ledger.query(
        "SELECT job_id, work_id, coalesce(final_url, url), etag, last_modified, sha256, bytes "
        f"FROM artifact_jobs WHERE state IN {COMPLETE_SQL} ORDER BY work_id"
    )


def finished_jobs_by_blob(ledger: Ledger) -> list[tuple[Any, ...]]:
    """(job_id, work_id, sha256, path, bytes) of finished jobs, by blob, for reconciliation."""
    return ledger.query(
        f"SELECT job_id, work_id, sha256, path, bytes FROM artifact_jobs WHERE state IN {COMPLETE_SQL} "
        "ORDER BY sha256"
    )


def known_blobs(ledger: Ledger) -> set[str]:
    """The sha256 of every blob the ledger records."""
    return {str(r[0]) for r in ledger.query("SELECT sha256 FROM blobs")}


def blob_references(ledger: Ledger, sha256: str) -> int:
    """How many finished jobs name this blob."""
    rows = ledger.query(f"SELECT count(*) FROM artifact_jobs WHERE sha256 = ? AND state IN {COMPLETE_SQL}",
                        [sha256])
    return int(rows[0][0])


def leased_downloads(ledger: Ledger, now: float) -> list[tuple[str, str]]:
    """(work_id, url) of in-flight jobs whose lease has not expired: their parts are in use."""
    rows = ledger.query(
        f"SELECT work_id, url FROM artifact_jobs WHERE state IN {IN_FLIGHT_SQL} AND lease_expires_at > ?", [now]
    )
    return [(str(r[0]), str(r[1])) for r in rows]


def redirects_from_host_since(ledger: Ledger, host: str, since: float) -> int:
    """Redirects a host answered since `since` (epoch seconds): the content API's signed-URL grants."""
    rows = ledger.query(
        "SELECT count(*) FROM http_attempts WHERE host = ? AND started_at >= ? AND status BETWEEN 300 AND 399",
        [host, since],
    )
    return int(rows[0][0]) if rows else 0
