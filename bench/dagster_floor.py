"""Dagster's own floor for N partitions: a no-op asset on dynamic partitions that logs one
`AssetMaterialization` per key in ONE ranged run, on a fresh SQLite instance (the embedded default).

Nothing of ours runs: this is what per-partition truth costs in Dagster alone. Also measures the
parts separately: adding the partitions, run creation (the planned event per partition), and the
step logging one materialization per key from 16 threads (as `artifact_pdfs` does). The console
logger runs at WARNING, as in `dtkg backfill` (`--console-log-level DEBUG` is `materialize`'s
default: every event also printed, which slows the floor down).

``--pooled``: the instance's event log storage is ours, `PooledSqliteEventLogStorage` (Dagster's SQLite
event storage keeping its connections open), as `dtkg` configures it; without it, Dagster's default.

Usage: python bench/dagster_floor.py [--keys 2000] [--threads 16] [--home DIR] [--console-log-level L] [--pooled]
Prints one JSON object (seconds) on stdout. (No `from __future__ import annotations`: Dagster
resolves the asset's annotations at definition time.)
"""


import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--keys", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--home", type=Path, default=None)
    ap.add_argument("--console-log-level", default="WARNING")
    ap.add_argument("--pooled", action="store_true", help="our PooledSqliteEventLogStorage (as dtkg configures it)")
    args = ap.parse_args(argv)
    home = args.home or Path(tempfile.mkdtemp(prefix="dagster-floor-"))
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    config = "telemetry:\n  enabled: false\n"
    if args.pooled:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        config += "instance_class:\n  module: dtkg_assets.defs.event_storage\n  class: DtkgDagsterInstance\n"
    (home / "dagster.yaml").write_text(config)
    os.environ["DAGSTER_HOME"] = str(home)
    t_import = time.perf_counter()
    import dagster as dg

    import_s = time.perf_counter() - t_import
    parts = dg.DynamicPartitionsDefinition(name="floor")
    marks: dict[str, float] = {}

    @dg.asset(partitions_def=parts, output_required=False)
    def floor_asset(context: dg.AssetExecutionContext) -> Any:
        marks["step_start"] = time.perf_counter()
        keys = list(context.partition_keys)

        def log(key: str) -> None:
            context.log_event(dg.AssetMaterialization(asset_key=context.asset_key, partition=key,
                                                      metadata={"status": "downloaded", "bytes": 1}))

        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(log, keys))
        marks["step_end"] = time.perf_counter()
        yield from ()

    keys = [f"W{4100000000 + i}" for i in range(args.keys)]
    with dg.DagsterInstance.get() as instance:
        t0 = time.perf_counter()
        instance.add_dynamic_partitions("floor", keys)
        t1 = time.perf_counter()
        result = dg.materialize(
            [floor_asset], instance=instance,
            run_config={"loggers": {"console": {"config": {"log_level": args.console_log_level}}}},
            tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
        )
        t2 = time.perf_counter()
        assert result.success
        mats = len(result.asset_materializations_for_node("floor_asset"))
    out = {
        "keys": args.keys,
        "event_storage": "pooled" if args.pooled else "dagster",
        "console_log_level": args.console_log_level,
        "materializations": mats,
        "import_dagster_s": round(import_s, 3),
        "add_partitions_s": round(t1 - t0, 3),
        "run_s": round(t2 - t1, 3),  # the floor: run creation + step + run end
        "before_step_s": round(marks["step_start"] - t1, 3),  # run creation incl. planned events
        "step_s": round(marks["step_end"] - marks["step_start"], 3),
        "after_step_s": round(t2 - marks["step_end"], 3),
    }
    out["per_key_ms"] = round(out["run_s"] / args.keys * 1000, 2)
    print(json.dumps(out))
    if args.home is None:
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
