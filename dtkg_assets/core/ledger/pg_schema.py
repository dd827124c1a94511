"""The ledger's tables in PostgreSQL (schema ``dtkg``): the same tables and columns as the DuckDB
ledger (`schema.TABLES`), types mapped, with forward-only migrations of their own.

Each PostgreSQL migration brings the tables up to `schema.TABLES` with ``CREATE TABLE IF NOT EXISTS``
and ``ADD COLUMN IF NOT EXISTS`` (idempotent, never dropping anything); a DuckDB migration that adds a
table or a column gets a PostgreSQL entry here that runs the same sync. Analyst views are not kept in
PostgreSQL in the DuckDB dialect; migration 2 creates PostgreSQL versions of them (same names and
columns), and `dtkg ledger export --duckdb` builds the DuckDB ones in the exported file.
"""

from __future__ import annotations

import time
import zlib
from typing import Any

from dtkg_assets.core.ledger.schema import SEQUENCES, TABLES

SCHEMA = "dtkg"
_ADVISORY_CLASS = 0x64746B  # the same first key as core.fleet's locks
_MIGRATE_LOCK = zlib.crc32(b"ledger-migrate") & 0x7FFFFFFF
_TYPES = {"VARCHAR": "TEXT", "DOUBLE": "DOUBLE PRECISION", "JSON": "JSONB", "BIGINT": "BIGINT",
          "INTEGER": "INTEGER", "BOOLEAN": "BOOLEAN"}

# Lookups the PostgreSQL write path needs (PostgreSQL updates indexes cheaply, unlike DuckDB).
INDEXES: dict[str, str] = {
    "idx_jobs_work": f"CREATE INDEX IF NOT EXISTS idx_jobs_work ON {SCHEMA}.artifact_jobs(work_id)",
    "idx_jobs_state": f"CREATE INDEX IF NOT EXISTS idx_jobs_state ON {SCHEMA}.artifact_jobs(state, next_eligible_at)",
    "idx_ops_job": f"CREATE INDEX IF NOT EXISTS idx_ops_job ON {SCHEMA}.artifact_ops(job_id)",
    "idx_attempts_job": f"CREATE INDEX IF NOT EXISTS idx_attempts_job ON {SCHEMA}.http_attempts(job_id)",
}


def pg_type(duck: str) -> str:
    """A DuckDB column type with constraints (``VARCHAR NOT NULL DEFAULT 'pdf'``) in PostgreSQL terms."""
    base, _, rest = duck.partition(" ")
    rest = rest.replace("nextval('", f"nextval('{SCHEMA}.")
    if base == "JSON":
        rest = rest.replace("DEFAULT '{}'", "DEFAULT '{}'::jsonb")
    return f"{_TYPES.get(base, base)} {rest}".strip()


def _sync_tables(con: Any) -> None:
    for name in SEQUENCES:
        con.execute(f"CREATE SEQUENCE IF NOT EXISTS {SCHEMA}.{name}")
    for table, cols in TABLES.items():
        body = ", ".join(f"{col} {pg_type(typ)}" for col, typ in cols)
        con.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.{table} ({body})")
        for col, typ in cols:
            # Constraints cannot be added to existing rows this way; the bare type keeps every row.
            con.execute(f"ALTER TABLE {SCHEMA}.{table} ADD COLUMN IF NOT EXISTS {col} {pg_type(typ.split()[0])}")
    for sql in INDEXES.values():
        con.execute(sql)


_COMPLETE = "('INDEXED', 'DEDUPED')"

