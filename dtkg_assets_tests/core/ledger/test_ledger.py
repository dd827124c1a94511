"""Ledger: schema/migrations/repair/health, the state table, leases and fencing, exactly-once ops."""

from __future__ import annotations

import itertools

import duckdb
import pytest

from dtkg_assets.core.ledger import (
    IN_FLIGHT,
    SCHEMA_VERSION,
    TRANSITIONS,
    IllegalTransition,
    Lease,
    LeaseGrant,
    LeaseLost,
    Ledger,
    State,
    job_id_for,
)
from dtkg_assets.core.ledger.states import check_transition
from dtkg_assets.core.settings import Settings
from dtkg_assets.core.types import Candidate, FetchResult, HttpAttempt, WorkRecord

BACKENDS = ["duckdb", "postgresql"]


def backend_settings(settings: Settings, backend: str, request) -> Settings:
    """The same settings on the DuckDB file (default) or on a fresh PostgreSQL database."""
    if backend == "duckdb":
        return settings
    return settings.replace(ledger={"url": request.getfixturevalue("pg_url")})


def base_settings(home) -> Settings:
    return Settings().with_home(home).replace(
        ledger={"lease_ttl_s": 60.0, "max_attempts": 3, "retry_backoff_s": 10.0, "retry_backoff_max_s": 25.0}
    )


@pytest.fixture(params=BACKENDS)
def lsettings(tmp_path, request):
    return backend_settings(base_settings(tmp_path), request.param, request)


@pytest.fixture
def duckdb_settings(tmp_path) -> Settings:
    """DuckDB file specifics (its migrations, dropped objects, snapshot): the default backend only."""
    return base_settings(tmp_path)


@pytest.fixture
def pg_settings(tmp_path, pg_url) -> Settings:
    """The PostgreSQL schema only."""
    return base_settings(tmp_path).replace(ledger={"url": pg_url})


@pytest.fixture
def ledger(lsettings):
    led = Ledger.open_writer(lsettings, owner="test")
    yield led
    led.close()


@pytest.fixture(scope="module", params=BACKENDS)
def shared_ledger(tmp_path_factory, request):
    settings = Settings().with_home(tmp_path_factory.mktemp("shared"))
    if request.param == "postgresql":
        settings = settings.replace(ledger={"url": request.getfixturevalue("pg_cluster").create_database("shared")})
    led = Ledger.open_writer(settings, owner="test")
    yield led
    led.close()


def work(i: int, n: int = 2) -> WorkRecord:
    return WorkRecord(
        work_id=f"W{i}",
        candidates=[Candidate(f"http://127.0.0.1:9/w{i}/c{k}.pdf", "best_oa_location.pdf_url") for k in range(n)],
        doi=f"10.1/{i}",
        title=f"Work {i}",
        publication_year=2020,
        origin="test",
    )


def stored(job_url: str, sha: str = "a" * 64, status: str = "stored") -> FetchResult:
    return FetchResult(
        status=status,  # type: ignore[arg-type]
        reason="ok", decision="fresh", url=job_url, final_url=job_url, sha256=sha,
        path=f"/store/works/{sha[:6]}.pdf", blob_path=f"/store/{sha[:2]}/{sha}.pdf", bytes=1234, elapsed_s=0.5,
        http_status=200,
        http_attempts=[HttpAttempt("HEAD", job_url, "127.0.0.1:9", 200, 0, 0.01),
                       HttpAttempt("GET", job_url, "127.0.0.1:9", 200, 1234, 0.4)],
    )


def walk(lease):
    for st in (State.RESUME_OK, State.STREAMING):
        lease.stage(st)


# ------------------------------------------------------------------ schema


def test_migrations_are_forward_only_and_idempotent(duckdb_settings):
    lsettings = duckdb_settings
    for _ in range(2):
        with Ledger.open_writer(lsettings) as led:
            assert led.query("SELECT version FROM schema_version ORDER BY version") == [
                (v,) for v in range(1, SCHEMA_VERSION + 1)]
            indexes = {r[0] for r in led.query("SELECT index_name FROM duckdb_indexes()")}
            assert indexes == {"idx_jobs_work", "idx_ops_job"}  # v2 dropped the state and lease indexes
            assert led.validate() == []
            assert led.health()["status"] == "healthy"


