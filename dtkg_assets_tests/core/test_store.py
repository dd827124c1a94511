"""Content-addressed store: atomic idempotent finalize, per-work links, quota guard, verify."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from dtkg_assets.core.errors import DtkgError, Reason
from dtkg_assets.core.settings import Settings
from dtkg_assets.core.store import Store, sha256_file

DATA = b"%PDF-1.7\n" + bytes(range(256)) * 20 + b"\n%%EOF\n"
SHA = hashlib.sha256(DATA).hexdigest()


def make_part(store: Store, name: str, data: bytes = DATA) -> Path:
    part = store.staging_dir / f"{name}.part"
    part.write_bytes(data)
    return part


def test_layout(settings: Settings) -> None:
    store = Store(settings)
    assert store.blob_path(SHA) == settings.store_dir / SHA[:2] / f"{SHA}.pdf"
    assert store.work_path("W1") == settings.store_dir / "works" / "W1.pdf"
    part, sidecar = store.part_paths("W1", "http://x/a.pdf")
    assert part.parent == settings.staging_dir and sidecar.name == part.name + ".json"
    assert store.part_paths("W2", "http://x/a.pdf")[0] != part
    wide = Store(settings.replace(store={"shard_width": 3}))
    assert wide.blob_path(SHA).parent.name == SHA[:3]


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "x" * 300])
def test_work_ids_cannot_escape(settings: Settings, bad: str) -> None:
    with pytest.raises(DtkgError) as exc:
        Store(settings).work_path(bad)
    assert exc.value.reason is Reason.BAD_INPUT


def test_finalize_is_atomic_and_idempotent(settings: Settings) -> None:
    store = Store(settings)
    first = store.finalize(make_part(store, "a"), SHA)
    assert first.created and first.path.read_bytes() == DATA
    second = store.finalize(make_part(store, "b"), SHA)
    assert not second.created and second.path == first.path
    assert list(settings.staging_dir.iterdir()) == []
    assert store.dedupe_count == 1
    # Re-running a finalize whose part was already moved is a no-op.
    again = store.finalize(store.staging_dir / "a.part", SHA)
    assert not again.created


def test_finalize_replaces_a_damaged_blob(settings: Settings) -> None:
    store = Store(settings)
    blob = store.blob_path(SHA)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(DATA[:100])
    assert not store.verify(SHA)
    assert store.finalize(make_part(store, "a"), SHA).created
    assert store.verify(SHA)


def test_concurrent_finalize_creates_once(settings: Settings) -> None:
    store = Store(settings)
    parts = [make_part(store, f"p{i}") for i in range(8)]
    results = []
    threads = [threading.Thread(target=lambda p=p: results.append(store.finalize(p, SHA))) for p in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.created for r in results) == 1
    assert store.verify(SHA) and list(settings.staging_dir.iterdir()) == []


def test_link_work_hardlink_existing_and_repoint(settings: Settings) -> None:
    store = Store(settings)
    store.finalize(make_part(store, "a"), SHA)
    link = store.link_work("W1", SHA)
    assert link.mode == "hardlink" and link.path.stat().st_ino == store.blob_path(SHA).stat().st_ino
    assert store.link_work("W1", SHA).mode == "existing"
    other = DATA + b"%%EOF\n"
    other_sha = hashlib.sha256(other).hexdigest()
    store.finalize(make_part(store, "b", other), other_sha)
    moved = store.link_work("W1", other_sha)
    assert moved.mode == "hardlink" and moved.path.read_bytes() == other
    assert store.blob_path(SHA).stat().st_nlink == 1


def test_link_work_copies_when_links_are_off(settings: Settings) -> None:
    store = Store(settings.replace(store={"dedupe_hardlink": False}))
    store.finalize(make_part(store, "a"), SHA)
    link = store.link_work("W1", SHA)
    assert link.mode == "copy" and link.path.read_bytes() == DATA
    assert link.path.stat().st_ino != store.blob_path(SHA).stat().st_ino
    assert store.link_work("W1", SHA).mode == "existing"


def test_finalize_never_dedupes_against_a_blob_with_a_flipped_byte(settings: Settings) -> None:
    """Same size, wrong bytes: the verified part replaces the blob, and the work's name, a hardlink
    to the damaged inode, is relinked to the good one."""
    store = Store(settings)
    store.finalize(make_part(store, "a"), SHA)
    store.link_work("W1", SHA)
    with open(store.blob_path(SHA), "r+b") as f:
        f.seek(50)
        f.write(b"X")
    again = store.finalize(make_part(store, "b"), SHA)
    assert again.created and store.dedupe_count == 0 and sha256_file(again.path) == SHA
    assert store.link_work("W1", SHA).mode == "hardlink"
    assert store.work_path("W1").read_bytes() == DATA


def test_verify_detects_corruption(settings: Settings) -> None:
    store = Store(settings)
    store.finalize(make_part(store, "a"), SHA)
    assert store.verify(SHA) and sha256_file(store.blob_path(SHA)) == SHA
    with open(store.blob_path(SHA), "r+b") as f:
        f.seek(50)
        f.write(b"X")
    assert not store.verify(SHA)
    assert not store.verify("0" * 64)


def test_quota_guard_reserves_and_releases(settings: Settings) -> None:
    store = Store(settings.replace(quota={"free_bytes_min": 10, "margin_factor": 2.0}))
    store.quota._free_bytes = lambda: 1000  # type: ignore[method-assign]
    with store.quota.reserve(400):
        assert store.quota.reserved == 400
        # 1000 - 400 = 600 free for others; 10 + 2 x 300 = 610 needed.
        with pytest.raises(DtkgError) as exc, store.quota.reserve(300):
            pass
        assert exc.value.reason is Reason.QUOTA_EXCEEDED and "reserved 400" in exc.value.detail
        with store.quota.reserve(290):
            assert store.quota.reserved == 690
    assert store.quota.reserved == 0
    # Unknown size: only the floor is checked.
    with store.quota.reserve(None):
        assert store.quota.reserved == 0
