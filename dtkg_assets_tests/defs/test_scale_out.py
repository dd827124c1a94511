"""Scale-out on PostgreSQL (issue 12): Dagster storage, the shared store, fleet-wide politeness.

Everything here runs on a real PostgreSQL cluster (the session `pg_cluster`), real `dtkg` processes
and the loopback test origin.
"""


import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
import yaml
from dagster_postgres import PostgresEventLogStorage

from dtkg_assets.core.settings import Settings
from dtkg_assets.defs.instance import dagster_pg_url, instance_yaml, pool_limit
from dtkg_assets.defs.pg_event_storage import DtkgPostgresEventLogStorage
from dtkg_assets_tests.conftest import loopback_env, pdf_bytes
from dtkg_assets_tests.support.check_batches import KEYS, assert_read_by_dagster, materialize_then_check, record_batches
from dtkg_assets_tests.support.origin import FaultMode, OriginServer

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
    assert "storage" not in yaml.safe_load(default) and pool_limit(default) == 1
    assert yaml.safe_load(default)["instance_class"]["class"] == "DtkgDagsterInstance"
    # DTKG_RUN_POOLED_EVENTS=0: Dagster's own instance and storage on the same files.
    stock = instance_yaml(Settings.from_env({"DTKG_RUN_POOLED_EVENTS": "0"}).with_home(tmp_path), {})
    assert "instance_class" not in yaml.safe_load(stock) and pool_limit(stock) == 1
    # DAGSTER_PG_URL: PostgreSQL storage and a process per run; the ledger pool is 1 only for DuckDB.
    env = {"DAGSTER_PG_URL": "postgresql://u@127.0.0.1:5/d"}
    on_duck, on_pg = instance_yaml(duck, env), instance_yaml(pg_ledger, env)
    for text in (on_duck, on_pg):
        assert "DAGSTER_PG_URL" in text and "DefaultRunLauncher" in text
        assert yaml.safe_load(text)["instance_class"]["class"] == "DtkgDagsterInstance"
    assert pool_limit(on_duck) == 1
    assert (pool_limit(on_pg) or 0) > 1


def _sessions(url: str) -> int:
    """Sessions PostgreSQL has started on the URL's database so far (this one included)."""
    with psycopg.connect(url) as con:
        return int(con.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
                               ).fetchone()[0])


