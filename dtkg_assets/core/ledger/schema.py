"""Ledger schema: forward-only migrations, validation, non-destructive repair, health.

Times are stored as DOUBLE seconds since the epoch (cheap to compare, easy to inject in tests);
the views expose them as timestamps for analysts. Repair only ever *adds* (missing tables,
columns, indexes, views); it never drops or rewrites rows, and records each action in
`maintenance_log`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import duckdb

from dtkg_assets.core.ledger import views
from dtkg_assets.core.ledger.states import COMPLETE_SQL

Column = tuple[str, str]  # (name, type with constraints)

TABLES: dict[str, list[Column]] = {
    "works": [
        ("work_id", "VARCHAR PRIMARY KEY"),
        ("doi", "VARCHAR"),
        ("title", "VARCHAR"),
        ("publication_year", "INTEGER"),
        ("candidates", "JSON"),
        ("origin", "VARCHAR"),
        ("raw", "JSON"),
        ("first_seen", "DOUBLE"),
        ("last_seen", "DOUBLE"),
    ],
    "input_problems": [
        ("origin", "VARCHAR"),
        ("line", "INTEGER"),
        ("work_id", "VARCHAR"),
        ("reason", "VARCHAR"),
        ("detail", "VARCHAR"),
        ("recorded_at", "DOUBLE"),
    ],
    "artifact_jobs": [
        ("job_id", "VARCHAR PRIMARY KEY"),
        ("idempotency_key", "VARCHAR NOT NULL UNIQUE"),
        ("work_id", "VARCHAR NOT NULL"),
        ("artifact", "VARCHAR NOT NULL DEFAULT 'pdf'"),
        ("url", "VARCHAR NOT NULL"),
        ("host", "VARCHAR"),
        ("candidate_rank", "INTEGER"),
        ("candidate_source", "VARCHAR"),
        ("state", "VARCHAR NOT NULL"),
        ("lease_owner", "VARCHAR"),
        ("lease_expires_at", "DOUBLE"),
        ("fencing_token", "BIGINT NOT NULL DEFAULT 0"),
        ("attempts", "INTEGER NOT NULL DEFAULT 0"),
        ("failure_class", "VARCHAR"),
        ("last_error", "VARCHAR"),
        ("last_reason", "VARCHAR"),
        ("next_eligible_at", "DOUBLE"),
        ("sha256", "VARCHAR"),
        ("path", "VARCHAR"),
        ("bytes", "BIGINT"),
        ("final_url", "VARCHAR"),
        ("http_status", "INTEGER"),
        ("decision", "VARCHAR"),
        ("resumed_from", "BIGINT"),
        ("elapsed_s", "DOUBLE"),
        ("etag", "VARCHAR"),
        ("last_modified", "VARCHAR"),
        ("result", "JSON"),
        ("created_at", "DOUBLE"),
        ("updated_at", "DOUBLE"),
        ("finished_at", "DOUBLE"),
        ("reopened_at", "DOUBLE"),  # last explicit requeue: ops finished before it run again
        ("run_id", "VARCHAR"),
    ],
    "artifact_ops": [
        ("op_key", "VARCHAR PRIMARY KEY"),
        ("job_id", "VARCHAR NOT NULL"),
        ("op_type", "VARCHAR NOT NULL"),
        ("effect_key", "VARCHAR"),
        ("started_at", "DOUBLE"),
        ("finished_at", "DOUBLE"),
        ("owner", "VARCHAR"),
        ("fencing_token", "BIGINT"),
        ("runs", "INTEGER NOT NULL DEFAULT 1"),
        ("result_code", "VARCHAR"),
        ("result_json", "JSON NOT NULL DEFAULT '{}'"),
    ],
    "blobs": [
        ("sha256", "VARCHAR PRIMARY KEY"),
        ("path", "VARCHAR NOT NULL"),
        ("size", "BIGINT NOT NULL"),
        ("ref_count", "INTEGER NOT NULL DEFAULT 0"),
        ("created_at", "DOUBLE"),
        ("verified_at", "DOUBLE"),
    ],
    "http_attempts": [
        ("id", "BIGINT DEFAULT nextval('http_attempts_id_seq')"),
        ("job_id", "VARCHAR"),
        ("run_id", "VARCHAR"),
        ("method", "VARCHAR"),
        ("url", "VARCHAR"),
        ("host", "VARCHAR"),
        ("status", "INTEGER"),
        ("bytes", "BIGINT"),
        ("elapsed_s", "DOUBLE"),
        ("error", "VARCHAR"),
        ("started_at", "DOUBLE"),
    ],
    "runs": [
        ("run_id", "VARCHAR PRIMARY KEY"),
        ("kind", "VARCHAR"),
        ("owner", "VARCHAR"),
        ("host", "VARCHAR"),
        ("pid", "INTEGER"),
        ("started_at", "DOUBLE"),
        ("finished_at", "DOUBLE"),
        ("counts", "JSON"),
    ],
    "work_versions": [
        ("work_id", "VARCHAR NOT NULL"),
        ("url", "VARCHAR"),
        ("sha256", "VARCHAR"),
        ("etag", "VARCHAR"),
        ("last_modified", "VARCHAR"),
        ("bytes", "BIGINT"),
        ("recorded_at", "DOUBLE"),
    ],
    "maintenance_log": [
        ("logged_at", "DOUBLE"),
        ("action", "VARCHAR"),
        ("object", "VARCHAR"),
        ("detail", "VARCHAR"),
    ],
}

# The indexes a current ledger has (validate reports, repair restores these). Only lookups by
# work and by job: DuckDB rewrites an index entry (delete + insert) on every update of an indexed
# column, so indexes on state, next_eligible_at or lease_expires_at made every state write about
# twice as expensive, while the scans they served (pending work, expired leases) are fast columnar
# scans anyway. Migration 2 drops them.
INDEXES: dict[str, str] = {
    "idx_jobs_work": "CREATE INDEX IF NOT EXISTS idx_jobs_work ON artifact_jobs(work_id)",
    "idx_ops_job": "CREATE INDEX IF NOT EXISTS idx_ops_job ON artifact_ops(job_id)",
}

# What migration 1 created (frozen: applied migrations never change).
_V1_INDEXES: tuple[str, ...] = (
    "CREATE INDEX IF NOT EXISTS idx_jobs_state_eligible ON artifact_jobs(state, next_eligible_at)",
    "CREATE INDEX IF NOT EXISTS idx_jobs_lease ON artifact_jobs(lease_expires_at)",
    INDEXES["idx_jobs_work"],
    INDEXES["idx_ops_job"],
)

_COMPLETE = COMPLETE_SQL  # the views (views.py) take the same set

# The analyst views (core/ledger/views.py, shared with the PostgreSQL ledger), tables named bare.
VIEWS: dict[str, str] = views.create_statements()
YIELD_VIEWS: dict[str, str] = {name: VIEWS[name] for name in views.YIELD_NAMES}


def _create_table_sql(name: str) -> str:
    cols = ", ".join(f"{col} {typ}" for col, typ in TABLES[name])
    return f"CREATE TABLE IF NOT EXISTS {name} ({cols})"


SEQUENCES: dict[str, str] = {
    "http_attempts_id_seq": "CREATE SEQUENCE IF NOT EXISTS http_attempts_id_seq",
}


def _v1(con: duckdb.DuckDBPyConnection) -> None:
    for sql in SEQUENCES.values():
        con.execute(sql)
    for name in TABLES:
        con.execute(_create_table_sql(name))
    for sql in _V1_INDEXES:
        con.execute(sql)
    for sql in VIEWS.values():
        con.execute(sql)


def _v2(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("DROP INDEX IF EXISTS idx_jobs_state_eligible")
    con.execute("DROP INDEX IF EXISTS idx_jobs_lease")


def _v3(con: duckdb.DuckDBPyConnection) -> None:
    # Absolute paths die with a moved home. Every path the ledger holds is a blob
    # (`<store>/<sha[:w]>/<sha>.pdf`) or a work file (`<store>/works/<id>.pdf`): its last two
    # components are its path relative to the store root, wherever the home was then.
    for table in ("artifact_jobs", "blobs"):
        con.execute(f"UPDATE {table} SET path = regexp_extract(path, '([^/]+/[^/]+)$', 1) WHERE path LIKE '/%'")


def _v4(con: duckdb.DuckDBPyConnection) -> None:
    # How each PDF was found (`via`) is in the job's result JSON, written by every backend already.
    for sql in YIELD_VIEWS.values():
        con.execute(sql)


def _v5(con: duckdb.DuckDBPyConnection) -> None:
    for name in views.TRIED_ONLY_YIELD_NAMES:
        con.execute(VIEWS[name])


# Forward-only: append new (version, description, function) entries; never edit applied ones.
MIGRATIONS: list[tuple[int, str, Any]] = [
    (1, "initial ledger: works, jobs, ops, blobs, attempts, runs, versions, views", _v1),
    (2, "drop the state/eligibility and lease-expiry indexes (each state write rewrote them)", _v2),
    (3, "store paths relative to the store root (a home can be moved or copied)", _v3),
    (4, "yield views: by host, by candidate source field, by how the PDF was found (result.via), failures", _v4),
    (5, "yield views by host and by source read only tried jobs (the same rows, without scanning planned ones)", _v5),
]
LATEST = MIGRATIONS[-1][0]

_VERSION_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at DOUBLE, description VARCHAR)"
)


def first_row(cur: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None) -> tuple[Any, ...] | None:
    """The first row of a query, with the result read to its end.

    `fetchone()` leaves the result open, and with it the statement's read transaction: on a
    connection that runs nothing after it (the writer's root connection after `migrate`) that
    transaction stays open for the process's life and every later CHECKPOINT fails with "other
    write transactions active". Reading the result to its end closes it.
    """
    rows = cur.execute(sql, params or []).fetchall()
    return rows[0] if rows else None


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    if "schema_version" not in _tables(con):
        return 0
    row = first_row(con, "SELECT max(version) FROM schema_version")
    return int(row[0]) if row and row[0] is not None else 0


def migrate(con: duckdb.DuckDBPyConnection) -> list[int]:
    """Apply pending migrations, each in its own transaction. Returns the versions applied."""
    con.execute(_VERSION_DDL)
    applied: list[int] = []
    for version, description, fn in MIGRATIONS:
        if version <= current_version(con):
            continue
        con.execute("BEGIN")
        try:
            fn(con)
            con.execute("INSERT INTO schema_version VALUES (?, ?, ?)", [version, time.time(), description])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        applied.append(version)
    return applied


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    rows = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() AND schema_name = 'main'"
    ).fetchall()
    return {r[0] for r in rows}


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    rows = con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE database_name = current_database() AND table_name = ?",
        [table],
    ).fetchall()
    return {r[0] for r in rows}


def _sequences(con: duckdb.DuckDBPyConnection) -> set[str]:
    rows = con.execute(
        "SELECT sequence_name FROM duckdb_sequences() WHERE database_name = current_database()"
    ).fetchall()
    return {r[0] for r in rows}


def _indexes(con: duckdb.DuckDBPyConnection) -> set[str]:
    rows = con.execute("SELECT index_name FROM duckdb_indexes() WHERE database_name = current_database()").fetchall()
    return {r[0] for r in rows}


def _views(con: duckdb.DuckDBPyConnection) -> set[str]:
    rows = con.execute(
        "SELECT view_name FROM duckdb_views() WHERE database_name = current_database() AND NOT internal"
    ).fetchall()
    return {r[0] for r in rows}


def schema_problems(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Structural problems: version, missing tables/columns/indexes/views, broken views."""
    problems: list[str] = []
    version = current_version(con)
    if version != LATEST:
        problems.append(f"schema version is {version}, expected {LATEST}")
    tables = _tables(con)
    for name, cols in TABLES.items():
        if name not in tables:
            problems.append(f"missing table {name}")
            continue
        have = _columns(con, name)
        problems.extend(f"missing column {name}.{col}" for col, _ in cols if col not in have)
    sequences = _sequences(con)
    problems.extend(f"missing sequence {name}" for name in SEQUENCES if name not in sequences)
    indexes = _indexes(con)
    problems.extend(f"missing index {name}" for name in INDEXES if name not in indexes)
    views = _views(con)
    for name in VIEWS:
        if name not in views:
            problems.append(f"missing view {name}")
            continue
        try:
            con.execute(f"SELECT * FROM {name} LIMIT 0").fetchall()
        except duckdb.Error as exc:
            problems.append(f"broken view {name}: {exc}")
    return problems


def data_problems(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Consistency problems in the rows (only checked when the structure is sound)."""
    checks: Sequence[tuple[str, str]] = (
        *views.data_checks(""),
        ("SELECT count(*) FROM artifact_ops WHERE NOT json_valid(result_json::VARCHAR)", "ops with invalid JSON"),
    )
    problems: list[str] = []
    for sql, label in checks:
        row = first_row(con, sql)
        n = int(row[0]) if row else 0
        if n:
            problems.append(f"{n} {label}")
    return problems


def validate(con: duckdb.DuckDBPyConnection) -> list[str]:
    problems = schema_problems(con)
    if not problems:
        problems = data_problems(con)
    return problems


def repair(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Restore missing objects without dropping or rewriting data. Returns the actions taken."""
    actions: list[str] = []
    migrate(con)  # brings an empty or old file to the latest version first
    sequences = _sequences(con)
    for name, sql in SEQUENCES.items():
        if name not in sequences:
            # Restart past the existing ids so new rows never reuse one.
            top = first_row(con, "SELECT coalesce(max(id), 0) + 1 FROM http_attempts") if (
                "http_attempts" in _tables(con) and "id" in _columns(con, "http_attempts")) else (1,)
            con.execute(f"{sql} START {int(top[0]) if top else 1}")
            actions.append(f"created sequence {name}")
    tables = _tables(con)
    for name, cols in TABLES.items():
        if name not in tables:
            con.execute(_create_table_sql(name))
            actions.append(f"created table {name}")
            continue
        have = _columns(con, name)
        for col, typ in cols:
            if col not in have:
                # Constraints cannot be added to existing rows; the bare type keeps every row.
                bare = typ.split()[0]
                con.execute(f"ALTER TABLE {name} ADD COLUMN {col} {bare}")
                actions.append(f"added column {name}.{col}")
    indexes = _indexes(con)
    for name, sql in INDEXES.items():
        if name not in indexes:
            con.execute(sql)
            actions.append(f"created index {name}")
    views = _views(con)
    for name, sql in VIEWS.items():
        broken = name not in views
        if not broken:
            try:
                con.execute(f"SELECT * FROM {name} LIMIT 0").fetchall()
            except duckdb.Error:
                broken = True
        if broken:
            con.execute(sql)  # views hold no data: CREATE OR REPLACE is safe
            actions.append(f"recreated view {name}")
    now = time.time()
    for action in actions:
        verb, _, obj = action.partition(" ")
        con.execute("INSERT INTO maintenance_log VALUES (?, ?, ?, ?)", [now, "repair", obj, action])
    return actions


def row_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    counts: dict[str, int] = {}
    tables = _tables(con)
    for name in TABLES:
        if name in tables:
            row = first_row(con, f"SELECT count(*) FROM {name}")
            counts[name] = int(row[0]) if row else 0
    return counts


def health(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """status: healthy (no problems) | degraded (data problems) | unhealthy (structure broken)."""
    structural = schema_problems(con)
    problems = structural or data_problems(con)
    status = "unhealthy" if structural else ("degraded" if problems else "healthy")
    return {
        "status": status,
        "version": current_version(con),
        "expected_version": LATEST,
        "row_counts": row_counts(con),
        "problems": problems,
    }
