"""Crash recovery with real processes: a child is SIGKILLed at a named crash point, a fresh process
re-runs the same works, and the store, the ledger and the origin's byte counters are checked."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dtkg_assets.core.http import READ_BYTES
from dtkg_assets.core.ledger import Ledger
from dtkg_assets.core.settings import MiB, Settings
from dtkg_assets.core.streaming.engine import PROGRESS_EVERY
from dtkg_assets_tests.conftest import loopback_env
from dtkg_assets_tests.support.origin import FaultMode

SLACK = 8 * MiB  # bytes a killed client may leave in flight (socket buffers) beyond what it wrote


def child_env(home: Path, crash: str | None) -> dict[str, str]:
    env = loopback_env(home, DTKG_IO_FSYNC="1")
    if crash:
        env["DTKG_CRASH_AT"] = crash
        if crash.startswith("body_checkpoint"):
            # Time-based checkpoints would come first on a slow machine: test the 32 MiB one.
            env["DTKG_IO_CHECKPOINT_INTERVAL_S"] = "0"
    return env


def run_download(home: Path, works_file: Path, crash: str | None = None, workers: int = 1):
    return subprocess.run(
        [sys.executable, "-m", "dtkg_assets.cli", "works", "download", str(works_file),
         "--workers", str(workers), "--json"],
        capture_output=True, text=True, env=child_env(home, crash), timeout=240,
    )


def write_works(path: Path, works: dict[str, str]) -> Path:
    with path.open("w") as fh:
        for wid, url in works.items():
            fh.write(json.dumps({"id": f"https://openalex.org/{wid}", "display_name": wid,
                                 "best_oa_location": {"pdf_url": url}}) + "\n")
    return path


def check_consistent(home: Path, bodies: dict[str, bytes]) -> None:
    """Every work complete once, one blob per distinct content named by its hash, ledger valid."""
    settings = Settings().with_home(home)
    store = home / "store"
    blobs = [p for p in store.rglob("*.pdf") if p.parent.name not in ("works", "quarantine")]
    assert sorted(p.name for p in blobs) == sorted({hashlib.sha256(b).hexdigest() + ".pdf"
                                                     for b in bodies.values()})
    for p in blobs:
        assert hashlib.sha256(p.read_bytes()).hexdigest() + ".pdf" == p.name
    for wid, body in bodies.items():
        assert (store / "works" / f"{wid}.pdf").read_bytes() == body
    with Ledger.open_writer(settings, wait_s=30) as led:
        assert led.validate() == []
        rows = led.query("SELECT work_id, count(*) FILTER (WHERE state IN ('INDEXED','DEDUPED')), "
                         "count(*) FILTER (WHERE state = 'INDEXED') FROM artifact_jobs GROUP BY work_id")
        assert {r[0]: r[1] for r in rows} == dict.fromkeys(bodies, 1)
        refs = dict(led.query("SELECT sha256, ref_count FROM blobs"))
        expected: dict[str, int] = {}
        for body in bodies.values():
            sha = hashlib.sha256(body).hexdigest()
            expected[sha] = expected.get(sha, 0) + 1
        assert refs == expected
        assert led.query("SELECT count(*) FROM artifact_ops WHERE finished_at IS NULL "
                         "AND result_code NOT IN ('ABANDONED')") == [(0,)]
    assert not list((home / "staging").glob("*.part"))


@pytest.fixture
def corpus(origin, pdf_bytes, tmp_path):
    """Three works, the third with the first one's bytes (dedupe)."""
    a, b = pdf_bytes(3 * MiB + 17, 1), pdf_bytes(600_000, 2)
    bodies = {"W1": a, "W2": b, "W3": a}
    urls = {"W1": origin.add("/w1.pdf", a), "W2": origin.add("/w2.pdf", b), "W3": origin.add("/w3.pdf", a)}
    return bodies, urls, write_works(tmp_path / "works.jsonl", urls)


CRASHES = [
    ("body_mib:2", "after 2 MiB of body"),
    ("part_fsynced", "after the fsync of the complete part"),
    ("finalize_linked", "between the blob's link and the part's unlink"),
    ("effect_done:FINALIZE", "after the rename into the store, before the ledger commit"),
    ("effect_done:FINALIZE:3", "finalize of the duplicate content, before the ledger commit"),
    ("effect_done:LINK:3", "during dedupe: link of the duplicate done, not committed"),
    ("after_commit", "after the ledger commit"),
]


