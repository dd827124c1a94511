"""The ledger's tables in PostgreSQL (schema ``dtkg``): the same tables and columns as the DuckDB
ledger (`schema.TABLES`), types mapped, with forward-only migrations of their own.

Each PostgreSQL migration brings the tables up to `schema.TABLES` with ``CREATE TABLE IF NOT EXISTS``
and ``ADD COLUMN IF NOT EXISTS`` (idempotent, never dropping anything); a DuckDB migration that adds a
table or a column gets a PostgreSQL entry here that runs the same sync. The analyst views are the
DuckDB ledger's, written once in `views` in SQL both understand (migrations 2 and 3 create them here);
`dtkg ledger export --duckdb` builds the DuckDB ones in the exported file.
"""

from __future__ import annotations

import time
import zlib
from typing import Any

from dtkg_assets.core.ledger import views
from dtkg_assets.core.ledger.schema import SEQUENCES, TABLES

SCHEMA = "dtkg"
_ADVISORY_CLASS = 0x64746B  # "dtk": the first key of every advisory lock dtkg takes
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


# The analyst views (core/ledger/views.py, the same SQL as the DuckDB ones), tables in schema dtkg.
VIEWS: dict[str, str] = views.create_statements(f"{SCHEMA}.")

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


_V2_VIEWS = ("v_artifacts", "v_failures", "v_hosts", "v_runs")


def _v2(con: Any) -> None:
    for name in _V2_VIEWS:
        con.execute(VIEWS[name])
    con.execute(_JSON_VALID)


def _v3(con: Any) -> None:
    for name in views.YIELD_NAMES:
        con.execute(VIEWS[name])


def _v4(con: Any) -> None:
    for name in views.TRIED_ONLY_YIELD_NAMES:
        con.execute(VIEWS[name])


# Forward-only: append (version, description, function); never edit applied ones.
MIGRATIONS: list[tuple[int, str, Any]] = [
    (1, "ledger tables as in the DuckDB ledger (works, jobs, ops, blobs, attempts, runs, versions)", _sync_tables),
    (2, "analyst views (v_artifacts, v_failures, v_hosts, v_runs) and json_valid, as in DuckDB", _v2),
    (3, "yield views (v_yield_hosts, v_yield_sources, v_yield_via, v_yield_failures), as in DuckDB", _v3),
    (4, "yield views by host and by source read only tried jobs, as in DuckDB", _v4),
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


def advisory_xact_lock(con: Any, name: str) -> None:
    """Take the transaction-scoped advisory lock for `name` (waits for whoever holds it): how every
    dtkg process on every host serializes a step (migrations, DDL, a robots.txt fetch, a batch choice)."""
    con.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_ADVISORY_CLASS, zlib.crc32(name.encode()) & 0x7FFFFFFF])


def migrate(con: Any) -> list[int]:
    """Apply pending migrations (one transaction, serialized across processes by an advisory lock)."""
    applied: list[int] = []
    with con.transaction():
        advisory_xact_lock(con, "ledger-migrate")
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
