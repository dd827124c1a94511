"""Verification of finished artifacts: the file is there, its bytes hash to the ledger's sha256,
and it is a PDF. Used by the asset checks and by `dtkg status`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dtkg_assets.core.pdf import is_valid_pdf
from dtkg_assets.core.store import sha256_file
from dtkg_assets.settings import ValidationSettings


@dataclass
class VerifyReport:
    checked: int = 0
    missing: list[str] = field(default_factory=list)  # work ids
    hash_mismatch: list[str] = field(default_factory=list)
    not_pdf: list[str] = field(default_factory=list)

    @property
    def file_problems(self) -> int:
        return len(self.missing) + len(self.hash_mismatch)


def verify_artifacts(
    rows: Iterable[tuple[str, str, str, int]], validation: ValidationSettings, *, hash_files: bool = True
) -> VerifyReport:
    """Check each (work_id, sha256, path, bytes) row against the file on disk."""
    report = VerifyReport()
    for work_id, sha256, path, _size in rows:
        report.checked += 1
        file = Path(path)
        if not file.is_file():
            report.missing.append(work_id)
            continue
        if hash_files and sha256_file(file) != sha256:
            report.hash_mismatch.append(work_id)
        if not is_valid_pdf(file, validation):
            report.not_pdf.append(work_id)
    return report
