"""Verification of finished artifacts: the file is there and its bytes hash to the ledger's sha256.
Used by the asset checks, the reconcile sensor and materialization requests.

`prepare_request` is what a materialization request does before downloading: a work the ledger
marks complete is verified on disk (and reopened when its file is missing or corrupt); on a user's
request, a failed work is reopened whatever its failure class (the ledger's explicit requeue edge).
Automation never reopens permanent failures.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dtkg_assets.core.ledger import COMPLETE, Ledger, State
from dtkg_assets.core.ledger.queries import jobs_of_works
from dtkg_assets.core.store import Store, sha256_file


def file_problem(path: Path, sha256: str, size: int | None, depth: str = "sha256") -> str | None:
    """None when `path` holds the artifact at `depth` ("exists", "size", "sha256"); else
    "file_missing" or "hash_mismatch" (wrong size or bytes)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "file_missing"
    if depth == "exists":
        return None
    if size is not None and st.st_size != size:
        return "hash_mismatch"
    if depth == "sha256":
        try:
            if sha256_file(path) != sha256:
                return "hash_mismatch"
        except FileNotFoundError:
            return "file_missing"
    return None


@dataclass
class PreparedRequest:
    verified: list[str] = field(default_factory=list)  # complete works whose file checked out
    redo: dict[str, str] = field(default_factory=dict)  # complete works reopened: work id -> reason
    retried: dict[str, str] = field(default_factory=dict)  # failed works reopened: work id -> last reason


def prepare_request(
    ledger: Ledger, store: Store, work_ids: Sequence[str], *, depth: str, retry_failed: bool
) -> PreparedRequest:
    """Verify complete works' files and reopen what a materialization request must redo.

    A complete work whose file is missing or corrupt is reopened (reason `file_missing` or
    `hash_mismatch`). With `retry_failed` (a user's request), every failed job of a work that has
    no complete job and no job left to try is reopened too, permanent or in backoff."""
    out = PreparedRequest()
    if not work_ids:
        return out
    by_work: dict[str, list[tuple[str, str, str | None, int | None, str | None]]] = {}
    for job_id, work_id, state, sha, size, reason in jobs_of_works(ledger, work_ids):
        by_work.setdefault(work_id, []).append((job_id, state, sha, size, reason))
    for work_id, jobs in by_work.items():
        complete = [j for j in jobs if j[1] in COMPLETE]
        if complete:
            job_id, _state, sha, size, _reason = complete[0]
            problem = file_problem(store.work_path(work_id), str(sha), size, depth) if sha else "file_missing"
            if problem is None:
                out.verified.append(work_id)
                continue
            detail = f"a materialization request found the file for {work_id} {problem.replace('_', ' ')}"
            if ledger.requeue(job_id, reason=problem, detail=detail):
                out.redo[work_id] = problem
            continue
        if not retry_failed:
            continue
        if any(j[1] == State.PLANNED for j in jobs) or not any(j[1] == State.FAILED for j in jobs):
            continue  # something left to try, or in flight elsewhere: nothing to reopen
        failed = [j for j in jobs if j[1] == State.FAILED]
        reopened = False
        for job_id, _state, _sha, _size, _reason in failed:
            reopened = ledger.requeue(job_id, reason="retry_requested", detail="the user requested the work again") \
                or reopened
        if reopened:
            out.retried[work_id] = str(failed[-1][4] or "failed")
    return out
