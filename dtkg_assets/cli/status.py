"""`dtkg status`: which features are on, ledger health, works by outcome and yield."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.table import Table

from dtkg_assets.cli.common import EXIT_OK, EXIT_USAGE, console, load_settings
from dtkg_assets.core import fleet
from dtkg_assets.core.settings import Settings


def add_status(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "status",
        help="features that are on, ledger health, works by outcome",
        description="Which features are on (resume, dedupe, cache, robots, offline, rate limits), ledger health.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_status)


def politeness_features(settings: Settings) -> dict[str, Any]:
    """Which politeness features are on. Read off the settings: the HTTP stack is not loaded for it."""
    http = settings.http
    return {
        "offline": http.offline,
        "user_agent": http.user_agent_header(),
        "mailto": bool(http.mailto),
        "rate_limits": dict(http.rate_limits),
        "breakers": {"fail_max": http.breaker_fail_max, "reset_s": http.breaker_reset_s}
        if http.breaker_fail_max > 0
        else False,
        "robots": {"ttl_s": http.robots_ttl_s} if http.robots_enabled else False,
        "metadata_cache": str(settings.http_cache_dir) if http.cache_enabled else False,
        "allow_hosts": list(http.allow_hosts),
        "fleet_wide_politeness": fleet.redact_url(url) if (url := fleet.shared_state_url(settings)) else False,
        "max_redirects": http.max_redirects,
    }


def status_report(settings: Settings) -> dict[str, Any]:
    from dtkg_assets.core.ledger import Ledger, LedgerBusy, LedgerUnavailable

    features: dict[str, Any] = {
        "resume": {
            "prefix_check_bytes": settings.resume.prefix_check_bytes,
            "allow_without_validators": settings.resume.allow_without_validators,
        },
        "dedupe": ("hardlink" if settings.store.dedupe_hardlink else "copy")
        if settings.store.dedupe_enabled
        else False,
        "fsync": settings.io.fsync,
        "preallocate": settings.io.preallocate_min_size_bytes if settings.io.preallocate else False,
        "quota": {
            "free_bytes_min": settings.quota.free_bytes_min,
            "margin_factor": settings.quota.margin_factor,
            "max_bytes": settings.quota.max_bytes,
        },
        **politeness_features(settings),
        "landing_pages": {
            "max_hops": settings.landing.max_hops, "max_html_bytes": settings.landing.max_html_bytes,
            "doi": settings.landing.doi_resolver if settings.landing.doi else False,
            "challenge_defer": {"after": settings.landing.challenge_max, "for_s": settings.landing.challenge_defer_s},
        } if settings.landing.enabled else False,
        "openalex_content_api": {"daily_budget": settings.landing.content_daily_budget,
                                 "base_url": settings.landing.content_base_url}
        if settings.landing.content_api and settings.openalex.api_key else False,
    }
    report: dict[str, Any] = {"home": str(settings.home), "features": features}
    from dtkg_assets.core.ledger.recovery import live_problem

    damaged = live_problem(settings)
    try:
        led = Ledger.open_reader(settings)
    except (LedgerUnavailable, LedgerBusy) as exc:
        report["ledger"] = {"status": "unavailable", "detail": str(exc)}
    else:
        import duckdb

        from dtkg_assets.core.ledger.queries import summary
        from dtkg_assets.core.ledger.storage import storage_error

        try:
            with led:
                report["ledger"] = led.health()
                # Works by outcome (what the UI's partitions show); jobs (one per candidate URL) by state are detail.
                totals = summary(led)
                report["works"] = totals["by_outcome"]
                report["states"] = totals["jobs_by_state"]
                report["yield"] = _yield(led)
        except duckdb.Error as exc:  # a snapshot damaged past its header
            detail = storage_error(exc, settings.snapshot_path, snapshot=True)
            report["ledger"] = {"status": "damaged", "detail": str(detail)}
    if damaged:
        report["ledger"]["status"] = "damaged"
        report["ledger"]["detail"] = damaged
    return report


def _yield(led: Any) -> dict[str, Any]:
    """Success rates by host, candidate source and how the PDF was found; failures by reason (issue 11)."""
    from dtkg_assets.core.ledger.queries import yield_tables

    try:
        return yield_tables(led)
    except Exception as exc:  # a snapshot from before the yield views: say so, do not fail status
        return {"unavailable": f"{type(exc).__name__}: {exc}"}


def _print_yield(data: dict[str, Any]) -> None:
    if "unavailable" in data:
        console.print(f"[bold]yield[/] unavailable ({data['unavailable']})")
        return
    for name, key, title in (("by_source", "source", "yield by source field"), ("by_host", "host", "yield by host")):
        rows = data.get(name) or []
        if not rows:
            continue
        table = Table(title=title)
        for col in (key, "tried", "stored", "failed", "success_rate"):
            table.add_column(col)
        for row in rows[:20]:
            table.add_row(str(row[key]), str(row["tried"]), str(row["stored"]), str(row["failed"]),
                          f"{float(row['success_rate'] or 0):.1%}")
        console.print(table)
    if data.get("by_via"):
        table = Table(title="stored PDFs by how they were found")
        for col in ("via", "stored", "share"):
            table.add_column(col)
        for row in data["by_via"]:
            table.add_row(str(row["via"]), str(row["stored"]), f"{float(row['share'] or 0):.1%}")
        console.print(table)
    if data.get("failures"):
        table = Table(title="failed candidates by reason")
        for col in ("reason", "class", "source", "jobs", "works"):
            table.add_column(col)
        for row in data["failures"][:30]:
            table.add_row(str(row["reason"]), str(row["failure_class"]), str(row["source"]), str(row["jobs"]),
                          str(row["works"]))
        console.print(table)


def cmd_status(args: argparse.Namespace) -> int:
    report = status_report(load_settings())
    code = EXIT_USAGE if report["ledger"].get("status") == "damaged" else EXIT_OK  # repair first
    if args.json:
        print(json.dumps(report, sort_keys=True, default=str))
        return code
    console.print(f"[bold]DTKG_HOME[/] {report['home']}")
    table = Table(title="features")
    table.add_column("feature")
    table.add_column("setting")
    for name, value in report["features"].items():
        table.add_row(name, json.dumps(value, default=str) if not isinstance(value, str) else value)
    console.print(table)
    ledger = report["ledger"]
    console.print(f"[bold]ledger[/] {ledger.get('status')} {json.dumps(ledger, default=str)}")
    works = report.get("works", {})
    if works:
        console.print(f"[bold]works[/] {sum(works.values())} (one partition each)")
        for outcome, n in works.items():
            console.print(f"  {outcome:<18} {n}")
    states = report.get("states", {})
    if states:
        console.print(f"[bold]candidate jobs[/] {sum(states.values())} (one per work and URL), by state")
        for state, n in states.items():
            console.print(f"  {state:<18} {n}")
    if "yield" in report:
        _print_yield(report["yield"])
    if ledger.get("detail"):
        print(ledger["detail"], file=sys.stderr)
    return code
