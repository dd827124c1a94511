"""Batch benchmark: `dtkg backfill --workers 16` (Dagster + ledger) versus `aria2c -j 16 -i list`,
and versus Dagster's own floor for the same partitions.

Builds N random-filled PDFs of 20-200 KB (deterministic seed) in bench/out/, serves them from one
local origin (threaded, one thread per connection) that adds a fixed latency before every
response, and alternates runs of each side on the same URLs with fresh state each run:

  ours:  fresh DTKG_HOME; `dtkg works import works.jsonl` (timed apart), then `dtkg backfill
         --workers W --json` (the timed part);
  aria2: `aria2c -j W -x 1 -i list.txt -d DIR` into a fresh directory.

Once per invocation (unless --no-floor / --no-bookkeeping):
  floor: `bench/dagster_floor.py --keys N`: a no-op asset logging one materialization per key in one
         ranged run on a fresh SQLite instance (process wall, import included, like ours);
  bookkeeping: the same works through `dtkg works download` (no Dagster): its CPU and wall minus
         those of the same command with nothing to do, per artifact = our own cost (ledger, engine,
         validation, finalize). Dagster's share = backfill minus that run.

Both sides must produce every file with the right sha256 before any time counts. Prints the medians,
requests per fresh artifact from the origin's counters (robots.txt apart), a breakdown from the
Dagster run storage and the ledger, then ``ratio_vs_dagster_floor=<floor wall / our wall>`` (when
measured) and last ``ratio_vs_aria2=<aria2 wall / our wall>`` (higher is better).

``--profile FILE`` also runs one untimed backfill in this process under cProfile (stats to FILE,
ledger call totals from `Ledger.stats` printed).

``--dagster-pg``: our side's Dagster instance on PostgreSQL storage (DAGSTER_PG_URL, a fresh database
per run on a throwaway cluster with fsync on; the ledger stays DuckDB), where Dagster's batched event
writes are real.

Usage: python bench/batch.py [--files 2000] [--runs 1] [--latency-ms 200] [--workers 16] [--dagster-pg]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import LAST_CPU_S, OUT, ROOT, dtkg_cmd, make_pdf, run_measured, sha256_file  # noqa: E402
from dtkg_assets_tests.support.origin import FaultMode, OriginServer  # noqa: E402

KiB = 1024
SEED = 20261105


@dataclass
class Corpus:
    files: dict[str, tuple[Path, str, int]]  # work id -> (file, sha256, size)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, _, size in self.files.values())


@dataclass
class OurRun:
    import_s: float
    wall_s: float  # backfill process wall
    cpu_s: float  # backfill process CPU (user + system)
    report: dict[str, Any]
    requests: int
    heads: int
    gets: int
    extra: dict[str, float] = field(default_factory=dict)


def build_corpus(n: int, www: Path) -> Corpus:
    """N deterministic PDFs; reused when an earlier run left the same set (same seed, same sizes)."""
    rng = random.Random(SEED)
    sizes = [rng.randint(20_000, 200_000) for _ in range(n)]
    manifest = www / "manifest.json"
    if manifest.exists():
        known = json.loads(manifest.read_text())
        if known.get("seed") == SEED and known.get("sizes") == sizes:
            return Corpus({w: (www / f"{w}.pdf", sha, size) for w, (sha, size) in known["files"].items()})
    shutil.rmtree(www, ignore_errors=True)
    www.mkdir(parents=True)
    files: dict[str, tuple[Path, str, int]] = {}
    for i, size in enumerate(sizes):
        work_id = f"W{4100000000 + i}"
        path = www / f"{work_id}.pdf"
        files[work_id] = (path, make_pdf(path, size, rng), size)
    manifest.write_text(
        json.dumps({"seed": SEED, "sizes": sizes, "files": {w: [sha, size] for w, (_, sha, size) in files.items()}})
    )
    return Corpus(files)


def work_record(work_id: str, url: str) -> dict[str, Any]:
    """A minimal OpenAlex-shaped work whose only candidate is `url` (best_oa_location.pdf_url)."""
    location = {"is_oa": True, "pdf_url": url, "landing_page_url": None, "source": None, "version": None}
    return {
        "id": f"https://openalex.org/{work_id}",
        "doi": None,
        "title": f"Benchmark paper {work_id}",
        "open_access": {"is_oa": True, "oa_url": url},
        "best_oa_location": location,
        "primary_location": location,
        "locations": [location],
    }


def our_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DTKG_HOME=str(home),
        DTKG_ALLOW_HOSTS="127.0.0.1",
        DTKG_RATE_LIMITS="*=0",
        DTKG_QUOTA_FREE_BYTES_MIN="0",
    )
    env.pop("DAGSTER_HOME", None)
    return env


def origin_counts(origin: OriginServer, paths: list[str]) -> tuple[int, int, int]:
    """(requests including robots.txt, HEADs and GETs of the PDFs) served since the last reset."""
    stats = [origin.stats(p) for p in paths]
    robots = origin.stats("/robots.txt").requests
    return sum(s.requests for s in stats) + robots, sum(s.head_requests for s in stats), sum(
        s.get_requests for s in stats)


def verify_ours(home: Path, corpus: Corpus) -> None:
    """Every work INDEXED in the ledger, with a file on disk whose bytes hash to the source's sha256."""
    from dtkg_assets.core.ledger import Ledger
    from dtkg_assets.core.settings import Settings

    settings = Settings.from_env(our_env(home))
    led = Ledger.open_reader(settings, live=True)
    try:
        rows = led.query("SELECT work_id, sha256, path FROM artifact_jobs WHERE state IN ('INDEXED', 'DEDUPED')")
    finally:
        led.close()
    from dtkg_assets.core.store import resolve_store_path

    done = {str(w): (str(s), Path(resolve_store_path(str(p), settings.store_dir))) for w, s, p in rows}
    missing = sorted(set(corpus.files) - set(done))
    if missing:
        raise RuntimeError(f"dtkg: {len(missing)} works not complete in the ledger, e.g. {missing[:5]}")
    for work_id, (_, sha, _) in corpus.files.items():
        ledger_sha, path = done[work_id]
        if ledger_sha != sha or sha256_file(path) != sha:
            raise RuntimeError(f"dtkg: {work_id} stored wrong bytes at {path}")


