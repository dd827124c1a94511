"""Per-partition asset checks on `artifact_pdfs`: the work's file is present and hashes to the
ledger's sha256; its content is a PDF; it is the right paper (mentions the work's DOI or title: a
mismatch is flagged `wrong_paper` with WARN severity for analysts, never deleted).

They run off the download path, in a check run over the partitions a download run covered
(`artifact_checks_sensor` requests one after every download run; `dtkg backfill` runs them at the
end). Each finished work in the run's partitions gets one evaluation per check with its partition
(Dagster 1.13 partitioned asset checks); works without a finished artifact are not evaluated.
"""

from collections.abc import Iterator

import dagster as dg

from dtkg_assets.core.ledger.queries import finished_artifacts, work_references
from dtkg_assets.core.pdf import is_valid_pdf
from dtkg_assets.core.rightpaper import check_pdf
from dtkg_assets.core.store import Store
from dtkg_assets.core.verify import file_problem
from dtkg_assets.defs.partitions import artifact_partitions
from dtkg_assets.defs.resources import LedgerResource

FILE_CHECK = "artifact_file_matches_ledger"
PDF_CHECK = "artifact_is_pdf"
PAPER_CHECK = "artifact_is_right_paper"
CHECK_SPECS = [
    dg.AssetCheckSpec(
        FILE_CHECK,
        asset="artifact_pdfs",
        partitions_def=artifact_partitions,
        description="The work's file exists and hashes to the sha256 the ledger recorded.",
    ),
    dg.AssetCheckSpec(
        PDF_CHECK,
        asset="artifact_pdfs",
        partitions_def=artifact_partitions,
        description="The work's file is a PDF (%PDF- header, %%EOF trailer, structure).",
    ),
    dg.AssetCheckSpec(
        PAPER_CHECK,
        asset="artifact_pdfs",
        partitions_def=artifact_partitions,
        description="The PDF's first pages or metadata mention the work's DOI or title (wrong_paper is "
        "flagged, never deleted).",
    ),
]


def _keys(context: dg.AssetCheckExecutionContext) -> list[str]:
    ctx = context.op_execution_context
    if ctx.has_partition_key_range or ctx.has_partition_key:
        return list(ctx.partition_keys)
    return []


@dg.multi_asset_check(
    specs=CHECK_SPECS,
    can_subset=True,
    description="Check the finished works among the run's partitions against the ledger.",
)
def artifact_checks(context: dg.AssetCheckExecutionContext, ledger: LedgerResource) -> Iterator[dg.AssetCheckResult]:
    keys = _keys(context)
    selected = {key.name for key in context.selected_asset_check_keys}
    settings = ledger.settings.load()
    store = Store(settings)
    with ledger.reader() as led:
        rows = finished_artifacts(led, work_ids=keys or None)
        refs = work_references(led, [r[0] for r in rows]) if PAPER_CHECK in selected else {}
    ctx = context.op_execution_context
    asset_key = dg.AssetKey("artifact_pdfs")
    passed = {FILE_CHECK: 0, PDF_CHECK: 0, PAPER_CHECK: 0}
    failed = {FILE_CHECK: 0, PDF_CHECK: 0, PAPER_CHECK: 0}
    for work_id, sha256, _path, size in rows:
        path = store.work_path(work_id)
        problem = file_problem(path, sha256, size or None, "sha256")
        results: dict[str, tuple[bool, dict[str, str | int]]] = {
            FILE_CHECK: (problem is None, {"problem": problem or "", "sha256": sha256, "bytes": size}),
            PDF_CHECK: (problem != "file_missing" and is_valid_pdf(path, settings.validation), {"bytes": size}),
        }
        if PAPER_CHECK in selected and problem != "file_missing":
            doi, title = refs.get(work_id, (None, None))
            verdict = check_pdf(path, doi=doi, title=title)
            results[PAPER_CHECK] = (not verdict.flagged, {"verdict": verdict.verdict, "detail": verdict.detail})
        for name, (ok, metadata) in results.items():
            if name not in selected:
                continue
            (passed if ok else failed)[name] += 1
            # log_event accepts check evaluations (Dagster 1.13), its annotation does not say so.
            ctx.log_event(
                dg.AssetCheckEvaluation(  # type: ignore[arg-type]
                    asset_key=asset_key, check_name=name, passed=ok, partition=work_id, metadata=metadata,
                    severity=dg.AssetCheckSeverity.WARN if name == PAPER_CHECK else dg.AssetCheckSeverity.ERROR,
                )
            )
    context.log.info(
        f"checked {len(rows)} finished works of {len(keys) or 'all'} partitions: "
        + ", ".join(f"{n} {passed[n]} passed, {failed[n]} failed" for n in sorted(selected))
    )
    yield from ()
