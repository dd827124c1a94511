"""Revalidation of finished artifacts with conditional requests.

For each finished job: GET with If-None-Match (its ETag) and/or If-Modified-Since (its
Last-Modified), body never read. 304 changes nothing. A 200 whose validators differ means the object
changed: the job is reopened and the work downloaded again as a new version (new blob; the old blob
stays in the store; `work_versions` records both). Servers without validators cannot be asked
conditionally and are counted, not downloaded.
"""

from __future__ import annotations

import time

import httpx

from dtkg_assets.core import deadline
from dtkg_assets.core.errors import DtkgError
from dtkg_assets.core.http import deadline_timeout
from dtkg_assets.core.ledger import Ledger
from dtkg_assets.core.ledger.queries import finished_jobs_with_validators
from dtkg_assets.core.orchestrator import make_orchestrator
from dtkg_assets.core.settings import Settings


def conditional_status(
    client: httpx.Client, url: str, etag: str | None, last_modified: str | None
) -> tuple[int, str | None]:
    """Status of a conditional GET (body not read) and the response's ETag."""
    headers = {"Accept-Encoding": "identity"}
    if etag:
        headers["If-None-Match"] = etag  # weak comparison is allowed here (RFC 9110 §13.1.2)
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    with client.stream("GET", url, headers=headers) as response:
        return response.status_code, response.headers.get("etag")


def revalidate(
    ledger: Ledger,
    client: httpx.Client,
    settings: Settings,
    *,
    owner: str,
    run_id: str | None = None,
    workers: int | None = None,
) -> dict[str, int]:
    counts = {"checked": 0, "unchanged": 0, "changed": 0, "new_versions": 0, "no_validators": 0, "errors": 0}
    changed: list[str] = []
    unchanged: list[str] = []
    for job_id, work_id, url, etag, last_modified, _sha, _size in finished_jobs_with_validators(ledger):
        if not etag and not last_modified:
            counts["no_validators"] += 1
            continue
        counts["checked"] += 1
        try:
            with deadline.attempt(deadline_timeout(settings)):
                status, new_etag = conditional_status(client, url, etag, last_modified)
        except (DtkgError, httpx.HTTPError):
            counts["errors"] += 1  # unreachable now says nothing about the object: keep it
            continue
        if status == 304 or (status == 200 and etag and new_etag == etag and not etag.startswith("W/")):
            counts["unchanged"] += 1
            unchanged.append(str(job_id))
            continue
        if status != 200:
            counts["errors"] += 1
            continue
        counts["changed"] += 1
        if ledger.requeue(job_id, reason="object_changed", detail=f"revalidation got 200 for {url}"):
            changed.append(str(work_id))
    ledger.mark_revalidated(unchanged, now=time.time())
    if changed:
        orchestrator = make_orchestrator(ledger, client, settings, owner=owner, run_id=run_id)
        outcomes = orchestrator.process(changed, workers=workers or settings.run.workers, refresh=True)
        counts["new_versions"] = sum(1 for o in outcomes if o.ok)
    return counts