@pytest.mark.parametrize(("crash", "what"), CRASHES, ids=[c for c, _ in CRASHES])
def test_crash_then_rerun(origin, corpus, tmp_path, crash, what):
    bodies, urls, works_file = corpus
    home = tmp_path / "home"
    first = run_download(home, works_file, crash)
    assert first.returncode == -9, (what, first.returncode, first.stderr)
    served_first = {w: origin.stats(f"/{w.lower()}.pdf").body_bytes for w in bodies}
    second = run_download(home, works_file)
    assert second.returncode == 0, second.stderr
    assert "Could not set lock" not in second.stderr
    check_consistent(home, bodies)
    for w, body in bodies.items():
        served = origin.stats(f"/{w.lower()}.pdf").body_bytes
        assert served <= len(body) + min(served_first[w], SLACK), (what, w, served, served_first[w])
    if crash == "after_commit":
        before = {w: origin.stats(f"/{w.lower()}.pdf").requests for w in bodies}
        third = run_download(home, works_file)  # nothing left to do: no request at all
        assert third.returncode == 0 and json.loads(third.stdout)["works"] == 0
        assert {w: origin.stats(f"/{w.lower()}.pdf").requests for w in bodies} == before


def test_crash_between_finalize_link_and_unlink_then_the_object_changes(origin, pdf_bytes, tmp_path):
    """Killed after the blob got its name and before the part lost its own, the two names are one file.
    The object then changes on the server: the rerun must never write into that file (the blob would
    change under its hash). The part's sidecar names the blob, so the work finishes from disk with the
    bytes it downloaded, and the store still holds exactly the blob its name promises."""
    old, new = pdf_bytes(2 * MiB + 5, 11), pdf_bytes(2 * MiB + 9, 12)
    url = origin.add("/w1.pdf", old)
    works_file = write_works(tmp_path / "works.jsonl", {"W1": url})
    home = tmp_path / "home"
    first = run_download(home, works_file, "finalize_linked")
    assert first.returncode == -9, first.stderr
    parts = list((home / "staging").glob("*.part"))
    assert len(parts) == 1 and parts[0].stat().st_nlink == 2  # the state this test is about
    origin.mutate("/w1.pdf", new)
    requests_before = origin.stats("/w1.pdf").requests
    second = run_download(home, works_file)
    assert second.returncode == 0, second.stderr
    check_consistent(home, {"W1": old})
    assert origin.stats("/w1.pdf").requests == requests_before  # finished from disk


@pytest.mark.serial
def test_crash_after_durable_checkpoint_resumes(origin, pdf_bytes, tmp_path):
    """Killed right after the 32 MiB checkpoint became durable: the re-run resumes there instead of
    starting over, and re-sends only the missing bytes plus what streamed while that checkpoint's
    fsync ran (checkpoints are made durable beside the stream, which does not wait for them)."""
    body = pdf_bytes(40 * MiB + 5, 7)
    url = origin.add("/big.pdf", body)
    works_file = write_works(tmp_path / "works.jsonl", {"W9": url})
    home = tmp_path / "home"
    first = run_download(home, works_file, "body_checkpoint")
    assert first.returncode == -9, first.stderr
    served_first = origin.stats("/big.pdf").body_bytes
    second = run_download(home, works_file)
    assert second.returncode == 0, second.stderr
    check_consistent(home, {"W9": body})
    st = origin.stats("/big.pdf")
    assert st.ranges[-1] is not None and st.ranges[-1].startswith("bytes=")
    resumed_at = int(st.ranges[-1].removeprefix("bytes=").rstrip("-"))
    # The durable checkpoint, not zero: taken at the first progress mark (every MiB) past 32 MiB, and a
    # mark lands after a socket read of up to READ_BYTES, so up to one mark plus one read beyond it.
    assert 32 * MiB <= resumed_at <= 32 * MiB + PROGRESS_EVERY + READ_BYTES
    assert st.body_bytes - served_first == len(body) - resumed_at  # the second run: from there on
    assert served_first - resumed_at <= 32 * MiB + SLACK  # fetched twice: at most one checkpoint


def test_two_processes_same_works_at_once(origin, pdf_bytes, tmp_path):
    bodies = {f"W{i}": pdf_bytes(400_000 + i, 20 + i) for i in range(6)}
    bodies["W6"] = bodies["W0"]
    urls = {w: origin.add(f"/{w.lower()}.pdf", b, FaultMode(latency_s=0.05)) for w, b in bodies.items()}
    works_file = write_works(tmp_path / "works.jsonl", urls)
    home = tmp_path / "home"
    procs = [
        subprocess.Popen([sys.executable, "-m", "dtkg_assets.cli", "works", "download", str(works_file),
                          "--workers", "3", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=child_env(home, None))
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert "Could not set lock" not in err and "IOException" not in err
    check_consistent(home, bodies)
    for w in bodies:
        assert origin.stats(f"/{w.lower()}.pdf").get_requests == 1
    done = sorted(json.loads(out)["works"] for out, _ in outs)
    assert done == [0, 7]  # the second writer waited, then found nothing left to do
