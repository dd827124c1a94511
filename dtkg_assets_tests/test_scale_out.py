"""Scale-out on PostgreSQL (issue 12): Dagster storage, the shared store, fleet-wide politeness.

Everything here runs on a real PostgreSQL cluster (the session `pg_cluster`), real `dtkg` processes
and the loopback test origin.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from dtkg_assets.defs.instance import instance_yaml, pool_limit
from dtkg_assets.origin import OriginServer
from dtkg_assets.settings import Settings
from dtkg_assets_tests.conftest import loopback_env, pdf_bytes

DTKG = str(Path(sys.executable).parent / "dtkg")


def write_works(path: Path, works: dict[str, list[str]]) -> Path:
    with path.open("w") as f:
        for wid, urls in works.items():
            f.write(json.dumps({
                "id": f"https://openalex.org/{wid}", "doi": None, "title": f"Work {wid}", "publication_year": 2024,
                "best_oa_location": {"pdf_url": urls[0], "is_oa": True},
                "locations": [{"pdf_url": u, "is_oa": True} for u in urls],
            }) + "\n")
    return path


def dtkg(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DTKG, *args], env=env, capture_output=True, text=True, timeout=timeout)


# ---- Dagster on PostgreSQL ------------------------------------------------------------------


def test_instance_config_follows_the_backends(tmp_path: Path) -> None:
    duck = Settings().with_home(tmp_path)
    pg_ledger = Settings(ledger=Settings().ledger.__class__(url="postgresql://u@127.0.0.1:5/l")).with_home(tmp_path)
    # Embedded default: the project's dagster.yaml, SQLite storage, one run in the ledger pool.
    default = instance_yaml(duck, {})
    assert "postgres" not in default and pool_limit(default) == 1
    # DAGSTER_PG_URL: PostgreSQL storage and a process per run; the ledger pool is 1 only for DuckDB.
    env = {"DAGSTER_PG_URL": "postgresql://u@127.0.0.1:5/d"}
    on_duck, on_pg = instance_yaml(duck, env), instance_yaml(pg_ledger, env)
    for text in (on_duck, on_pg):
        assert "DAGSTER_PG_URL" in text and "DefaultRunLauncher" in text
    assert pool_limit(on_duck) == 1
    assert (pool_limit(on_pg) or 0) > 1


def test_dtkg_backfill_records_its_runs_in_dagster_postgres_storage(
    tmp_path: Path, origin: OriginServer, pg_cluster, pg_url: str
) -> None:
    urls = {f"W{i}": [origin.add(f"/W{i}.pdf", pdf_bytes(8_000 + i, seed=i))] for i in range(1, 4)}
    works = write_works(tmp_path / "works.jsonl", urls)
    home = tmp_path / "home"
    env = loopback_env(home, DAGSTER_PG_URL=pg_url)
    assert dtkg(env, "works", "import", str(works)).returncode == 0
    proc = dtkg(env, "backfill", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["materialized"] == 3
    # The runs and their per-partition materializations live in PostgreSQL, not in SQLite files.
    assert not list((home / "dagster").rglob("*.db"))
    with psycopg.connect(pg_url) as con:
        statuses = [r[0] for r in con.execute("SELECT status FROM runs").fetchall()]
        partitions = {r[0] for r in con.execute(
            "SELECT partition FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
            "AND asset_key LIKE '%artifact_pdfs%'").fetchall()}
    assert statuses and set(statuses) == {"SUCCESS"}
    assert partitions == {"W1", "W2", "W3"}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
