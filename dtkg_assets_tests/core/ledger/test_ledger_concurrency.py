"""Single writer across processes (clear wait / LedgerBusy, never a DuckDB lock error), snapshot readers,
threads sharing the writer's connection."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from dtkg_assets.core.ledger import Ledger, LedgerBusy, State
from dtkg_assets.core.ledger.interface import LeaseRequest
from dtkg_assets.core.settings import Settings
from dtkg_assets.core.types import Candidate, WorkRecord

HOLDER = textwrap.dedent(
    """
    import sys, time
    from dtkg_assets.core.ledger import Ledger
    from dtkg_assets.core.types import Candidate, WorkRecord
    from dtkg_assets.core.settings import Settings
    s = Settings().with_home(sys.argv[1])
    led = Ledger.open_writer(s, owner="holder-proc")
    led.plan([WorkRecord(f"H{i}", [Candidate(f"http://127.0.0.1:9/h{i}.pdf", "x")]) for i in range(10)])
    led.publish_snapshot(force=True)
    print("ready", flush=True)
    sys.stdin.readline()
    led.close()
    """
)


@pytest.fixture
def lsettings(tmp_path):
    return Settings().with_home(tmp_path)


def test_second_writer_waits_with_message_then_busy_and_readers_use_snapshot(lsettings):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lsettings.home)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        messages: list[str] = []
        t0 = time.monotonic()
        with pytest.raises(LedgerBusy) as info:
            Ledger.open_writer(lsettings, wait_s=0.5, notify=messages.append)
        assert time.monotonic() - t0 >= 0.5
        assert len(messages) == 1 and f"pid {proc.pid}" in messages[0] and "holder-proc" in messages[0]
        assert f"pid {proc.pid}" in str(info.value) and "DTKG_LEDGER_WRITER_WAIT_S" in str(info.value)
        assert Ledger.try_open_writer(lsettings) is None
        with pytest.raises(LedgerBusy):
            Ledger.open_reader(lsettings, live=True)
        with Ledger.open_reader(lsettings) as reader:  # the snapshot: no lock error
            assert reader.query("SELECT count(*) FROM works") == [(10,)]
            assert reader.snapshot_age_s is not None and reader.snapshot_age_s < 600
            with pytest.raises(PermissionError):
                reader.plan([WorkRecord("X", [])])
        # A writer waiting long enough gets the lock when the holder leaves.
        threading.Timer(0.5, lambda: (proc.stdin.write("\n"), proc.stdin.flush())).start()
        with Ledger.open_writer(lsettings, wait_s=60, notify=messages.append) as led:
            assert led.query("SELECT count(*) FROM works") == [(10,)]
    finally:
        proc.kill()
        proc.wait()


def test_close_publishes_what_readers_see_and_live_reader(lsettings):
    with Ledger.open_writer(lsettings) as led:
        led.plan([WorkRecord("W1", [Candidate("http://127.0.0.1:9/a.pdf", "x")])])
        led.publish_snapshot(force=True)
        led.plan([WorkRecord("W2", [Candidate("http://127.0.0.1:9/b.pdf", "x")])])  # not yet published
    with Ledger.open_reader(lsettings) as reader:
        assert reader.query("SELECT count(*) FROM works") == [(2,)]
    with Ledger.open_reader(lsettings, live=True) as live:
        assert live.query("SELECT count(*) FROM artifact_jobs") == [(2,)]
        assert Ledger.try_open_writer(lsettings) is None  # live readers hold a shared lock


def test_threads_share_the_writer_connection(lsettings):
    works = [WorkRecord(f"W{i}", [Candidate(f"http://127.0.0.1:9/{i}.pdf", "x")]) for i in range(80)]
    errors: list[BaseException] = []
    with Ledger.open_writer(lsettings) as led:
        led.plan(works)
        ids = [led.jobs_for_work(w.work_id)[0].job_id for w in works]

        def worker(chunk: list[str]) -> None:
            try:
                for jid in chunk:
                    lease = led.lease(jid, f"t{threading.get_ident()}")
                    assert lease is not None
                    for st in (State.HEAD_DONE, State.RESUME_OK, State.STREAMING):
                        lease.stage(st)
                    lease.record_effect("FINALIZE", jid, lambda: {"ok": True})
                    lease.flush()
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(ids[k::8],)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert led.query("SELECT state, count(*) FROM artifact_jobs GROUP BY state") == [("STREAMING", 80)]
        assert led.query("SELECT count(*) FROM artifact_ops WHERE result_code = 'OK'") == [(80,)]
    assert not os.path.exists(str(lsettings.snapshot_path) + ".tmp")


def test_snapshot_publishes_on_a_reopened_ledger_and_only_when_written(lsettings):
    """A writer that opens an existing file (migrate only reads the version there) must still be able
    to CHECKPOINT after its writes: every publish succeeds and readers see the last write. A publish
    with nothing written since the last one leaves the snapshot file alone."""
    works = [WorkRecord(f"W{i}", [Candidate(f"http://127.0.0.1:9/{i}.pdf", "x")]) for i in range(4)]
    with Ledger.open_writer(lsettings) as led:
        led.plan(works)
        led.lease(led.jobs_for_work("W0")[0].job_id, "gone")  # a lease the next writer voids
    for round_ in range(2):
        with Ledger.open_writer(lsettings) as led:
            assert led.recovered["released_leases"] == 1  # the previous writer's lease
            jid = led.jobs_for_work(f"W{round_ + 1}")[0].job_id
            assert led.lease(jid, "o") is not None
            # Worker threads each leave a cursor behind; none of them may hold the checkpoint back.
            threads = [threading.Thread(target=led.job, args=(jid,)) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert led.publish_snapshot(force=True) is True
            assert led.stats.snapshot_skips == 0
            stamp = lsettings.snapshot_path.stat().st_mtime_ns, lsettings.snapshot_path.stat().st_ino
            assert led.publish_snapshot(force=True) is True  # nothing new: not copied again
            with Ledger.open_reader(lsettings) as snap:  # the writer holds the lock: the snapshot
                assert snap.path == lsettings.snapshot_path
                assert snap.query("SELECT state FROM artifact_jobs WHERE job_id = ?", [jid]) == [("LEASED",)]
        # close published nothing either: the snapshot file is the same one
        assert (lsettings.snapshot_path.stat().st_mtime_ns, lsettings.snapshot_path.stat().st_ino) == stamp
        assert led.stats.snapshot_skips == 0


class _CountingBackend:
    """A write backend that answers at once: the group commit's own queueing is what is tested."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.answered = 0
        self.rounds: list[int] = []  # items per acquire call

    def acquire(self, requests, *, now):
        self.answered += len(requests)
        self.rounds.append(len(requests))
        return [None] * len(requests)

    def commit(self, writes, *, now):
        self.answered += len(writes)
        return [None] * len(writes)


