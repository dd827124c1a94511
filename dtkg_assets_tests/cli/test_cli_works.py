"""`dtkg works query` and `dtkg works import` as real processes against local servers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb

from dtkg_assets_tests.conftest import loopback_env
from dtkg_assets_tests.support.fake_openalex import W2741809807, FakeOpenAlex, make_work


def run(home: Path, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = loopback_env(home, **(extra_env or {}))
    return subprocess.run([sys.executable, "-m", "dtkg_assets.cli", *args], env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def snapshot_rows(home: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(home / "ledger.snapshot.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_works_query_loads_every_work_once_with_key_and_contact(tmp_path: Path) -> None:
    with FakeOpenAlex(works=[W2741809807] + [make_work(n) for n in range(1, 12)]).start() as fake:
        env = {"DTKG_OPENALEX_BASE_URL": fake.base_url, "OPENALEX_API_KEY": "test-key",
               "DTKG_MAILTO": "ops@example.org"}
        proc = run(tmp_path, "works", "query", "--filter", "open_access.is_oa:true", "--max", "10",
                   "--per-page", "4", "--json", extra_env=env)
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        assert summary["works"] == 10 and summary["new_works"] == 10
        assert summary["provenance"]["params"]["filter"] == "open_access.is_oa:true"
        assert all(r.params.get("api_key") == "test-key" and r.params.get("mailto") == "ops@example.org"
                   for r in fake.page_requests())
        # The exact query, its cursors and fetch times are kept in the ledger for reproducibility.
        runs = snapshot_rows(tmp_path, "SELECT kind, counts::VARCHAR FROM runs")
        assert [kind for kind, _ in runs] == ["works:openalex"]
        provenance = json.loads(runs[0][1])["provenance"]
        assert provenance["params"]["filter"] == "open_access.is_oa:true" and "api_key" not in provenance["params"]
        assert [p["cursor"] for p in provenance["pages"]][0] == "*" and len(provenance["pages"]) >= 3
        assert all(p["fetched_at"] for p in provenance["pages"])
        ids = [r[0] for r in snapshot_rows(tmp_path, "SELECT work_id FROM works ORDER BY work_id")]
        assert len(ids) == 10 and len(set(ids)) == 10 and "W2741809807" in ids
        # Again: nothing new, nothing duplicated.
        again = run(tmp_path, "works", "query", "--filter", "open_access.is_oa:true", "--max", "10",
                    "--per-page", "4", "--json", extra_env=env)
        assert json.loads(again.stdout)["new_works"] == 0
        assert snapshot_rows(tmp_path, "SELECT count(*) FROM works") == [(10,)]


def test_works_query_without_a_query_is_a_usage_error(tmp_path: Path) -> None:
    proc = run(tmp_path, "works", "query")
    assert proc.returncode == 2
    assert "--filter" in proc.stderr


def test_works_import_twice_keeps_one_copy_of_each_input_problem(tmp_path: Path) -> None:
    works = tmp_path / "works.jsonl"
    good = {"id": "https://openalex.org/W1", "best_oa_location": {"pdf_url": "https://example.org/a.pdf"}}
    works.write_text(json.dumps(good) + "\n{not json\n" + json.dumps({"id": "W2"}) + "\n")
    for _ in range(2):
        proc = run(tmp_path, "works", "import", str(works), "--json")
        assert proc.returncode == 0, proc.stderr
        assert f"{works}:2" in proc.stderr  # the malformed line is named with its number
    problems = snapshot_rows(tmp_path, "SELECT line, reason FROM input_problems ORDER BY line")
    assert problems == [(2, "bad_input"), (3, "no_candidates")]
    assert snapshot_rows(tmp_path, "SELECT work_id FROM works") == [("W1",)]