def verify_aria2(target: Path, corpus: Corpus) -> None:
    for work_id, (_, sha, _) in corpus.files.items():
        path = target / f"{work_id}.pdf"
        if not path.exists() or sha256_file(path) != sha:
            raise RuntimeError(f"aria2c: {path} missing or wrong bytes")


def breakdown(home: Path) -> dict[str, float]:
    """Where our wall time went, from Dagster's run storage and the ledger (both on disk)."""
    import dagster as dg

    from dtkg_assets.core.ledger import Ledger
    from dtkg_assets.core.settings import Settings

    out: dict[str, float] = {}
    settings = Settings.from_env(our_env(home))
    instance = dg.DagsterInstance.from_config(str(settings.dagster_home))
    try:
        runs = instance.get_runs()
        run_s = step_s = check_s = 0.0
        n_runs = n_check_runs = 0
        events = check_events = check_evaluations = materializations = 0
        last_download_end = last_check_end = 0.0
        for run in runs:
            stats = instance.get_run_stats(run.run_id)
            if stats.start_time is None or stats.end_time is None:
                continue
            steps = instance.get_run_step_stats(run.run_id)
            records = instance.get_records_for_run(run.run_id).records
            if run.job_name == "artifact_checks_job":
                n_check_runs += 1
                check_s += stats.end_time - stats.start_time
                check_events += len(records)
                evaluation = dg.DagsterEventType.ASSET_CHECK_EVALUATION
                check_evaluations += sum(1 for r in records if r.event_log_entry.dagster_event_type == evaluation)
                last_check_end = max(last_check_end, stats.end_time)
                continue
            pdf_steps = [s for s in steps if s.step_key and "artifact_pdfs" in s.step_key]
            if not pdf_steps:
                continue  # the import run
            n_runs += 1
            run_s += stats.end_time - stats.start_time
            step_s += sum((s.end_time or 0) - (s.start_time or 0) for s in pdf_steps)
            events += len(records)
            materializations += sum(
                1 for r in records if r.event_log_entry.dagster_event_type == dg.DagsterEventType.ASSET_MATERIALIZATION)
            last_download_end = max(last_download_end, stats.end_time)
        out.update(dagster_runs=n_runs, run_s=run_s, step_s=step_s, download_events=events,
                   materializations=materializations, check_runs=n_check_runs, check_run_s=check_s,
                   check_events=check_events, check_evaluations=check_evaluations,
                   checks_after_downloads_s=max(0.0, last_check_end - last_download_end))
    finally:
        instance.dispose()
    led = Ledger.open_reader(settings, live=True)
    try:
        (orch_s,) = led.query("SELECT coalesce(sum(finished_at - started_at), 0) FROM runs WHERE kind = 'process'")[0]
        for method, n, mean_s in led.query(
            "SELECT method, count(*), avg(elapsed_s) FROM http_attempts GROUP BY method"
        ):
            out[f"{str(method).lower()}_n"] = float(n)
            out[f"{str(method).lower()}_mean_ms"] = float(mean_s or 0) * 1000
        (job_s,) = led.query("SELECT coalesce(sum(elapsed_s), 0) FROM artifact_jobs")[0]
    finally:
        led.close()
    out.update(orchestrator_s=float(orch_s), engine_job_s=float(job_s))
    return out