def test_v1_ledger_migrates_forward_keeping_rows(duckdb_settings):
    """A ledger written at version 1 (with its state and lease indexes) opens at the latest version."""
    lsettings = duckdb_settings
    with Ledger.open_writer(lsettings) as led:
        led.plan([work(i) for i in range(5)])
        cur = led.cursor()
        cur.execute("CREATE INDEX idx_jobs_state_eligible ON artifact_jobs(state, next_eligible_at)")
        cur.execute("CREATE INDEX idx_jobs_lease ON artifact_jobs(lease_expires_at)")
        cur.execute("DELETE FROM schema_version WHERE version > 1")
    with Ledger.open_writer(lsettings) as led:
        assert led.query("SELECT max(version) FROM schema_version") == [(SCHEMA_VERSION,)]
        assert {r[0] for r in led.query("SELECT index_name FROM duckdb_indexes()")} == {"idx_jobs_work", "idx_ops_job"}
        assert led.query("SELECT count(*) FROM artifact_jobs") == [(10,)]
        assert led.validate() == []


def test_v4_ledger_gets_yield_views_that_read_only_tried_jobs(duckdb_settings):
    """Migration 5 re-creates the yield views by host and by source as filters on tried jobs: the same
    rows as the grouped form a version-4 ledger holds, a host or source with only planned jobs absent."""
    from dtkg_assets.core.ledger import views

    tried = views._TRIED  # noqa: SLF001 (the condition both forms share)
    grouped = {name: views.create_statements()[name].replace(
        f"WHERE {tried} GROUP BY host", f"GROUP BY host HAVING count(*) FILTER (WHERE {tried}) > 0").replace(
        f"WHERE {tried} GROUP BY 1", f"GROUP BY 1 HAVING count(*) FILTER (WHERE {tried}) > 0")
        for name in views.TRIED_ONLY_YIELD_NAMES}
    assert all("HAVING" in sql for sql in grouped.values())
    queries = {name: f"SELECT * FROM {name}" for name in views.TRIED_ONLY_YIELD_NAMES}
    with Ledger.open_writer(duckdb_settings) as led:
        led.plan([work(i) for i in range(6)])
        cur = led.cursor()
        cur.execute("UPDATE artifact_jobs SET host = 'planned-only.example' WHERE work_id = 'W5'")
        cur.execute("UPDATE artifact_jobs SET candidate_source = 'locations[2].pdf_url' WHERE work_id = 'W4'")
        cur.execute("UPDATE artifact_jobs SET state = 'INDEXED', sha256 = repeat('a', 64), bytes = 10 "
                    "WHERE work_id IN ('W0', 'W1') AND candidate_rank = 0")
        cur.execute("UPDATE artifact_jobs SET state = 'FAILED', failure_class = 'permanent', last_reason = 'http_404' "
                    "WHERE work_id IN ('W2', 'W4')")
        for sql in grouped.values():
            cur.execute(sql)
        cur.execute("DELETE FROM schema_version WHERE version > 4")
        before = {name: led.query(q) for name, q in queries.items()}
    with Ledger.open_writer(duckdb_settings) as led:
        assert led.query("SELECT max(version) FROM schema_version") == [(SCHEMA_VERSION,)]
        after = {name: led.query(q) for name, q in queries.items()}
        definitions = dict(led.query("SELECT view_name, sql FROM duckdb_views() WHERE view_name LIKE 'v_yield_%'"))
    assert after == before
    assert [r[0] for r in after["v_yield_hosts"]] == ["127.0.0.1"]  # W5's host had nothing tried
    assert {r[0] for r in after["v_yield_sources"]} == {"best_oa_location.pdf_url", "locations[].pdf_url"}
    assert all("HAVING" not in definitions[name] for name in views.TRIED_ONLY_YIELD_NAMES)


