"""Read-only questions the automation asks of the ledger (sensors read them from the snapshot)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from dtkg_assets.core.ledger.db import Ledger
from dtkg_assets.core.store import resolve_store_path


def works_seen_since(ledger: Ledger, after: float, limit: int) -> list[tuple[str, float]]:
    """Works first seen at or after `after` (epoch seconds), oldest first: (work_id, first_seen)."""
    rows = ledger.query(
        "SELECT work_id, first_seen FROM works WHERE first_seen >= ? ORDER BY first_seen, work_id LIMIT ?",
        [after, limit],
    )
    return [(str(r[0]), float(r[1])) for r in rows]


def works_needing_work(ledger: Ledger, *, now: float | None = None, limit: int = 100_000) -> list[str]:
    """Works without a finished artifact that have something to do now: a planned candidate, a
    transient failure whose backoff has passed, or an in-flight job whose lease has expired."""
    now = time.time() if now is None else now
    rows = ledger.query(
        """
        SELECT work_id FROM artifact_jobs
        GROUP BY work_id
        HAVING count(*) FILTER (WHERE state IN ('INDEXED', 'DEDUPED')) = 0
           AND count(*) FILTER (
                WHERE state = 'PLANNED'
                   OR (state = 'FAILED' AND failure_class = 'transient' AND coalesce(next_eligible_at, 0) <= ?)
                   OR (state IN ('LEASED', 'HEAD_DONE', 'RESUME_OK', 'STREAMING', 'FINALIZED')
                       AND coalesce(lease_expires_at, 0) <= ?)
               ) > 0
        ORDER BY min(created_at), work_id
        LIMIT ?
        """,
        [now, now, limit],
    )
    return [str(r[0]) for r in rows]


def finished_artifacts(
    ledger: Ledger, *, run_id: str | None = None, work_ids: Sequence[str] | None = None
) -> list[tuple[str, str, str, int]]:
    """(work_id, sha256, file, bytes) of every finished artifact, or only those a run finished, or
    only those of the given works; the ledger's store-relative path is resolved under this home's store."""
    root = ledger.settings.store_dir
    sql = "SELECT work_id, sha256, path, bytes FROM artifact_jobs WHERE state IN ('INDEXED', 'DEDUPED')"
    params: list[object] = []
    if run_id:
        sql += " AND run_id = ?"
        params.append(run_id)
    if work_ids is not None:
        sql += " AND work_id IN (SELECT unnest(?))"
        params.append(list(work_ids))
    rows = ledger.query(sql + " ORDER BY work_id", params)
    return [(str(r[0]), str(r[1]), str(resolve_store_path(str(r[2]), root)), int(r[3] or 0)) for r in rows]


def summary(ledger: Ledger) -> dict[str, object]:
    """Totals per work for reports: finished, deduplicated, failed by reason, bytes, input problems."""
    states = dict(
        ledger.query(
            """
            WITH per_work AS (
                SELECT work_id,
                       CASE WHEN bool_or(state = 'INDEXED') THEN 'downloaded'
                            WHEN bool_or(state = 'DEDUPED') THEN 'deduplicated'
                            WHEN bool_and(state = 'FAILED' AND failure_class = 'permanent') THEN 'failed'
                            WHEN bool_or(state = 'FAILED') AND NOT bool_or(state = 'PLANNED') THEN 'retrying'
                            ELSE 'pending' END AS outcome
                FROM artifact_jobs GROUP BY work_id)
            SELECT outcome, count(*) FROM per_work GROUP BY outcome
            """
        )
    )
    failed_by_reason = ledger.query(
        """
        WITH last_fail AS (
            -- (array_agg … ORDER BY)[1]: arg_max in SQL both backends (DuckDB, PostgreSQL) speak.
            SELECT work_id, (array_agg(last_reason ORDER BY candidate_rank DESC))[1] AS reason FROM artifact_jobs
            GROUP BY work_id
            HAVING NOT bool_or(state IN ('INDEXED', 'DEDUPED', 'PLANNED')) AND bool_or(state = 'FAILED'))
        SELECT reason, count(*) FROM last_fail GROUP BY reason ORDER BY count(*) DESC, reason
        """
    )
    problems = ledger.query("SELECT reason, count(*) FROM input_problems GROUP BY reason ORDER BY reason")
    stored = ledger.query(
        "SELECT count(*), coalesce(sum(size), 0) FROM blobs"
    )[0]
    finished_bytes = ledger.query(
        "SELECT coalesce(sum(bytes), 0) FROM artifact_jobs WHERE state IN ('INDEXED', 'DEDUPED')"
    )[0][0]
    return {
        "works": int(ledger.query("SELECT count(*) FROM works")[0][0]),
        "by_outcome": {str(k): int(v) for k, v in states.items()},
        "failed_by_reason": {str(k): int(v) for k, v in failed_by_reason},
        "input_problems": {str(k): int(v) for k, v in problems},
        "blobs": int(stored[0]),
        "blob_bytes": int(stored[1]),
        "artifact_bytes": int(finished_bytes),
    }


def automation_view(ledger: Ledger, *, now: float | None = None) -> dict[str, str]:
    """Each work's class for automation: "complete", "redo" (reconciliation may request it: a
    transient failure whose backoff passed, an expired lease, a work reopened after it was tried or
    finished), "new" (never attempted: downloading it is the user's choice), or "hold" (permanent
    failure, backoff not passed, or in flight)."""
    now = time.time() if now is None else now
    rows = ledger.query(
        """
        SELECT work_id,
          CASE
            WHEN bool_or(state IN ('INDEXED', 'DEDUPED')) THEN 'complete'
            WHEN bool_or((state = 'FAILED' AND failure_class = 'transient' AND coalesce(next_eligible_at, 0) <= ?)
                 OR (state IN ('LEASED', 'HEAD_DONE', 'RESUME_OK', 'STREAMING', 'FINALIZED')
                     AND coalesce(lease_expires_at, 0) <= ?)
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
        "FROM artifact_jobs WHERE state IN ('INDEXED', 'DEDUPED') GROUP BY work_id ORDER BY work_id"
    )
    return [(str(r[0]), str(r[1]), int(r[2] or 0)) for r in rows]