def test_dtkg_backfill_records_its_runs_in_dagster_postgres_storage(
    tmp_path: Path, origin: OriginServer, pg_cluster, pg_url: str
) -> None:
    urls = {f"W{i}": [origin.add(f"/W{i}.pdf", pdf_bytes(8_000 + i, seed=i))] for i in range(1, 4)}
    works = write_works(tmp_path / "works.jsonl", urls)
    home = tmp_path / "home"
    env = loopback_env(home, DAGSTER_PG_URL=pg_url)
    assert dtkg(env, "works", "import", str(works)).returncode == 0
    sessions_before = _sessions(pg_url)
    proc = dtkg(env, "backfill", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["materialized"] == 3
    # The backfill keeps its connections to Dagster's database open: without a pool, dagster-postgres
    # opened one per storage call (over a hundred for these three works).
    assert _sessions(pg_url) - sessions_before < 30
    # The runs and their per-partition materializations live in PostgreSQL, not in SQLite files.
    assert not list((home / "dagster").rglob("*.db"))
    with psycopg.connect(pg_url) as con:
        statuses = [r[0] for r in con.execute("SELECT status FROM runs").fetchall()]
        partitions = {r[0] for r in con.execute(
            "SELECT partition FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
            "AND asset_key LIKE '%artifact_pdfs%'").fetchall()}
    assert statuses and set(statuses) == {"SUCCESS"}
    assert partitions == {"W1", "W2", "W3"}
    # The check run's evaluations too, written as one batch by our storage (Dagster's own refuses check
    # evaluations in a batch: the instance would write them again one by one, after an error).
    with psycopg.connect(pg_url) as con:
        checked = {r[0] for r in con.execute(
            "SELECT partition FROM asset_check_executions WHERE execution_status = 'SUCCEEDED'").fetchall()}
    assert checked == {"W1", "W2", "W3"}
    assert "Exception while storing event batch" not in proc.stderr, proc.stderr


def test_planned_events_and_check_evaluations_are_one_transaction_on_postgresql_and_read_by_dagster(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ranged run and a ranged check run logging one evaluation per partition through
    `step_event_logger` on the instance `dagster.postgres.yaml` configures: the planned
    materializations and the evaluations are each stored in one transaction (Dagster's own storage:
    two commits each), and Dagster's own PostgreSQL storage reads each partition's planned run, each
    partition's check execution with its status, and the evaluation events in the order logged."""
    home = tmp_path / "dagster"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_PG_URL", dagster_pg_url(pg_url))
    (home / "dagster.yaml").write_text(instance_yaml(Settings().with_home(tmp_path), {"DAGSTER_PG_URL": pg_url}))
    batches = record_batches(monkeypatch, DtkgPostgresEventLogStorage)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.event_log_storage, DtkgPostgresEventLogStorage)
        materialized, checked = materialize_then_check(instance)
    # One connection, one transaction, for the run's 30 planned materializations (written when it is
    # created), and for the 30 evaluations with their execution rows (Dagster's own: 61 and 90).
    assert (30, {"ASSET_MATERIALIZATION_PLANNED"}, 1) in batches, batches
    assert (30, {"ASSET_CHECK_EVALUATION"}, 1) in batches, batches
    reader = PostgresEventLogStorage(dagster_pg_url(pg_url))
    try:
        for key in KEYS:
            planned = reader.get_latest_planned_materialization_info(dg.AssetKey("many"), key)
            assert planned is not None and planned.run_id == materialized, key
        [asset] = reader.get_asset_records([dg.AssetKey("many")])
        assert asset.asset_entry.last_run_id == materialized  # the asset row follows the batch
        assert_read_by_dagster(reader, checked)
    finally:
        reader.dispose()


# ---- shared store ---------------------------------------------------------------------------


def test_shared_store_keeps_one_blob_per_content_and_stages_per_worker(tmp_path: Path) -> None:
    """DTKG_STORE_DIR: two workers (own homes) finalize the same bytes into one shared blob; each
    stages its parts in its own directory on the store's filesystem (finalize stays a rename)."""
    import hashlib

    from dtkg_assets.core.store import Store

    shared = tmp_path / "shared-store"
    settings = [Settings.from_env({"DTKG_HOME": str(tmp_path / f"home-{w}"), "DTKG_STORE_DIR": str(shared)})
                for w in ("a", "b")]
    stores = [Store(s) for s in settings]
    assert stores[0].root == stores[1].root == shared
    assert stores[0].staging_dir != stores[1].staging_dir
    assert all(s.staging_dir.parent.parent == shared for s in stores)
    body = pdf_bytes(5_000, seed=7)
    sha = hashlib.sha256(body).hexdigest()
    created = []
    for store, work in zip(stores, ("W1", "W2"), strict=True):
        part, _ = store.part_paths(work, "http://127.0.0.1/x.pdf")
        part.write_bytes(body)
        created.append(store.finalize(part, sha).created)
        store.link_work(work, sha)
    assert created == [True, False]
    assert [p.name for p in shared.rglob("*.pdf") if p.parent.name != "works"] == [f"{sha}.pdf"]
    assert sorted(p.name for p in (shared / "works").iterdir()) == ["W1.pdf", "W2.pdf"]
    # The homes hold no store of their own.
    assert not (tmp_path / "home-a" / "store").exists() and not (tmp_path / "home-b" / "store").exists()


# ---- fleet-wide politeness ------------------------------------------------------------------


def _gaps(times: list[float]) -> list[float]:
    ordered = sorted(times)
    return [b - a for a, b in zip(ordered, ordered[1:], strict=False)]


@pytest.mark.serial
def test_two_processes_share_one_host_rate_limit_and_one_robots_fetch(
    tmp_path: Path, origin: OriginServer, pg_url: str
) -> None:
    """Two `dtkg works download` processes (own homes, own ledgers) on one host: together they keep the
    host's spacing (server-side arrival times) and fetch robots.txt once between them."""
    origin.add_robots("User-agent: *\nAllow: /\n")
    interval = 0.25
    procs = []
    for w in ("1", "2"):
        urls = {f"W{w}0{i}": [origin.add(f"/{w}{i}.pdf", pdf_bytes(6_000 + i, seed=i))] for i in range(6)}
        works = write_works(tmp_path / f"works-{w}.jsonl", urls)
        env = loopback_env(tmp_path / f"home-{w}", DTKG_RATE_LIMITS=f"127.0.0.1={1 / interval}",
                           DTKG_HTTP_ROBOTS_ENABLED="1", DTKG_HTTP_SHARED_STATE_URL=pg_url)
        assert dtkg(env, "works", "import", str(works)).returncode == 0
        procs.append(subprocess.Popen([DTKG, "works", "download", "--workers", "4", "--json"], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert json.loads(out)["works"] == 6 and "failed" not in json.loads(out), out
    times = [t for w in ("1", "2") for i in range(6) for t in origin.stats(f"/{w}{i}.pdf").request_times]
    times += origin.stats("/robots.txt").request_times
    assert len(times) == 13
    # Both processes' requests to the host, together, are spaced by the limit (a little scheduling slack).
    assert min(_gaps(times)) >= interval * 0.9, sorted(_gaps(times))[:3]
    assert origin.stats("/robots.txt").get_requests == 1


def test_breakers_hold_across_processes_and_admit_one_probe(pg_url: str) -> None:
    """Two independent fleet handles (as two processes have): failures seen by one open the breaker
    for the other; after the cooldown exactly one of them is let through as the probe."""
    from dtkg_assets.core.errors import DtkgError, Reason
    from dtkg_assets.core.fleet import FleetBreakers, FleetState

    a_state, b_state = FleetState(pg_url), FleetState(pg_url)
    try:
        a, b = FleetBreakers(a_state, 2, 0.5), FleetBreakers(b_state, 2, 0.5)
        assert a.before_request("h.example") is False
        a.record("h.example", success=False, probe=False)
        assert b.state("h.example") == "closed"
        b.record("h.example", success=False, probe=False)  # the second consecutive failure, fleet-wide
        with pytest.raises(DtkgError) as info:
            a.before_request("h.example")
        assert info.value.reason == Reason.BREAKER_OPEN
        import time

        time.sleep(0.6)
        probes = []
        for br in (a, b, a):
            try:
                probes.append(br.before_request("h.example"))
            except DtkgError:
                probes.append(None)
        assert probes == [True, None, None]  # one probe for the whole fleet
        a.record("h.example", success=True, probe=True)
        assert b.before_request("h.example") is False and b.state("h.example") == "closed"
    finally:
        a_state.close()
        b_state.close()


def test_unreachable_shared_state_is_a_reasoned_transient_failure() -> None:
    from dtkg_assets.core.errors import DtkgError, Reason
    from dtkg_assets.core.fleet import FleetState

    with pytest.raises(DtkgError) as info:
        FleetState("postgresql://nobody:secret@127.0.0.1:1/none?connect_timeout=1")
    assert info.value.reason == Reason.COORDINATION_UNAVAILABLE and info.value.transient
    assert "secret" not in str(info.value)


# ---- many workers on one PostgreSQL ledger ---------------------------------------------------


def fleet_env(home: Path, ledger_url: str, dagster_url: str, store: Path, **extra: str) -> dict[str, str]:
    """A worker: its own DTKG_HOME; the fleet's ledger, Dagster storage and store."""
    return loopback_env(home, DTKG_LEDGER_URL=ledger_url, DAGSTER_PG_URL=dagster_url, DTKG_STORE_DIR=str(store),
                        **extra)


def ledger_rows(url: str, sql: str, params: list | None = None) -> list[tuple]:
    with psycopg.connect(url, options="-c search_path=dtkg") as con:
        return con.execute(sql, params).fetchall()


@pytest.mark.serial
def test_two_workers_backfill_overlapping_works_once_each_and_politely(
    tmp_path: Path, origin: OriginServer, pg_cluster
) -> None:
    """Two `dtkg backfill` processes (own homes; one ledger, one Dagster instance, one store) over
    overlapping works at the same time: every body is fetched once, one blob per content, no lost or
    duplicated ledger rows, and together they keep the host's request spacing (server-side times)."""
    ledger_url, dagster_url = pg_cluster.create_database("fleet_ledger"), pg_cluster.create_database("fleet_dagster")
    store = tmp_path / "shared-store"
    bodies = {f"W{100 + i}": pdf_bytes(30_000 + 97 * i, seed=i) for i in range(30)}
    bodies["W128"], bodies["W129"] = bodies["W100"], bodies["W101"]  # same bytes as others: dedupe
    urls = {wid: [origin.add(f"/{wid}.pdf", body)] for wid, body in bodies.items()}
    ids = list(urls)
    interval = 0.1
    envs = [fleet_env(tmp_path / f"home-{w}", ledger_url, dagster_url, store,
                      DTKG_RATE_LIMITS=f"127.0.0.1={1 / interval}") for w in ("a", "b")]
    # Worker a knows works 0-19, worker b works 10-29: the middle third is imported twice.
    for env, part in zip(envs, (ids[:20], ids[10:]), strict=True):
        works = write_works(tmp_path / f"works-{part[0]}.jsonl", {k: urls[k] for k in part})
        assert dtkg(env, "works", "import", str(works)).returncode == 0
    procs = [subprocess.Popen([DTKG, "backfill", "--workers", "6", "--json"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for env in envs]
    outs = [p.communicate(timeout=300) for p in procs]
    for out, err in outs:
        assert "Traceback" not in err and "psycopg" not in err, err
        checks = json.loads(out)["checks"]
        assert checks and all(checks.values()), out  # the asset checks ran on the PostgreSQL ledger
    # Whatever one worker deferred (leased by the other), the fleet finished every work.
    done = dict(ledger_rows(ledger_url, "SELECT work_id, count(*) FROM artifact_jobs "
                                        "WHERE state IN ('INDEXED', 'DEDUPED') GROUP BY work_id"))
    assert done == {wid: 1 for wid in ids}
    # Every body fetched once.
    assert [origin.stats(f"/{wid}.pdf").get_requests for wid in ids] == [1] * len(ids)
    # One blob per content, on the shared store; every work has its file.
    contents = {hashlib.sha256(b).hexdigest() for b in bodies.values()}
    blob_files = {p.stem for p in store.rglob("*.pdf") if p.parent.name not in ("works", "staging")
                  and p.parent.parent != store / "staging"}
    assert blob_files == contents
    assert sorted(p.stem for p in (store / "works").iterdir()) == sorted(ids)
    # No lost or duplicated ledger rows.
    assert ledger_rows(ledger_url, "SELECT count(*), count(DISTINCT work_id) FROM artifact_jobs") == [(30, 30)]
    assert ledger_rows(ledger_url, "SELECT count(*) FROM works") == [(30,)]
    assert ledger_rows(ledger_url, "SELECT count(*), count(DISTINCT job_id) FROM http_attempts") == [(30, 30)]
    assert ledger_rows(ledger_url, "SELECT count(*), sum(ref_count) FROM blobs") == [(len(contents), 30)]
    assert ledger_rows(ledger_url, "SELECT count(*) FROM work_versions") == [(30,)]
    # Both workers did work, and both ran their batches through the shared Dagster instance.
    owners = {r[0].split(":")[1] for r in ledger_rows(ledger_url, "SELECT DISTINCT owner FROM artifact_ops")}
    assert len(owners) == 2, owners
    with psycopg.connect(dagster_url) as con:
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] >= 2
    # Together, the two processes kept one request per `interval` on the host: every run of 5
    # consecutive arrivals spans at least 4 intervals, less the scheduling delay one request can
    # suffer on a busy 2-core machine (measured up to ~80 ms), and no two come in a burst (a single
    # gap can shrink by the delay of the request before it, never to nothing). Two processes each
    # keeping the limit alone would put 5 arrivals in about 2 intervals.
    times = sorted(t for wid in ids for t in origin.stats(f"/{wid}.pdf").request_times)
    spans = [b - a for a, b in zip(times, times[4:], strict=False)]
    assert min(spans) >= 4 * interval * 0.75, sorted(spans)[:3]
    assert min(_gaps(times)) >= interval * 0.5, sorted(_gaps(times))[:3]


def test_fleet_batches_leave_what_other_workers_finished_or_hold_to_them(tmp_path: Path, pg_url: str) -> None:
    """How a backfill on a shared ledger picks its batches (dtkg_assets.cli.launch._FleetBatches): a
    batch nobody started first, narrowed to its open works; a batch another worker is working through
    only when nothing untouched is left; a batch the others finished is passed over without a run; and
    a created run is not started when the others took every work of it meanwhile."""
    from dtkg_assets.cli.launch import _FleetBatches
    from dtkg_assets.core.ledger import Ledger
    from dtkg_assets.core.types import Candidate, WorkRecord

    settings = Settings().with_home(tmp_path).replace(ledger={"url": pg_url})
    ids = [f"W{i}" for i in range(1, 10)]
    with Ledger.open_writer(settings, owner="test") as led:
        led.plan([WorkRecord(w, [Candidate(f"http://127.0.0.1:9/{w}.pdf", "best_oa_location.pdf_url")]) for w in ids])
        jobs = {w: js[0].job_id for w, js in led.jobs_for_works(ids).items()}
        with Ledger.open_reader(settings) as reader:
            # This worker's own order: W1-W3, then W4-W6, then W7-W9.
            fleet = _FleetBatches(reader, ids, set(ids), [("W1", "W3"), ("W4", "W6"), ("W7", "W9")])
            # Another worker: working through W1-W3 (holds W1), finished W4-W6 (W6 failed for good).
            assert led.lease(jobs["W1"], "run:other") is not None
            ledger_rows(pg_url, "UPDATE artifact_jobs SET state = 'INDEXED' WHERE work_id IN ('W4', 'W5') "
                                "RETURNING 1")
            held = led.lease(jobs["W6"], "run:other")
            assert held is not None
            held.fail(reason="http_404")
            assert next(fleet) == ("W7", "W9")  # untouched, though last in this worker's order
            assert next(fleet) == ("W2", "W3")  # then help with the batch in progress: its open works
            assert next(fleet, None) is None and fleet.left_to_others == 1  # W4-W6: nothing left
            # Created ahead of its turn, the run for W2-W3 is not started once the other holds both.
            assert fleet.worth_running("W2", "W3")
            for w in ("W2", "W3"):
                assert led.lease(jobs[w], "run:other") is not None
            assert not fleet.worth_running("W2", "W3")


def test_workers_starting_together_choose_different_batches(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two backfills on one ledger and one Dagster instance choose their first batch at the same moment,
    walking the batches in the same order: each choice and the run that shows it to the others are one
    fleet-wide step (`PgLedger.exclusive`), so the second worker sees the first one's run and takes
    another batch, even when creating a run is slow. (Taken at once, both chose the same batch and
    raced through it, and two-worker backfills took 12 s instead of 10 s in `bench/scale_out.py`.)"""
    import functools
    import threading

    from dtkg_assets.cli.launch import (
        WORKER_TAG,
        _definitions,
        _FleetBatches,
        _PipelinedRuns,
        dagster_instance,
        other_workers_ranges,
    )
    from dtkg_assets.core.ledger import Ledger
    from dtkg_assets.core.types import Candidate, WorkRecord
    from dtkg_assets.defs.jobs import artifact_pdfs_job
    from dtkg_assets.defs.partitions import add_work_partitions

    monkeypatch.setenv("DAGSTER_PG_URL", dagster_pg_url(pg_url))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))
    settings = Settings().with_home(tmp_path).replace(ledger={"url": pg_url})
    ids = [f"W{i}" for i in range(1, 9)]
    windows = [("W1", "W2"), ("W3", "W4"), ("W5", "W6"), ("W7", "W8")]
    with Ledger.open_writer(settings, owner="test") as led:
        led.plan([WorkRecord(w, [Candidate(f"http://127.0.0.1:9/{w}.pdf", "best_oa_location.pdf_url")]) for w in ids])
    instance = dagster_instance(settings)
    add_work_partitions(instance, ids)
    job = _definitions(settings).resolve_job_def(artifact_pdfs_job.name)
    create = instance.create_run_for_job

    def slow_create(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.5)  # a slow run creation: the race window of two workers starting together
        return create(*args, **kwargs)

    monkeypatch.setattr(instance, "create_run_for_job", slow_create)
    chosen: dict[str, tuple[str, str]] = {}
    start = threading.Barrier(2)

    def worker(me: str) -> None:
        with Ledger.open_reader(settings) as reader:
            fleet = _FleetBatches(reader, ids, set(ids), windows,
                                  others=functools.partial(other_workers_ranges, instance, me))
            runner = _PipelinedRuns(instance, job, {}, {WORKER_TAG: me},
                                    choosing=functools.partial(reader.exclusive, "batch-choice"))
            start.wait()
            created = runner._create_next(iter(fleet))
            assert created is not None
            chosen[me] = created[0], created[1]

    threads = [threading.Thread(target=worker, args=(f"host:{n}",)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(chosen) == 2
    first, second = chosen.values()
    assert first != second and {first, second} <= set(windows), chosen


def test_a_work_another_worker_holds_is_neither_materialized_nor_failed_by_this_run(
    tmp_path: Path, origin: OriginServer, pg_cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch run whose range covers a work another worker holds (its lease is live) leaves that
    work to its holder: this run stores the others and succeeds, and Dagster shows the held partition
    neither materialized nor failed, with no failure reason from this run."""
    import dagster as dg

    from dtkg_assets.core.ledger import Ledger
    from dtkg_assets.core.types import Candidate, WorkRecord
    from dtkg_assets.defs.instance import REPO_DAGSTER_PG_YAML, dagster_pg_url
    from dtkg_assets.defs.partitions import ARTIFACT_PARTITIONS_NAME, artifact_partitions

    ledger_url, dagster_url = pg_cluster.create_database("held_ledger"), pg_cluster.create_database("held_dagster")
    ids = ["W301", "W302", "W303", "W304", "W305"]
    urls = {w: origin.add(f"/{w}.pdf", pdf_bytes(20_000 + i, seed=i)) for i, w in enumerate(ids)}
    env = fleet_env(tmp_path / "home-b", ledger_url, dagster_url, tmp_path / "shared-store")
    # The shared Dagster instance, as seen from here; partitions in the order of the works.
    monkeypatch.setenv("DAGSTER_PG_URL", dagster_pg_url(dagster_url))
    (tmp_path / "observer").mkdir()
    (tmp_path / "observer" / "dagster.yaml").write_text(REPO_DAGSTER_PG_YAML.read_text())
    instance = dg.DagsterInstance.from_config(str(tmp_path / "observer"))
    instance.add_dynamic_partitions(ARTIFACT_PARTITIONS_NAME, ids)
    settings = Settings().with_home(tmp_path / "holder").replace(ledger={"url": ledger_url})
    with Ledger.open_writer(settings, owner="holder") as led:
        led.plan([WorkRecord(w, [Candidate(urls[w], "best_oa_location.pdf_url")], title=f"Work {w}",
                             publication_year=2024) for w in ids])
        # Another worker holds W303 (mid-download) for the whole of this backfill.
        held = led.lease(led.jobs_for_work("W303")[0].job_id, "run:other-worker", ttl_s=120)
        assert held is not None
        proc = dtkg(env, "backfill", "--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = json.loads(proc.stdout)
        assert (out["failed_runs"], out["materialized"]) == (0, 4), out
        assert origin.stats("/W303.pdf").get_requests == 0
        runs = instance.get_runs(filters=dg.RunsFilter(job_name="artifact_pdfs_job"))
        assert runs and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        # Four pending works make batches of four partitions: the first covers the held work.
        (run,) = [r for r in runs if r.tags["dagster/asset_partition_range_start"] == "W301"]
        assert run.tags["dagster/asset_partition_range_end"] == "W304"
        status = instance.get_status_by_partition(dg.AssetKey("artifact_pdfs"), ids, artifact_partitions)
        assert status is not None
        assert {k: v for k, v in status.items() if k != "W303"} == dict.fromkeys(
            ["W301", "W302", "W304", "W305"], dg.AssetPartitionStatus.MATERIALIZED)
        assert status["W303"] not in (dg.AssetPartitionStatus.MATERIALIZED, dg.AssetPartitionStatus.FAILED)
        # No event of this run speaks for W303: it is the holder's to report.
        records = instance.get_records_for_run(run.run_id).records
        assert not [r for r in records if r.event_log_entry.dagster_event is not None
                    and r.event_log_entry.dagster_event.partition == "W303"
                    and r.event_log_entry.dagster_event.event_type_value != "ASSET_MATERIALIZATION_PLANNED"]
        assert ledger_rows(ledger_url, "SELECT state, lease_owner FROM artifact_jobs WHERE work_id = 'W303'") == [
            ("LEASED", "run:other-worker")]


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.serial
def test_killed_worker_is_taken_over_after_its_lease_and_a_stopped_workers_late_write_is_refused(
    tmp_path: Path, origin: OriginServer, pg_cluster
) -> None:
    ledger_url, dagster_url = pg_cluster.create_database("kill_ledger"), pg_cluster.create_database("kill_dagster")
    store = tmp_path / "shared-store"
    # Longer than a `dtkg` process takes to start on a busy machine: the second worker must still
    # find the dead worker's lease live (2 s was not, once, with tests and benchmarks running beside).
    ttl = 4.0
    body1, body2 = pdf_bytes(400_000, seed=1), pdf_bytes(400_000, seed=2)
    # The first GET of each stalls mid-body (the worker is then mid-stream); later GETs do not.
    stall = FaultMode(stall_after_bytes=64 * 1024, stall_s=3.0, stall_times=1)
    urls = {"W201": [origin.add("/W201.pdf", body1, stall)], "W202": [origin.add("/W202.pdf", body2, stall)]}

    def env(name: str) -> dict[str, str]:
        return fleet_env(tmp_path / f"home-{name}", ledger_url, dagster_url, store,
                         DTKG_LEDGER_LEASE_TTL_S=str(ttl))

    assert dtkg(env("a"), "works", "import", str(write_works(tmp_path / "w1.jsonl", {"W201": urls["W201"]}))
                ).returncode == 0

    def job(wid: str) -> tuple:
        return ledger_rows(ledger_url, "SELECT state, lease_owner, fencing_token, run_id FROM artifact_jobs "
                                       "WHERE work_id = %s", [wid])[0]

    # kill -9 mid-stream: the lease stays until it expires, then another worker takes the work over.
    a = subprocess.Popen([DTKG, "works", "download", "--json"], env=env("a"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: origin.stats("/W201.pdf").body_bytes >= 64 * 1024, 60, "worker a mid-stream")
    a.send_signal(signal.SIGKILL)
    a.communicate(timeout=30)
    assert job("W201")[0] in ("LEASED", "STREAMING") and job("W201")[1] is not None  # the dead worker's lease
    early = dtkg(env("b"), "works", "download", "--json")
    assert early.returncode == 0 and json.loads(early.stdout)["works"] == 0  # nothing to take over yet
    assert origin.stats("/W201.pdf").get_requests == 1
    _wait_for(lambda: ledger_rows(ledger_url, "SELECT lease_expires_at < extract(epoch FROM now()) FROM "
                                              "artifact_jobs WHERE work_id = 'W201'")[0][0], 30, "lease expiry")
    after = dtkg(env("b"), "works", "download", "--json")
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout).get("downloaded") == 1
    assert origin.stats("/W201.pdf").get_requests == 2
    state, owner, _, _ = job("W201")
    assert state == "INDEXED" and owner is None
    assert (store / "works" / "W201.pdf").read_bytes() == body1

    # SIGSTOP mid-stream, lease expires, another worker finishes; SIGCONT: the late write is fenced off.
    assert dtkg(env("c"), "works", "import", str(write_works(tmp_path / "w2.jsonl", {"W202": urls["W202"]}))
                ).returncode == 0
    c = subprocess.Popen([DTKG, "works", "download", "--json"], env=env("c"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: origin.stats("/W202.pdf").body_bytes >= 64 * 1024, 60, "worker c mid-stream")
    c.send_signal(signal.SIGSTOP)
    try:
        _, c_owner, c_token, _ = job("W202")
        _wait_for(lambda: ledger_rows(ledger_url, "SELECT lease_expires_at < extract(epoch FROM now()) FROM "
                                                  "artifact_jobs WHERE work_id = 'W202'")[0][0], 30, "lease expiry")
        d = dtkg(env("d"), "works", "download", "--json")
        assert d.returncode == 0 and json.loads(d.stdout).get("downloaded") == 1, d.stdout + d.stderr
        d_run = json.loads(d.stdout)["run_id"]
    finally:
        c.send_signal(signal.SIGCONT)
    c_out, c_err = c.communicate(timeout=120)
    assert "Traceback" not in c_err, c_err
    assert json.loads(c_out).get("downloaded") is None, c_out  # the stopped worker committed nothing
    state, owner, token, run_id = job("W202")
    assert (state, owner, run_id) == ("INDEXED", None, d_run) and token > c_token
    # Only the finishing worker's records: one version, one blob reference, its attempt only.
    jid = ledger_rows(ledger_url, "SELECT job_id FROM artifact_jobs WHERE work_id = 'W202'")[0][0]
    assert ledger_rows(ledger_url, "SELECT count(*) FROM work_versions WHERE work_id = 'W202'") == [(1,)]
    assert ledger_rows(ledger_url, "SELECT run_id FROM http_attempts WHERE job_id = %s", [jid]) == [(d_run,)]
    assert ledger_rows(ledger_url, "SELECT ref_count FROM blobs WHERE sha256 = %s",
                       [hashlib.sha256(body2).hexdigest()]) == [(1,)]
    assert not ledger_rows(ledger_url, "SELECT 1 FROM artifact_ops WHERE owner = %s", [c_owner])
    assert (store / "works" / "W202.pdf").read_bytes() == body2


def _processes_with_home(home: str) -> list[int]:
    """Pids of other processes whose environment names `home` as DTKG_HOME."""
    needle = f"DTKG_HOME={home}\0".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes() + b"\0":
                    pids.append(int(entry.name))
    return pids


def test_the_daemon_runs_several_download_runs_at_once_on_postgresql(
    tmp_path: Path, origin: OriginServer, pg_cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dagster on PostgreSQL storage with the queued run coordinator (dagster.postgres.yaml as `dtkg`
    writes it for a PostgreSQL ledger): one tick of the daemon's run queue starts both queued download
    runs (no `ledger` pool limit of 1), the run launcher executes them in processes of their own at the
    same time, and each stores its work once in the shared ledger."""
    import dagster as dg
    from dagster._cli.job import _create_run
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

    from dtkg_assets.core.ledger import Ledger
    from dtkg_assets.core.types import Candidate, WorkRecord
    from dtkg_assets.defs.instance import dagster_pg_url
    from dtkg_assets.defs.partitions import ARTIFACT_PARTITIONS_NAME
    from dtkg_assets.defs.sensors import RANGE_END, RANGE_START

    ledger_url, dagster_url = pg_cluster.create_database("daemon_ledger"), pg_cluster.create_database("daemon_dagster")
    ids = ["W401", "W402"]
    # Each body stalls 5 s midway: a run lasts longer than the skew between run processes started together,
    # also while the parallel test pass loads the machine.
    stall = FaultMode(stall_after_bytes=16 * 1024, stall_s=5.0, stall_times=1)
    bodies = {w: pdf_bytes(60_000 + i, seed=40 + i) for i, w in enumerate(ids)}
    urls = {w: origin.add(f"/{w}.pdf", bodies[w], stall) for w in ids}
    # The code server and the run processes it starts inherit this environment.
    env = fleet_env(tmp_path / "home", ledger_url, dagster_pg_url(dagster_url), tmp_path / "shared-store")
    for name, value in env.items():
        if name.startswith(("DTKG_", "DAGSTER_")):
            monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    with Ledger.open_writer(settings, owner="test") as led:
        led.plan([WorkRecord(w, [Candidate(urls[w], "best_oa_location.pdf_url")], title=f"Work {w}") for w in ids])
    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "dagster.yaml").write_text(instance_yaml(settings))
    try:
        with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance, WorkspaceProcessContext(
                instance, ModuleTarget("dtkg_assets.definitions", None, str(Path(__file__).resolve().parents[2]), None)
        ) as workspace:
            instance.add_dynamic_partitions(ARTIFACT_PARTITIONS_NAME, ids)
            request = workspace.create_request_context()
            location = request.get_code_location(request.code_location_names[0])
            repo = next(iter(location.get_repositories().values()))
            job = repo.get_full_job("artifact_pdfs_job")
            runs = []
            for w in ids:
                run = _create_run(instance=instance, code_location=location, remote_repo=repo, remote_job=job,
                                  run_config={}, tags={RANGE_START: w, RANGE_END: w}, op_selection=None, run_id=None)
                runs.append(instance.submit_run(run.run_id, request).run_id)
            assert {instance.get_run_by_id(r).status for r in runs} == {dg.DagsterRunStatus.QUEUED}
            list(QueuedRunCoordinatorDaemon(interval_seconds=1).run_iteration(workspace))
            # One tick dequeued both: neither waits for a ledger pool slot.
            assert dg.DagsterRunStatus.QUEUED not in {instance.get_run_by_id(r).status for r in runs}
            _wait_for(lambda: all(instance.get_run_by_id(r).is_finished for r in runs), 180, "the runs")
            records = instance.get_run_records(dg.RunsFilter(run_ids=runs))
    finally:
        # The code server the workspace started does not always exit with it: end every process that
        # inherited this test's home (the code server, its helpers, any run left behind).
        for pid in _processes_with_home(env["DTKG_HOME"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert {r.dagster_run.status for r in records} == {dg.DagsterRunStatus.SUCCESS}
    # They executed at once: each started before any other ended.
    assert max(r.start_time for r in records) < min(r.end_time for r in records)
    stored = ledger_rows(ledger_url, "SELECT work_id, state, run_id, sha256 FROM artifact_jobs ORDER BY work_id")
    assert [(w, s, sha) for w, s, _, sha in stored] == [
        (w, "INDEXED", hashlib.sha256(bodies[w]).hexdigest()) for w in ids]
    assert sorted(r for _, _, r, _ in stored) == sorted(runs)
    assert [origin.stats(f"/{w}.pdf").get_requests for w in ids] == [1, 1]


# ---- automation on the PostgreSQL ledger ---------------------------------------------------------


def test_sensors_checks_and_lease_release_read_and_write_the_postgresql_ledger(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With DTKG_LEDGER_URL set, the reconcile sensor reads the PostgreSQL ledger (files it calls finished,
    expired leases), the lease release the failure sensor requests writes it, the next tick sees that
    write, and the asset checks judge files against it; no DuckDB ledger appears in the home."""
    import dagster as dg

    from dtkg_assets.core.ledger import Ledger
    from dtkg_assets.core.store import Store
    from dtkg_assets.core.types import Candidate, WorkRecord
    from dtkg_assets.definitions import build_definitions
    from dtkg_assets.defs.jobs import release_leases_job
    from dtkg_assets.defs.partitions import ARTIFACT_PARTITIONS_NAME
    from dtkg_assets.defs.resources import default_resources
    from dtkg_assets.defs.sensors import RANGE_END, RANGE_START, _release_request, reconcile_sensor

    home = tmp_path / "home"
    for name, value in loopback_env(home, DTKG_LEDGER_URL=pg_url).items():
        if name.startswith("DTKG_"):
            monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    assert settings.ledger_is_postgres
    ids = ["W1", "W2", "W3", "W4", "W5"]
    body = pdf_bytes(20_000, seed=3)
    sha = hashlib.sha256(body).hexdigest()
    with Ledger.open_writer(settings, owner="test") as led:
        led.plan([WorkRecord(w, [Candidate(f"http://127.0.0.1:9/{w}.pdf", "best_oa_location.pdf_url")],
                             title=f"Work {w}") for w in ids])
        jobs = {w: js[0].job_id for w, js in led.jobs_for_works(ids).items()}
        # W3: the lease of a worker long gone, expired.
        assert led.lease(jobs["W3"], "run:gone", ttl_s=60, now=time.time() - 3600) is not None
    # W1 and W2 finished; W2's file is gone since. W5 was never tried.
    ledger_rows(pg_url, "UPDATE artifact_jobs SET state = 'INDEXED', sha256 = %s, bytes = %s, path = %s "
                        "WHERE work_id IN ('W1', 'W2') RETURNING 1", [sha, len(body), f"works/{sha}.pdf"])
    Store(settings).work_path("W1").parent.mkdir(parents=True, exist_ok=True)
    Store(settings).work_path("W1").write_bytes(body)

    defs = build_definitions(str(home))
    resources = default_resources(str(home))

    def tick(cursor: str | None) -> dg.SensorResult:
        with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as ctx:
            return reconcile_sensor.evaluate_tick(ctx)

    def ranges(data: dg.SensorResult) -> list[tuple[str, str]]:
        return [(r.tags[RANGE_START], r.tags[RANGE_END]) for r in data.run_requests or [] if RANGE_START in r.tags]

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(ARTIFACT_PARTITIONS_NAME, ids)
        # W4: a live lease of a download run that died.
        dead = instance.create_run_for_job(defs.resolve_job_def("artifact_pdfs_job"),
                                           tags={RANGE_START: "W4", RANGE_END: "W4"},
                                           status=dg.DagsterRunStatus.FAILURE)
        with Ledger.open_writer(settings, owner="test") as led:
            assert led.lease(jobs["W4"], f"run:{dead.run_id}", run_id=dead.run_id, ttl_s=3600) is not None
        first = tick(None)
        # Redo W2 (file gone) and W3 (lease expired); W4 is in flight, W5 is the user's: one window.
        assert ranges(first) == [("W2", "W3")]
        # The failure sensor's request for the dead run releases its lease.
        request = _release_request(dead)
        assert isinstance(request, dg.RunRequest)
        released = release_leases_job.execute_in_process(
            instance=instance, resources=resources, run_config=request.run_config)
        assert released.success and released.output_for_node("release_run_leases") == 1
        assert ledger_rows(pg_url, "SELECT state, lease_owner, last_reason FROM artifact_jobs WHERE work_id = 'W4'"
                           ) == [("PLANNED", None, "lease_lost")]
        # The next tick reads that write: W4 is now to redo as well.
        assert ranges(tick(first.cursor)) == [("W2", "W4")]
        # The asset checks over W1-W2 judge the files against the PostgreSQL ledger's sha256.
        checked = defs.resolve_job_def("artifact_checks_job").execute_in_process(
            instance=instance, tags={RANGE_START: "W1", RANGE_END: "W2"})
        assert checked.success
        verdicts = {
            (e.event_specific_data.partition, e.event_specific_data.check_name): e.event_specific_data.passed
            for e in checked.all_events if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION}
        assert verdicts[("W1", "artifact_pdf_verified")] is True
        assert verdicts[("W2", "artifact_pdf_verified")] is False
        assert {p for p, _ in verdicts} == {"W1", "W2"}
    assert not list(home.rglob("*.duckdb"))


def test_works_retry_finds_failed_works_on_the_postgresql_ledger(tmp_path: Path, pg_url: str) -> None:
    """`dtkg works retry` chooses from `failed_jobs`: on PostgreSQL too, each failed job of a work with
    nothing left to try, with its reason, its host and the work's reason (its last candidate's that is
    not a weak one: W3's `offline` after a 403 reports the 403)."""
    from dtkg_assets.core.ledger import Ledger
    from dtkg_assets.core.ledger.queries import failed_jobs
    from dtkg_assets.core.types import Candidate, WorkRecord

    settings = Settings().with_home(tmp_path).replace(ledger={"url": pg_url})
    with Ledger.open_writer(settings, owner="test") as led:
        led.plan([WorkRecord("W1", [Candidate("http://Mirror.Example:8080/a.pdf", "best_oa_location.pdf_url"),
                                    Candidate("https://u@pubs.example/b.pdf", "locations[1].pdf_url")]),
                  WorkRecord("W2", [Candidate("http://127.0.0.1:9/c.pdf", "best_oa_location.pdf_url")]),
                  WorkRecord("W3", [Candidate("http://127.0.0.1:9/d.pdf", "best_oa_location.pdf_url"),
                                    Candidate("https://doi.org/10.5555/d", "doi")])])
        for work, reasons in (("W1", ("http_404", "no_pdf_link")), ("W3", ("forbidden", "offline"))):
            for job, reason in zip(led.jobs_for_work(work), reasons, strict=True):
                lease = led.lease(job.job_id, "run:test")
                assert lease is not None
                lease.fail(reason=reason)
        assert sorted(failed_jobs(led)) == sorted([
            ("W1", led.jobs_for_work("W1")[0].job_id, "http_404", "mirror.example", "no_pdf_link"),
            ("W1", led.jobs_for_work("W1")[1].job_id, "no_pdf_link", "pubs.example", "no_pdf_link"),
            ("W3", led.jobs_for_work("W3")[0].job_id, "forbidden", "127.0.0.1", "forbidden"),
            ("W3", led.jobs_for_work("W3")[1].job_id, "offline", "doi.org", "forbidden")])


def test_works_import_in_batches_on_the_postgresql_ledger_is_idempotent(tmp_path: Path, pg_url: str) -> None:
    """The import path (batches on a helper thread, `bulk_load`) on PostgreSQL: every work and job
    once, the bad line reported once, and a second import of the same file adds nothing."""
    from dtkg_assets.core.ledger import Ledger
    from dtkg_assets.core.sources import WorksSource, import_works

    source = write_works(tmp_path / "works.jsonl", {f"W{i}": [f"http://127.0.0.1:9/{i}.pdf"] for i in range(1, 8)})
    with source.open("a") as f:
        f.write("{not json\n")
    settings = Settings().with_home(tmp_path).replace(ledger={"url": pg_url})
    summaries = []
    for run in ("r1", "r2"):
        with import_works(WorksSource(jsonl_path=str(source)), settings,
                          lambda: Ledger.open_writer(settings, owner="test"), run_id=run, batch_size=2) as report:
            assert list(report.work_ids()) == [f"W{i}" for i in range(1, 8)]
            summaries.append({k: v for k, v in report.summary.items() if k != "provenance"})
    assert summaries == [{"works": 7, "new_works": 7, "new_jobs": 7, "problems": 1},
                         {"works": 7, "new_works": 0, "new_jobs": 0, "problems": 1}]
    assert ledger_rows(pg_url, "SELECT count(*) FROM input_problems") == [(1,)]
    assert ledger_rows(pg_url, "SELECT count(DISTINCT work_id), count(*) FROM artifact_jobs") == [(7, 7)]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
