"""Scale-out benchmark: 1, 2 and 4 `dtkg backfill` worker processes on one PostgreSQL ledger.

A throwaway PostgreSQL cluster (durable: fsync on) holds the ledger and the Dagster instance; every
worker has its own DTKG_HOME and shares one DTKG_STORE_DIR. One local origin adds `--latency-ms` to
every response (threaded: connections wait out their latency in parallel). For each worker count, with
fresh databases and store: the works are imported once, then that many `dtkg backfill --workers W`
processes start together; the wall time runs from the first start to the last exit. Every work must be
stored and every body fetched once before a time counts.

Prints works/s per worker count, the CPU the whole machine spent (workers, origin and PostgreSQL
share its cores) with the ceiling that puts on each ratio, and, last, the throughput ratios against
one worker (`ratio_2_workers=…` is the goal line: ≥ 1.7).

    .venv/bin/python bench/scale_out.py [--files 800] [--latency-ms 200] [--workers 16] [--runs 1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from bench.common import OUT, PDF_HEAD, PDF_TAIL, dtkg_cmd, machine_busy_s, make_pdf  # noqa: E402
from dtkg_assets_tests.support.origin import FaultMode, OriginServer  # noqa: E402
from dtkg_assets_tests.support.pgcluster import PgCluster  # noqa: E402

KiB = 1024
SEED = 20261202


def build_corpus(n: int, www: Path) -> dict[str, Path]:
    """N deterministic PDFs, rebuilt when the PDF wrapper of bench/common.py changed (validation reads it)."""
    rng = random.Random(SEED)
    stamp = www / "wrapper.sha256"
    wrapper = hashlib.sha256(PDF_HEAD + PDF_TAIL).hexdigest()
    if not stamp.exists() or stamp.read_text() != wrapper:
        shutil.rmtree(www, ignore_errors=True)
    www.mkdir(parents=True, exist_ok=True)
    stamp.write_text(wrapper)
    files = {}
    for i in range(n):
        wid = f"W{5100000000 + i}"
        path = www / f"{wid}.pdf"
        if not path.exists():
            make_pdf(path, rng.randint(20 * KiB, 200 * KiB), random.Random(SEED + i))
        files[wid] = path
    return files


def worker_env(home: Path, ledger: str, dagster: str, store: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTKG_") and k != "DAGSTER_HOME"}
    env.update(DTKG_HOME=str(home), DTKG_LEDGER_URL=ledger, DAGSTER_PG_URL=dagster, DTKG_STORE_DIR=str(store),
               DTKG_QUOTA_FREE_BYTES_MIN="0", DTKG_ALLOW_HOSTS="127.0.0.1", DTKG_RATE_LIMITS="*=0",
               DTKG_HTTP_ROBOTS_ENABLED="0", DTKG_HTTP_CACHE_ENABLED="0", DTKG_LOG_LEVEL="ERROR")
    return env


def one_run(cluster: PgCluster, origin: OriginServer, files: dict[str, Path], works: Path, k: int,
            threads: int, tag: str) -> tuple[float, float]:
    """Wall seconds of `k` workers together, and CPU seconds the whole machine spent meanwhile."""
    base = OUT / "scale_out" / tag
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    ledger, dagster = cluster.create_database(f"ledger_{tag}"), cluster.create_database(f"dagster_{tag}")
    store = base / "store"
    envs = [worker_env(base / f"home-{i}", ledger, dagster, store) for i in range(k)]
    subprocess.run([*dtkg_cmd(), "works", "import", str(works)], env=envs[0], check=True, capture_output=True)
    origin.reset_stats()
    cpu0, busy0 = _children_cpu(), machine_busy_s()
    t0 = time.perf_counter()
    procs = [subprocess.Popen([*dtkg_cmd(), "backfill", "--workers", str(threads), "--json"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for env in envs]
    outs = [p.communicate(timeout=3600) for p in procs]
    wall = time.perf_counter() - t0
    cpu, busy = _children_cpu() - cpu0, machine_busy_s() - busy0
    with psycopg.connect(ledger, options="-c search_path=dtkg") as con:
        done = con.execute("SELECT count(DISTINCT work_id) FROM artifact_jobs WHERE state IN ('INDEXED','DEDUPED')"
                           ).fetchone()[0]
    gets = [origin.stats(f"/{wid}.pdf").get_requests for wid in files]
    if done != len(files) or set(gets) != {1}:
        for _, err in outs:
            print(err[-2000:], file=sys.stderr)
        raise SystemExit(f"{k} workers: {done} of {len(files)} works stored, GETs per body {sorted(set(gets))}")
    runs = sum(json.loads(o)["runs"] for o, _ in outs if o.strip())
    # CPU of the worker processes (user + system): on this 2-core machine the workers, the origin and
    # PostgreSQL share two cores, so a worker count whose CPU need exceeds them cannot scale here.
    print(f"workers={k} wall_s={wall:.2f} works_per_s={len(files) / wall:.1f} dagster_runs={runs} "
          f"worker_cpu_s={cpu:.1f} cpu_ms_per_work={cpu / len(files) * 1000:.1f} "
          f"worker_cores_busy={cpu / wall:.2f} machine_cores_busy={busy / wall:.2f}", flush=True)
    return wall, busy


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--files", type=int, default=800)
    ap.add_argument("--latency-ms", type=float, default=200.0)
    ap.add_argument("--workers", type=int, default=16, help="download threads per worker process")
    ap.add_argument("--runs", type=int, default=1, help="runs per worker count (median)")
    ap.add_argument("--counts", default="1,2,4", help="worker process counts")
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    files = build_corpus(args.files, OUT / "scale_out_www")
    latency = FaultMode(latency_s=args.latency_ms / 1000)
    walls: dict[int, float] = {}
    busy: dict[int, float] = {}
    with PgCluster(durable=True) as cluster, OriginServer() as origin:
        urls = {}
        for wid, path in files.items():
            urls[wid] = origin.add_file(f"/{wid}.pdf", path, FaultMode(latency_s=latency.latency_s))
        works = OUT / "scale_out_works.jsonl"
        with works.open("w") as f:
            for wid, url in urls.items():
                f.write(json.dumps({"id": f"https://openalex.org/{wid}", "title": wid, "publication_year": 2024,
                                    "best_oa_location": {"pdf_url": url, "is_oa": True}}) + "\n")
        print(f"corpus: {len(files)} PDFs of 20-200 KiB, {args.latency_ms:.0f} ms per response, "
              f"{args.workers} threads per worker, PostgreSQL ledger + Dagster storage (fsync on)", flush=True)
        for k in counts:
            samples = [one_run(cluster, origin, files, works, k, args.workers, f"k{k}r{r}") for r in range(args.runs)]
            walls[k] = statistics.median(w for w, _ in samples)
            busy[k] = statistics.median(b for _, b in samples)
    base = walls[counts[0]]
    cores = os.cpu_count() or 1
    for k in counts[1:]:
        # The most k workers could reach on this machine with the CPU per work they needed: every
        # core busy, against the first count's throughput (at most k / first count).
        cpu_per_work = busy[k] / len(files)
        ceiling = min(k / counts[0], cores / cpu_per_work / (len(files) / base))
        print(f"cpu_ceiling_{k}_workers={ceiling:.2f} (machine CPU per work: {cpu_per_work * 1000:.1f} ms with "
              f"{k}, {busy[counts[0]] / len(files) * 1000:.1f} ms with {counts[0]}; {cores} cores)")
    for k in counts[1:]:
        print(f"ratio_{k}_workers={base / walls[k]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