def our_run(origin: OriginServer, paths: list[str], jsonl: Path, home: Path, corpus: Corpus, workers: int) -> OurRun:
    shutil.rmtree(home, ignore_errors=True)
    env = our_env(home)
    import_s, _, _ = run_measured([*dtkg_cmd(), "works", "import", str(jsonl)], env=env, cwd=ROOT)
    origin.reset_stats()
    wall, _, out = run_measured([*dtkg_cmd(), "backfill", "--workers", str(workers), "--json"], env=env, cwd=ROOT)
    cpu = LAST_CPU_S[0]
    requests, heads, gets = origin_counts(origin, paths)
    report = json.loads(out.strip().splitlines()[-1])
    if report.get("materialized") != len(corpus.files) or report.get("failed_runs"):
        raise RuntimeError(f"dtkg backfill did not materialize every work: {report}")
    verify_ours(home, corpus)
    run = OurRun(import_s, wall, cpu, report, requests, heads, gets, breakdown(home))
    shutil.rmtree(home, ignore_errors=True)
    return run


def aria2_run(
    origin: OriginServer, paths: list[str], listing: Path, target: Path, corpus: Corpus, workers: int
) -> tuple[float, int]:
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    origin.reset_stats()
    cmd = [
        "aria2c", "-j", str(workers), "-x", "1", "-i", str(listing), "-d", str(target),
        "--allow-overwrite=true", "--auto-file-renaming=false", "--console-log-level=warn", "--summary-interval=0",
    ]  # fmt: skip
    wall, _, _ = run_measured(cmd)
    requests, _, _ = origin_counts(origin, paths)
    verify_aria2(target, corpus)
    shutil.rmtree(target, ignore_errors=True)
    return wall, requests


def dagster_pg_cluster() -> Any:
    """A throwaway PostgreSQL cluster, durable like a real deployment, for `--dagster-pg`."""
    from dtkg_assets_tests.support.pgcluster import PgCluster

    return PgCluster(durable=True)


def fresh_dagster_database(cluster: Any, name: str) -> None:
    """Point our side's Dagster instance (DAGSTER_PG_URL; `our_env` copies os.environ) at a new,
    empty database, named with the driver dagster-postgres needs (this process reads it too)."""
    from dtkg_assets.defs.instance import dagster_pg_url

    os.environ["DAGSTER_PG_URL"] = dagster_pg_url(cluster.create_database(name))


