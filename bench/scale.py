"""Scale benchmark: the same work at 10,000 and at 1,000,000 works in the ledger.

For each ledger size N (fresh DTKG_HOME):
  1. import: `dtkg works import` of N synthetic OpenAlex records (one candidate each), timed, peak RSS;
  2. status: `dtkg status --json`, timed (reads the published snapshot);
  3. orchestrator: 2,000 of those works downloaded in this process through the orchestrator
     (`Orchestrator.process`, 16 workers, no Dagster): wall and CPU per artifact, i.e. the ledger,
     engine, validation and finalize at this ledger size;
  4. backfill: another 2,000 works through `dtkg backfill --limit 2000 --workers 16` (Dagster on
     SQLite; the import registered every one of the N works as a partition, so the instance lists
     N keys): wall per artifact, peak RSS.
The 4,000 measured works are distinct PDFs of 20-200 KB served by nginx on loopback; the other
works point at a closed port and stay PLANNED (they only make the ledger and the partition list
big). Works are imported in one file, the measured ones first (lowest ids), so `dtkg backfill
--limit` picks them.

Prints every figure per size, then the ratios 1M / 10k, the backfill ratio last
(``ratio_backfill_1m_vs_10k=…``; goal <= 1.2).

Usage: python bench/scale.py [--sizes 10000,1000000] [--measured 2000] [--workers 16] [--import-only]
[--repeat N]
(--import-only: phases 1 and 2 only, no nginx, no downloads; for iterating on the import. --repeat N:
each size imported once, then N rounds of phases 3 and 4 on copies of the imported homes, the sizes
taking turns; the median round of each size is reported, with every round's ratio)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import LAST_CPU_S, OUT, ROOT, dtkg_cmd, make_pdf, run_measured  # noqa: E402

SEED = 20261202


def build_pdfs(n: int, www: Path) -> list[str]:
    """n distinct PDFs of 20-200 KB; returns their names (reused when already there)."""
    names = [f"S{i:07d}.pdf" for i in range(n)]
    marker = www / f".built-{n}-{SEED}"
    if marker.exists():
        return names
    shutil.rmtree(www, ignore_errors=True)
    www.mkdir(parents=True)
    rng = random.Random(SEED)
    for name in names:
        make_pdf(www / name, rng.randint(20_000, 200_000), rng)
    marker.touch()
    return names


def write_works(path: Path, total: int, measured_urls: list[str]) -> tuple[list[str], list[str]]:
    """`total` works: the measured ones first (ids W1000000000…), then synthetic ones on a closed port.
    Returns (orchestrator ids, backfill ids): the backfill set has the lowest ids (picked first)."""
    ids = [f"W{1_000_000_000 + i}" for i in range(total)]
    with open(path, "w", encoding="utf-8") as fh:
        for i, wid in enumerate(ids):
            url = measured_urls[i] if i < len(measured_urls) else f"http://127.0.0.1:9/p/{wid}.pdf"
            fh.write(json.dumps({"id": f"https://openalex.org/{wid}", "title": f"Synthetic {wid}",
                                 "best_oa_location": {"pdf_url": url, "is_oa": True}}) + "\n")
    half = len(measured_urls) // 2
    return ids[half: len(measured_urls)], ids[:half]


def env_for(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTKG_")}
    env.update(DTKG_HOME=str(home), DTKG_ALLOW_HOSTS="127.0.0.1", DTKG_RATE_LIMITS="*=0",
               DTKG_QUOTA_FREE_BYTES_MIN="0", DTKG_HTTP_ROBOTS_ENABLED="0")
    env.pop("DAGSTER_HOME", None)
    return env


def orchestrator_run(env: dict[str, str], ids: list[str], workers: int) -> dict[str, float]:
    """The works `ids` through the orchestrator in this process (the writer is opened first)."""
    from dtkg_assets.core.http import make_client
    from dtkg_assets.core.ledger import Ledger
    from dtkg_assets.core.orchestrator import make_orchestrator
    from dtkg_assets.core.settings import Settings

    settings = Settings.from_env(env)
    t_open = time.perf_counter()
    led = Ledger.open_writer(settings, owner="bench-scale")
    open_s = time.perf_counter() - t_open
    client = make_client(settings)
    try:
        orch = make_orchestrator(led, client, settings, owner="bench-scale")
        c0, w0 = time.process_time(), time.perf_counter()
        outcomes = orch.process(ids, workers=workers)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        bad = [o for o in outcomes if o.status != "downloaded"]
        if bad:
            raise RuntimeError(f"orchestrator: {len(bad)} works not downloaded, e.g. {bad[:3]}")
    finally:
        client.close()
        t_close = time.perf_counter()
        led.close()
        close_s = time.perf_counter() - t_close
    n = len(ids)
    return {"open_s": open_s, "wall_ms": wall / n * 1000, "cpu_ms": cpu / n * 1000, "close_s": close_s}


def imported_home(total: int, urls: list[str], work: Path) -> tuple[Path, dict[str, Any], list[str], list[str]]:
    """Phases 1 and 2 in a fresh home; returns (home, figures, orchestrator ids, backfill ids)."""
    home = work / f"home-{total}"
    shutil.rmtree(home, ignore_errors=True)
    env = env_for(home)
    jsonl = work / f"works-{total}.jsonl"
    orch_ids, backfill_ids = write_works(jsonl, total, urls)
    out: dict[str, Any] = {"works": total}
    wall, rss, _ = run_measured([*dtkg_cmd(), "works", "import", str(jsonl), "--json"], env=env, cwd=ROOT)
    out.update(import_s=wall, import_rss_mib=rss / 1024)
    print(f"[{total}] import {wall:.1f} s (peak RSS {rss / 1024:.0f} MiB)", flush=True)
    wall, _, text = run_measured([*dtkg_cmd(), "status", "--json"], env=env, cwd=ROOT)
    states = json.loads(text.strip().splitlines()[-1]).get("states", {})
    out.update(status_s=wall, states=states)
    print(f"[{total}] status {wall:.2f} s ({states})", flush=True)
    ledger_file = home / "ledger.duckdb"
    out["ledger_mib"] = ledger_file.stat().st_size / 2**20 if ledger_file.exists() else 0.0
    return home, out, orch_ids, backfill_ids


def measured_runs(total: int, home: Path, orch_ids: list[str], backfill_ids: list[str], workers: int) -> dict[str, Any]:
    """Phases 3 and 4 in `home` (as the import left it). Written data is flushed first: the import's
    (or a home copy's) gigabytes written back during the measured phases would slow their fsyncs."""
    os.sync()
    env = env_for(home)
    out: dict[str, Any] = {"orchestrator": orchestrator_run(env, orch_ids, workers)}
    print(f"[{total}] orchestrator {json.dumps(out['orchestrator'])}", flush=True)
    cmd = [*dtkg_cmd(), "backfill", "--limit", str(len(backfill_ids)), "--workers", str(workers), "--json"]
    wall, rss, text = run_measured(cmd, env=env, cwd=ROOT)
    report = json.loads(text.strip().splitlines()[-1])
    if report.get("materialized") != len(backfill_ids) or report.get("failed_runs"):
        raise RuntimeError(f"backfill at {total}: {report}")
    out.update(backfill_s=wall, backfill_cpu_s=LAST_CPU_S[0], backfill_rss_mib=rss / 1024,
               backfill_ms=wall / len(backfill_ids) * 1000)
    print(f"[{total}] backfill {wall:.1f} s = {out['backfill_ms']:.1f} ms/artifact (CPU {LAST_CPU_S[0]:.1f} s, "
          f"peak RSS {rss / 1024:.0f} MiB)", flush=True)
    return out


def one_size(total: int, urls: list[str], workers: int, work: Path, *, import_only: bool = False) -> dict[str, Any]:
    home, out, orch_ids, backfill_ids = imported_home(total, urls, work)
    if not import_only:
        out.update(measured_runs(total, home, orch_ids, backfill_ids, workers))
    shutil.rmtree(home, ignore_errors=True)
    return out


def repeated(sizes: list[int], urls: list[str], workers: int, work: Path, repeat: int) -> list[dict[str, Any]]:
    """Each size imported once; then `repeat` rounds of phases 3 and 4, the sizes taking turns within
    a round, each on a fresh copy of its imported home: load that comes and goes on a shared machine
    then falls on both sizes of a round alike, and each round gives its own ratio."""
    homes = {}
    results: list[dict[str, Any]] = []
    for total in sizes:
        home, out, orch_ids, backfill_ids = imported_home(total, urls, work)
        kept = home.with_name(home.name + ".imported")
        shutil.rmtree(kept, ignore_errors=True)
        home.rename(kept)
        homes[total] = (kept, orch_ids, backfill_ids)
        out["rounds"] = []
        results.append(out)
    for r in range(repeat):
        for total, out in zip(sizes, results, strict=True):
            kept, orch_ids, backfill_ids = homes[total]
            home = kept.with_name(f"home-{total}")
            shutil.rmtree(home, ignore_errors=True)
            shutil.copytree(kept, home)
            print(f"[{total}] round {r + 1}", flush=True)
            out["rounds"].append(measured_runs(total, home, orch_ids, backfill_ids, workers))
            shutil.rmtree(home, ignore_errors=True)
    for out in results:
        shutil.rmtree(homes[out["works"]][0], ignore_errors=True)
        # The round with the median backfill stands for the size; every round's ratio is printed too.
        out.update(sorted(out["rounds"], key=lambda x: x["backfill_ms"])[len(out["rounds"]) // 2])
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sizes", default="10000,1000000")
    ap.add_argument("--measured", type=int, default=2000, help="works per measured phase")
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--import-only", action="store_true", help="only the import and status phases")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of the orchestrator and backfill phases on copies of each imported home, "
                         "the sizes taking turns (default 1: one of each, in a fresh home)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    work = OUT / "scale"
    work.mkdir(parents=True, exist_ok=True)
    if args.import_only:
        results = [one_size(total, [], args.workers, work, import_only=True) for total in sizes]
        for r in results:
            print(f"works={r['works']}: import {r['import_s']:.1f} s (RSS {r['import_rss_mib']:.0f} MiB), "
                  f"status {r['status_s']:.2f} s, ledger {r['ledger_mib']:.0f} MiB")
        if len(results) > 1:
            print(f"ratio_rss_import={results[-1]['import_rss_mib'] / results[0]['import_rss_mib']:.2f}")
        return 0
    names = build_pdfs(2 * args.measured, work / "www")
    from dtkg_assets_tests.support.nginx import NginxServer

    results: list[dict[str, Any]] = []
    with NginxServer(work / "www") as nginx:
        urls = [nginx.url(name) for name in names]
        if args.repeat > 1:
            results = repeated(sizes, urls, args.workers, work, args.repeat)
        else:
            for total in sizes:
                results.append(one_size(total, urls, args.workers, work))
    small, big = results[0], results[-1]
    for r in results:
        o = r["orchestrator"]
        print(f"works={r['works']}: import {r['import_s']:.1f} s (RSS {r['import_rss_mib']:.0f} MiB), "
              f"status {r['status_s']:.2f} s, ledger {r['ledger_mib']:.0f} MiB; orchestrator "
              f"{o['wall_ms']:.2f} ms wall / {o['cpu_ms']:.2f} ms CPU per artifact (writer open {o['open_s']:.2f} s, "
              f"close {o['close_s']:.2f} s); backfill {r['backfill_ms']:.1f} ms per artifact, "
              f"peak RSS {r['backfill_rss_mib']:.0f} MiB")
    if args.repeat > 1:
        pairs = zip(small["rounds"], big["rounds"], strict=True)
        print("backfill ratio per round: " + ", ".join(f"{b['backfill_ms'] / a['backfill_ms']:.2f}" for a, b in pairs))
    so, bo = small["orchestrator"], big["orchestrator"]
    print(f"ratio_rss_backfill={big['backfill_rss_mib'] / small['backfill_rss_mib']:.2f}")
    print(f"ratio_orchestrator_cpu={bo['cpu_ms'] / so['cpu_ms']:.2f}")
    print(f"ratio_orchestrator_wall={bo['wall_ms'] / so['wall_ms']:.2f}")
    print(f"ratio_backfill_{big['works']}_vs_{small['works']}={big['backfill_ms'] / small['backfill_ms']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
