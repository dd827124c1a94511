"""A batch of works turned into the rows the ledger stores (`works`, and one `artifact_jobs` row per
enabled candidate URL), as plain column lists: the Python half of planning, shared by both backends
and made in the works import's reading process for a large file."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dtkg_assets.core.credentials import remember_candidates
from dtkg_assets.core.ledger.interface import canonical_url, job_id_for
from dtkg_assets.core.settings import Settings
from dtkg_assets.core.types import WorkRecord
from dtkg_assets.core.urls import host_of
from dtkg_assets.core.works import candidate_enabled


@dataclass
class PlannedWorks:
    """A batch of works as the ledger stores them: the values of each column of `works` and of
    `artifact_jobs`, plain lists (picklable: the columns may be made in another process)."""

    works: dict[str, list[Any]]
    jobs: dict[str, list[Any]]


def plan_columns(works: Iterable[WorkRecord], settings: Settings) -> PlannedWorks | None:
    """What both backends' `plan` store, before any database: the works (the last record of an id
    wins) and one job per enabled candidate URL (rank order, one per canonical URL) as columns; None
    when there are no works. Keeps the real URLs of redacted candidates in the credential vault."""
    by_id: dict[str, WorkRecord] = {}
    for w in works:
        by_id[w.work_id] = w  # last record for an id wins
    if not by_id:
        return None
    recs = list(by_id.values())
    # URLs with credentials are planned redacted; the real ones go to the vault, not the ledger.
    remember_candidates(settings.home, recs)
    jobs: dict[str, tuple[str, str, str, int, str]] = {}
    for w in recs:
        seen: set[str] = set()
        for rank, cand in enumerate(w.candidates):
            if not candidate_enabled(cand.source, settings.landing, settings.openalex.api_key, cand.url):
                continue  # landing pages, the DOI or the content API turned off in the settings
            canon = canonical_url(cand.url)
            if canon in seen:
                continue
            seen.add(canon)
            jid = job_id_for(w.work_id, cand.url, canonical=canon)
            jobs[jid] = (w.work_id, cand.url, host_of(cand.url), rank, cand.source)
    vals = list(jobs.values())
    return PlannedWorks(
        works={
            "work_id": [w.work_id for w in recs],
            "doi": [w.doi for w in recs],
            "title": [w.title for w in recs],
            "publication_year": [w.publication_year for w in recs],
            "candidates": [candidates_json(w) for w in recs],
            "origin": [w.origin for w in recs],
            "raw": [RAW_ENCODER.encode(w.raw) for w in recs],
        },
        jobs={
            "job_id": list(jobs),
            "work_id": [v[0] for v in vals],
            "url": [v[1] for v in vals],
            "host": [v[2] for v in vals],
            "candidate_rank": [v[3] for v in vals],
            "candidate_source": [v[4] for v in vals],
        },
    )


# json.dumps(raw, default=str) without building an encoder per call (same text; a million per import).
RAW_ENCODER = json.JSONEncoder(default=str)
# A str as json.dumps writes it by default (ensure_ascii): the C function json.dumps itself uses.
_json_ascii: Callable[[str], str] = json.encoder.encode_basestring_ascii


def candidates_json(work: WorkRecord) -> str:
    """json.dumps([{"url": …, "source": …}, …]) of the work's candidates, written out directly for
    string fields (the general encoder cost an import of a million works about 5 s)."""
    return "[" + ", ".join(f'{{"url": {_json_ascii(c.url)}, "source": {_json_ascii(c.source)}}}'
                           for c in work.candidates) + "]"
