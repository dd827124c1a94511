"""Asset checks on `artifact_pdfs`: files match the ledger's sha256; contents are PDFs.

The checks are not partitioned: they cover the artifacts the checked run finished (all finished
artifacts when run on their own), read from the ledger snapshot.
"""

import dagster as dg

from dtkg_assets.core.ledger.queries import finished_artifacts
from dtkg_assets.core.verify import VerifyReport, verify_artifacts
from dtkg_assets.defs.assets import artifact_pdfs
from dtkg_assets.defs.resources import LedgerResource


def _verify(context: dg.AssetCheckExecutionContext, ledger: LedgerResource, *, hash_files: bool) -> VerifyReport:
    with ledger.reader() as led:
        rows = finished_artifacts(led, run_id=context.run.run_id) or finished_artifacts(led)
    return verify_artifacts(rows, ledger.settings.load().validation, hash_files=hash_files)


@dg.asset_check(asset=artifact_pdfs, description="Every finished artifact's file exists and hashes to its sha256.")
def artifact_file_matches_ledger(context: dg.AssetCheckExecutionContext, ledger: LedgerResource) -> dg.AssetCheckResult:
    report = _verify(context, ledger, hash_files=True)
    return dg.AssetCheckResult(
        passed=report.file_problems == 0,
        metadata={
            "checked": report.checked,
            "missing": dg.MetadataValue.json(report.missing[:100]),
            "hash_mismatch": dg.MetadataValue.json(report.hash_mismatch[:100]),
        },
    )


@dg.asset_check(asset=artifact_pdfs, description="Every finished artifact is a PDF (%PDF- header, %%EOF trailer).")
def artifact_is_pdf(context: dg.AssetCheckExecutionContext, ledger: LedgerResource) -> dg.AssetCheckResult:
    report = _verify(context, ledger, hash_files=False)
    return dg.AssetCheckResult(
        passed=not report.not_pdf and not report.missing,
        metadata={"checked": report.checked, "not_pdf": dg.MetadataValue.json(report.not_pdf[:100])},
    )
