"""Large-file streaming benchmark: `dtkg fetch` versus `curl -o FILE && sha256sum FILE`.

Serves one random-bytes PDF (default 1 GiB) from nginx on loopback, alternates N runs of each
side (fresh DTKG_HOME per run), and prints the medians, the in-process write+hash cost per 64 KiB
chunk, peak RSS of `dtkg fetch` for a 64 MiB file and the large file (memory flat in size), and as
its last line ``ratio_vs_curl_sha256=<curl+sha256sum wall / dtkg wall>`` (higher is better).

Usage: python bench/stream.py [--size-mib 1024] [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import OUT, MiB, dtkg_cmd, make_pdf, run_measured  # noqa: E402
from dtkg_assets_tests.support.nginx import NginxServer  # noqa: E402


def settle_disk() -> None:
    """Write back what earlier steps left dirty (the test files, the previous run's output) before a
    timed run, so that neither side pays for the other's writeback (the first runs after creating
    the 1 GiB file measured 1.0-1.3 here, later ones 1.7-2.6)."""
    os.sync()


def dtkg_run(url: str, home: Path, sha: str) -> tuple[float, int, dict[str, object]]:
    shutil.rmtree(home, ignore_errors=True)
    settle_disk()
    env = dict(os.environ)
    env.update(
        DTKG_HOME=str(home),
        DTKG_QUOTA_FREE_BYTES_MIN="0",
        DTKG_QUOTA_MAX_BYTES=str(64 * 1024 * MiB),
        DTKG_ALLOW_HOSTS="127.0.0.1",
        DTKG_RATE_LIMITS="*=0",
    )
    wall, rss, out = run_measured([*dtkg_cmd(), "fetch", url, "--json"], env=env)
    data = json.loads(out)
    if data["sha256"] != sha:
        raise RuntimeError(f"dtkg fetch stored the wrong bytes: {data}")
    shutil.rmtree(home, ignore_errors=True)
    return wall, rss, data


def curl_run(url: str, target: Path, sha: str) -> float:
    target.unlink(missing_ok=True)
    settle_disk()
    cmd = f"curl -s -o {target} {url} && sha256sum {target}"
    wall, _, out = run_measured(["bash", "-c", cmd])
    if out.split()[0] != sha:
        raise RuntimeError(f"curl fetched the wrong bytes: {out}")
    target.unlink(missing_ok=True)
    return wall


def chunk_cost_us(total_mib: int = 256, chunk: int = 64 * 1024) -> float:
    """In-process cost of the engine's hot loop body (os.write + sha256.update) per 64 KiB chunk."""
    data = os.urandom(chunk)
    path = OUT / "chunk-cost.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    h = hashlib.sha256()
    n = total_mib * MiB // chunk
    write, update = os.write, h.update
    t0 = time.perf_counter()
    for _ in range(n):
        write(fd, data)
        update(data)
    elapsed = time.perf_counter() - t0
    os.close(fd)
    path.unlink()
    return elapsed / n * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    for tool in ("curl", "sha256sum"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required (apt-get install curl coreutils)")

    OUT.mkdir(parents=True, exist_ok=True)
    www = OUT / "www"
    shutil.rmtree(www, ignore_errors=True)
    www.mkdir()
    small_mib = 64
    print(f"creating {args.size_mib} MiB and {small_mib} MiB test files ...", flush=True)
    big_sha = make_pdf(www / "big.pdf", args.size_mib * MiB)
    small_sha = make_pdf(www / "small.pdf", small_mib * MiB)
    try:
        with NginxServer(www) as nginx:
            big_url, small_url = nginx.url("big.pdf"), nginx.url("small.pdf")
            # Warm the page cache and the connection path once for both sides.
            curl_run(big_url, OUT / "curl.pdf", big_sha)
            ours: list[float] = []
            theirs: list[float] = []
            rss_big: list[int] = []
            results: list[dict[str, object]] = []
            for i in range(args.runs):
                wall, rss, data = dtkg_run(big_url, OUT / "home", big_sha)
                ours.append(wall)
                rss_big.append(rss)
                results.append(data)
                theirs.append(curl_run(big_url, OUT / "curl.pdf", big_sha))
                print(
                    f"run {i + 1}: dtkg {wall:.2f}s ({data['mib_s']:.0f} MiB/s in-engine, fsync {data['fsync_s']:.2f}s)"
                    f"  curl+sha256sum {theirs[-1]:.2f}s",
                    flush=True,
                )
            _, rss_small, _ = dtkg_run(small_url, OUT / "home", small_sha)
    finally:
        shutil.rmtree(www, ignore_errors=True)
        shutil.rmtree(OUT / "home", ignore_errors=True)

    med_ours, med_theirs = statistics.median(ours), statistics.median(theirs)
    size_mib = args.size_mib
    print(f"file: {size_mib} MiB served by nginx on 127.0.0.1, {args.runs} alternating runs")
    print(f"median dtkg fetch wall: {med_ours:.2f} s ({size_mib / med_ours:.0f} MiB/s, including process start)")
    print(f"median curl -o + sha256sum wall: {med_theirs:.2f} s ({size_mib / med_theirs:.0f} MiB/s)")
    print(f"median engine fsync time: {statistics.median(float(str(r['fsync_s'])) for r in results):.2f} s")
    print(f"write+sha256 per 64 KiB chunk (in process): {chunk_cost_us():.1f} us")
    print(
        f"peak RSS dtkg fetch: {rss_small / 1024:.0f} MiB for {small_mib} MiB, "
        f"{max(rss_big) / 1024:.0f} MiB for {size_mib} MiB"
    )
    print(f"ratio_vs_curl_sha256={med_theirs / med_ours:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
