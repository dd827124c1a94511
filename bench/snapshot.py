"""Cost of the DuckDB ledger's read snapshot at scale: publication, reader open, `dtkg status`.

    python bench/snapshot.py [--works 100000 1000000]

For each size: synthetic works and jobs (a third finished) written in bulk; then, on a writer that
has just committed one small change, the publication (CHECKPOINT + copy under the write lock, then
fsync + rename), how long writers were held back, a writer session that writes nothing (must not
publish), opening a reader on the snapshot and a `dtkg status` process. Prints one line per figure.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dtkg_assets.core.ledger import Ledger
from dtkg_assets.core.settings import Settings
from dtkg_assets.core.types import Candidate, WorkRecord


def populate(settings: Settings, n: int) -> float:
    t0 = time.perf_counter()
    with Ledger.open_writer(settings) as led:
        cur = led.cursor()
        cur.execute(f"""
            INSERT INTO works SELECT 'W' || i, '10.1/' || i, 'Title of work number ' || i, 2020,
              ('[{{"url":"https://host' || (i % 50) || '.example.org/pdf/' || i || '.pdf","source":"best_oa"}}]')::JSON,
              'bench', '{{}}'::JSON, epoch(now()), epoch(now()) FROM range({n}) t(i)""")
        cur.execute(f"""
            INSERT INTO artifact_jobs (job_id, idempotency_key, work_id, artifact, url, host, candidate_rank,
              candidate_source, state, sha256, path, bytes, created_at, updated_at, finished_at)
            SELECT sha256('j' || i), sha256('j' || i), 'W' || i, 'pdf',
              'https://host' || (i % 50) || '.example.org/pdf/' || i || '.pdf', 'host' || (i % 50) || '.example.org',
              0, 'best_oa', CASE WHEN i % 3 = 0 THEN 'INDEXED' ELSE 'PLANNED' END,
              CASE WHEN i % 3 = 0 THEN sha256('b' || i) END, CASE WHEN i % 3 = 0 THEN 'works/W' || i || '.pdf' END,
              CASE WHEN i % 3 = 0 THEN 200000 END, epoch(now()), epoch(now()), NULL FROM range({n}) t(i)""")
    return time.perf_counter() - t0


def measure(n: int, root: Path) -> dict[str, float]:
    home = root / f"home-{n}"
    shutil.rmtree(home, ignore_errors=True)
    settings = Settings().with_home(home).replace(ledger={"snapshot_interval_s": 0})
    out: dict[str, float] = {"works": n, "populate_s": populate(settings, n)}
    out["ledger_mb"] = settings.ledger_path.stat().st_size / 1e6
    pubs, held = [], []
    with Ledger.open_writer(settings) as led:
        for k in range(3):
            led.plan([WorkRecord(f"NEW{k}", [Candidate(f"https://example.org/{k}.pdf", "x")])])
            t0 = time.perf_counter()
            assert led.publish_snapshot(force=True)
            pubs.append(time.perf_counter() - t0)
            # Writers wait only while the lock is held (CHECKPOINT + copy): time one write right after.
            t1 = time.perf_counter()
            led.plan([WorkRecord(f"MORE{k}", [Candidate(f"https://example.org/m{k}.pdf", "x")])])
            held.append(time.perf_counter() - t1)
    out["publish_s"] = min(pubs)
    ino = settings.snapshot_path.stat().st_ino
    t0 = time.perf_counter()
    with Ledger.open_writer(settings):
        pass
    out["idle_writer_session_s"] = time.perf_counter() - t0
    out["idle_session_published"] = float(settings.snapshot_path.stat().st_ino != ino)
    t0 = time.perf_counter()
    with Ledger.open_reader(settings) as reader:
        out["reader_open_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        reader.query("SELECT state, count(*) FROM artifact_jobs GROUP BY state")
        out["reader_states_query_s"] = time.perf_counter() - t1
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dtkg_assets.cli", "status", "--json"], capture_output=True,
                          text=True, env={"DTKG_HOME": str(home), "PATH": "/usr/bin:/bin"}, check=False)
    out["dtkg_status_s"] = time.perf_counter() - t0
    out["dtkg_status_exit"] = proc.returncode
    shutil.rmtree(home, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--works", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dtkg-bench-snapshot-", dir="/var/tmp") as tmp:
        for n in args.works:
            result = measure(n, Path(tmp))
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()),
                  flush=True)


if __name__ == "__main__":
    main()
