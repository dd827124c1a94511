"""The `dtkg` command line: what is not a Dagster job.

Each subcommand is one `add_<name>(subparsers)` builder listed in `_subcommands()`, which registers its
arguments and sets ``func`` to a `cmd_<name>(args) -> int` handler. Exit codes: 0 success, 1 the
work failed, 2 bad input or configuration.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from dtkg_assets.settings import Settings, SettingsError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the user: printed as is, exit code 2."""


def default_work_id(url: str) -> str:
    return "url-" + hashlib.sha256(url.encode()).hexdigest()[:16]


# ---- fetch ----------------------------------------------------------------------------------


def add_fetch(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "fetch",
        help="download one URL into the store (resumable, verified)",
        description="Download one PDF URL into $DTKG_HOME/store. Exit 0 only when a valid PDF is stored.",
    )
    p.add_argument("url", help="http:// or https:// URL of a PDF")
    p.add_argument("--work-id", help='name for the per-work file (default: "url-" + sha256(url)[:16])')
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_fetch)


def cmd_fetch(args: argparse.Namespace) -> int:
    from dtkg_assets.cli_ledger import fetch_with_ledger
    from dtkg_assets.core.errors import DtkgError
    from dtkg_assets.core.store import check_work_id
    from dtkg_assets.core.streaming import check_url

    url: str = args.url
    try:
        check_url(url)
        work_id = args.work_id or default_work_id(url)
        check_work_id(work_id)
    except DtkgError as exc:
        hint = "Give a full http(s) URL, e.g. https://host/paper.pdf, and a work id of letters, digits, . _ -"
        raise UsageError(f"dtkg fetch: {exc.detail or exc}. {hint}") from None
    settings = load_settings()
    # Through the orchestrator, so the ledger records the work, its job, attempts and blob.
    result = fetch_with_ledger(settings, url, work_id)
    data = result.to_json()
    data["http_attempts"] = len(result.http_attempts)
    if args.json:
        print(json.dumps(data, sort_keys=True))
    else:
        print(_human_fetch(data))
    return EXIT_OK if result.ok else EXIT_FAILED


def _human_fetch(d: dict[str, Any]) -> str:
    if d["status"] == "failed":
        head = f"FAILED {d['reason']}: {d.get('detail') or ''}".rstrip(": ")
    else:
        head = f"{d['status'].upper()} {d['path']}"
    fields = ("decision", "decision_reason", "sha256", "bytes", "resumed_from", "attempts", "elapsed_s", "mib_s")
    parts = []
    for name in fields:
        value = d.get(name)
        if value is None:
            continue
        parts.append(f"{name}={value:.3f}" if isinstance(value, float) else f"{name}={value}")
    return head + "\n  " + " ".join(parts)


# ---- plumbing -------------------------------------------------------------------------------


def load_settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise UsageError(f"dtkg: {exc}") from None


def _subcommands() -> list[Callable[[Any], None]]:
    from dtkg_assets.cli_ledger import add_ledger, add_reconcile, add_works
    from dtkg_assets.cli_runs import add_backfill, add_demo, add_status

    return [add_fetch, add_demo, add_backfill, add_status, add_works, add_reconcile, add_ledger]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dtkg", description="dtkg-assets: verified, deduplicated PDFs")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _subcommands():
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return func(args)
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # Run the imported module, not __main__, so exception classes match the subcommand modules'.
    from dtkg_assets.cli import main as package_main

    sys.exit(package_main())
