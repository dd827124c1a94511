"""What to do with an existing `.part`: resume it (with which `If-Range`), or discard it, and why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dtkg_assets.core.settings import Settings
from dtkg_assets.core.streaming.sidecar import PartState
from dtkg_assets.core.streaming.validators import ServerValidators

ResumeMode = Literal["fresh", "resume", "discard_part"]


@dataclass(frozen=True)
class ResumeDecision:
    mode: ResumeMode
    reason: str
    offset: int = 0
    if_range: str | None = None

    @property
    def needs_prefix_check(self) -> bool:
        return self.mode == "resume" and self.if_range is None


def decide_resume(
    validators: ServerValidators | None,
    part_state: PartState | None,
    part_size_on_disk: int,
    settings: Settings,
    *,
    url: str | None = None,
) -> ResumeDecision:
    """Decide what to do with an existing `.part`, with a reason an analyst can group by.

    `validators` is the server's current view (None when HEAD was refused). Resumes without
    `If-Range` (no strong validator) are allowed only with `resume.allow_without_validators`; the
    engine then checks the server's first bytes against the sidecar's prefix hash.
    """
    if part_size_on_disk <= 0:
        return ResumeDecision("fresh", "no_part")
    if part_state is None:
        return ResumeDecision("discard_part", "sidecar_missing")
    if url is not None and part_state.url != url:
        return ResumeDecision("discard_part", "url_changed")
    if part_size_on_disk < part_state.bytes_on_disk:
        return ResumeDecision("discard_part", "part_shorter_than_sidecar")
    offset = part_state.bytes_on_disk
    if offset <= 0:
        return ResumeDecision("discard_part", "no_durable_bytes")
    total = validators.content_length if validators else None
    if total is not None and offset > total:
        return ResumeDecision("discard_part", "part_larger_than_object")
    if total is not None and part_state.expected_size is not None and total != part_state.expected_size:
        return ResumeDecision("discard_part", "size_changed")

    if part_state.strong_etag:
        if validators is None:
            # No HEAD: let the server judge with If-Range (200 if it changed).
            return ResumeDecision("resume", "head_unavailable_if_range", offset, part_state.strong_etag)
        if validators.strong_etag == part_state.strong_etag:
            return ResumeDecision("resume", "validators_match", offset, part_state.strong_etag)
        return ResumeDecision("discard_part", "etag_changed")
    # The server has a strong ETag now but did not when the part was written: something changed.
    if (
        validators is not None
        and validators.strong_etag
        and not part_state.etag
        and (not part_state.last_modified or validators.last_modified != part_state.last_modified)
    ):
        return ResumeDecision("discard_part", "etag_changed")
    if part_state.last_modified:
        if validators is None:
            return ResumeDecision("resume", "head_unavailable_if_range", offset, part_state.last_modified)
        if validators.last_modified == part_state.last_modified:
            if part_state.etag and validators.etag and validators.etag != part_state.etag:
                return ResumeDecision("discard_part", "etag_changed")
            return ResumeDecision("resume", "validators_match", offset, part_state.last_modified)
        return ResumeDecision("discard_part", "last_modified_changed")

    weak = part_state.etag is not None  # only a weak ETag remains possible here
    if weak and validators is not None and validators.etag and validators.etag != part_state.etag:
        return ResumeDecision("discard_part", "etag_changed")
    if not settings.resume.allow_without_validators:
        return ResumeDecision("discard_part", "weak_etag_only" if weak else "no_validators_disallowed")
    if not part_state.prefix_sha256 or part_state.prefix_bytes <= 0:
        return ResumeDecision("discard_part", "no_prefix_hash")
    return ResumeDecision("resume", "weak_etag_prefix_ok" if weak else "no_validators_prefix_ok", offset, None)
