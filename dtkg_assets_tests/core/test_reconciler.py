"""Reconciler: each healing kind on real files and a real ledger; a second run finds nothing."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from dtkg_assets.core.ledger import Ledger, State
from dtkg_assets.core.reconciler import KINDS, reconcile, release_leases
from dtkg_assets.core.store import Store
from dtkg_assets.core.types import Candidate, FetchResult, WorkRecord

ZERO = dict.fromkeys(KINDS, 0)


@pytest.fixture
def rig(settings):
    s = settings.replace(io={"fsync": False}, ledger={"part_orphan_ttl_s": 3600.0})
    led = Ledger.open_writer(s, owner="rec-test")
    try:
        yield led, Store(s), s
    finally:
        led.close()


def plan(led, wid, url="http://127.0.0.1:9/x.pdf"):
    led.plan([WorkRecord(wid, [Candidate(url, "best_oa_location.pdf_url")])])
    return led.jobs_for_work(wid)[0]


def finish(led, store, wid, body):
    """A real finished artifact: part → finalize → link, job INDEXED with its blob row."""
    job = plan(led, wid, f"http://127.0.0.1:9/{wid}.pdf")
    lease = led.lease(job.job_id, "w")
    for st in (State.RESUME_OK, State.STREAMING):
        lease.stage(st)
    part, _ = store.part_paths(wid, job.url)
    part.write_bytes(body)
    sha = hashlib.sha256(body).hexdigest()
    fin = store.finalize(part, sha)
    link = store.link_work(wid, sha)
    result = FetchResult(status="stored" if fin.created else "deduped", reason="ok", decision="fresh", url=job.url,
                         sha256=sha, path=str(link.path), blob_path=str(fin.path), bytes=len(body))
    lease.complete(result)
    return job, sha


def test_expired_lease_and_abandoned_op(rig):
    led, store, s = rig
    job = plan(led, "W1")
    lease = led.lease(job.job_id, "dead", ttl_s=10, now=100.0)
    lease.stage(State.RESUME_OK)
    lease.renew(ttl_s=10, now=100.0)
    # An op row a crashed holder left unfinished (ledgers written before effects were recorded with
    # the completion claimed them before running; the reconciler still marks those abandoned).
    led.cursor().execute(
        "INSERT INTO artifact_ops (op_key, job_id, op_type, effect_key, started_at, owner, fencing_token, "
        "result_code) VALUES ('k', ?, 'FINALIZE', 'sha', 100.0, 'dead', ?, 'STARTED')", [job.job_id, lease.token])
    assert reconcile(led, store, s, now=105.0) == ZERO  # lease still live
    counts = reconcile(led, store, s, now=200.0)
    assert counts == {**ZERO, "expired_leases": 1, "abandoned_ops": 1}
    j = led.job(job.job_id)
    assert (j.state, j.attempts, j.lease_owner, j.last_reason) == ("PLANNED", 1, None, "lease_lost")
    assert led.query("SELECT result_code FROM artifact_ops") == [("ABANDONED",)]
    assert reconcile(led, store, s, now=300.0) == ZERO


def test_release_leases_of_a_failed_run(rig):
    led, store, s = rig
    jobs = [plan(led, f"W{i}", f"http://127.0.0.1:9/{i}.pdf") for i in range(3)]
    for j in jobs[:2]:
        led.lease(j.job_id, "runner", run_id="run-dead")
    led.lease(jobs[2].job_id, "other", run_id="run-live")
    assert release_leases(led, run_id="run-dead") == 2
    assert [led.job(j.job_id).state for j in jobs] == ["PLANNED", "PLANNED", "LEASED"]


def test_missing_and_corrupt_files_are_requeued(rig, pdf_bytes):
    led, store, s = rig
    j1, sha1 = finish(led, store, "W1", pdf_bytes(50_000, 1))
    j2, sha2 = finish(led, store, "W2", pdf_bytes(60_000, 2))
    j3, _ = finish(led, store, "W3", pdf_bytes(70_000, 3))
    assert reconcile(led, store, s) == ZERO
    store.work_path("W1").unlink()  # per-work name lost
    blob2 = store.blob_path(sha2)
    data = bytearray(blob2.read_bytes())
    data[1000] ^= 0xFF  # same size, wrong bytes (the work name is a hardlink: damaged too)
    os.chmod(blob2, 0o644)
    blob2.write_bytes(bytes(data))
    counts = reconcile(led, store, s)
    assert counts == {**ZERO, "requeued_missing": 1, "requeued_corrupt": 1}
    assert [led.job(j.job_id).state for j in (j1, j2, j3)] == ["PLANNED", "PLANNED", "INDEXED"]
    assert led.job(j2.job_id).last_reason == "hash_mismatch" and led.job(j1.job_id).last_reason == "file_missing"
    assert not blob2.exists() and not store.work_path("W2").exists()
    assert len(list((store.root / "quarantine").iterdir())) == 2  # blob and work name, kept as evidence
    assert dict(led.query("SELECT sha256, ref_count FROM blobs"))[sha1] == 0
    assert reconcile(led, store, s) == ZERO


def test_unknown_blobs_adopted_or_quarantined(rig, pdf_bytes):
    led, store, s = rig
    body = pdf_bytes(40_000, 9)
    sha = hashlib.sha256(body).hexdigest()
    good = store.blob_path(sha)
    good.parent.mkdir(parents=True, exist_ok=True)
    good.write_bytes(body)
    liar = store.blob_path("ab" + "0" * 62)  # named like a blob, bytes hash to something else
    liar.parent.mkdir(parents=True, exist_ok=True)
    liar.write_bytes(body)
    stray = good.parent / "notes.txt"
    stray.write_text("x")
    counts = reconcile(led, store, s)
    assert counts == {**ZERO, "adopted_blobs": 1, "quarantined": 2}
    assert led.query("SELECT sha256, size, ref_count FROM blobs") == [(sha, len(body), 0)]
    assert good.exists() and not liar.exists() and not stray.exists()
    assert reconcile(led, store, s) == ZERO


def test_orphan_parts_removed_after_ttl_live_ones_kept(rig):
    led, store, s = rig
    live = plan(led, "W1", "http://127.0.0.1:9/live.pdf")
    led.lease(live.job_id, "worker", ttl_s=10_000)
    live_part, live_side = store.part_paths("W1", live.url)
    old = time.time() - 2 * 3600
    paths = {
        "live": (live_part, live_side),
        "old": store.part_paths("W9", "http://127.0.0.1:9/gone.pdf"),
        "young": store.part_paths("W8", "http://127.0.0.1:9/young.pdf"),
    }
    for name, (part, side) in paths.items():
        part.write_bytes(b"%PDF-partial")
        side.write_text("{}")
        if name != "young":
            os.utime(part, (old, old))
            os.utime(side, (old, old))
    counts = reconcile(led, store, s)
    assert counts == {**ZERO, "orphan_parts": 2}
    assert live_part.exists() and live_side.exists()
    assert not paths["old"][0].exists() and not paths["old"][1].exists()
    assert paths["young"][0].exists()
    assert reconcile(led, store, s) == ZERO
