"""OpenAlex client: `/works` queries with cursor paging, single-work lookups by id or DOI.

Requests go through the metadata client from `make_client(settings, for_metadata=True)` (polite,
guarded, cached) and are retried on 429/5xx and network errors by the shared `retrying` policy,
honouring `Retry-After`. Each query records its exact URL, parameters (never the API key), every
cursor and fetch time in `client.provenance`, so a load can be reproduced and audited.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from dtkg_assets.core.errors import DtkgError, Reason, reason_for_status
from dtkg_assets.core.http import get_with_retries, make_client
from dtkg_assets.core.settings import Settings
from dtkg_assets.core.types import InputProblem, WorkRecord
from dtkg_assets.core.works import parse_identifier, parse_work

MAX_PER_PAGE = 100  # current OpenAlex docs cap per_page at 100


def _now_iso() -> str:
    return datetime.now(tz=UTC).isoformat(timespec="milliseconds")


@dataclass
class PageFetch:
    cursor: str
    fetched_at: str
    results: int
    next_cursor: str | None
    from_cache: bool


@dataclass
class QueryProvenance:
    """What exactly was asked and when; the API key is never recorded."""

    url: str
    params: dict[str, str]
    started_at: str
    pages: list[PageFetch] = field(default_factory=list)
    total_count: int | None = None  # meta.count reported by OpenAlex
    finished_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def build_filter(
    filter: str | None = None,
    *,
    topic_id: str | None = None,
    year_from: int | None = None,
    year_to: int | None = None,
    oa_only: bool = False,
) -> str | None:
    """An OpenAlex ``filter`` value from a raw filter string plus the convenience options."""
    parts: list[str] = [filter.strip()] if filter and filter.strip() else []
    if topic_id:
        topic = topic_id.strip().rsplit("/", 1)[-1].upper()
        parts.append(f"topics.id:{topic}")
    if year_from is not None and year_to is not None and year_from > year_to:
        raise ValueError(f"year_from {year_from} is after year_to {year_to}")
    if year_from is not None:
        parts.append(f"from_publication_date:{year_from:04d}-01-01")
    if year_to is not None:
        parts.append(f"to_publication_date:{year_to:04d}-12-31")
    if oa_only:
        parts.append("open_access.is_oa:true")
    return ",".join(parts) or None


def validate_per_page(per_page: int) -> int:
    if not isinstance(per_page, int) or isinstance(per_page, bool) or not 1 <= per_page <= MAX_PER_PAGE:
        raise ValueError(f"per_page must be an integer from 1 to {MAX_PER_PAGE} (OpenAlex's cap), got {per_page!r}")
    return per_page


class OpenAlexClient:
    def __init__(self, settings: Settings, client: httpx.Client | None = None) -> None:
        self.settings = settings
        self._owns_client = client is None
        self.client = client if client is not None else make_client(settings, for_metadata=True)
        self.base_url = settings.openalex.base_url.rstrip("/")
        self.provenance: QueryProvenance | None = None
        self.requests = 0  # logical requests (pages and lookups), retries not counted

    # -- plumbing -----------------------------------------------------------------------------

    def _auth_params(self) -> dict[str, str]:
        params: dict[str, str] = {}
        if self.settings.http.mailto:
            params["mailto"] = self.settings.http.mailto
        if self.settings.openalex.api_key:
            params["api_key"] = self.settings.openalex.api_key
        return params

    def _get_json(self, path: str, params: dict[str, str]) -> tuple[int, dict[str, Any] | None, bool]:
        """GET with retries; returns (status, JSON body or None for 404, served from cache)."""
        url = f"{self.base_url}{path}"
        full = {**params, **self._auth_params()}
        self.requests += 1
        response = get_with_retries(self.client, url, self.settings, params=full)
        status = response.status_code
        if status == 404:
            return status, None, False
        if status >= 400:
            detail = f"OpenAlex {path} answered HTTP {status}"
            if status in (401, 403):
                detail += " (set OPENALEX_API_KEY to a valid key; DTKG_MAILTO for the contact)"
            raise DtkgError(reason_for_status(status), detail, status=status)
        try:
            body = response.json()
        except ValueError as exc:
            raise DtkgError(Reason.HTTP_5XX, f"OpenAlex {path} returned invalid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise DtkgError(Reason.HTTP_5XX, f"OpenAlex {path} returned a non-object JSON body")
        caching = response.extensions.get("caching")
        from_cache = bool(caching.get("from_cache")) if isinstance(caching, dict) else False
        return status, body, from_cache

    # -- queries ------------------------------------------------------------------------------

    def query_works(
        self,
        filter: str | None = None,
        *,
        topic_id: str | None = None,
        year_from: int | None = None,
        year_to: int | None = None,
        oa_only: bool = False,
        max_results: int | None = None,
        per_page: int | None = None,
        search: str | None = None,
    ) -> Iterator[WorkRecord | InputProblem]:
        """Works matching the query, each at most once, following ``meta.next_cursor`` until done
        or ``max_results`` records have been read. Raises `DtkgError` when OpenAlex stays unavailable."""
        size = validate_per_page(self.settings.openalex.per_page if per_page is None else per_page)
        if max_results is not None:
            if max_results < 0:
                raise ValueError(f"max_results must be >= 0, got {max_results}")
            size = max(1, min(size, max_results))
        params: dict[str, str] = {"per_page": str(size)}
        combined = build_filter(filter, topic_id=topic_id, year_from=year_from, year_to=year_to, oa_only=oa_only)
        if combined:
            params["filter"] = combined
        if search:
            params["search"] = search
        query_text = "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "per_page")
        origin = f"openalex:{query_text or 'all'}"
        public_params = {**params, **({"mailto": self.settings.http.mailto} if self.settings.http.mailto else {})}
        self.provenance = provenance = QueryProvenance(
            url=f"{self.base_url}/works", params=public_params, started_at=_now_iso()
        )
        read = 0
        seen: set[str] = set()
        cursor: str | None = "*"
        while cursor is not None and (max_results is None or read < max_results):
            _, body, from_cache = self._get_json("/works", {**params, "cursor": cursor})
            assert body is not None
            meta = body.get("meta") or {}
            results = body.get("results") or []
            if provenance.total_count is None and isinstance(meta.get("count"), int):
                provenance.total_count = meta["count"]
            next_cursor = meta.get("next_cursor") if results else None
            provenance.pages.append(PageFetch(cursor, _now_iso(), len(results), next_cursor, from_cache))
            for record in results:
                if max_results is not None and read >= max_results:
                    break
                read += 1
                work, problems = parse_work(record, origin)
                yield from problems
                if work is not None and work.work_id not in seen:
                    seen.add(work.work_id)
                    yield work
            cursor = next_cursor if isinstance(next_cursor, str) and next_cursor else None
        provenance.finished_at = _now_iso()

    def get_work(self, id_or_doi: str) -> WorkRecord | InputProblem:
        """One work by OpenAlex id (``W123`` or its URL) or DOI (``10.…``, ``doi:10.…``, ``https://doi.org/10.…``).

        Unknown ids and unusable records come back as `InputProblem`; transient failures raise `DtkgError`.
        """
        key = parse_identifier(id_or_doi)
        if key is None:
            return InputProblem(
                "openalex", None, None, Reason.BAD_INPUT.value, f"not a DOI or OpenAlex id: {id_or_doi!r}"
            )
        _, body, _ = self._get_json(f"/works/{key}", {})
        if body is None:
            return InputProblem(
                f"openalex:/works/{key}", None, None, Reason.BAD_INPUT.value, f"{id_or_doi} not found in OpenAlex"
            )
        work, problems = parse_work(body, f"openalex:/works/{key}")
        if work is not None:
            return work
        return problems[-1]

    def resolve_ids(
        self, entries: Iterable[str | InputProblem], origin: str = "ids"
    ) -> Iterator[WorkRecord | InputProblem]:
        """Resolve an id list (from `read_id_list`) one by one; problems pass through, and every
        resolved work is tagged with ``origin``."""
        for entry in entries:
            if isinstance(entry, InputProblem):
                yield entry
                continue
            result = self.get_work(entry)
            if isinstance(result, WorkRecord):
                result.origin = f"{origin}:{entry}"
            yield result

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> OpenAlexClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