def floor_run(n: int, workers: int) -> tuple[float, dict[str, Any]]:
    """Dagster's floor for n partitions (bench/dagster_floor.py): process wall and its own figures."""
    wall, _, out = run_measured([sys.executable, str(ROOT / "bench" / "dagster_floor.py"), "--keys", str(n),
                                 "--threads", str(workers)], cwd=ROOT)
    return wall, json.loads(out.strip().splitlines()[-1])


def bookkeeping_run(origin: OriginServer, paths: list[str], jsonl: Path, home: Path, corpus: Corpus,
                    workers: int) -> dict[str, float]:
    """The same works through `dtkg works download` (no Dagster): wall and CPU of the run, minus the
    same command with nothing left to do (process start, imports, ledger open and close)."""
    shutil.rmtree(home, ignore_errors=True)
    env = our_env(home)
    run_measured([*dtkg_cmd(), "works", "import", str(jsonl)], env=env, cwd=ROOT)
    origin.reset_stats()
    cmd = [*dtkg_cmd(), "works", "download", "--workers", str(workers), "--json"]
    wall, _, out = run_measured(cmd, env=env, cwd=ROOT)
    cpu = LAST_CPU_S[0]
    requests, heads, gets = origin_counts(origin, paths)
    if json.loads(out.strip().splitlines()[-1]).get("works") != len(corpus.files):
        raise RuntimeError(f"dtkg works download did not process every work: {out[-500:]}")
    verify_ours(home, corpus)
    idle_wall, _, _ = run_measured(cmd, env=env, cwd=ROOT)
    idle_cpu = LAST_CPU_S[0]
    shutil.rmtree(home, ignore_errors=True)
    n = len(corpus.files)
    return {"wall_s": wall, "cpu_s": cpu, "idle_wall_s": idle_wall, "idle_cpu_s": idle_cpu,
            "wall_ms": (wall - idle_wall) / n * 1000, "cpu_ms": (cpu - idle_cpu) / n * 1000,
            "requests": requests, "heads": heads, "gets": gets}


