"""`dtkg ledger export --duckdb FILE`: a DuckDB file with the ledger's tables and views, for analysts.

From the PostgreSQL ledger: rows are read with psycopg (one repeatable-read, read-only transaction, so
every table is from the same moment; server-side cursors, in batches) and written with DuckDB's
list-parameter ``INSERT … SELECT unnest($1), unnest($2), …`` (a batch of 20,000 rows is one
statement). No DuckDB extension is involved: the postgres extension is a run-time download. The file
gets the DuckDB ledger's schema and views (`schema.migrate`), so the notebook and any duckdb client
read it exactly like a published snapshot. From the DuckDB ledger the published snapshot is copied.

The file is written beside its destination and renamed over it when complete.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import duckdb

from dtkg_assets.core.ledger import pg_schema, schema, storage
from dtkg_assets.core.ledger.schema import TABLES
from dtkg_assets.core.settings import Settings
from dtkg_assets.core.store import fsync_dir, fsync_file

BATCH_ROWS = 20_000


class ExportError(Exception):
    """The export could not be made (no ledger there, unreachable database): a sentence for the user."""


def export_duckdb(settings: Settings, target: Path | str) -> dict[str, Any]:
    """Write the ledger as a DuckDB file at `target`; returns {"path", "source", "rows": {table: n}, "seconds"}."""
    target = Path(target).expanduser().absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    started = time.perf_counter()
    try:
        if settings.ledger_is_postgres:
            rows = _from_postgres(settings.ledger.url, tmp)
            source = "postgresql"
        else:
            rows = _from_snapshot(settings, tmp)
            source = str(settings.snapshot_path)
        fsync_file(tmp)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(target), "source": source, "rows": rows, "seconds": round(time.perf_counter() - started, 3)}


def _from_snapshot(settings: Settings, tmp: Path) -> dict[str, int]:
    snap = settings.snapshot_path
    if not snap.is_file():
        raise ExportError(f"no published ledger snapshot at {snap} yet: run something that writes the ledger first")
    storage.copy_held(snap, tmp)
    con = duckdb.connect(str(tmp), read_only=True)
    try:
        return schema.row_counts(con)
    finally:
        con.close()


def _from_postgres(url: str, tmp: Path) -> dict[str, int]:
    import psycopg

    try:
        pg = psycopg.connect(url, connect_timeout=10)
    except psycopg.OperationalError as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ExportError(f"cannot reach the PostgreSQL ledger (DTKG_LEDGER_URL): {first}") from None
    duck = duckdb.connect(str(tmp))
    counts: dict[str, int] = {}
    try:
        schema.migrate(duck)  # the DuckDB ledger's tables and views, at the current version
        with pg.transaction():
            pg.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            if pg_schema.current_version(pg) == 0:
                raise ExportError("the database named by DTKG_LEDGER_URL holds no dtkg ledger (schema dtkg) yet")
            for table, cols in TABLES.items():
                have = set(pg_schema.columns(pg, table))
                pairs = [(c, typ) for c, typ in cols if c in have]
                names = [c for c, _ in pairs]
                json_cols = {i for i, (_, typ) in enumerate(pairs) if typ.split()[0] == "JSON"}
                counts[table] = _copy_table(pg, duck, table, names, json_cols)
        duck.execute("CHECKPOINT")
    finally:
        duck.close()
        pg.close()
    return counts


def _copy_table(pg: Any, duck: duckdb.DuckDBPyConnection, table: str, names: list[str], json_cols: set[int]) -> int:
    if not names:
        return 0
    select = f"SELECT {', '.join(names)} FROM {pg_schema.SCHEMA}.{table}"
    insert = (f"INSERT INTO {table} ({', '.join(names)}) SELECT "
              + ", ".join(f"unnest(${i + 1})" for i in range(len(names))))
    total = 0
    with pg.cursor(name=f"dtkg_export_{table}") as cur:
        cur.itersize = BATCH_ROWS
        cur.execute(select)
        while True:
            rows = cur.fetchmany(BATCH_ROWS)
            if not rows:
                break
            lists: list[list[Any]] = [list(col) for col in zip(*rows, strict=True)]
            for i in json_cols:
                lists[i] = [None if v is None else json.dumps(v) for v in lists[i]]
            duck.execute(insert, lists)
            total += len(rows)
    return total
