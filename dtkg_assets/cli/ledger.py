"""`dtkg ledger health|validate|repair|export` and `dtkg reconcile`: the ledger's upkeep."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dtkg_assets.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError, load_settings, print_result
from dtkg_assets.cli.ledger_access import reader, storage_words, writer
from dtkg_assets.core.ledger import Ledger
from dtkg_assets.core.settings import Settings


def add_reconcile(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "reconcile",
        help="heal the ledger and store after crashes (expired leases, abandoned ops, lost files, orphans)",
        description="Idempotent: a second run reports zeros. Waits for the ledger if a run is writing.",
    )
    p.add_argument("--json", action="store_true", help="print counts as one JSON object")
    p.set_defaults(func=cmd_reconcile)


def cmd_reconcile(args: argparse.Namespace) -> int:
    from dtkg_assets.core.reconciler import reconcile
    from dtkg_assets.core.store import Store

    settings = load_settings()
    with writer(settings, "reconcile") as ledger:
        counts = reconcile(ledger, Store(settings), settings)
    print_result(counts, args.json, "\n".join(f"{k:>18}: {v}" for k, v in counts.items()))
    return EXIT_OK


def add_ledger(subparsers: Any) -> None:
    p = subparsers.add_parser("ledger", help="ledger health, validation, repair and export")
    sub = p.add_subparsers(dest="ledger_command", metavar="ACTION", required=True)
    h = sub.add_parser("health", help="status healthy|degraded|unhealthy, version, row counts, problems")
    h.add_argument("--json", action="store_true")
    h.set_defaults(func=cmd_ledger_health)
    v = sub.add_parser("validate", help="list problems (exit 1 if any)")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_ledger_validate)
    r = sub.add_parser("repair", help="recreate missing tables, columns, indexes and views; never drops data")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_ledger_repair)
    e = sub.add_parser("export", help="write manifest.jsonl and metrics.json, or a DuckDB file (--duckdb)")
    e.add_argument("--out", help="output directory for manifest.jsonl and metrics.json")
    e.add_argument("--duckdb", metavar="FILE",
                   help="write the ledger's tables and views to this DuckDB file (from PostgreSQL when "
                        "DTKG_LEDGER_URL is set, else a copy of the published snapshot)")
    e.add_argument("--json", action="store_true", help="print metrics.json (or the --duckdb summary) to stdout too")
    e.set_defaults(func=cmd_ledger_export)


def ledger_health(settings: Settings) -> dict[str, Any]:
    """The snapshot's health plus what is wrong with the live file, in words; never writes.
    status: healthy | degraded | unhealthy (the snapshot's) | damaged (the live file) | unavailable."""
    from dtkg_assets.core.ledger.recovery import live_problem

    problem = live_problem(settings)
    try:
        with storage_words(settings, "ledger health", snapshot=True), Ledger.open_reader(settings) as ledger:
            report = ledger.health()
    except UsageError as exc:
        report = {"status": "unavailable", "version": None, "path": str(settings.snapshot_path),
                  "row_counts": {}, "problems": [str(exc).removeprefix("dtkg ledger health: ")]}
    if problem:
        report["status"] = "damaged"
        report["problems"] = [problem, *report["problems"]]
    return report


def cmd_ledger_health(args: argparse.Namespace) -> int:
    report = ledger_health(load_settings())
    human = [f"status: {report['status']}  version: {report['version']}  ({report['path']})"]
    if report.get("snapshot_age_s") is not None:
        human.append(f"data as of the snapshot published {report['snapshot_age_s']:.1f} s ago")
    human += [f"  {k}: {v}" for k, v in report["row_counts"].items()]
    human += [f"  problem: {p}" for p in report["problems"]]
    print_result(report, args.json, "\n".join(human))
    if report["status"] in ("damaged", "unavailable"):
        return EXIT_USAGE
    return EXIT_OK if report["status"] == "healthy" else EXIT_FAILED


def cmd_ledger_validate(args: argparse.Namespace) -> int:
    from dtkg_assets.core.ledger.recovery import live_problem

    settings = load_settings()
    problem = live_problem(settings)
    if problem:
        raise UsageError(f"dtkg ledger validate: {problem}")
    with reader(settings, "ledger validate") as ledger:
        problems = ledger.validate()
    print_result({"problems": problems}, args.json, "\n".join(problems) if problems else "ledger is valid")
    return EXIT_FAILED if problems else EXIT_OK


def cmd_ledger_repair(args: argparse.Namespace) -> int:
    from dtkg_assets.core.ledger.recovery import repair

    settings = load_settings()
    with storage_words(settings, "ledger repair"):
        report = repair(settings)
    print_result(report.to_json(), args.json, report.describe())
    return EXIT_FAILED if report.problems else EXIT_OK


def cmd_ledger_export(args: argparse.Namespace) -> int:
    from dtkg_assets.core.ledger.export import export

    if not args.out and not args.duckdb:
        raise UsageError("dtkg ledger export: give --out DIR (manifest and metrics) and/or --duckdb FILE")
    settings = load_settings()
    if args.duckdb:
        from dtkg_assets.core.ledger.pg_export import ExportError, export_duckdb

        try:
            summary = export_duckdb(settings, Path(args.duckdb))
        except ExportError as exc:
            print(f"dtkg ledger export: {exc}", file=sys.stderr)
            return EXIT_FAILED
        rows = summary["rows"]
        print_result(summary, args.json and not args.out,
               f"wrote {summary['path']} from {summary['source']} in {summary['seconds']:.1f} s: "
               f"{rows.get('works', 0)} works, {rows.get('artifact_jobs', 0)} jobs, {rows.get('blobs', 0)} blobs")
        if not args.out:
            return EXIT_OK
    if settings.ledger_is_postgres:
        metrics = _export_postgres(settings, Path(args.out))
        if metrics is None:
            return EXIT_FAILED
    else:
        with reader(settings, "ledger export") as ledger:
            metrics = export(ledger, Path(args.out))
    human = (f"wrote {args.out}/manifest.jsonl ({metrics['manifest_lines']} works) and {args.out}/metrics.json: "
             f"{metrics['stored']} stored, {metrics['deduped']} deduped, {metrics['failed']} failed, "
             f"{metrics['pending']} pending")
    print_result(metrics, args.json, human)
    return EXIT_OK


def _export_postgres(settings: Settings, out: Path) -> dict[str, Any] | None:
    """manifest.jsonl and metrics.json from the PostgreSQL ledger: its tables are exported to a
    temporary DuckDB file first (one consistent moment), so the manifest and metrics are computed by
    the same DuckDB SQL as for the embedded ledger."""
    import dataclasses
    import tempfile

    from dtkg_assets.core.ledger.export import export
    from dtkg_assets.core.ledger.pg_export import ExportError, export_duckdb

    with tempfile.TemporaryDirectory(prefix="dtkg-export-") as tmp:
        try:
            export_duckdb(settings, Path(tmp) / "ledger.snapshot.duckdb")
        except ExportError as exc:
            print(f"dtkg ledger export: {exc}", file=sys.stderr)
            return None
        local = dataclasses.replace(settings.with_home(tmp), ledger=dataclasses.replace(settings.ledger, url=""))
        with reader(local, "ledger export") as ledger:
            return export(ledger, out)