def test_postgres_migrations_and_repair(pg_settings):
    """PostgreSQL: versioned forward-only migrations (idempotent across opens), health, and repair that
    restores dropped objects while keeping every row."""
    lsettings = pg_settings
    from dtkg_assets.core.ledger import pg_schema

    for _ in range(2):
        with Ledger.open_writer(lsettings) as led:
            assert led.query("SELECT version FROM schema_version ORDER BY version") == [
                (v,) for v in range(1, pg_schema.LATEST + 1)]
            assert led.health()["status"] == "healthy" and led.validate() == []
    with Ledger.open_writer(lsettings) as led:
        led.plan([work(i) for i in range(20)])
        led.cursor().execute("DROP VIEW v_hosts")
        led.cursor().execute("DROP TABLE runs CASCADE")  # and v_runs with it
        assert {"missing view v_hosts", "missing view v_runs", "missing table runs"} <= set(led.validate())
        assert led.health()["status"] == "unhealthy"
        assert led.repair() == ["restored: missing table runs", "restored: missing view v_hosts",
                                "restored: missing view v_runs"]
        assert led.validate() == [] and led.health()["row_counts"]["artifact_jobs"] == 40
        assert led.repair() == []


def test_postgres_claim_waits_for_a_row_another_transaction_is_deciding(pg_settings):
    """A claim skips rows other transactions hold (SKIP LOCKED), then waits briefly for them, so it
    answers from the outcome: taken by the other (None) or still free (granted)."""
    lsettings = pg_settings
    import threading

    import psycopg

    with Ledger.open_writer(lsettings, owner="test") as led:
        led.plan([work(1, 1), work(2, 1)])
        j1, j2 = (led.jobs_for_work(f"W{i}")[0].job_id for i in (1, 2))
        for jid, commit, expect_granted in ((j1, True, False), (j2, False, True)):
            other = psycopg.connect(lsettings.ledger.url)
            other.execute("UPDATE dtkg.artifact_jobs SET state = 'LEASED', lease_owner = 'other', "
                          "lease_expires_at = 1e12, fencing_token = fencing_token + 1 WHERE job_id = %s", [jid])
            answer: list = []
            claim = threading.Thread(target=lambda j=jid, out=answer: out.append(led.lease(j, "me")))
            claim.start()
            claim.join(0.3)
            assert claim.is_alive()  # waiting for the other transaction's outcome
            (other.commit if commit else other.rollback)()
            other.close()
            claim.join(10)
            assert (answer[0] is not None) is expect_granted


def test_plan_is_idempotent_and_bulk(ledger):
    works = [work(i, 3) for i in range(500)]
    assert ledger.plan(works) == (500, 1500)
    assert ledger.plan(works) == (0, 0)
    jobs = ledger.jobs_for_work("W7")
    assert [j.candidate_rank for j in jobs] == [0, 1, 2]
    assert jobs[0].job_id == job_id_for("W7", "HTTP://127.0.0.1:9/w7/c0.pdf#frag")  # canonical URL
    assert {j.state for j in jobs} == {"PLANNED"}


def test_batch_lookups_are_answered_by_the_key_index(duckdb_settings):
    """A run's works (100) and a group commit's jobs are looked up through the key's index, in the
    writer and in a snapshot reader: a scan of the whole key column grows with the ledger."""
    with Ledger.open_writer(duckdb_settings, owner="test") as led:
        led.plan([work(i, 2) for i in range(3000)])
        works = [f"W{i}" for i in range(1000, 1100)]
        jobs = [job_id for w in works[:16] for job_id in (j.job_id for j in led.jobs_for_work(w))]
        assert sum(len(v) for v in led.jobs_for_works(works).values()) == 200
        for sql, keys in (("SELECT * FROM artifact_jobs WHERE work_id IN (SELECT unnest($1))", works),
                          ("SELECT * FROM artifact_jobs WHERE job_id IN (SELECT unnest($1))", jobs)):
            assert "Index Scan" in led.query("EXPLAIN ANALYZE " + sql, [keys])[0][1]
    with Ledger.open_reader(duckdb_settings) as reader:
        other = duckdb.connect(str(duckdb_settings.snapshot_path), read_only=True)  # e.g. a notebook's
        assert other.execute("SELECT count(*) FROM works").fetchall() == [(3000,)]
        other.close()
        plan = reader.query("EXPLAIN ANALYZE SELECT * FROM artifact_jobs WHERE work_id IN (SELECT unnest($1))",
                            [works])[0][1]
        assert "Index Scan" in plan


