"""Orchestrator against a real origin, real engine, real store and a real DuckDB ledger."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from dtkg_assets.core.http import make_client
from dtkg_assets.core.ledger import Ledger
from dtkg_assets.core.orchestrator import Orchestrator
from dtkg_assets.core.store import Store
from dtkg_assets.core.streaming import Engine
from dtkg_assets.core.types import Candidate, WorkRecord
from dtkg_assets_tests.support.origin import FaultMode


@pytest.fixture
def osettings(settings):
    return settings.replace(io={"fsync": False}, ledger={"retry_backoff_s": 30.0, "max_attempts": 3},
                            http={"max_attempts": 1})


@pytest.fixture
def rig(osettings):
    ledger = Ledger.open_writer(osettings, owner="orch-test")
    client = make_client(osettings)
    engine = Engine(client, osettings, Store(osettings))
    try:
        yield ledger, engine
    finally:
        client.close()
        ledger.close()


def rec(work_id: str, *urls: str) -> WorkRecord:
    return WorkRecord(work_id, [Candidate(u, "best_oa_location.pdf_url") for u in urls], origin="test")


def test_plan_process_and_skip_complete_without_network(rig, origin, pdf_bytes, osettings):
    ledger, engine = rig
    a, b = pdf_bytes(300_000, 1), pdf_bytes(2_500_000, 2)
    u_a = origin.add("/a.pdf", a)
    u_a2 = origin.add("/a-mirror.pdf", a)  # same bytes for another work: deduped
    u_404 = origin.add("/gone.pdf", b"", FaultMode(status=404))
    u_b = origin.add("/b.pdf", b)
    u_html = origin.add("/page.pdf", a, FaultMode(html_body=True))
    u_410 = origin.add("/410.pdf", b"", FaultMode(status=410))
    u_503 = origin.add("/busy.pdf", a, FaultMode(status=503))
    works = [
        rec("W1", u_a),
        rec("W2", u_a2),
        rec("W3", u_404, u_b),
        rec("W4", u_410, u_html),
        rec("W5", u_503),
        rec("W6"),
    ]
    orch = Orchestrator(ledger, engine, osettings, owner="o1", run_id="run-1")
    summary = orch.plan(works)
    assert (summary.works, summary.new_works, summary.new_jobs, summary.without_candidates) == (6, 6, 7, ["W6"])
    seen = []
    lock = threading.Lock()

    def on_done(outcome):
        with lock:
            seen.append(outcome.work_id)

    outcomes = {o.work_id: o for o in orch.process([w.work_id for w in works], workers=4, on_done=on_done)}
    assert sorted(seen) == ["W1", "W2", "W3", "W4", "W5", "W6"]
    assert {k: (o.status, o.reason) for k, o in outcomes.items()} == {
        "W1": ("downloaded", "ok") if outcomes["W1"].status == "downloaded" else ("deduped", "ok"),
        "W2": ("deduped", "ok") if outcomes["W1"].status == "downloaded" else ("downloaded", "ok"),
        "W3": ("downloaded", "ok"),
        "W4": ("deferred", "bot_challenge"),  # the HTML served as a PDF is a "Just a moment…" wall
        "W5": ("deferred", "http_5xx"),
        "W6": ("failed", "no_candidates"),
    }
    sha_a, sha_b = hashlib.sha256(a).hexdigest(), hashlib.sha256(b).hexdigest()
    store = engine.store
    assert store.blob_path(sha_a).read_bytes() == a and store.blob_path(sha_b).read_bytes() == b
    assert store.work_path("W2").read_bytes() == a and store.work_path("W3").read_bytes() == b
    assert ledger.query("SELECT sha256, ref_count FROM blobs ORDER BY sha256") == sorted([(sha_a, 2), (sha_b, 1)])
    states = dict(ledger.query("SELECT url, state FROM artifact_jobs"))
    assert states[u_404] == "FAILED" and states[u_b] == "INDEXED" and states[u_503] == "FAILED"
    assert ledger.query("SELECT failure_class, last_reason FROM artifact_jobs WHERE url = ?", [u_503]) == [
        ("transient", "http_5xx")]
    assert ledger.query("SELECT failure_class FROM artifact_jobs WHERE url = ?", [u_404]) == [("permanent",)]
    n_attempts = ledger.query("SELECT count(*) FROM http_attempts")[0][0]
    assert n_attempts >= 7
    assert ledger.query("SELECT artifacts, deduped FROM v_runs WHERE run_id = 'run-1'") == [(3, 1)]
    # Second run: complete works are skipped with no request at all; W4 (a bot wall) and W5 wait.
    before = {p: origin.stats(p).requests for p in ("/a.pdf", "/a-mirror.pdf", "/b.pdf", "/gone.pdf", "/busy.pdf")}
    again = {o.work_id: o for o in Orchestrator(ledger, engine, osettings, owner="o2").process(
        [w.work_id for w in works])}
    assert {k: o.status for k, o in again.items()} == {
        "W1": "skipped_complete", "W2": "skipped_complete", "W3": "skipped_complete",
        "W4": "deferred", "W5": "deferred", "W6": "failed"}
    assert again["W3"].sha256 == sha_b and again["W3"].bytes == len(b)
    after = {p: origin.stats(p).requests for p in before}
    assert after == before


def test_an_error_on_a_workers_path_fails_the_call_and_is_no_interrupt(rig, origin, pdf_bytes, osettings):
    """An exception from `on_done` (a bug, not a signal) propagates out of `process` as itself; no stop
    is requested (the next call runs), and works not started keep no lease."""
    from dtkg_assets.core import deadline

    ledger, engine = rig
    works = [rec(f"W{i}", origin.add(f"/e{i}.pdf", pdf_bytes(5_000 + i, i))) for i in range(8)]
    orch = Orchestrator(ledger, engine, osettings, owner="o1", run_id="run-e")
    orch.plan(works)

    def on_done(outcome):
        raise RuntimeError(f"reporting {outcome.work_id} failed")

    with pytest.raises(RuntimeError, match="reporting W"):
        orch.process([w.work_id for w in works], workers=1, on_done=on_done)
    assert not deadline.stop_requested()
    assert ledger.query("SELECT count(*) FROM artifact_jobs WHERE state = 'LEASED'") == [(0,)]
    again = Orchestrator(ledger, engine, osettings, owner="o2").process([w.work_id for w in works])
    assert {o.status for o in again} <= {"downloaded", "skipped_complete"} and len(again) == 8


def test_downloads_in_flight_never_exceed_workers(rig, origin, pdf_bytes, osettings):
    """Threads beyond `workers` wait on the ledger, never on the network: the origin sees at most
    `workers` requests at once, and that many while works are left (the slots are kept full)."""
    ledger, engine = rig
    works = [rec(f"S{i}", origin.add(f"/s{i}.pdf", pdf_bytes(20_000 + i, 50 + i), FaultMode(latency_s=0.15)))
             for i in range(24)]
    orch = Orchestrator(ledger, engine, osettings, owner="slots")
    orch.plan(works)
    origin.peak_in_flight = 0
    outcomes = orch.process([w.work_id for w in works], workers=4)
    assert [o.status for o in outcomes] == ["downloaded"] * 24
    assert origin.peak_in_flight == 4
    assert all(origin.stats(f"/s{i}.pdf").get_requests == 1 for i in range(24))
    # Works queued for a slot: the wait is counted apart, not in the download's time and speed.
    results = [o.result for o in outcomes if o.result is not None]
    assert sum(r.slot_wait_s for r in results) > 1.0
    assert max(r.elapsed_s for r in results) < 0.45, sorted(r.elapsed_s for r in results)


def test_a_retry_wait_holds_no_download_slot(origin, pdf_bytes, osettings):
    """A download slot is held per HTTP exchange, not per work: while one work waits out its retry
    (a 503 with `Retry-After: 2`), the other works use both slots at once; the limit still holds."""
    settings = osettings.replace(http={"max_attempts": 2})
    retried = origin.add("/r.pdf", pdf_bytes(30_000, 7), FaultMode(status_sequence=[503], retry_after="2"))
    slow = [origin.add(f"/b{i}.pdf", pdf_bytes(20_000 + i, 60 + i), FaultMode(latency_s=0.6)) for i in range(2)]
    works = [rec("R", retried), rec("B0", slow[0]), rec("B1", slow[1])]
    with Ledger.open_writer(settings, owner="slots") as ledger, make_client(settings) as client:
        orch = Orchestrator(ledger, Engine(client, settings, Store(settings)), settings, owner="slots")
        orch.plan(works)
        origin.peak_in_flight = 0
        outcomes = orch.process([w.work_id for w in works], workers=2)
    assert [o.status for o in outcomes] == ["downloaded"] * 3
    assert origin.stats("/r.pdf").statuses == [503, 200]
    first, second = (origin.stats(f"/b{i}.pdf").request_times[0] for i in range(2))
    # Both slow works were asked together, during R's wait (holding its slot, it left them one).
    assert abs(first - second) < 0.3, (first, second)
    assert origin.peak_in_flight == 2


def test_two_orchestrators_on_the_same_works(rig, origin, pdf_bytes, osettings):
    """Two owners in one writer process race on the same works: each work is fetched once."""
    ledger, engine = rig
    bodies = [pdf_bytes(200_000 + i * 1000, 10 + i) for i in range(12)]
    works = [rec(f"W{i}", origin.add(f"/w{i}.pdf", body, FaultMode(latency_s=0.02))) for i, body in
             enumerate(bodies)]
    Orchestrator(ledger, engine, osettings, owner="x").plan(works)
    ids = [w.work_id for w in works]
    results: dict[str, list] = {}

    def run(owner):
        results[owner] = Orchestrator(ledger, engine, osettings, owner=owner).process(ids, workers=3)

    threads = [threading.Thread(target=run, args=(o,)) for o in ("A", "B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(12):
        statuses = sorted(o.status for owner in results for o in results[owner] if o.work_id == f"W{i}")
        assert statuses.count("downloaded") == 1, statuses
        assert set(statuses) <= {"downloaded", "deferred", "skipped_complete"}
        assert origin.stats(f"/w{i}.pdf").get_requests == 1
    assert ledger.query("SELECT count(*) FROM artifact_jobs WHERE state = 'INDEXED'") == [(12,)]


def test_ledger_cost_per_artifact(rig, origin, pdf_bytes, osettings, capsys):
    """Not a timing assert: reports the ledger's share of the work per finished artifact."""
    ledger, engine = rig
    works = [rec(f"C{i}", origin.add(f"/c{i}.pdf", pdf_bytes(64_000, 100 + i))) for i in range(40)]
    orch = Orchestrator(ledger, engine, osettings, owner="cost")
    orch.plan(works)
    s0 = (ledger.stats.calls, ledger.stats.transactions, ledger.stats.wall_s, ledger.stats.cpu_s)
    outcomes = orch.process([w.work_id for w in works], workers=4)
    assert all(o.status == "downloaded" for o in outcomes)
    calls, tx, wall, cpu = (ledger.stats.calls - s0[0], ledger.stats.transactions - s0[1],
                            ledger.stats.wall_s - s0[2], ledger.stats.cpu_s - s0[3])
    with capsys.disabled():
        print(f"\nledger cost per artifact: {calls / 40:.1f} calls, {tx / 40:.1f} transactions, "
              f"{wall / 40 * 1000:.2f} ms wall, {cpu / 40 * 1000:.2f} ms CPU")
    assert tx / 40 <= 12


