"""`dtkg backfill`: pending partitions of artifact_pdfs materialized through Dagster in batch runs.

Dagster is imported inside the handlers so `dtkg fetch` and friends start fast.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from dtkg_assets.cli.common import EXIT_FAILED, EXIT_OK, UsageError, console, load_settings, stopped_exit_code
from dtkg_assets.cli.ledger_access import ledger_summary, preflight
from dtkg_assets.core import deadline
from dtkg_assets.core.settings import Settings


def add_backfill(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "backfill",
        help="materialize pending artifact_pdfs partitions through Dagster in batch runs",
        description="Download every work the ledger says needs work, in batch runs on $DTKG_HOME/dagster.",
    )
    p.add_argument("--limit", type=int, default=None, help="at most this many works")
    p.add_argument("--workers", type=int, default=None, help="download threads per run")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.set_defaults(func=cmd_backfill)


def cmd_backfill(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise UsageError("dtkg backfill: --limit must be a positive number of works")
    if args.workers is not None and args.workers < 1:
        raise UsageError("dtkg backfill: --workers must be at least 1")
    settings = load_settings()
    if args.json:
        console.stderr = True  # stdout carries only the JSON object
    preflight(settings, "backfill")
    from dtkg_assets.cli.launch import (
        dagster_instance,
        pending_keys,
        read_partition_keys_behind,
        run_batch_size,
        run_checks,
    )

    instance = dagster_instance(settings)
    read_partition_keys_behind(instance)
    keys = pending_keys(settings, args.limit)
    # The checks of each finished download run run in a second process while the next batch
    # downloads (cli/check_worker.py); on a shared ledger, after the last run (other workers'
    # batches may lie between ours: `run_checks` checks the joined stretches once).
    # One batch has nothing to overlap with: no second process then.
    worker = None
    if len(keys) > run_batch_size(len(keys), settings.run.batch_size) and not settings.ledger_is_postgres:
        from dtkg_assets.cli.check_worker import CheckWorker

        worker = CheckWorker()
    # The last batch comes in two halves: the worker checks the first while this process, done
    # downloading, checks the second, so the checks after the last download take half as long.
    kept: list[tuple[str, str]] = []

    def check_finished(batch: Any) -> None:
        assert worker is not None
        (start, end), *rest = batch.check_ranges
        worker.submit(start, end)
        kept.extend(rest)

    started = time.perf_counter()
    try:
        report = backfill_with_progress(instance, settings, args.workers, keys,
                                        on_finished=check_finished if worker is not None else None)
    except BaseException:
        if worker is not None:
            worker.stop()
        raise
    wall = time.perf_counter() - started
    if deadline.stop_requested():
        if worker is not None:
            worker.stop()
        done = sum(b.materialized for b in report.batches)
        console.print(f"dtkg backfill: stopped by {deadline.stop_reason()} after {len(report.batches)} runs: "
                      f"{done} of {report.pending} works materialized; parts are kept, run it again to continue")
        return stopped_exit_code()
    checks = None
    if worker is not None:
        here = run_checks(instance, settings, ranges=kept)
        checks = worker.report()
        if checks is not None:
            checks.merge(here)
    if checks is None and report.pending:
        # No worker (shared ledger), or it died: check everything once here.
        checks = run_checks(instance, settings, report)
    data = {
        "pending": report.pending,
        "runs": len(report.batches),
        "failed_runs": report.failed_runs,
        "materialized": sum(b.materialized for b in report.batches),
        "wall_s": round(wall, 3),
        "checks": checks.as_json() if checks is not None else {},
        "checked": checks.evaluated if checks is not None else 0,
        "check_failures": checks.failures if checks is not None else {},
        "summary": ledger_summary(settings) if report.pending else None,
    }
    if args.json:
        print(json.dumps(data, sort_keys=True))
    else:
        console.print(
            f"{data['materialized']} of {data['pending']} works materialized in {data['runs']} runs "
            f"({data['failed_runs']} runs with failed works) in {wall:.1f} s"
        )
        if checks is not None:
            console.print(f"asset checks: {checks.describe()}")
    checks_ok = checks is None or checks.ok
    return EXIT_OK if report.failed_runs == 0 and checks_ok else EXIT_FAILED


def backfill_with_progress(
    instance: Any, settings: Settings, workers: int | None, keys: list[str], command: str = "backfill",
    on_finished: Callable[[Any], None] | None = None,
) -> Any:
    """Batch runs over `keys` with a progress bar that advances as each run finishes; `on_finished`
    gets each finished run's `BatchResult`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dtkg_assets.cli.launch import backfill

    if not keys:
        console.print("nothing to download: every work is finished or failed permanently")
    with Progress(
        TextColumn("[bold]artifact_pdfs"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
        console=console,
        disable=not keys,
    ) as progress:
        task = progress.add_task("works", total=len(keys), note="")

        def on_batch(batch: Any, size: int) -> None:
            state = "ok" if batch.success else "some failed"
            progress.update(task, advance=size, note=f"run {batch.run_id[:8]} {state}")
            if on_finished is not None:
                on_finished(batch)

        return backfill(instance, settings, workers=workers, keys=keys, on_batch=on_batch, command=command)