# The analyst views in PostgreSQL terms (same names and columns as the DuckDB ones), so commands and
# ad-hoc queries that read them work on either backend. The DuckDB export builds its own.
VIEWS: dict[str, str] = {
    "v_artifacts": f"""
        CREATE OR REPLACE VIEW {SCHEMA}.v_artifacts AS
        WITH ranked AS (
            SELECT j.*, row_number() OVER (
                PARTITION BY work_id ORDER BY
                  CASE WHEN state IN {_COMPLETE} THEN 0
                       WHEN state IN ('LEASED','HEAD_DONE','RESUME_OK','STREAMING','FINALIZED') THEN 1
                       WHEN state = 'PLANNED' THEN 2 WHEN state = 'FAILED' THEN 3 ELSE 4 END,
                  candidate_rank) AS rn,
              sum(attempts) OVER (PARTITION BY work_id) AS total_attempts,
              count(*) OVER (PARTITION BY work_id) AS candidates
            FROM {SCHEMA}.artifact_jobs j)
        SELECT w.work_id, w.doi, w.title, w.publication_year,
               coalesce(r.state, 'NO_JOB') AS state, r.state IN {_COMPLETE} AS complete,
               r.job_id, r.url, r.final_url, r.host, r.candidate_rank, r.candidates,
               r.sha256, r.path, r.bytes, r.total_attempts AS attempts, r.failure_class,
               r.last_reason AS reason, r.last_error, r.http_status, r.decision, r.resumed_from,
               r.elapsed_s,
               CASE WHEN r.elapsed_s > 0 THEN r.bytes / 1048576.0 / r.elapsed_s END AS mib_s,
               r.etag, r.last_modified, r.run_id,
               to_timestamp(r.finished_at) AS finished_at, to_timestamp(r.updated_at) AS updated_at
        FROM {SCHEMA}.works w LEFT JOIN ranked r ON r.work_id = w.work_id AND r.rn = 1
    """,
    "v_failures": f"""
        CREATE OR REPLACE VIEW {SCHEMA}.v_failures AS
        SELECT last_reason AS reason, failure_class, host, count(*) AS jobs,
               count(DISTINCT work_id) AS works, sum(attempts) AS attempts,
               to_timestamp(max(updated_at)) AS last_seen
        FROM {SCHEMA}.artifact_jobs WHERE state = 'FAILED'
        GROUP BY 1, 2, 3 ORDER BY jobs DESC, reason, host
    """,
    "v_hosts": f"""
        CREATE OR REPLACE VIEW {SCHEMA}.v_hosts AS
        SELECT host, count(*) AS requests, count(DISTINCT job_id) AS jobs,
               coalesce(sum(bytes), 0) AS bytes,
               count(*) FILTER (WHERE error IS NOT NULL OR status >= 400 OR status IS NULL) AS errors,
               round(count(*) FILTER (WHERE error IS NOT NULL OR status >= 400 OR status IS NULL)::numeric
                     / count(*), 4) AS error_rate,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY elapsed_s) AS p50_s,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY elapsed_s) AS p95_s,
               percentile_cont(0.99) WITHIN GROUP (ORDER BY elapsed_s) AS p99_s
        FROM {SCHEMA}.http_attempts GROUP BY host ORDER BY requests DESC
    """,
    "v_runs": f"""
        CREATE OR REPLACE VIEW {SCHEMA}.v_runs AS
        WITH per_run AS (
            SELECT run_id,
                   count(*) FILTER (WHERE state IN {_COMPLETE}) AS artifacts,
                   count(*) FILTER (WHERE state = 'DEDUPED') AS deduped,
                   count(*) FILTER (WHERE state = 'FAILED') AS failed,
                   coalesce(sum(bytes) FILTER (WHERE state = 'INDEXED'), 0) AS bytes
            FROM {SCHEMA}.artifact_jobs GROUP BY run_id)
        SELECT r.run_id, r.kind, r.owner, r.host, r.pid,
               to_timestamp(r.started_at) AS started_at, to_timestamp(r.finished_at) AS finished_at,
               r.finished_at - r.started_at AS elapsed_s,
               coalesce(p.artifacts, 0) AS artifacts, coalesce(p.deduped, 0) AS deduped,
               coalesce(p.failed, 0) AS failed, coalesce(p.bytes, 0) AS bytes,
               CASE WHEN r.finished_at > r.started_at
                    THEN coalesce(p.bytes, 0) / 1048576.0 / (r.finished_at - r.started_at) END AS mib_s,
               r.counts
        FROM {SCHEMA}.runs r LEFT JOIN per_run p USING (run_id)
        ORDER BY r.started_at
    """,
}

# DuckDB's json_valid, so the same ad-hoc checks run on both backends.
_JSON_VALID = f"""
    CREATE OR REPLACE FUNCTION {SCHEMA}.json_valid(doc text) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
    BEGIN
        PERFORM doc::jsonb;
        RETURN true;
    EXCEPTION WHEN others THEN
        RETURN false;
    END $$
"""


def _views(con: Any) -> None:
    for sql in VIEWS.values():
        con.execute(sql)
    con.execute(_JSON_VALID)


# Forward-only: append (version, description, function); never edit applied ones.
MIGRATIONS: list[tuple[int, str, Any]] = [
    (1, "ledger tables as in the DuckDB ledger (works, jobs, ops, blobs, attempts, runs, versions)", _sync_tables),
    (2, "analyst views (v_artifacts, v_failures, v_hosts, v_runs) and json_valid, as in DuckDB", _views),
]
LATEST = MIGRATIONS[-1][0]


def restore(con: Any) -> None:
    """Every object the latest schema has, re-created where missing (idempotent, keeps all rows)."""
    _sync_tables(con)
    _views(con)


def current_version(con: Any) -> int:
    row = con.execute(f"SELECT to_regclass('{SCHEMA}.schema_version')").fetchone()
    if row is None or row[0] is None:
        return 0
    row = con.execute(f"SELECT max(version) FROM {SCHEMA}.schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def migrate(con: Any) -> list[int]:
    """Apply pending migrations (one transaction, serialized across processes by an advisory lock)."""
    applied: list[int] = []
    with con.transaction():
        con.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_ADVISORY_CLASS, _MIGRATE_LOCK])
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        con.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_version "
                    "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION, description TEXT)")
        version = current_version(con)
        for number, description, fn in MIGRATIONS:
            if number <= version:
                continue
            fn(con)
            con.execute(f"INSERT INTO {SCHEMA}.schema_version VALUES (%s, %s, %s)", [number, time.time(), description])
            applied.append(number)
    return applied


def columns(con: Any, table: str) -> list[str]:
    rows = con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
        "ORDER BY ordinal_position", [SCHEMA, table]).fetchall()
    return [r[0] for r in rows]
