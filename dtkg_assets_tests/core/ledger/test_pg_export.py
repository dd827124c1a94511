"""`dtkg ledger export --duckdb FILE` from a PostgreSQL ledger: the same tables, rows and views as the
DuckDB ledger they came from, built without DuckDB extensions, and the analyst notebook runs on it.

The PostgreSQL ledger is filled from the DuckDB ledger a real `dtkg demo` run leaves, copied row by row
with PostgreSQL's COPY, so the comparison is exact.
"""

from __future__ import annotations

import json
import math
import subprocess
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest

from dtkg_assets.cli.status import status_report
from dtkg_assets.core.ledger import pg_schema
from dtkg_assets.core.ledger.schema import TABLES, VIEWS
from dtkg_assets.core.settings import Settings
from dtkg_assets_tests.support.demo_home import DTKG, DemoHome, demo_env

JSON_COLS = {t: {c for c, typ in cols if typ.split()[0] == "JSON"} for t, cols in TABLES.items()}


@pytest.fixture(scope="module")
def demo_home(demo_template: DemoHome) -> Path:
    """The session's demo home, read only here (its snapshot is the source of every comparison)."""
    return demo_template.home


def load_into_postgres(snapshot: Path, url: str) -> dict[str, int]:
    """Copy every ledger table of a DuckDB file into the PostgreSQL ledger schema."""
    counts = {}
    src = duckdb.connect(str(snapshot), read_only=True)
    try:
        with psycopg.connect(url, autocommit=True) as pg:
            pg_schema.migrate(pg)
            for table, cols in TABLES.items():
                names = [c for c, _ in cols]
                rows = src.execute(f"SELECT {', '.join(names)} FROM {table}").fetchall()
                with pg.cursor() as cur, cur.copy(
                        f"COPY {pg_schema.SCHEMA}.{table} ({', '.join(names)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                counts[table] = len(rows)
    finally:
        src.close()
    return counts


def table_rows(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[Any, ...]]:
    names = [c for c, _ in TABLES[table]]
    out = []
    for row in con.execute(f"SELECT {', '.join(names)} FROM {table}").fetchall():
        # JSON compares as data: jsonb does not keep key order or spacing.
        out.append(tuple(json.loads(v) if n in JSON_COLS[table] and v is not None else v
                         for n, v in zip(names, row, strict=True)))
    return sorted(out, key=repr)


def test_export_from_postgres_has_the_same_tables_rows_and_views(demo_home: Path, pg_url: str, tmp_path: Path) -> None:
    original = demo_home / "ledger.snapshot.duckdb"
    loaded = load_into_postgres(original, pg_url)
    assert loaded["works"] > 0 and loaded["artifact_jobs"] > 0 and loaded["http_attempts"] > 0
    target = tmp_path / "analyst" / "ledger.duckdb"
    env = {**demo_env(tmp_path / "worker-home"), "DTKG_LEDGER_URL": pg_url}
    proc = subprocess.run([str(DTKG), "ledger", "export", "--duckdb", str(target), "--json"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["source"] == "postgresql" and summary["rows"] == loaded
    a, b = duckdb.connect(str(original), read_only=True), duckdb.connect(str(target), read_only=True)
    try:
        for table in TABLES:
            assert table_rows(b, table) == table_rows(a, table), table
        for view in VIEWS:
            if view == "v_runs":  # carries the counts JSON: compared through runs above
                continue
            assert sorted(b.execute(f"SELECT * FROM {view}").fetchall(), key=repr) == \
                sorted(a.execute(f"SELECT * FROM {view}").fetchall(), key=repr), view
        assert b.execute("SELECT count(*) FROM duckdb_extensions() WHERE loaded AND extension_name = 'postgres'"
                         ).fetchone() == (0,)
    finally:
        a.close()
        b.close()
    # manifest.jsonl and metrics.json from the PostgreSQL ledger too (computed on a DuckDB export).
    proc = subprocess.run([str(DTKG), "ledger", "export", "--out", str(tmp_path / "out"), "--json"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    lines = (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()
    assert metrics["works"] == loaded["works"] == metrics["manifest_lines"] == len(lines)
    assert metrics["blobs"] == loaded["blobs"] and metrics["http_requests"] == loaded["http_attempts"]


def view_rows(cur: Any, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """A view's column names and rows, values compared as data: numbers as floats (PostgreSQL answers
    numeric where DuckDB answers DOUBLE), timestamps as epoch seconds, JSON parsed."""
    def norm(v: Any) -> Any:
        if isinstance(v, bool) or v is None:
            return v
        if isinstance(v, (int, float, Decimal)):
            return round(float(v), 6)
        if isinstance(v, datetime):
            return round(v.timestamp(), 6)
        if isinstance(v, str) and v.startswith("{"):
            return json.loads(v)
        return v

    cur.execute(sql)
    names = [d[0] for d in cur.description]
    return names, sorted((tuple(norm(v) for v in row) for row in cur.fetchall()), key=repr)


def same(a: Any, b: Any) -> bool:
    # to_timestamp rounds the last microsecond differently in the two databases.
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=0, abs_tol=1e-5)
    return bool(a == b)


def test_postgres_ledger_has_the_duckdb_views_answering_the_same(demo_home: Path, pg_url: str,
                                                                 tmp_path: Path) -> None:
    """The analyst views are written once (core/ledger/views.py): on the PostgreSQL ledger they exist
    under the same names and give the same columns and rows as the DuckDB ledger's on the same data,
    and `dtkg status` shows the same yield tables (by host, source field, how found; failures) on both."""
    original = demo_home / "ledger.snapshot.duckdb"
    load_into_postgres(original, pg_url)
    with psycopg.connect(pg_url) as pg, duckdb.connect(str(original), read_only=True) as duck:
        pg_views = {r[0] for r in pg.execute("SELECT table_name FROM information_schema.views "
                                             "WHERE table_schema = %s", [pg_schema.SCHEMA]).fetchall()}
        duck_views = {r[0] for r in duck.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        assert pg_views == duck_views == set(VIEWS)
        assert {"v_yield_hosts", "v_yield_sources", "v_yield_via", "v_yield_failures"} <= pg_views
        for view in sorted(VIEWS):
            names, rows = view_rows(pg.cursor(), f"SELECT * FROM {pg_schema.SCHEMA}.{view}")
            duck_names, duck_rows = view_rows(duck.cursor(), f"SELECT * FROM {view}")
            assert names == duck_names and len(rows) == len(duck_rows) > 0, view
            differ = [(view, n, a, b) for row, duck_row in zip(rows, duck_rows, strict=True)
                      for n, a, b in zip(names, row, duck_row, strict=True) if not same(a, b)]
            assert not differ, differ[:5]
        via = dict(pg.execute(f"SELECT via, stored FROM {pg_schema.SCHEMA}.v_yield_via").fetchall())
        assert via["direct"] >= 30 and sum(v for k, v in via.items() if k != "direct") == 3, via

    def as_data(tables: dict[str, Any]) -> dict[str, Any]:
        return {name: sorted((tuple(round(float(v), 6) if isinstance(v, (int, float, Decimal)) else v
                                    for v in row.values()) for row in rows), key=repr)
                for name, rows in tables.items()}

    on_pg = status_report(Settings().with_home(tmp_path / "pg-home").replace(ledger={"url": pg_url}))["yield"]
    on_duckdb = status_report(Settings().with_home(demo_home))["yield"]
    assert set(on_pg) == {"by_host", "by_source", "by_via", "failures"} and all(on_pg.values()), on_pg
    assert as_data(on_pg) == as_data(on_duckdb)


def test_notebook_runs_unchanged_on_the_export(demo_home: Path, pg_url: str, tmp_path: Path) -> None:
    """The analyst path: export from PostgreSQL as a snapshot file, point DTKG_HOME at its folder, run
    notebooks/ledger.ipynb as committed; every cell runs and the tables show the exported numbers."""
    import nbformat
    from nbclient import NotebookClient

    from dtkg_assets_tests.demo.test_notebook import NOTEBOOK

    load_into_postgres(demo_home / "ledger.snapshot.duckdb", pg_url)
    analyst = tmp_path / "analyst"
    env = {**demo_env(tmp_path / "worker-home"), "DTKG_LEDGER_URL": pg_url}
    proc = subprocess.run([str(DTKG), "ledger", "export", "--duckdb", str(analyst / "ledger.snapshot.duckdb")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute(env=demo_env(analyst))  # raises if any cell fails
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code)
    opened = [c for c in nb.cells if "open" in c.get("metadata", {}).get("tags", [])][0]
    text = "".join(o.get("text", "") for o in opened.outputs)
    assert str(analyst / "ledger.snapshot.duckdb") in text and "status: healthy" in text
    with duckdb.connect(str(analyst / "ledger.snapshot.duckdb"), read_only=True) as con:
        states = con.execute("SELECT state, count(*) FROM v_artifacts GROUP BY state").fetchall()
    shown = "".join(o.get("data", {}).get("text/plain", "") for c in nb.cells
                    if "artifacts-by-state" in c.get("metadata", {}).get("tags", []) for o in c.outputs)
    for state, n in states:
        assert state in shown and str(n) in shown


def test_export_names_what_is_missing(tmp_path: Path, pg_url: str) -> None:
    env = {**demo_env(tmp_path / "home"), "DTKG_LEDGER_URL": pg_url}
    proc = subprocess.run([str(DTKG), "ledger", "export", "--duckdb", str(tmp_path / "x.duckdb")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "holds no dtkg ledger" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.duckdb").exists()
    env["DTKG_LEDGER_URL"] = "postgresql://nobody:secret@127.0.0.1:1/none"
    proc = subprocess.run([str(DTKG), "ledger", "export", "--duckdb", str(tmp_path / "x.duckdb")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "cannot reach" in proc.stderr and "secret" not in proc.stderr
