"""The ledger's storage: readers never write, store paths survive a moved home, files are accepted
only when they hash to what the ledger expects. Real DuckDB files, real `dtkg` processes, the real
test origin on loopback."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest

from dtkg_assets.core.ledger import SCHEMA_VERSION, Ledger, LedgerUnavailable, storage
from dtkg_assets.core.ledger.interface import LeaseRequest
from dtkg_assets.core.ledger.lease import Lease
from dtkg_assets.core.settings import Settings
from dtkg_assets.core.store import Store
from dtkg_assets.core.types import Candidate, WorkRecord
from dtkg_assets_tests.conftest import loopback_env


def dtkg(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "dtkg_assets.cli", *args], env=loopback_env(home, **env),
                          capture_output=True, text=True, timeout=300, check=False)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    return proc


def tree_state(home: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under the home: size, mtime and content hash (to prove nothing was written)."""
    state = {}
    for p in sorted(home.rglob("*")):
        if p.is_file():
            st = p.stat()
            state[str(p.relative_to(home))] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return state


def works_file(tmp_path: Path, urls: dict[str, str]) -> Path:
    path = tmp_path / "works.jsonl"
    path.write_text("".join(
        json.dumps({"id": f"https://openalex.org/{wid}", "best_oa_location": {"pdf_url": url}}) + "\n"
        for wid, url in urls.items()))
    return path


CRASHED_WRITER = textwrap.dedent(
    """
    import os, sys
    from dtkg_assets.core.ledger import Ledger
    from dtkg_assets.core.types import Candidate, WorkRecord
    from dtkg_assets.core.settings import Settings
    s = Settings().with_home(sys.argv[1]).replace(ledger={"snapshot_interval_s": 0})
    led = Ledger.open_writer(s, owner="crashes")
    led.plan([WorkRecord("LATE", [Candidate("http://127.0.0.1:9/late.pdf", "x")])])
    job = led.jobs_for_work("LATE")[0]
    led.lease(job.job_id, "crashes")
    print("ready", flush=True)
    sys.stdin.readline()
    """
)


