"""The ledger's analyst views, written once for both backends.

The SQL is the part DuckDB and PostgreSQL share (no ``GROUP BY ALL``, ``quantile_cont`` or
``json_extract_string``; integer ratios cast to ``numeric`` first, which DuckDB answers as ``DOUBLE``
and PostgreSQL as ``numeric``). `create_statements(prefix)` names the ledger's tables with `prefix`:
``""`` for a DuckDB file (`schema.VIEWS`), ``"dtkg."`` for the PostgreSQL schema (`pg_schema.VIEWS`).
"""

from __future__ import annotations

from dtkg_assets.core.ledger.states import COMPLETE_SQL as _COMPLETE
from dtkg_assets.core.ledger.states import IN_FLIGHT, State, sql_list

# Consistency of the rows, for `ledger health` on both backends: (count query, what a non-zero count
# means). {t} is the table prefix, as in the views.
DATA_CHECKS: tuple[tuple[str, str], ...] = (
    (f"SELECT count(*) FROM {{t}}artifact_jobs WHERE state NOT IN {sql_list(State)}", "jobs with an unknown state"),
    (f"SELECT count(*) FROM {{t}}artifact_jobs WHERE state IN {_COMPLETE} AND (sha256 IS NULL OR path IS NULL)",
     "complete jobs without sha256/path"),
    ("SELECT count(*) FROM {t}blobs WHERE ref_count < 0", "blobs with a negative ref_count"),
    (f"SELECT count(*) FROM {{t}}artifact_jobs WHERE state IN {sql_list(set(State) - IN_FLIGHT - {State.FAILED})} "
     "AND lease_owner IS NOT NULL", "jobs holding a lease outside the in-flight states"),
    (f"SELECT count(*) FROM {{t}}artifact_jobs WHERE state = '{State.FAILED}' AND failure_class IS NULL",
     "failed jobs without a failure class"),
)


def data_checks(prefix: str) -> list[tuple[str, str]]:
    return [(sql.format(t=prefix), label) for sql, label in DATA_CHECKS]

# {t} is the table prefix.
_VIEWS: dict[str, str] = {
    # One row per work: the job that decides the work's state (complete first, then in flight,
    # then failed; lower candidate rank first), with totals over all its candidates.
    "v_artifacts": f"""
        CREATE OR REPLACE VIEW {{t}}v_artifacts AS
        WITH ranked AS (
            SELECT j.*, row_number() OVER (
                PARTITION BY work_id ORDER BY
                  CASE WHEN state IN {_COMPLETE} THEN 0
                       WHEN state IN ('LEASED','HEAD_DONE','RESUME_OK','STREAMING','FINALIZED') THEN 1
                       WHEN state = 'PLANNED' THEN 2 WHEN state = 'FAILED' THEN 3 ELSE 4 END,
                  candidate_rank) AS rn,
              sum(attempts) OVER (PARTITION BY work_id) AS total_attempts,
              count(*) OVER (PARTITION BY work_id) AS candidates
            FROM {{t}}artifact_jobs j)
        SELECT w.work_id, w.doi, w.title, w.publication_year,
               coalesce(r.state, 'NO_JOB') AS state, r.state IN {_COMPLETE} AS complete,
               r.job_id, r.url, r.final_url, r.host, r.candidate_rank, r.candidates,
               r.sha256, r.path, r.bytes, r.total_attempts AS attempts, r.failure_class,
               r.last_reason AS reason, r.last_error, r.http_status, r.decision, r.resumed_from,
               r.elapsed_s,
               CASE WHEN r.elapsed_s > 0 THEN r.bytes / 1048576.0 / r.elapsed_s END AS mib_s,
               r.etag, r.last_modified, r.run_id,
               to_timestamp(r.finished_at) AS finished_at, to_timestamp(r.updated_at) AS updated_at
        FROM {{t}}works w LEFT JOIN ranked r ON r.work_id = w.work_id AND r.rn = 1
    """,
    "v_failures": """
        CREATE OR REPLACE VIEW {t}v_failures AS
        SELECT last_reason AS reason, failure_class, host, count(*) AS jobs,
               count(DISTINCT work_id) AS works, sum(attempts) AS attempts,
               to_timestamp(max(updated_at)) AS last_seen
        FROM {t}artifact_jobs WHERE state = 'FAILED'
        GROUP BY 1, 2, 3 ORDER BY jobs DESC, reason, host
    """,
    "v_hosts": """
        CREATE OR REPLACE VIEW {t}v_hosts AS
        SELECT host, count(*) AS requests, count(DISTINCT job_id) AS jobs,
               coalesce(sum(bytes), 0) AS bytes,
               count(*) FILTER (WHERE error IS NOT NULL OR status >= 400 OR status IS NULL) AS errors,
               round(count(*) FILTER (WHERE error IS NOT NULL OR status >= 400 OR status IS NULL)::numeric
                     / count(*), 4) AS error_rate,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY elapsed_s) AS p50_s,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY elapsed_s) AS p95_s,
               percentile_cont(0.99) WITHIN GROUP (ORDER BY elapsed_s) AS p99_s
        FROM {t}http_attempts GROUP BY host ORDER BY requests DESC
    """,
    "v_runs": f"""
        CREATE OR REPLACE VIEW {{t}}v_runs AS
        WITH per_run AS (
            SELECT run_id,
                   count(*) FILTER (WHERE state IN {_COMPLETE}) AS artifacts,
                   count(*) FILTER (WHERE state = 'DEDUPED') AS deduped,
                   count(*) FILTER (WHERE state = 'FAILED') AS failed,
                   coalesce(sum(bytes) FILTER (WHERE state = 'INDEXED'), 0) AS bytes
            FROM {{t}}artifact_jobs GROUP BY run_id)
        SELECT r.run_id, r.kind, r.owner, r.host, r.pid,
               to_timestamp(r.started_at) AS started_at, to_timestamp(r.finished_at) AS finished_at,
               r.finished_at - r.started_at AS elapsed_s,
               coalesce(p.artifacts, 0) AS artifacts, coalesce(p.deduped, 0) AS deduped,
               coalesce(p.failed, 0) AS failed, coalesce(p.bytes, 0) AS bytes,
               CASE WHEN r.finished_at > r.started_at
                    THEN coalesce(p.bytes, 0) / 1048576.0 / (r.finished_at - r.started_at) END AS mib_s,
               r.counts
        FROM {{t}}runs r LEFT JOIN per_run p USING (run_id)
        ORDER BY r.started_at
    """,
}