def test_repair_restores_dropped_objects_and_keeps_all_rows(duckdb_settings):
    with Ledger.open_writer(duckdb_settings, owner="test") as ledger:
        check_repair_keeps_rows(ledger)


def check_repair_keeps_rows(ledger: Ledger) -> None:
    ledger.plan([work(i) for i in range(50)])
    before = ledger.health()["row_counts"]
    cur = ledger.cursor()
    cur.execute("DROP INDEX idx_jobs_work")
    cur.execute("DROP VIEW v_hosts")
    cur.execute("DROP TABLE runs")
    problems = ledger.validate()
    assert "missing index idx_jobs_work" in problems
    assert "missing view v_hosts" in problems and "missing table runs" in problems
    assert ledger.health()["status"] == "unhealthy"
    actions = ledger.repair()
    assert actions == ["created table runs", "created index idx_jobs_work", "recreated view v_hosts"]
    assert ledger.validate() == []
    after = ledger.health()["row_counts"]
    assert after["works"] == before["works"] == 50 and after["artifact_jobs"] == before["artifact_jobs"] == 100
    assert ledger.query("SELECT count(*) FROM maintenance_log WHERE action = 'repair'") == [(3,)]
    assert ledger.repair() == []  # nothing left to do


def test_health_degraded_on_data_problems(ledger):
    ledger.plan([work(1)])
    ledger.cursor().execute("INSERT INTO blobs VALUES ('x', '/x', 1, -1, 0, 0)")
    h = ledger.health()
    assert h["status"] == "degraded" and h["problems"] == ["1 blobs with a negative ref_count"]


# ------------------------------------------------------------------ state machine

ALL_PAIRS = list(itertools.product(list(State), list(State)))


@pytest.mark.parametrize(("src", "dst"), ALL_PAIRS, ids=[f"{a}->{b}" for a, b in ALL_PAIRS])
def test_transition_table_enforced_on_write(shared_ledger, src, dst):
    ledger = shared_ledger
    wid = f"T-{src.value}-{dst.value}"
    ledger.plan([WorkRecord(wid, [Candidate(f"http://127.0.0.1:9/{wid}.pdf", "x")])])
    jid = ledger.jobs_for_work(wid)[0].job_id
    # Put the job in `src` holding a lease (direct SQL: this test is about the write check).
    ledger.cursor().execute(
        "UPDATE artifact_jobs SET state = ?, lease_owner = 'me', fencing_token = 7 WHERE job_id = ?", [src.value, jid]
    )
    lease = Lease(ledger.commits, LeaseGrant(jid, wid, "me", 7, 1, None, None), ttl_s=10)
    lease.state = lease.target = src
    if (src, dst) in TRANSITIONS:
        lease.stage(dst)
        lease.flush()
        assert ledger.job(jid).state == dst.value
    else:
        with pytest.raises(IllegalTransition) as info:
            lease.stage(dst)
        assert jid in str(info.value) and f"{src.value} -> {dst.value}" in str(info.value)
        assert ledger.job(jid).state == src.value  # nothing written


def test_transition_table_shape():
    assert (State.PLANNED, State.LEASED) in TRANSITIONS
    for a, b in itertools.pairwise(
        [State.PLANNED, State.LEASED, State.HEAD_DONE, State.RESUME_OK, State.STREAMING, State.FINALIZED, State.INDEXED]
    ):
        check_transition("j", a, b)
    for terminal in (State.INDEXED, State.DEDUPED, State.SKIPPED_DUPLICATE):
        assert {b for a, b in TRANSITIONS if a == terminal} == {State.PLANNED}  # only the explicit requeue
    assert all((s, State.FAILED) in TRANSITIONS for s in IN_FLIGHT)


# ------------------------------------------------------------------ leases and fencing