def test_readers_never_write_even_after_a_crashed_writer(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = Settings().with_home(home)
    with Ledger.open_writer(settings) as led:
        led.plan([WorkRecord("W1", [Candidate("http://127.0.0.1:9/1.pdf", "x")])])
    # A writer that is killed mid-run: its work is in the live file (and WAL), not in the snapshot.
    proc = subprocess.Popen([sys.executable, "-c", CRASHED_WRITER, str(home)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = tree_state(home)
    with Ledger.open_reader(settings) as reader:
        assert reader.query("SELECT work_id FROM works") == [("W1",)]  # as last published
        assert reader.health()["status"] == "healthy"
    for args in (("status", "--json"), ("ledger", "health", "--json"), ("ledger", "validate"),
                 ("ledger", "export", "--out", str(tmp_path / "out"))):
        proc2 = dtkg(home, *args)
        assert proc2.returncode == 0, (args, proc2.stderr)
    assert tree_state(home) == before  # no migration, no lease voided, no snapshot refresh
    # The next writer recovers the crashed one's lease and publishes.
    with Ledger.open_writer(settings) as led:
        assert led.recovered["released_leases"] == 1
    with Ledger.open_reader(settings) as reader:
        assert reader.query("SELECT count(*) FROM works") == [(2,)]


def test_no_snapshot_is_said_in_words(tmp_path: Path) -> None:
    missing = Settings().with_home(tmp_path / "nowhere")
    with pytest.raises(LedgerUnavailable, match="does not exist"):
        Ledger.open_reader(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LedgerUnavailable, match="nothing has been imported"):
        Ledger.open_reader(Settings().with_home(empty))
    status = dtkg(empty, "status", "--json")
    assert status.returncode == 0 and "nothing has been imported" in json.loads(status.stdout)["ledger"]["detail"]
    health = dtkg(empty, "ledger", "health")
    assert health.returncode == 2 and "dtkg works import" in health.stdout
    assert list(empty.iterdir()) == []  # and the readers created nothing


def test_an_idle_writer_session_does_not_copy_the_ledger_again(tmp_path: Path) -> None:
    settings = Settings().with_home(tmp_path)
    with Ledger.open_writer(settings) as led:
        led.plan([WorkRecord("W1", [Candidate("http://127.0.0.1:9/1.pdf", "x")])])
    ino = settings.snapshot_path.stat().st_ino
    with Ledger.open_writer(settings):
        pass
    assert settings.snapshot_path.stat().st_ino == ino  # publication costs O(ledger): only after writes


def test_moved_home_with_a_flipped_byte_redownloads_only_that_work(tmp_path: Path, origin, pdf_bytes) -> None:
    bodies = {f"W{i}": pdf_bytes(40_000 + i * 1000, i) for i in range(1, 4)}
    urls = {wid: origin.add(f"/{wid}.pdf", body) for wid, body in bodies.items()}
    home_a = tmp_path / "a"
    assert dtkg(home_a, "works", "import", str(works_file(tmp_path, urls))).returncode == 0
    first = dtkg(home_a, "works", "download", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["downloaded"] == 3
    with Ledger.open_reader(Settings().with_home(home_a)) as led:
        paths = led.query("SELECT path FROM artifact_jobs WHERE state = 'INDEXED' UNION ALL SELECT path FROM blobs")
    assert paths and all(not Path(p).is_absolute() for (p,) in paths)

    home_b = tmp_path / "b"
    os.rename(home_a, home_b)
    store = Store(Settings().with_home(home_b))
    sha2 = hashlib.sha256(bodies["W2"]).hexdigest()
    blob = store.blob_path(sha2)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))  # the work file is the same inode: flipped too
    with Ledger.open_reader(Settings().with_home(home_b)) as led:
        finished_before = dict(led.query("SELECT work_id, finished_at FROM artifact_jobs WHERE state = 'INDEXED'"))

    rec = dtkg(home_b, "reconcile", "--json")
    assert rec.returncode == 0, rec.stderr
    counts = json.loads(rec.stdout)
    assert (counts["requeued_corrupt"], counts["requeued_missing"]) == (1, 0), counts
    assert len(list((store.root / "quarantine").iterdir())) >= 1  # kept as evidence, never deleted

    origin.reset_stats()
    again = dtkg(home_b, "works", "download", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout).get("downloaded") == 1
    assert origin.stats("/W2.pdf").get_requests == 1
    assert origin.stats("/W1.pdf").requests == origin.stats("/W3.pdf").requests == 0
    with Ledger.open_reader(Settings().with_home(home_b)) as led:
        rows = dict(led.query("SELECT work_id, sha256 FROM artifact_jobs WHERE state = 'INDEXED'"))
        finished_after = dict(led.query("SELECT work_id, finished_at FROM artifact_jobs WHERE state = 'INDEXED'"))
    assert rows == {wid: hashlib.sha256(b).hexdigest() for wid, b in bodies.items()}
    assert {w: finished_after[w] for w in ("W1", "W3")} == {w: finished_before[w] for w in ("W1", "W3")}
    assert hashlib.sha256(store.work_path("W2").read_bytes()).hexdigest() == sha2

    # A copy of the home (cp -a) is as valid as the original: nothing to heal, nothing to fetch.
    home_c = tmp_path / "c"
    shutil.copytree(home_b, home_c, symlinks=True)
    again_c = dtkg(home_c, "reconcile", "--json")
    assert again_c.returncode == 0 and set(json.loads(again_c.stdout).values()) == {0}
    assert dtkg(home_c, "ledger", "validate").returncode == 0


def test_migration_makes_absolute_paths_relative(tmp_path: Path) -> None:
    settings = Settings().with_home(tmp_path / "home")
    old_root = "/somewhere/else/.dtkg/store"
    sha = "ab" + "0" * 62
    with Ledger.open_writer(settings) as led:
        led.plan([WorkRecord("W1", [Candidate("http://127.0.0.1:9/1.pdf", "x")])])
        cur = led.cursor()
        cur.execute("UPDATE artifact_jobs SET state = 'INDEXED', sha256 = ?, bytes = 5, path = ?",
                    [sha, f"{old_root}/works/W1.pdf"])
        cur.execute("INSERT INTO blobs VALUES (?, ?, 5, 1, 0, 0)", [sha, f"{old_root}/ab/{sha}.pdf"])
        cur.execute("DELETE FROM schema_version WHERE version >= 3")  # as written by a release before 3
    with Ledger.open_writer(settings) as led:
        assert led.query("SELECT max(version) FROM schema_version") == [(SCHEMA_VERSION,)]
        assert led.query("SELECT path FROM artifact_jobs") == [("works/W1.pdf",)]
        assert led.query("SELECT path FROM blobs") == [(f"ab/{sha}.pdf",)]
    con = duckdb.connect(str(settings.snapshot_path), read_only=True)
    try:
        assert con.execute("SELECT path FROM artifact_jobs").fetchall() == [("works/W1.pdf",)]
    finally:
        con.close()


def _download(home: Path, tmp_path: Path, urls: dict[str, str], name: str) -> None:
    works = works_file(tmp_path, urls).rename(tmp_path / name)
    assert dtkg(home, "works", "import", str(works)).returncode == 0
    proc = dtkg(home, "works", "download", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["downloaded"] == len(urls), proc.stderr


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_ledger_is_said_in_words_and_repair_loses_no_finished_work(
        tmp_path: Path, origin, pdf_bytes, damage: str) -> None:
    home = tmp_path / "home"
    settings = Settings().with_home(home)
    bodies = {f"W{i}": pdf_bytes(30_000 + i * 1000, 10 + i) for i in range(1, 5)}
    urls = {wid: origin.add(f"/{wid}.pdf", body) for wid, body in bodies.items()}
    _download(home, tmp_path, {w: urls[w] for w in ("W1", "W2", "W3")}, "first.jsonl")
    older_snapshot = tmp_path / "older.duckdb"
    shutil.copyfile(settings.snapshot_path, older_snapshot)
    _download(home, tmp_path, {"W4": urls["W4"]}, "second.jsonl")  # finished after that snapshot
    shutil.copyfile(older_snapshot, settings.snapshot_path)  # the newest snapshot predates W4
    live = settings.ledger_path
    if damage == "truncated":
        with open(live, "r+b") as f:
            f.truncate(live.stat().st_size // 3)
    else:
        live.write_bytes(os.urandom(20_000))

    health = dtkg(home, "ledger", "health")
    assert health.returncode == 2 and "damaged" in health.stdout and str(live) in health.stdout
    assert "dtkg ledger repair" in health.stdout
    for args in (("reconcile",), ("works", "download"), ("ledger", "validate"), ("status",)):
        proc = dtkg(home, *args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert "dtkg ledger repair" in proc.stderr and str(live) in proc.stderr, (args, proc.stderr)

    origin.reset_stats()
    rep = dtkg(home, "ledger", "repair", "--json")
    assert rep.returncode == 0, rep.stdout + rep.stderr
    report = json.loads(rep.stdout)
    assert report["kept_aside"] and Path(report["kept_aside"]).exists()  # the damaged file, kept
    assert report["restored_from"] == str(settings.snapshot_path)
    assert report["recovered_works"] == 1 and report["recovered_without_url"] == ["W4"]
    assert report["not_recovered"] and report["problems"] == []
    human = dtkg(home, "ledger", "health")
    assert human.returncode == 0 and "healthy" in human.stdout
    with Ledger.open_reader(settings) as led:
        done = dict(led.query("SELECT work_id, sha256 FROM artifact_jobs WHERE state IN ('INDEXED', 'DEDUPED')"))
    assert done == {w: hashlib.sha256(b).hexdigest() for w, b in bodies.items()}  # no finished work lost
    again = dtkg(home, "works", "download", "--json")
    assert again.returncode == 0 and json.loads(again.stdout).get("downloaded", 0) == 0
    assert sum(origin.stats(f"/{w}.pdf").requests for w in bodies) == 0  # nothing downloaded again
    assert dtkg(home, "ledger", "repair").stdout.strip() == "nothing to repair"


@pytest.fixture
def small_fs(tmp_path: Path):  # type: ignore[no-untyped-def]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_failed_publication_on_a_full_disk_leaves_nothing_behind(small_fs: Path) -> None:
    settings = Settings().with_home(small_fs / "home").replace(ledger={"snapshot_interval_s": 0})
    with Ledger.open_writer(settings) as led:
        led.plan([WorkRecord("W1", [Candidate("http://127.0.0.1:9/1.pdf", "x")])])
    filler = small_fs / "filler"
    with Ledger.open_writer(settings) as led:
        led.plan([WorkRecord("W2", [Candidate("http://127.0.0.1:9/2.pdf", "x")])])
        with open(filler, "wb") as f, contextlib.suppress(OSError):  # now fill the disk to the last byte
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        for _ in range(3):
            assert led.publish_snapshot(force=True) is False
        assert led.snapshot_error is not None and "disk full" in led.snapshot_error
        assert sorted(p.name for p in settings.home.iterdir() if p.name.endswith(".tmp")) == []
        with Ledger.open_reader(settings) as reader:  # the previous snapshot, read on a full disk
            assert reader.query("SELECT work_id FROM works") == [("W1",)]
        filler.unlink()
        assert led.publish_snapshot(force=True) is True  # the writer is unharmed
    with Ledger.open_reader(settings) as reader:
        assert reader.query("SELECT count(*) FROM works") == [(2,)]


def test_a_healthy_file_shorter_than_its_header_says_is_not_damaged(tmp_path: Path) -> None:
    """DuckDB trims free blocks off the end of the file without lowering the headers' block count:
    only table blocks past the end mean truncation."""
    settings = Settings().with_home(tmp_path).replace(ledger={"snapshot_interval_s": 0})
    with Ledger.open_writer(settings) as led:  # bulk rows as bench/snapshot.py writes them
        cur = led.cursor()
        cur.execute("""INSERT INTO works SELECT 'W' || i, NULL, 'Title ' || i, 2020, '[]'::JSON, 'bulk', '{}'::JSON,
                       epoch(now()), epoch(now()) FROM range(2000) t(i)""")
        cur.execute("""INSERT INTO artifact_jobs (job_id, idempotency_key, work_id, url, host, state, sha256, path,
                       bytes, created_at, updated_at) SELECT sha256('j' || i), sha256('j' || i), 'W' || i,
                       'https://host' || (i % 50) || '.example.org/' || i || '.pdf', 'host' || (i % 50), 'INDEXED',
                       sha256('b' || i), 'works/W' || i || '.pdf', 1000, epoch(now()), epoch(now())
                       FROM range(2000) t(i)""")
    with Ledger.open_writer(settings) as led:
        for k in range(3):
            led.plan([WorkRecord(f"N{k}", [Candidate(f"https://example.org/{k}.pdf", "x")])])
            assert led.publish_snapshot(force=True)
    with Ledger.open_writer(settings) as led:  # opens: not refused as truncated
        assert led.query("SELECT count(*) FROM works") == [(2003,)]
    assert dtkg(tmp_path, "ledger", "health").returncode == 0


def test_a_writer_looks_for_missing_blocks_only_in_a_file_changed_since_its_snapshot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The look costs 0.07 s per open at a million works: a file its current snapshot was published
    from was found whole then. A file cut after that is still refused."""
    settings = Settings().with_home(tmp_path)
    looks: list[Path] = []
    look = storage.blocks_problem

    def counted(con: duckdb.DuckDBPyConnection, path: Path) -> str | None:
        looks.append(path)
        return look(con, path)

    monkeypatch.setattr(storage, "blocks_problem", counted)
    with Ledger.open_writer(settings) as led:  # a new file: looked at
        led.plan([WorkRecord("W1", [Candidate("https://example.org/1.pdf", "x")])])
    assert len(looks) == 1
    with Ledger.open_writer(settings) as led:  # published at close, unchanged since: not looked at
        assert led.query("SELECT count(*) FROM works") == [(1,)]
    assert len(looks) == 1
    os.truncate(settings.ledger_path, settings.ledger_path.stat().st_size // 2)
    with pytest.raises(LedgerUnavailable, match="truncated"):
        Ledger.open_writer(settings)
    assert len(looks) == 2


def test_the_quota_message_names_the_settings(settings: Settings) -> None:
    from dtkg_assets.core.errors import DtkgError, Reason
    from dtkg_assets.core.store import QuotaGuard

    guard = QuotaGuard(settings.replace(quota={"free_bytes_min": 10_000}), free_bytes=lambda: 5_000)
    with pytest.raises(DtkgError) as info, guard.reserve(1_000):
        pass
    assert info.value.reason == Reason.QUOTA_EXCEEDED
    assert "DTKG_QUOTA_FREE_BYTES_MIN" in info.value.detail and str(settings.store_dir) in info.value.detail


def _works(start: int, n: int) -> list[WorkRecord]:
    """Works whose titles do not compress: a ledger of some MB, where a few new rows elsewhere
    leave most blocks as they were."""
    return [WorkRecord(f"W{i}", [Candidate(f"http://127.0.0.1:9/{i}.pdf", "x")], title=os.urandom(600).hex())
            for i in range(start, start + n)]


def _same_bytes(a: Path, b: Path) -> bool:
    return a.read_bytes() == b.read_bytes()


HOLDING_READER = textwrap.dedent(
    """
    import sys, duckdb
    con = duckdb.connect(sys.argv[1], read_only=True)  # a notebook's plain connection
    print(con.execute("SELECT count(*) FROM runs").fetchone()[0], flush=True)
    sys.stdin.readline()
    print(con.execute("SELECT count(*), sum(length(title)) FROM works").fetchone()[0],
          con.execute("SELECT count(*) FROM runs").fetchone()[0], flush=True)
    """
)


def test_publication_writes_the_changes_into_the_spare_unless_a_reader_holds_it(tmp_path: Path) -> None:
    """Each publication after the second brings the snapshot published before the current one (the
    spare) up to date in place, writing only what changed; a spare that a reader still has open, in
    this process (`Ledger.open_reader`) or in another (a plain DuckDB connection), is left as it is
    and the file is copied whole instead. Every published file is the live file byte for byte."""
    settings = Settings().with_home(tmp_path).replace(ledger={"snapshot_interval_s": 0})
    snap, spare = settings.snapshot_path, storage.spare_path(settings.snapshot_path)
    with Ledger.open_writer(settings) as led:
        led.plan(_works(0, 6000))
        assert led.publish_snapshot(force=True)
        runs = 0

        def publish() -> tuple[int, int]:
            nonlocal runs
            led.start_run(f"run-{runs}", kind="test", owner="test")
            runs += 1
            before = led.stats.snapshot_bytes
            assert led.publish_snapshot(force=True)
            assert _same_bytes(snap, settings.ledger_path)
            return snap.stat().st_ino, led.stats.snapshot_bytes - before

        size = settings.ledger_path.stat().st_size
        first = snap.stat().st_ino
        second, _ = publish()
        assert spare.stat().st_ino == first
        third, written = publish()
        assert third == first and 0 < written < size / 4  # the spare, refreshed: a few chunks
        # A reader in this process holds the published file: one publication later it is the spare;
        # the next one copies the file whole instead of refreshing it, and the reader keeps its view.
        # A second handle shares the first one's database (DuckDB's), and its hold.
        with Ledger.open_reader(settings) as reader:
            again = Ledger.open_reader(settings)
            publish()
        _, written = publish()
        assert written >= size
        assert again.query("SELECT count(*) FROM runs") == [(2,)]
        again.close()
        _, written = publish()
        assert 0 < written < size / 4
        # A plain DuckDB connection in another process holds the published file the same way.
        proc = subprocess.Popen([sys.executable, "-c", HOLDING_READER, str(snap)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == str(runs)
        held = runs
        publish()
        _, written = publish()
        assert written >= size
        out, _ = proc.communicate("\n", timeout=30)
        assert out.split() == ["6000", str(held)]
        _, written = publish()
        assert 0 < written < size / 4  # nobody holds the spare any more
    with Ledger.open_reader(settings) as reader:
        assert reader.query("SELECT count(*) FROM runs") == [(runs,)]


def _changed_bytes(a: Path, b: Path, chunk: int = 256 * 1024) -> int:
    """Bytes in the chunks of `chunk` bytes where `a` and `b` differ (a tail one has and not the other
    counts whole)."""
    changed = abs(a.stat().st_size - b.stat().st_size)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while (x := fa.read(chunk)) and (y := fb.read(chunk)):
            changed += chunk if x != y else 0
    return changed


def test_completing_works_rewrites_only_their_rows_not_the_indexes(tmp_path: Path) -> None:
    """The guarded updates of a commit change the rows they finish and nothing else in the file: the
    publication after 300 works end rewrites a few blocks, not the job table's indexes (an UPDATE with
    RETURNING deletes and re-inserts each row, so DuckDB rewrote every index block it touched: at a
    million works, 160 MB per 500 works, copied again into every snapshot)."""
    settings = Settings().with_home(tmp_path).replace(ledger={"snapshot_interval_s": 0})
    with Ledger.open_writer(settings) as led:
        led.plan([WorkRecord(f"W{i}", [Candidate(f"http://127.0.0.1:9/{i}.pdf", "x")]) for i in range(60_000)])
        assert led.publish_snapshot(force=True)
        before = tmp_path / "before.duckdb"
        shutil.copyfile(settings.snapshot_path, before)
        jobs = [str(r[0]) for r in led.query("SELECT job_id FROM artifact_jobs ORDER BY job_id LIMIT 300")]
        now = 1_000.0
        grants = led.acquire([LeaseRequest(j, "me", None, 60.0, None) for j in jobs], now=now)
        leases = [Lease(led.commits, g, ttl_s=60.0) for g in grants if g is not None]
        assert len(leases) == 300
        for lease in leases:
            lease.release(now=now + 1)
        assert led.query("SELECT count(*) FROM artifact_jobs WHERE state = 'PLANNED' AND fencing_token = 2") == [(300,)]
        assert led.publish_snapshot(force=True)
        size = settings.ledger_path.stat().st_size
        changed = _changed_bytes(before, settings.snapshot_path)
    assert 0 < changed <= 8 * 256 * 1024, f"{changed} of {size} bytes changed"


def test_leasing_and_releasing_works_loads_no_index_of_job_ids(tmp_path: Path) -> None:
    """A writer finds the jobs it leases and commits by work, not by job id: job ids are random
    64-character hashes, so a run's lookups by job id touched every part of that index and loaded all
    of it into the writer (78 MB at a million works, again in every run). Works of a run share pages
    of the work-id index."""
    settings = Settings().with_home(tmp_path)
    with Ledger.open_writer(settings) as led:
        led.plan([WorkRecord(f"W{i:06d}", [Candidate(f"http://127.0.0.1:9/{i}.pdf", "x"),
                                           Candidate(f"http://127.0.0.1:9/{i}b.pdf", "y")]) for i in range(60_000)])
    with Ledger.open_writer(settings) as led:  # a new writer: no index in memory yet
        def index_mib() -> float:
            rows = led.query("SELECT sum(memory_usage_bytes) FROM duckdb_memory() WHERE tag = 'ART_INDEX'")
            return float(rows[0][0] or 0) / 2**20

        jobs = led.query("SELECT job_id, work_id FROM artifact_jobs WHERE work_id < 'W000300' "
                         "AND url LIKE '%b.pdf'")
        assert len(jobs) == 300
        before = index_mib()
        now = 1_000.0
        # In rounds of 16, as a run's workers ask (a longer list is answered by a scan, not an index).
        grants = [g for i in range(0, 300, 16)
                  for g in led.acquire([LeaseRequest(j, "me", None, 60.0, work_id=w) for j, w in jobs[i:i + 16]],
                                       now=now)]
        leases = [Lease(led.commits, g, ttl_s=60.0) for g in grants if g is not None]
        assert len(leases) == 300 and all(len(g.other_jobs) == 1 for g in grants if g is not None)
        for lease in leases:
            lease.release(now=now + 1)
        assert led.query("SELECT count(*) FROM artifact_jobs WHERE state = 'PLANNED' AND fencing_token = 2") \
            == [(300,)]
        whole = led.query("SELECT estimated_size FROM duckdb_tables() WHERE table_name = 'artifact_jobs'")
        loaded = index_mib() - before
    assert whole[0][0] == 120_000
    assert loaded < 4.0, f"{loaded:.1f} MiB of indexes loaded"  # by job id: 16 MiB


def test_opening_the_writer_reads_no_job_columns_when_no_lease_is_left(tmp_path: Path) -> None:
    """A writer's open looks for leases an earlier process left by row id: with finished works in a
    row group (whose states DuckDB then cannot rule out from its statistics), selecting the job
    columns read every column of the group (11 MB and 24 ms per open at a million works)."""
    settings = Settings().with_home(tmp_path)
    with Ledger.open_writer(settings) as led:
        led.plan([WorkRecord(f"W{i:06d}", [Candidate(f"http://127.0.0.1:9/{i}.pdf", "x")]) for i in range(30_000)])
        led.cursor().execute("UPDATE artifact_jobs SET state = 'INDEXED', sha256 = 'x', finished_at = 1 "
                             "WHERE work_id < 'W000300'")
    with Ledger.open_writer(settings) as led:
        assert led.recovered == {"released_leases": 0, "abandoned_ops": 0}
        buffers = led.query("SELECT sum(memory_usage_bytes) FROM duckdb_memory() WHERE tag = 'BASE_TABLE'")
    assert float(buffers[0][0] or 0) / 2**20 < 1.5  # the job columns: 3 MiB here


def test_a_damaged_spare_is_made_whole_again(tmp_path: Path) -> None:
    """Whatever the spare holds (a crash in the middle of its refresh, a truncation, garbage), a
    refresh compares bytes, not a record of what was written: the result is the live file."""
    settings = Settings().with_home(tmp_path).replace(ledger={"snapshot_interval_s": 0})
    snap, spare = settings.snapshot_path, storage.spare_path(settings.snapshot_path)
    with Ledger.open_writer(settings) as led:
        led.plan(_works(0, 3000))
        assert led.publish_snapshot(force=True)
        for start, damage in ((3000, "garbage"), (3010, "short"), (3020, "long")):
            led.plan(_works(start, 10))
            assert spare.exists()
            data = bytearray(spare.read_bytes())
            if damage == "garbage":
                data[len(data) // 2: len(data) // 2 + 70_000] = os.urandom(70_000)
            elif damage == "short":
                data = data[: len(data) // 3]
            else:
                data += os.urandom(300_000)
            spare.write_bytes(bytes(data))
            assert led.publish_snapshot(force=True)
            assert _same_bytes(snap, settings.ledger_path), damage
            with Ledger.open_reader(settings) as reader:
                assert reader.query("SELECT count(*) FROM works") == [(start + 10,)]
                assert reader.validate() == []


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kernel_copy", [True, False])
def test_a_refresh_writes_exactly_the_chunks_that_differ(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: int, kernel_copy: bool) -> None:
    """Large files are compared on two threads (here: small windows make this file large), and the
    chunks that differ are copied by the kernel or, where it cannot, through this process."""
    chunk = storage._CHUNK
    monkeypatch.setattr(storage, "_WINDOW", 4 * chunk)
    monkeypatch.setattr(storage, "_PARALLEL_WINDOWS", 2 if threads == 2 else 10**9)
    if not kernel_copy:
        def refuse(*args: object) -> int:
            raise OSError(errno.EXDEV, "no copy_file_range here")
        monkeypatch.setattr(os, "copy_file_range", refuse)
    live = tmp_path / "live"
    live.write_bytes(os.urandom(21 * chunk + 1234))
    for size, changed in ((21 * chunk + 1234, [0, 5, 13, 21]), (9 * chunk, [2, 8]), (30 * chunk + 5, [20])):
        data = bytearray(live.read_bytes())
        data = (data + os.urandom(size))[:size]  # the spare: shorter or longer than the live file
        for i in changed:  # one byte in each of these chunks
            at = min(i * chunk + 77, len(data) - 1)
            data[at] ^= 0xFF
        spare = tmp_path / "spare"
        spare.write_bytes(bytes(data))
        fd = os.open(spare, os.O_RDWR)
        try:
            written = storage._write_differences(live, fd)
        finally:
            os.close(fd)
        assert spare.read_bytes() == live.read_bytes()
        live_size = live.stat().st_size
        expected = sum(min(chunk, live_size - i * chunk) for i in changed if i * chunk < min(size, live_size))
        expected += max(0, live_size - size)  # the part the spare lacked
        assert written == expected, (size, written, expected)


def test_a_ledger_cut_short_under_its_writer_is_not_published(tmp_path: Path, capsys) -> None:
    """The publication looks at the table blocks again when the file shrank since it was last found
    whole (here: cut to half while a writer has it open); the snapshot stays as it was."""
    settings = Settings().with_home(tmp_path).replace(ledger={"snapshot_interval_s": 0})
    with Ledger.open_writer(settings) as led:
        led.plan(_works(0, 3000))
    before = settings.snapshot_path.read_bytes()
    led = Ledger.open_writer(settings)
    try:
        led.cursor().close()  # nothing written, but the next publication must not be skipped
        os.truncate(settings.ledger_path, settings.ledger_path.stat().st_size // 2)
        assert led.publish_snapshot(force=True) is False
        assert "is damaged" in capsys.readouterr().err
        assert settings.snapshot_path.read_bytes() == before
    finally:
        with contextlib.suppress(Exception):
            led._con.close()
        led._lock.release()  # type: ignore[union-attr]
