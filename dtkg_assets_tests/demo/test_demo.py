"""`dtkg demo` end to end, as a user runs it: real processes, run twice: first in a fresh DTKG_HOME
(the session's `demo_template`), then again on a copy of that home.

The first run must leave every sample work in its expected state with the corpus's exact bytes in
the store (one blob per distinct content, the dedupe pair sharing one inode); the second run must
download nothing; `dtkg status --json` must agree with the ledger.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest

from dtkg_assets.demo.sample import SampleCorpus, build_sample_corpus
from dtkg_assets_tests.support.demo_home import DemoHome, copy_home, run_demo, run_dtkg, sha256_file, snapshot


def store_files(home: Path) -> dict[str, tuple[int, str]]:
    """Every file in the store: relative path -> (inode, sha256 of its bytes)."""
    root = home / "store"
    return {str(p.relative_to(root)): (p.stat().st_ino, sha256_file(p)) for p in root.rglob("*") if p.is_file()}


def job_states(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    rows = con.execute("SELECT state, count(*) FROM artifact_jobs GROUP BY state").fetchall()
    return {str(s): int(n) for s, n in rows}


@dataclass
class DemoRuns:
    home: Path
    corpus: SampleCorpus
    first: dict[str, Any]
    second: dict[str, Any]
    store_after_first: dict[str, tuple[int, str]]
    states_after_first: dict[str, int]


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory: pytest.TempPathFactory, demo_template: DemoHome) -> Iterator[DemoRuns]:
    # The first run is the session's demo home (made in a fresh home); the second runs on a copy of it,
    # on the same port, as `make demo` uses 8787 both times: the works keep their URLs.
    demo = copy_home(demo_template, tmp_path_factory.mktemp("demo") / "home")
    home = demo.home
    with snapshot(home) as con:
        states = job_states(con)
    files = store_files(home)
    second = run_demo(home, demo.port)
    # The demo built its corpus here; building again reuses those files (cached by manifest).
    corpus = build_sample_corpus(home / "sample" / "pdfs")
    yield DemoRuns(home, corpus, demo.summary, second, files, states)


def test_first_run_leaves_every_work_in_its_expected_state(demo_runs: DemoRuns) -> None:
    corpus, first = demo_runs.corpus, demo_runs.first
    assert first["mismatches"] == []
    fetchable = [w for w, e in corpus.expected.items() if not e.input_problem]
    assert first["attempted"] == len(fetchable)
    assert first["works"] == len(fetchable)
    assert first["body_bytes_this_run"] > 0

    with snapshot(demo_runs.home) as con:
        rows = con.execute("SELECT work_id, state, sha256, path, bytes, reason FROM v_artifacts").fetchall()
        problems = {(str(w), str(r)) for w, r in con.execute("SELECT work_id, reason FROM input_problems").fetchall()}
    by_work = {str(r[0]): r[1:] for r in rows}
    assert set(by_work) == set(fetchable)

    for work_id, expected in corpus.expected.items():
        if expected.input_problem:
            assert (work_id, expected.reason) in problems, f"{work_id}: no input problem {expected.reason}"
            continue
        state, sha, path, size, reason = by_work[work_id]
        if not expected.ok:
            assert (state, reason) == ("FAILED", expected.reason), work_id
            continue
        assert expected.file is not None
        corpus_file = corpus.files[expected.file][0]
        corpus_sha = sha256_file(corpus_file)  # independent of the corpus manifest
        assert state in ("INDEXED", "DEDUPED"), f"{work_id}: {state} {reason}"
        assert sha == corpus_sha == expected.sha256, work_id
        assert not Path(path).is_absolute(), f"{work_id}: ledger path {path} is not relative to the store"
        assert sha256_file(demo_runs.home / "store" / path) == corpus_sha, work_id
        assert size == corpus_file.stat().st_size, work_id


def test_dedupe_pair_shares_one_inode(demo_runs: DemoRuns) -> None:
    corpus = demo_runs.corpus
    pair = sorted(w for w, e in corpus.expected.items() if e.same_bytes_as)
    assert len(pair) == 2
    with snapshot(demo_runs.home) as con:
        rows = con.execute(
            "SELECT work_id, state, path, sha256 FROM v_artifacts WHERE work_id IN (?, ?) ORDER BY work_id", pair
        ).fetchall()
        blob_path = con.execute("SELECT path FROM blobs WHERE sha256 = ?", [rows[0][3]]).fetchall()[0][0]
    store = demo_runs.home / "store"
    blob = store / blob_path
    # Whichever of the two finishes second is the DEDUPED one: the workers run concurrently.
    assert sorted(r[1] for r in rows) == ["DEDUPED", "INDEXED"]
    assert rows[0][3] == rows[1][3]
    a, b = (store / r[2] for r in rows)
    assert a != b and a.stat().st_ino == b.stat().st_ino
    assert blob.stat().st_ino == a.stat().st_ino


def test_store_holds_one_blob_per_distinct_content(demo_runs: DemoRuns) -> None:
    files = demo_runs.store_after_first
    ok = [e for e in demo_runs.corpus.expected.values() if e.ok]
    distinct = {e.sha256 for e in ok}
    inodes: dict[int, str] = {}
    for rel, (inode, sha) in files.items():
        assert inodes.setdefault(inode, sha) == sha, f"{rel}: one inode, two contents"
    contents = Counter(inodes.values())
    # One inode per distinct content: every work file links to its blob, none is a second copy.
    assert set(contents) == distinct
    assert all(n == 1 for n in contents.values())
    with snapshot(demo_runs.home) as con:
        blob_rows = con.execute("SELECT sha256, path, size FROM blobs").fetchall()
    ledger_blobs = {sha: size for sha, _, size in blob_rows}
    assert set(ledger_blobs) == distinct
    for sha, path, _ in blob_rows:
        rel = str(Path(path))
        assert files[rel][1] == sha, f"blob {rel} does not hold {sha}"
    assert demo_runs.first["blobs"] == len(distinct)
    sizes = {e.sha256: demo_runs.corpus.files[e.file][2] for e in ok if e.file}
    assert ledger_blobs == sizes


def test_second_run_downloads_nothing(demo_runs: DemoRuns) -> None:
    first, second = demo_runs.first, demo_runs.second
    assert second["origin"] == first["origin"], "the second run's origin moved to another port"
    assert second["mismatches"] == []
    assert second["attempted"] == 0
    assert second["body_bytes_this_run"] == 0
    for key in ("works", "by_outcome", "failed_by_reason", "blobs", "blob_bytes", "artifact_bytes"):
        assert second[key] == first[key], key
    # Nothing on disk changed: same files, same inodes, same bytes.
    assert store_files(demo_runs.home) == demo_runs.store_after_first
    with snapshot(demo_runs.home) as con:
        states = job_states(con)
    assert states == demo_runs.states_after_first


def test_status_json_agrees_with_the_ledger(demo_runs: DemoRuns) -> None:
    proc = run_dtkg(demo_runs.home, "status", "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["home"] == str(demo_runs.home)
    assert report["ledger"]["status"] == "healthy"
    assert report["ledger"]["problems"] == []
    with snapshot(demo_runs.home) as con:
        states = job_states(con)
        works = con.execute("SELECT count(*) FROM works").fetchall()[0][0]
    assert report["states"] == states
    assert report["ledger"]["row_counts"]["works"] == works
    assert states["INDEXED"] == demo_runs.first["downloaded"]
    assert states["DEDUPED"] == demo_runs.first["deduplicated"]