def test_lease_expiry_takeover_and_stale_token_refused(ledger):
    ledger.plan([work(1, 1)])
    jid = ledger.jobs_for_work("W1")[0].job_id
    a = ledger.lease(jid, "a", ttl_s=30, now=1000.0)
    assert a is not None and a.token == 1
    assert ledger.lease(jid, "b", ttl_s=30, now=1010.0) is None  # live lease
    a.stage(State.RESUME_OK)
    a.renew(ttl_s=30, now=1011.0)
    b = ledger.lease(jid, "b", ttl_s=30, now=1100.0)  # expired: takeover with a new token
    assert b is not None and b.token == 2
    job = ledger.job(jid)
    assert (job.state, job.lease_owner, job.attempts) == ("LEASED", "b", 2)
    with pytest.raises(LeaseLost) as info:
        a.renew()
    assert info.value.reason.value == "lease_lost"
    a.record_effect("FINALIZE", "k", lambda: {"ran": True})  # runs (idempotent on disk), never recorded
    with pytest.raises(LeaseLost):
        a.complete(stored("http://x/"))
    assert ledger.query("SELECT count(*) FROM artifact_ops") == [(0,)]
    b.renew()
    walk(b)
    assert b.complete(stored(job.url)) == State.INDEXED
    assert ledger.query("SELECT sha256, ref_count FROM blobs") == [("a" * 64, 1)]
    assert ledger.query("SELECT count(*) FROM http_attempts WHERE job_id = ?", [jid]) == [(2,)]


def test_backend_refuses_a_write_from_a_state_the_row_left(ledger):
    """The transition is enforced against the row (guarded update), not only against the holder's copy."""
    ledger.plan([work(1, 1)])
    jid = ledger.jobs_for_work("W1")[0].job_id
    lease = ledger.lease(jid, "w", ttl_s=30)
    ledger.cursor().execute("UPDATE artifact_jobs SET state = 'STREAMING' WHERE job_id = ?", [jid])
    lease.stage(State.RESUME_OK)
    with pytest.raises(IllegalTransition):
        lease.flush()
    assert ledger.job(jid).state == "STREAMING"


def test_transient_failure_backoff_then_retries_exhausted(ledger):
    ledger.plan([work(1, 1)])
    jid = ledger.jobs_for_work("W1")[0].job_id
    now = 1000.0
    backoffs = []
    for attempt in (1, 2):
        lease = ledger.lease(jid, "w", now=now)
        assert lease is not None and ledger.job(jid).attempts == attempt
        assert lease.fail(reason="http_5xx", detail="503", now=now) == "transient"
        job = ledger.job(jid)
        backoffs.append(job.next_eligible_at - now)
        assert ledger.lease(jid, "w", now=now + 1) is None  # not yet eligible
        now = job.next_eligible_at
    assert backoffs == [10.0, 20.0]
    lease = ledger.lease(jid, "w", now=now)
    assert lease.fail(reason="timeout", now=now) == "permanent"
    job = ledger.job(jid)
    assert (job.state, job.failure_class, job.last_reason, job.attempts) == ("FAILED", "permanent",
                                                                            "retries_exhausted", 3)
    assert ledger.lease(jid, "w", now=now + 1e6) is None


def test_permanent_failure_not_retried_and_requeue_reopens(ledger):
    ledger.plan([work(1, 1)])
    jid = ledger.jobs_for_work("W1")[0].job_id
    lease = ledger.lease(jid, "w")
    assert lease.fail(reason="http_404") == "permanent"
    assert ledger.lease(jid, "w", now=1e12) is None
    assert ledger.requeue(jid, reason="operator")
    assert ledger.job(jid).state == "PLANNED"
    assert ledger.lease(jid, "w").token == lease.token + 3  # fail, requeue and acquire each bump the token


def test_expire_and_release_leases(ledger):
    ledger.plan([work(i, 1) for i in range(3)])
    ids = [ledger.jobs_for_work(f"W{i}")[0].job_id for i in range(3)]
    leases = [ledger.lease(j, "dead", ttl_s=10, run_id="r1", now=100.0) for j in ids]
    leases[0].stage(State.RESUME_OK)
    leases[0].renew(ttl_s=5, now=100.0)
    assert ledger.expire_leases(now=104.0) == 0
    assert ledger.release_leases(run_id="r1") == 3
    assert {ledger.job(j).state for j in ids} == {"PLANNED"}
    assert ledger.job(ids[0]).attempts == 1
    leases[0].stage(State.STREAMING)
    with pytest.raises(LeaseLost):
        leases[0].flush()


# ------------------------------------------------------------------ effects