# Yield in the open (issue 11): success rates by host, by candidate source field and by how the PDF
# was found, and failures by reason. A job counts once it was tried (finished or failed); every column
# counts tried jobs only, so the views read only those (a million planned works cost nothing).
_TRIED = "state IN ('INDEXED', 'DEDUPED', 'FAILED')"
_YIELD_COLS = f"""
        count(*) FILTER (WHERE {_TRIED}) AS tried,
        count(*) FILTER (WHERE state IN {_COMPLETE}) AS stored,
        count(*) FILTER (WHERE state = 'FAILED') AS failed,
        round(count(*) FILTER (WHERE state IN {_COMPLETE})::numeric
              / nullif(count(*) FILTER (WHERE {_TRIED}), 0), 4) AS success_rate,
        count(DISTINCT work_id) FILTER (WHERE state IN {_COMPLETE}) AS works_stored"""
# Candidate source fields with their list positions folded: `locations[3].pdf_url` -> `locations[].pdf_url`.
_SOURCE = r"regexp_replace(coalesce(candidate_source, '(unknown)'), '\[\d+\]', '[]', 'g')"
_YIELD_VIEWS: dict[str, str] = {
    "v_yield_hosts": f"""
        CREATE OR REPLACE VIEW {{t}}v_yield_hosts AS
        SELECT host, {_YIELD_COLS}
        FROM {{t}}artifact_jobs WHERE {_TRIED} GROUP BY host
        ORDER BY tried DESC, host
    """,
    "v_yield_sources": f"""
        CREATE OR REPLACE VIEW {{t}}v_yield_sources AS
        SELECT {_SOURCE} AS source, {_YIELD_COLS}
        FROM {{t}}artifact_jobs WHERE {_TRIED} GROUP BY 1
        ORDER BY tried DESC, source
    """,
    # `result` is JSON in DuckDB and jsonb in PostgreSQL; `->>` with a key name reads a field in both.
    "v_yield_via": f"""
        CREATE OR REPLACE VIEW {{t}}v_yield_via AS
        SELECT coalesce(result ->> 'via', 'direct') AS via, count(*) AS stored,
               count(DISTINCT work_id) AS works,
               round(count(*) / sum(count(*)) OVER (), 4) AS share,
               coalesce(sum(bytes), 0) AS bytes
        FROM {{t}}artifact_jobs WHERE state IN {_COMPLETE}
        GROUP BY 1 ORDER BY stored DESC, via
    """,
    "v_yield_failures": f"""
        CREATE OR REPLACE VIEW {{t}}v_yield_failures AS
        SELECT last_reason AS reason, failure_class, {_SOURCE} AS source,
               count(*) AS jobs, count(DISTINCT work_id) AS works, count(DISTINCT host) AS hosts
        FROM {{t}}artifact_jobs WHERE state = 'FAILED'
        GROUP BY 1, 2, 3 ORDER BY jobs DESC, reason, source
    """,
}

NAMES: tuple[str, ...] = (*_VIEWS, *_YIELD_VIEWS)
YIELD_NAMES: tuple[str, ...] = tuple(_YIELD_VIEWS)
# The yield views whose definitions changed after they were first released (tried jobs only).
TRIED_ONLY_YIELD_NAMES: tuple[str, ...] = ("v_yield_hosts", "v_yield_sources")


def create_statements(prefix: str = "") -> dict[str, str]:
    """``CREATE OR REPLACE VIEW`` for every analyst view, by name, its tables named ``{prefix}table``."""
    return {name: sql.format(t=prefix) for name, sql in {**_VIEWS, **_YIELD_VIEWS}.items()}