def works_by_outcome(ledger: Ledger) -> dict[str, int]:
    """Works counted once each by outcome: stored, deduplicated, failed, retrying, pending."""
    rows = ledger.query(
        """
        WITH per_work AS (
            SELECT CASE WHEN bool_or(state = 'INDEXED') THEN 'stored'
                        WHEN bool_or(state = 'DEDUPED') THEN 'deduplicated'
                        WHEN bool_or(state IN ('LEASED','HEAD_DONE','RESUME_OK','STREAMING','FINALIZED'))
                             THEN 'in_flight'
                        WHEN bool_or(state = 'PLANNED') THEN 'pending'
                        WHEN bool_or(state = 'FAILED' AND failure_class = 'transient') THEN 'retrying'
                        ELSE 'failed' END AS outcome
            FROM artifact_jobs GROUP BY work_id)
        SELECT outcome, count(*) FROM per_work GROUP BY outcome ORDER BY outcome
        """
    )
    return {str(k): int(v) for k, v in rows}


def failed_jobs(ledger: Ledger) -> list[tuple[str, str, str, str, str]]:
    """Failed jobs of works with nothing finished or left to try: (work_id, job_id, the job's reason,
    its URL's host as planned, the work's reported reason: its last candidate's)."""
    rows = ledger.query(
        """
        WITH failed_works AS (
            -- (array_agg … ORDER BY)[1]: arg_max in SQL both backends (DuckDB, PostgreSQL) speak.
            SELECT work_id, (array_agg(last_reason ORDER BY candidate_rank DESC))[1] AS work_reason
            FROM artifact_jobs
            GROUP BY work_id
            HAVING bool_or(state = 'FAILED')
               AND NOT bool_or(state IN ('INDEXED', 'DEDUPED', 'PLANNED', 'LEASED', 'HEAD_DONE', 'RESUME_OK',
                                         'STREAMING', 'FINALIZED')))
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
        "WHERE j.state IN ('INDEXED', 'DEDUPED')" + (" AND j.run_id = ?" if run_id else "") + " ORDER BY j.work_id"
    )
    return [(str(r[0]), str(resolve_store_path(str(r[1]), root)), r[2], r[3])
            for r in ledger.query(sql, [run_id] if run_id else [])]


def work_references(ledger: Ledger, work_ids: list[str]) -> dict[str, tuple[str | None, str | None]]:
    """work id -> (doi, title), for the right-paper check."""
    if not work_ids:
        return {}
    rows = ledger.query("SELECT work_id, doi, title FROM works WHERE work_id IN (SELECT unnest(?))", [work_ids])
    return {str(r[0]): (r[1], r[2]) for r in rows}


def yield_tables(ledger: Ledger) -> dict[str, list[dict[str, object]]]:
    """The yield views (issue 11) as lists of rows: by host, by candidate source, by how the PDF was found,
    and failures by reason."""
    return {name: ledger.query_dicts(f"SELECT * FROM {view}") for name, view in (
        ("by_host", "v_yield_hosts"), ("by_source", "v_yield_sources"), ("by_via", "v_yield_via"),
        ("failures", "v_yield_failures"))}