def test_effect_records_are_written_with_the_completion(ledger):
    ledger.plan([work(1, 1)])
    jid = ledger.jobs_for_work("W1")[0].job_id
    lease = ledger.lease(jid, "w")
    walk(lease)
    out = lease.record_effect("FINALIZE", "a" * 64, lambda: {"path": "/store/aa/a.pdf", "created": True})
    assert out == {"path": "/store/aa/a.pdf", "created": True}
    lease.record_effect("LINK", "W1", lambda: {"path": "/w1"})
    assert ledger.query("SELECT count(*) FROM artifact_ops") == [(0,)]  # nothing per effect
    assert lease.complete(stored(ledger.job(jid).url)) == State.INDEXED
    rows = ledger.query("SELECT op_type, result_code, runs, json_valid(result_json::VARCHAR), finished_at IS NOT NULL "
                        "FROM artifact_ops ORDER BY op_type")
    assert rows == [("FINALIZE", "OK", 1, True, True), ("LINK", "OK", 1, True, True)]
    # Reopened and done again: the same op keys are re-run, not duplicated.
    assert ledger.requeue(jid, reason="file_missing")
    again = ledger.lease(jid, "w2")
    walk(again)
    again.record_effect("FINALIZE", "a" * 64, lambda: {"path": "/store/aa/a.pdf", "created": False})
    again.complete(stored(ledger.job(jid).url))
    assert ledger.query("SELECT op_type, owner, runs FROM artifact_ops ORDER BY op_type") == [
        ("FINALIZE", "w2", 2), ("LINK", "w", 1)]


def test_group_commit_batches_many_works_into_few_transactions(ledger):
    """16 threads leasing and completing 64 works: far fewer transactions than writes, every work
    committed exactly once, and a stale holder in the same batches is refused alone."""
    import threading

    ledger.plan([work(i, 1) for i in range(64)])
    jobs = [ledger.jobs_for_work(f"W{i}")[0] for i in range(64)]
    stale = ledger.lease(jobs[0].job_id, "old", ttl_s=10, now=100.0)
    tx0 = ledger.stats.transactions
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)

    def worker(k: int) -> None:
        barrier.wait()
        for job in jobs[k::16]:
            lease = ledger.lease(job.job_id, f"t{k}")
            assert lease is not None
            walk(lease)
            lease.complete(stored(job.url, f"{job.work_id:0>64}"[-64:]))
        if k == 0:
            try:
                stale.complete(stored(jobs[0].url))
            except LeaseLost as exc:
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 1
    assert ledger.query("SELECT count(*) FROM artifact_jobs WHERE state = 'INDEXED'") == [(64,)]
    assert ledger.query("SELECT count(*), sum(ref_count) FROM blobs") == [(64, 64)]
    assert ledger.query("SELECT count(*) FROM http_attempts") == [(128,)]
    used = ledger.stats.transactions - tx0
    assert used < 128, used  # 64 leases + 64 completions + 1 refusal, batched


def test_dedupe_and_skip_other_candidates(ledger):
    ledger.plan([work(1, 3), work(2, 1)])
    j1 = ledger.jobs_for_work("W1")
    lease = ledger.lease(j1[1].job_id, "w")
    walk(lease)
    lease.complete(stored(j1[1].url, "b" * 64))
    assert [j.state for j in ledger.jobs_for_work("W1")] == ["SKIPPED_DUPLICATE", "INDEXED", "SKIPPED_DUPLICATE"]
    j2 = ledger.jobs_for_work("W2")[0]
    lease = ledger.lease(j2.job_id, "w")
    walk(lease)
    assert lease.complete(stored(j2.url, "b" * 64, "deduped")) == "DEDUPED"
    assert ledger.query("SELECT ref_count FROM blobs") == [(2,)]
    assert ledger.complete_work_ids(["W1", "W2", "W3"]) == {"W1", "W2"}
    # Requeue (file missing): the ref is dropped and the skipped candidates come back.
    assert ledger.requeue(j1[1].job_id, reason="file_missing")
    assert [j.state for j in ledger.jobs_for_work("W1")] == ["PLANNED", "PLANNED", "PLANNED"]
    assert ledger.query("SELECT ref_count FROM blobs") == [(1,)]
    views = {name: ledger.query(f"SELECT count(*) FROM {name}")[0][0] for name in
             ("v_artifacts", "v_failures", "v_hosts", "v_runs")}
    assert views["v_artifacts"] == 2 and views["v_hosts"] == 1


