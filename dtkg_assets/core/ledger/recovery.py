"""Recovering a damaged DuckDB ledger file: keep it aside, restore the newest snapshot, rebuild what
the store proves (blobs, per-work files), and say what could not be recovered.

`dtkg ledger repair` runs `repair(settings)`. It never deletes anything: the damaged file is renamed
to `ledger.duckdb.damaged-<time>`, corrupt store files go to `store/quarantine/` (reconciler).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from dtkg_assets.core.ledger import schema, storage
from dtkg_assets.core.ledger.db import Ledger, default_owner, job_id_for
from dtkg_assets.core.ledger.states import COMPLETE_SQL
from dtkg_assets.core.ledger.storage import LedgerCorrupt, LedgerError
from dtkg_assets.core.settings import Settings
from dtkg_assets.core.store import Store, sha256_file, store_relative

_BLOB_SUFFIX = ".pdf"


@dataclass
class RepairReport:
    """What `dtkg ledger repair` did and what it could not do, in words and numbers."""

    damaged: str | None = None  # the live file's problem, if it had one
    kept_aside: str | None = None  # where the damaged file went
    restored_from: str | None = None  # the snapshot the ledger was rebuilt from
    snapshot_time: float | None = None
    actions: list[str] = field(default_factory=list)  # schema objects recreated
    recovered_works: int = 0  # finished works the store proved and the snapshot did not know
    recovered_without_url: list[str] = field(default_factory=list)  # works not in the snapshot at all
    reconcile: dict[str, int] = field(default_factory=dict)
    not_recovered: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what validation still finds

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}

    def describe(self) -> str:
        lines: list[str] = []
        if self.damaged:
            lines.append(f"the ledger was damaged: {self.damaged}")
            lines.append(f"kept the damaged file aside as {self.kept_aside}")
            if self.restored_from:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.snapshot_time or 0))
                lines.append(f"restored the snapshot {self.restored_from} (published {when})")
            else:
                lines.append("no usable snapshot: started a new ledger and rebuilt it from the store")
        lines += self.actions
        if self.recovered_works:
            lines.append(f"recovered {self.recovered_works} finished works from the store")
        if self.recovered_without_url:
            lines.append(f"{len(self.recovered_without_url)} of them were not in the snapshot: their work records "
                         "and source URLs are unknown (re-import the works file to restore them)")
        healed = {k: v for k, v in self.reconcile.items() if v}
        if healed:
            lines.append("reconciled: " + ", ".join(f"{k} {v}" for k, v in healed.items()))
        lines += [f"not recovered: {x}" for x in self.not_recovered]
        lines += [f"still: {p}" for p in self.problems]
        return "\n".join(lines) or "nothing to repair"


def repair(settings: Settings, *, owner: str | None = None, wait_s: float | None = None) -> RepairReport:
    """Repair the ledger of `settings.home`: schema objects for a readable file; for a damaged one,
    the snapshot plus the store. Holds the writer lock throughout."""
    owner = owner or f"dtkg ledger repair ({default_owner()})"
    report = RepairReport()
    try:
        ledger = Ledger.open_writer(settings, owner=owner, wait_s=wait_s)
    except LedgerCorrupt as exc:
        report.damaged = exc.detail
        ledger = _restore(settings, owner, report)
    with ledger:
        report.actions = ledger.repair()
        if report.damaged:
            store = Store(settings)
            _rebuild_from_store(ledger, store, report)
            from dtkg_assets.core.reconciler import reconcile

            report.reconcile = reconcile(ledger, store, settings)
            ledger._tx(lambda cur: cur.execute(
                "INSERT INTO maintenance_log VALUES (?, 'repair', 'ledger', ?)",
                [time.time(), json.dumps(report.to_json(), default=str)]))
        report.problems = ledger.validate()
    return report


def _restore(settings: Settings, owner: str, report: RepairReport) -> Ledger:
    """Take the lock, move the damaged file aside, put the newest readable snapshot in its place."""
    live, snap = settings.ledger_path, settings.snapshot_path
    lock = storage.FileLock.try_take(storage.lock_path(settings), exclusive=True, owner=owner)
    if lock is None:
        holder = storage.read_holder(storage.lock_path(settings)).describe()
        raise storage.LedgerBusy(f"the ledger {live} is in use by {holder}; retry when it is done")
    try:
        report.kept_aside = str(storage.keep_aside(live)) if live.exists() or storage.wal_path(live).exists() else None
        problem = _snapshot_problem(snap)
        if problem is None:
            tmp = storage.copy_out(snap, live)
            storage.install(tmp, live, fsync=settings.io.fsync)
            report.restored_from = str(snap)
            report.snapshot_time = snap.stat().st_mtime
            report.not_recovered.append(
                "changes after the snapshot that left no file in the store (imports of new works, failures, "
                "attempts, run records); re-import works files imported since then")
        else:
            if snap.exists():
                storage.keep_aside(snap)
            report.not_recovered.append(f"the snapshot {snap} was not usable ({problem}): works without a file "
                                        "in the store must be imported again")
    finally:
        lock.release()
    try:
        return Ledger.open_writer(settings, owner=owner)
    except LedgerError:
        raise
    except (duckdb.Error, OSError) as exc:  # pragma: no cover - open_writer words these itself
        raise storage.storage_error(exc, live) from None


def _snapshot_problem(snap: Path) -> str | None:
    header = storage.header_problem(snap)
    if header is not None:
        return header
    try:
        con = duckdb.connect(str(snap), read_only=True)
    except duckdb.Error as exc:
        return " ".join(str(exc).split())[:200]
    try:
        blocks = storage.blocks_problem(con, snap)
        if blocks is not None:
            return blocks
        structural = schema.schema_problems(con)
        con.execute("SELECT count(*) FROM artifact_jobs").fetchall()
    except duckdb.Error as exc:
        return " ".join(str(exc).split())[:200]
    finally:
        con.close()
    missing = [p for p in structural if p.startswith("missing table")]
    return "; ".join(missing) if missing else None


def _rebuild_from_store(ledger: Ledger, store: Store, report: RepairReport) -> None:
    """Finished works the store proves (a per-work file whose bytes are a blob) that the ledger does
    not show as finished: recorded complete, with their blob."""
    root = store.root
    blobs: dict[tuple[int, int], str] = {}  # (dev, inode) -> sha of every well-named blob
    width = store.settings.store.shard_width
    if root.exists():
        for shard in root.iterdir():
            if not shard.is_dir() or len(shard.name) != width or shard.name in ("works", "quarantine"):
                continue
            for f in shard.iterdir():
                if f.name.endswith(_BLOB_SUFFIX) and len(f.name) == 64 + len(_BLOB_SUFFIX):
                    st = f.stat()
                    blobs[(st.st_dev, st.st_ino)] = f.name[:64]
    complete = {r[0]: r[1] for r in ledger.query(
        f"SELECT work_id, sha256 FROM artifact_jobs WHERE state IN {COMPLETE_SQL}")}
    known_works = {r[0] for r in ledger.query("SELECT work_id FROM works")}
    referenced = {r[0] for r in ledger.query(
        f"SELECT DISTINCT sha256 FROM artifact_jobs WHERE state IN {COMPLETE_SQL}")}
    works_dir = store.works_dir
    files = sorted(works_dir.glob("*.pdf")) if works_dir.exists() else []
    for f in files:
        work_id = f.name[: -len(_BLOB_SUFFIX)]
        if work_id in complete:
            continue  # the reconciler verifies it
        st = f.stat()
        sha = blobs.get((st.st_dev, st.st_ino))
        if sha is None:  # a copy, not a link: its bytes must be a blob's
            sha = sha256_file(f)
            blob = store.blob_path(sha)
            if not blob.exists():
                if _same_fs(f, blob):
                    os.link(f, blob)
                else:
                    shutil.copyfile(f, blob)
        final = "DEDUPED" if sha in referenced else "INDEXED"
        referenced.add(sha)
        _record_recovered(ledger, store, work_id, sha, f, st.st_size, final, known=work_id in known_works)
        report.recovered_works += 1
        if work_id not in known_works:
            report.recovered_without_url.append(work_id)


def _same_fs(a: Path, b: Path) -> bool:
    b.parent.mkdir(parents=True, exist_ok=True)
    return a.stat().st_dev == b.parent.stat().st_dev


def _record_recovered(ledger: Ledger, store: Store, work_id: str, sha: str, file: Path, size: int, final: str,
                      *, known: bool) -> None:
    """One finished work, proven by the store: its best candidate job (or a new one) becomes complete."""
    now = time.time()
    rel = store_relative(file, store.root)
    blob_rel = store_relative(store.blob_path(sha), store.root)

    def body(cur: duckdb.DuckDBPyConnection) -> None:
        if not known:
            cur.execute("INSERT INTO works (work_id, candidates, origin, raw, first_seen, last_seen) "
                        "VALUES (?, '[]', 'repair:store', '{}', ?, ?)", [work_id, now, now])
        rows = cur.execute("SELECT job_id FROM artifact_jobs WHERE work_id = ? ORDER BY candidate_rank, job_id",
                           [work_id]).fetchall()
        if rows:
            job_id = rows[0][0]
        else:
            url = f"recovered:{rel}"
            job_id = job_id_for(work_id, url)
            cur.execute("INSERT INTO artifact_jobs (job_id, idempotency_key, work_id, artifact, url, candidate_rank, "
                        "candidate_source, state, created_at, updated_at) "
                        "VALUES (?, ?, ?, 'pdf', ?, 0, 'repair:store', 'PLANNED', ?, ?)",
                        [job_id, job_id, work_id, url, now, now])
        cur.execute(
            "UPDATE artifact_jobs SET state = ?, sha256 = ?, path = ?, bytes = ?, lease_owner = NULL, "
            "lease_expires_at = NULL, fencing_token = fencing_token + 1, failure_class = NULL, last_reason = 'ok', "
            "last_error = 'recovered from the store by dtkg ledger repair', next_eligible_at = NULL, "
            "decision = 'recovered_from_store', updated_at = ?, finished_at = ? WHERE job_id = ?",
            [final, sha, rel, size, now, now, job_id])
        cur.execute("UPDATE artifact_jobs SET state = 'SKIPPED_DUPLICATE', updated_at = ? WHERE work_id = ? "
                    "AND job_id <> ? AND (state = 'PLANNED' OR (state = 'FAILED' AND failure_class = 'transient'))",
                    [now, work_id, job_id])
        if cur.execute("SELECT 1 FROM blobs WHERE sha256 = ?", [sha]).fetchall():
            cur.execute("UPDATE blobs SET ref_count = ref_count + 1 WHERE sha256 = ?", [sha])
        else:
            cur.execute("INSERT INTO blobs VALUES (?, ?, ?, 1, ?, ?)", [sha, blob_rel, size, now, now])
        cur.execute("INSERT INTO maintenance_log VALUES (?, 'repair', ?, ?)",
                    [now, f"artifact_jobs.{job_id}", f"{work_id} complete from {rel} (sha256 {sha})"])

    ledger._tx(body)


def live_problem(settings: Settings) -> str | None:
    """What is wrong with the live ledger file, in words (None: nothing found). Opens it only
    read-only and only when no writer holds it; never writes."""
    if settings.ledger_is_postgres:
        return None  # PostgreSQL words its own problems (pg.py); there is no file here
    live = settings.ledger_path
    if not live.exists():
        if settings.snapshot_path.exists():
            return f"the ledger {live} is missing although its snapshot exists; run `dtkg ledger repair`"
        return None
    header = storage.header_problem(live)
    if header is not None:
        return f"the ledger {live} is damaged: {header}; run `dtkg ledger repair`"
    try:
        lock = storage.FileLock.try_take(storage.lock_path(settings), exclusive=False, owner="health")
    except LedgerError:
        lock = None  # no lock file can be made (a read-only home): then no writer can be at work either
    else:
        if lock is None:
            return None  # a writer has it open: it opened, so it is readable
    try:
        con = duckdb.connect(str(live), read_only=True)
        try:
            blocks = storage.blocks_problem(con, live)
            if blocks is not None:
                return str(LedgerCorrupt(live, blocks))
            con.execute("SELECT count(*) FROM artifact_jobs").fetchall()
        finally:
            con.close()
    except duckdb.Error as exc:
        err = storage.storage_error(exc, live)
        return str(err) if isinstance(err, LedgerCorrupt) else None
    finally:
        if lock is not None:
            lock.release()
    return None


__all__ = ["RepairReport", "live_problem", "repair"]