def test_group_commit_answers_every_item_submitted_while_a_leader_swaps_queues(lsettings):
    """Many threads submitting while leaders take the queues: every caller gets its own answer.

    Items are put in a queue chosen under the queue lock; a queue picked before the lock could be
    the list a leader had just taken, and that batch's answers then fell one short of its items."""
    from dtkg_assets.core.ledger.lease import GroupCommit

    backend = _CountingBackend(lsettings)
    commits = GroupCommit(backend)  # type: ignore[arg-type]
    request = LeaseRequest("J", "owner", None, 60.0)
    errors: list[BaseException] = []
    per_thread = 400

    def submit() -> None:
        try:
            for _ in range(per_thread):
                commits.acquire(request)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over as often as possible: the race needs a switch
    try:
        # Daemon threads and one deadline: a caller left waiting (the old failure) fails the test.
        threads = [threading.Thread(target=submit, daemon=True) for _ in range(16)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
    finally:
        sys.setswitchinterval(old)
    assert not any(t.is_alive() for t in threads), "a caller never got its answer"
    assert not errors, errors[:3]
    assert backend.answered == 16 * per_thread
    assert commits.stats.acquires == 16 * per_thread


def _callers(commits, n: int, *, spacing_s: float) -> list[threading.Thread]:
    """`n` daemon threads, started `spacing_s` apart, each asking for one lease."""
    threads = []
    for i in range(n):
        t = threading.Thread(target=commits.acquire, args=(LeaseRequest(f"J{i}", "owner", None, 60.0),), daemon=True)
        t.start()
        threads.append(t)
        time.sleep(spacing_s)
    return threads


def test_group_commit_gathers_the_round_it_is_asked_for(lsettings):
    """With `gather(4, …)` four callers arriving one by one make one round, not four; without it
    each goes alone; a leader lingering for items that will not come goes when its target drops."""
    from dtkg_assets.core.ledger.lease import GroupCommit

    backend = _CountingBackend(lsettings)
    commits = GroupCommit(backend)  # type: ignore[arg-type]
    commits.gather(4, 20.0)
    for t in _callers(commits, 4, spacing_s=0.05):
        t.join(timeout=10)
        assert not t.is_alive()
    assert backend.rounds == [4]

    commits.gather(0, 0.0)
    for t in _callers(commits, 3, spacing_s=0.05):
        t.join(timeout=10)
    assert backend.rounds == [4, 1, 1, 1]

    commits.gather(3, 60.0)  # two callers, then the third work finishes without asking
    threads = _callers(commits, 2, spacing_s=0.05)
    time.sleep(0.2)
    assert backend.rounds == [4, 1, 1, 1]  # still gathering
    commits.gather(2, 60.0)
    for t in threads:
        t.join(timeout=10)  # far below the 60 s linger
        assert not t.is_alive(), "a lingering leader was not woken when its target dropped"
    assert backend.rounds == [4, 1, 1, 1, 2]


class _SlowFirstRound(_CountingBackend):
    """The first acquire round takes 0.3 s, so that callers queue while the leader is in it."""

    def acquire(self, requests, *, now):
        if not self.rounds:
            time.sleep(0.3)
        return super().acquire(requests, now=now)


def test_group_commit_leader_never_waits_for_its_own_answered_request(lsettings):
    """The leader's caller stays unfinished while it leads (it returns only when the queue is
    empty), so a target of unfinished callers counts it; once its own request is answered the leader
    must not wait for it. The old loop waited out the whole linger: at the end of every batch run,
    0.4 s after its last download."""
    from dtkg_assets.core.ledger.lease import GroupCommit

    backend = _SlowFirstRound(lsettings)
    commits = GroupCommit(backend)  # type: ignore[arg-type]
    commits.gather(3, 60.0)
    first = _callers(commits, 3, spacing_s=0.02)  # the first caller leads; a round of three
    time.sleep(0.1)  # inside that round: two more callers queue
    later = _callers(commits, 2, spacing_s=0.0)
    # Unfinished now: the leader's caller and the two queued ones, so the target stays 3.
    started = time.monotonic()
    for t in (*first, *later):
        t.join(timeout=10)  # far below the 60 s linger
        assert not t.is_alive(), "the leader waited for its own answered request"
    assert time.monotonic() - started < 5
    assert backend.rounds == [3, 2]