def test_stale_worker_cannot_commit_after_takeover(osettings, origin, pdf_bytes):
    """A worker stalls mid-stream, its lease expires and is taken over: it must not finalize."""
    s = osettings.replace(ledger={"lease_ttl_s": 0.3})
    body = pdf_bytes(3 * 1024 * 1024, 77)
    url = origin.add("/slow.pdf", body, FaultMode(stall_after_bytes=1024 * 1024, stall_s=4.0, stall_times=1))
    ledger = Ledger.open_writer(s, owner="stale-test")
    client = make_client(s)
    try:
        engine = Engine(client, s, Store(s))
        Orchestrator(ledger, engine, s, owner="A").plan([rec("W1", url)])
        job_id = ledger.jobs_for_work("W1")[0].job_id
        result: list = []
        worker = threading.Thread(target=lambda: result.extend(
            Orchestrator(ledger, engine, s, owner="A").process(["W1"], workers=1)))
        worker.start()
        deadline = time.monotonic() + 30
        while origin.stats("/slow.pdf").body_bytes < 1024 * 1024 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # past A's 0.3 s lease, well inside the 4 s stall
        lease_b = ledger.lease(job_id, "B")
        assert lease_b is not None
        worker.join(timeout=60)
        assert [(o.status, o.reason) for o in result] == [("deferred", "lease_lost")]
        assert ledger.query("SELECT count(*) FROM artifact_ops WHERE owner = 'A'") == [(0,)]
        assert not list(engine.store.root.glob("??/*.pdf"))  # nothing finalized by the stale worker
        lease_b.release()
        out = Orchestrator(ledger, engine, s, owner="B").process(["W1"], workers=1)
        assert [o.status for o in out] == ["downloaded"]
        assert engine.store.work_path("W1").read_bytes() == body
        assert ledger.job(job_id).state == "INDEXED"
    finally:
        client.close()
        ledger.close()
