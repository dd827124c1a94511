"""Heal the ledger and the store after crashes; idempotent (a second run finds nothing to do).

Kinds (the keys of the returned counts):
- expired_leases: in-flight jobs whose lease expired → PLANNED (attempts were counted at acquire),
  or FAILED retries_exhausted past the attempt limit; the fencing token is bumped.
- abandoned_ops: ops started but never finished whose owner no longer holds the job → ABANDONED,
  so the next holder re-runs them (effects on disk are idempotent).
- requeued_missing / requeued_corrupt: finished jobs whose work file or blob is missing, or whose
  blob fails its hash → PLANNED through the explicit requeue edge; corrupt files are quarantined.
- adopted_blobs: blobs in the store without a ledger row whose bytes hash to their name → row added.
- quarantined: files in the store's blob shards that are not what their name says → store/quarantine/.
- orphan_parts: `.part` files and sidecars in staging with no live job, older than the TTL → removed.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

from dtkg_assets.core.ledger import Ledger
from dtkg_assets.core.ledger.queries import blob_references, finished_jobs_by_blob, known_blobs, leased_downloads
from dtkg_assets.core.settings import Settings
from dtkg_assets.core.store import Store, resolve_store_path, sha256_file

KINDS = (
    "expired_leases",
    "abandoned_ops",
    "requeued_missing",
    "requeued_corrupt",
    "adopted_blobs",
    "quarantined",
    "orphan_parts",
)
_BLOB_NAME = re.compile(r"^([0-9a-f]{64})\.pdf$")


def reconcile(ledger: Ledger, store: Store, settings: Settings, now: float | None = None) -> dict[str, int]:
    now = time.time() if now is None else now
    counts = dict.fromkeys(KINDS, 0)
    counts["expired_leases"] = ledger.expire_leases(now=now)
    counts["abandoned_ops"] = ledger.abandon_ops(now=now)
    _check_finished(ledger, store, counts, now)
    _adopt_blobs(ledger, store, counts, now)
    counts["orphan_parts"] = _remove_orphan_parts(ledger, store, settings, now)
    return counts


def release_leases(ledger: Ledger, *, owner: str | None = None, run_id: str | None = None) -> int:
    """For the failed-run sensor: give back every lease a dead run (or owner) held."""
    return ledger.release_leases(owner=owner, run_id=run_id)


def quarantine(store: Store, path: Path) -> Path:
    """Move a file out of the way (never delete evidence); unique name in store/quarantine/."""
    qdir = store.root / "quarantine"
    qdir.mkdir(parents=True, exist_ok=True)
    dest = qdir / f"{int(time.time() * 1000)}-{os.getpid()}-{path.name}"
    shutil.move(str(path), dest)
    return dest


def _check_finished(ledger: Ledger, store: Store, counts: dict[str, int], now: float) -> None:
    rows = finished_jobs_by_blob(ledger)
    blob_ok: dict[str, bool] = {}  # hash each distinct blob once
    blob_bad: set[str] = set()
    for job_id, work_id, sha, path, size in rows:
        blob = store.blob_path(sha)
        if sha not in blob_ok:
            blob_ok[sha] = blob.exists() and blob.stat().st_size == size and _hash_ok(blob, sha)
            if blob.exists() and not blob_ok[sha]:
                quarantine(store, blob)  # wrong bytes under a content address
                blob_bad.add(sha)
        work = resolve_store_path(path, store.root) if path else store.work_path(work_id)
        work_exists = work.exists()
        if work_exists and blob_ok[sha] and os.path.samefile(work, blob):
            work_ok = True
        else:
            work_ok = work_exists and work.stat().st_size == size and _hash_ok(work, sha)
        if blob_ok[sha] and work_ok:
            continue
        if work_exists and not work_ok:
            quarantine(store, work)
        if sha in blob_bad or (work_exists and not work_ok):
            ledger.requeue(job_id, reason="hash_mismatch", detail=f"bytes for {work_id} do not hash to {sha}", now=now)
            counts["requeued_corrupt"] += 1
        else:
            what = "work file" if blob_ok[sha] else "blob"
            ledger.requeue(job_id, reason="file_missing", detail=f"{what} missing for {work_id}", now=now)
            counts["requeued_missing"] += 1


def _hash_ok(path: Path, sha: str) -> bool:
    try:
        return sha256_file(path) == sha
    except FileNotFoundError:
        return False


def _adopt_blobs(ledger: Ledger, store: Store, counts: dict[str, int], now: float) -> None:
    known = known_blobs(ledger)
    width = store.settings.store.shard_width
    for shard in sorted(store.root.iterdir()):
        if not shard.is_dir() or shard.name in ("works", "quarantine") or len(shard.name) != width:
            continue
        for f in sorted(shard.iterdir()):
            if not f.is_file():
                continue
            m = _BLOB_NAME.match(f.name)
            if m and m.group(1) in known:
                continue
            if m and m.group(1).startswith(shard.name) and sha256_file(f) == m.group(1):
                sha = m.group(1)
                refs = blob_references(ledger, sha)
                if ledger.upsert_blob(sha, str(f), f.stat().st_size, ref_count=refs, now=now):
                    counts["adopted_blobs"] += 1
            elif f.name.startswith(".") and f.name.endswith(".tmp"):
                continue  # an in-progress atomic write of another process
            else:
                quarantine(store, f)
                counts["quarantined"] += 1


def _remove_orphan_parts(ledger: Ledger, store: Store, settings: Settings, now: float) -> int:
    live: set[str] = set()
    for work_id, url in leased_downloads(ledger, now):
        part, sidecar = store.part_paths(work_id, url)
        live.update((part.name, sidecar.name))
    removed = 0
    ttl = settings.ledger.part_orphan_ttl_s
    if not store.staging_dir.exists():
        return 0
    for f in sorted(store.staging_dir.iterdir()):
        if not (f.name.endswith(".part") or f.name.endswith(".part.json")) or f.name in live:
            continue
        try:
            age = now - f.stat().st_mtime
        except FileNotFoundError:
            continue
        if age >= ttl:
            f.unlink(missing_ok=True)
            removed += 1
    return removed