def test_works_needing_work_each_once_oldest_first_in_pages(ledger, monkeypatch):
    """Works with something to do now, each once, in the order they were planned, also when the limit
    ends between the jobs of one work (pages of jobs): not a finished work, not one whose only
    failure waits out its backoff or is permanent, not one leased until later; an expired lease is."""
    from dtkg_assets.core.ledger.queries import works_needing_work

    times = iter(float(t) for t in range(100, 200))
    monkeypatch.setattr("time.time", lambda: next(times))
    for i in reversed(range(8)):
        ledger.plan([work(i, 3)])  # W7 oldest: planned order, not id order
    monkeypatch.undo()
    now = 1_000.0
    done = ledger.jobs_for_work("W1")[2]
    lease = ledger.lease(done.job_id, "w", now=now)
    walk(lease)
    lease.complete(stored(done.url), now=now)
    for wid, reason, kind in (("W2", "http_5xx", "transient"), ("W4", "http_404", "permanent")):
        for job in ledger.jobs_for_work(wid):
            lease = ledger.lease(job.job_id, "w", now=now)
            assert lease.fail(reason=reason, now=now) == kind
    for wid, ttl in (("W5", 10_000.0), ("W6", 1.0)):
        for job in ledger.jobs_for_work(wid):
            assert ledger.lease(job.job_id, "w", ttl_s=ttl, now=now) is not None
    expected = ["W7", "W6", "W3", "W0"]
    assert works_needing_work(ledger, now=now + 5) == expected
    for limit in (1, 2, 3):
        assert works_needing_work(ledger, now=now + 5, limit=limit) == expected[:limit]
    assert works_needing_work(ledger, now=now + 100) == ["W7", "W6", "W3", "W2", "W0"]  # W2's backoff passed


# ------------------------------------------------------------------ leases with queued writes


def test_lease_queues_stages_and_commits_them_in_one_fenced_write(ledger):
    ledger.plan([work(1, 1)])
    jid = ledger.jobs_for_work("W1")[0].job_id
    lease = ledger.lease(jid, "w", ttl_s=10, now=100.0)
    assert lease is not None and lease.first_attempt and lease.token == ledger.job(jid).fencing_token
    tx0 = ledger.stats.transactions
    lease.stage(State.HEAD_DONE, {"etag": '"v1"', "http_status": 200})
    lease.stage(State.RESUME_OK, {"decision": "fresh", "resumed_from": 0})
    assert ledger.stats.transactions == tx0 and ledger.job(jid).state == "LEASED"  # queued, not written
    with pytest.raises(IllegalTransition):
        lease.stage(State.HEAD_DONE)  # checked against the table when queued
    lease.stage(State.STREAMING)
    lease.renew(ttl_s=10, now=150.0)
    assert ledger.stats.transactions == tx0 + 1
    job = ledger.job(jid)
    assert (job.state, job.etag, job.http_status, job.decision, job.resumed_from) == (
        "STREAMING", '"v1"', 200, "fresh", 0)
    assert job.lease_expires_at == 160.0  # the commit renews the lease


def test_lease_failure_keeps_stage_columns_and_counts_attempts(ledger):
    ledger.plan([work(1, 1)])
    jid = ledger.jobs_for_work("W1")[0].job_id
    lease = ledger.lease(jid, "w", now=100.0)
    lease.stage(State.HEAD_DONE, {"etag": '"e"', "http_status": 200})
    assert lease.fail(reason="http_5xx", detail="503", now=100.0) == "transient"
    job = ledger.job(jid)
    assert (job.state, job.failure_class, job.etag, job.lease_owner, job.attempts) == (
        "FAILED", "transient", '"e"', None, 1)
    assert job.next_eligible_at == 110.0 and lease.last_reason == "http_5xx"
    again = ledger.lease(jid, "w", now=200.0)
    assert again is not None and not again.first_attempt and again.attempts == 2
    again.release(now=200.0)
    assert ledger.job(jid).state == "PLANNED" and ledger.job(jid).fencing_token == again.token + 1
