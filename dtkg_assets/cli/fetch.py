"""`dtkg fetch URL`: one URL into the store, through the orchestrator so the ledger records it."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import uuid
from typing import Any

from dtkg_assets.cli.common import EXIT_FAILED, EXIT_OK, UsageError, load_settings, stopped_exit_code
from dtkg_assets.cli.ledger_access import writer
from dtkg_assets.core.errors import Reason
from dtkg_assets.core.settings import Settings
from dtkg_assets.core.types import Candidate, FetchResult, WorkRecord


def default_work_id(url: str) -> str:
    return "url-" + hashlib.sha256(url.encode()).hexdigest()[:16]


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
    from dtkg_assets.core.credentials import redact_url
    from dtkg_assets.core.errors import DtkgError
    from dtkg_assets.core.store import check_work_id
    from dtkg_assets.core.urls import check_url

    url: str = args.url
    shown = redact_url(url)  # credentials in the URL are used for the request only, never shown or kept
    try:
        check_url(url)
        # An explicit --work-id "" is a mistake, not a request for the default.
        work_id = default_work_id(shown) if args.work_id is None else args.work_id
        check_work_id(work_id)
    except DtkgError as exc:
        hint = "Give a full http(s) URL, e.g. https://host/paper.pdf, and a work id of letters, digits, . _ -"
        raise UsageError(f"dtkg fetch: {(exc.detail or str(exc)).replace(url, shown)}. {hint}") from None
    settings = load_settings()
    # Through the orchestrator, so the ledger records the work, its job, attempts and blob.
    result = fetch_with_ledger(settings, url, work_id)
    data = result.to_json()
    data["http_attempts"] = len(result.http_attempts)
    if args.json:
        print(json.dumps(data, sort_keys=True))
    else:
        print(_human_fetch(data))
    if result.reason == Reason.INTERRUPTED.value:
        print(f"dtkg fetch: interrupted after {result.body_bytes_received} body bytes; nothing stored, the part "
              "is kept: run the same command again to resume", file=sys.stderr)
        return stopped_exit_code()
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


def fetch_with_ledger(settings: Settings, url: str, work_id: str) -> FetchResult:
    """`dtkg fetch URL`: a one-candidate work through the orchestrator, so the ledger records it.
    A work the ledger already has complete is answered from the ledger with no network, once its
    file checks out at DTKG_RUN_VERIFY_DEPTH (as a materialization request does); a missing or
    corrupt file is downloaded again."""
    from dtkg_assets.core.credentials import redact_url
    from dtkg_assets.core.http import make_client
    from dtkg_assets.core.orchestrator import make_orchestrator
    from dtkg_assets.core.store import Store
    from dtkg_assets.core.verify import prepare_request

    shown = redact_url(url)
    candidate = Candidate(shown, "cli", real_url=url if shown != url else None)
    url = shown  # from here on, and in everything recorded, the redacted URL
    with writer(settings, "fetch") as ledger, make_client(settings) as client:
        orch = make_orchestrator(ledger, client, settings, owner=ledger.owner, run_id=f"fetch-{uuid.uuid4().hex[:12]}")
        orch.plan([WorkRecord(work_id, [candidate], origin="cli:fetch")])
        prepare_request(ledger, Store(settings), [work_id], depth=settings.run.verify_depth, retry_failed=False)
        outcome = orch.process([work_id], workers=1)[0]
    if outcome.result is not None:
        return outcome.result
    if outcome.status == "skipped_complete":
        return FetchResult(status="stored", reason="ok", decision="already_complete", url=url, work_id=work_id,
                           sha256=outcome.sha256, path=outcome.path, bytes=outcome.bytes,
                           decision_reason="ledger_complete")
    return FetchResult(status="failed", reason=outcome.reason, decision=None, url=url, work_id=work_id,
                       detail=outcome.detail)