def profile_run(jsonl: Path, home: Path, workers: int, dest: Path) -> None:
    """One untimed backfill in this process under cProfile; prints the top functions and the
    ledger's own call totals (`Ledger.stats`)."""
    import cProfile
    import pstats

    shutil.rmtree(home, ignore_errors=True)
    env = our_env(home)
    run_measured([*dtkg_cmd(), "works", "import", str(jsonl)], env=env, cwd=ROOT)
    os.environ.update({k: v for k, v in env.items() if k.startswith("DTKG_")})
    from dtkg_assets.cli.launch import backfill, dagster_instance
    from dtkg_assets.core.ledger import Ledger, LedgerStats
    from dtkg_assets.core.settings import Settings

    totals = LedgerStats()
    original_close = Ledger.close

    def close(self: Ledger) -> None:
        if self.writable:
            for name in ("calls", "transactions", "wall_s", "cpu_s"):
                setattr(totals, name, getattr(totals, name) + getattr(self.stats, name))
        original_close(self)

    Ledger.close = close  # type: ignore[method-assign]
    try:
        settings = Settings.from_env()
        instance = dagster_instance(settings)
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        report = backfill(instance, settings, workers=workers)
        prof.disable()
        wall = time.perf_counter() - t0
        instance.dispose()
    finally:
        Ledger.close = original_close  # type: ignore[method-assign]
    prof.dump_stats(str(dest))
    print(f"profile: in-process backfill {wall:.2f}s, {len(report.batches)} runs; cProfile stats in {dest}")
    print(
        f"profile: ledger writer calls {totals.calls}, transactions {totals.transactions}, "
        f"wall {totals.wall_s:.2f}s (summed over threads, lock waits included), cpu {totals.cpu_s:.2f}s"
    )
    pstats.Stats(str(dest)).sort_stats("cumulative").print_stats(25)
    shutil.rmtree(home, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--no-floor", action="store_true", help="skip Dagster's floor (bench/dagster_floor.py)")
    ap.add_argument("--no-bookkeeping", action="store_true", help="skip the Dagster-less `dtkg works download` run")
    ap.add_argument("--latency-ms", type=float, default=200.0)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="DTKG_RUN_BATCH_SIZE for our side (default: the setting's, 500)")
    ap.add_argument("--profile", type=Path, default=None, help="also profile one in-process backfill into FILE")
    ap.add_argument("--dagster-pg", action="store_true",
                    help="Dagster on PostgreSQL storage for our side (a fresh database per run, fsync on)")
    args = ap.parse_args(argv)
    if shutil.which("aria2c") is None:
        raise SystemExit("aria2c is required (apt-get install aria2)")

    if args.batch_size is not None:
        os.environ["DTKG_RUN_BATCH_SIZE"] = str(args.batch_size)  # our_env copies os.environ
    OUT.mkdir(parents=True, exist_ok=True)
    work = OUT / "batch"
    work.mkdir(exist_ok=True)
    print(f"creating {args.files} PDFs of 20-200 KB (seed {SEED}) ...", flush=True)
    corpus = build_corpus(args.files, work / "www")
    n = len(corpus.files)
    latency = FaultMode(latency_s=args.latency_ms / 1000)
    floor = None if args.no_floor else floor_run(args.files, args.workers)
    if floor is not None:
        print(f"Dagster floor: {floor[0]:.2f} s process wall ({json.dumps(floor[1])})", flush=True)
    ours: list[OurRun] = []
    theirs: list[float] = []
    aria2_requests: list[int] = []
    pg = dagster_pg_cluster() if args.dagster_pg else None
    # One server for both sides: threaded, so 16 connections each wait out their latency in parallel.
    with OriginServer() as origin, pg or contextlib.nullcontext():
        paths = [f"/pdfs/{w}.pdf" for w in corpus.files]
        for path, (file, _, _) in zip(paths, corpus.files.values(), strict=True):
            origin.add_file(path, file, FaultMode(latency_s=latency.latency_s))
        origin.add_robots()
        origin.set_mode("/robots.txt", FaultMode(latency_s=latency.latency_s, content_type="text/plain"))
        jsonl = work / "works.jsonl"
        with open(jsonl, "w", encoding="utf-8") as fh:
            for path, work_id in zip(paths, corpus.files, strict=True):
                fh.write(json.dumps(work_record(work_id, origin.url(path))) + "\n")
        listing = work / "list.txt"
        listing.write_text("".join(origin.url(p) + "\n" for p in paths))
        try:
            for i in range(args.runs):
                if pg is not None:
                    fresh_dagster_database(pg, f"batch_run{i}")
                run = our_run(origin, paths, jsonl, work / "home", corpus, args.workers)
                ours.append(run)
                wall, requests = aria2_run(origin, paths, listing, work / "aria2", corpus, args.workers)
                theirs.append(wall)
                aria2_requests.append(requests)
                print(
                    f"run {i + 1}: dtkg backfill {run.wall_s:.2f}s (import {run.import_s:.2f}s, "
                    f"{run.report['runs']} Dagster runs, {run.requests} requests)  "
                    f"aria2c {wall:.2f}s ({requests} requests)",
                    flush=True,
                )
            book = None if args.no_bookkeeping else bookkeeping_run(
                origin, paths, jsonl, work / "home", corpus, args.workers)
            if args.profile is not None:
                if pg is not None:
                    fresh_dagster_database(pg, "batch_profile")
                profile_run(jsonl, work / "home", args.workers, args.profile)
        finally:
            shutil.rmtree(work / "home", ignore_errors=True)
            shutil.rmtree(work / "aria2", ignore_errors=True)

    med_ours = statistics.median(r.wall_s for r in ours)
    med_theirs = statistics.median(theirs)
    med = {k: statistics.median(r.extra.get(k, 0.0) for r in ours) for k in ours[0].extra}
    mib = corpus.total_bytes / (1024 * 1024)
    w = args.workers
    floor_aria2 = n / w * args.latency_ms / 1000
    print(
        f"corpus: {n} PDFs, {mib:.1f} MiB, {args.latency_ms:.0f} ms added per request, {w} workers, "
        f"batch size {os.environ.get('DTKG_RUN_BATCH_SIZE', 'default')}, "
        f"Dagster storage {'PostgreSQL (fsync on)' if args.dagster_pg else 'SQLite'}, "
        f"{args.runs} alternating runs, all sha256 verified on both sides"
    )
    print(f"median aria2c wall: {med_theirs:.2f} s (latency floor, {n} GETs on {w} connections: {floor_aria2:.2f} s)")
    med_import = statistics.median(r.import_s for r in ours)
    print(f"median dtkg backfill wall: {med_ours:.2f} s (works import timed apart: {med_import:.2f} s)")
    print(f"Dagster + ledger overhead per artifact vs aria2c: {(med_ours - med_theirs) / n * 1000:.1f} ms")
    robots = statistics.median(r.requests - r.heads - r.gets for r in ours)
    print(
        f"requests per fresh artifact: dtkg {statistics.median(r.heads + r.gets for r in ours) / n:.2f} "
        f"(HEAD {statistics.median(r.heads for r in ours) / n:.2f}, "
        f"GET {statistics.median(r.gets for r in ours) / n:.2f})"
        f" + robots.txt {robots:.0f} for the one host; aria2c {statistics.median(aria2_requests) / n:.2f}"
    )
    print(
        f"breakdown (medians): {med.get('dagster_runs', 0):.0f} Dagster runs; "
        f"process outside runs {med_ours - med.get('run_s', 0):.2f} s; "
        f"runs outside the artifact step {med.get('run_s', 0) - med.get('step_s', 0):.2f} s; "
        f"step outside orchestrator {med.get('step_s', 0) - med.get('orchestrator_s', 0):.2f} s; "
        f"orchestrator {med.get('orchestrator_s', 0):.2f} s"
    )
    print(
        f"Dagster events (all event log records, medians): download runs {med.get('download_events', 0):.0f} = "
        f"{med.get('download_events', 0) / n:.2f} per partition ({med.get('materializations', 0):.0f} "
        f"materializations); check runs {med.get('check_events', 0):.0f} = {med.get('check_events', 0) / n:.2f} per "
        f"partition ({med.get('check_evaluations', 0):.0f} check evaluations); total "
        f"{(med.get('download_events', 0) + med.get('check_events', 0)) / n:.2f} per partition"
    )
    print(
        f"check runs: {med.get('check_runs', 0):.0f}, {med.get('check_run_s', 0):.2f} s summed; the last ended "
        f"{med.get('checks_after_downloads_s', 0):.2f} s after the last download run"
    )
    print(
        f"engine: GET {med.get('get_mean_ms', 0):.0f} ms mean; engine time summed over jobs "
        f"{med.get('engine_job_s', 0):.1f} s = {med.get('engine_job_s', 0) / n * 1000:.0f} ms per artifact"
    )
    med_cpu = statistics.median(r.cpu_s for r in ours)
    if book is not None:
        print(
            f"our bookkeeping (ledger + engine + validation + finalize, `dtkg works download`, no Dagster): "
            f"{book['cpu_ms']:.2f} ms CPU and {book['wall_ms']:.2f} ms wall per artifact "
            f"(run {book['wall_s']:.2f} s wall / {book['cpu_s']:.2f} s CPU, minus {book['idle_wall_s']:.2f} s / "
            f"{book['idle_cpu_s']:.2f} s with nothing to do; requests {book['requests']})"
        )
        print(
            f"Dagster's share per artifact: {(med_cpu - book['cpu_s']) / n * 1000:.2f} ms CPU, "
            f"{(med_ours - book['wall_s']) / n * 1000:.2f} ms wall (backfill minus the Dagster-less run)"
        )
    print(f"dtkg backfill CPU: {med_cpu:.2f} s = {med_cpu / n * 1000:.2f} ms per artifact")
    if floor is not None:
        print(f"Dagster floor for {n} partitions: {floor[0]:.2f} s ({floor[0] / n * 1000:.1f} ms per partition)")
        print(f"ratio_vs_dagster_floor={floor[0] / med_ours:.2f}")
    print(f"ratio_vs_aria2={med_theirs / med_ours:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
