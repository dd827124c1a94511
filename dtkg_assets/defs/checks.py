"""One per-partition asset check on `artifact_pdfs`, `artifact_pdf_verified`, asking three questions
of each finished work's file: is it present and does it hash to the ledger's sha256; is it a PDF;
is it the right paper (mentions the work's DOI or title)?

One evaluation per work carries all three verdicts in its metadata (`file`, `pdf`, `paper`,
`failed`). It passes only when all three hold; it fails with ERROR severity when the file or the PDF
is wrong, and with WARN severity when only the paper looks wrong (`wrong_paper` is flagged for
analysts, never deleted). One evaluation, not one per question: on Dagster's SQLite event storage
each evaluation costs three write transactions (run shard, index shard, check executions row), and
three checks per work made the checks cost more than the downloads they checked.

They run off the download path, in a check run over the partitions a download run covered
(`artifact_checks_sensor` requests one after every download run; `dtkg backfill` runs them at the
end). Works without a finished artifact are not evaluated.
"""

from collections.abc import Iterator

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluationTargetMaterializationData

from dtkg_assets.core import deadline
from dtkg_assets.core.ledger.queries import finished_artifacts, work_references
from dtkg_assets.core.pdf import is_valid_pdf
from dtkg_assets.core.rightpaper import check_pdf
from dtkg_assets.core.settings import Settings
from dtkg_assets.core.store import Store
from dtkg_assets.core.verify import file_problem
from dtkg_assets.defs.event_writer import EVENTS_PER_BATCH, step_event_logger
from dtkg_assets.defs.partitions import artifact_partitions
from dtkg_assets.defs.resources import LedgerResource

CHECK = "artifact_pdf_verified"
ASSET_KEY = dg.AssetKey("artifact_pdfs")
# The questions, in the order `failed` lists them.
ASPECTS = ("file", "pdf", "paper")
CHECK_SPECS = [
    dg.AssetCheckSpec(
        CHECK,
        asset="artifact_pdfs",
        partitions_def=artifact_partitions,
        description="The work's file exists and hashes to the sha256 the ledger recorded (metadata `file`), "
        "is a PDF: %PDF- header, %%EOF trailer, structure (`pdf`), and its first pages or metadata "
        "mention the work's DOI or title (`paper`). Fails with ERROR severity for a wrong file or "
        "a non-PDF, with WARN severity when only the paper looks wrong (flagged, never deleted).",
    ),
]


def _keys(context: dg.AssetCheckExecutionContext) -> list[str]:
    ctx = context.op_execution_context
    if ctx.has_partition_key_range or ctx.has_partition_key:
        return list(ctx.partition_keys)
    return []


def check_verdicts(
    problem: str | None, is_pdf: bool | None, paper: str | None, paper_detail: str, sha256: str, size: int
) -> tuple[list[str], dict[str, str | int]]:
    """The questions that failed, and the evaluation's metadata: each question's answer ("ok", the
    problem, or "not_checked" when the file is missing) and `failed`, those questions comma-separated
    ("" when it passed)."""
    failed = [
        name
        for name, bad in (("file", problem is not None), ("pdf", is_pdf is False), ("paper", paper == "wrong_paper"))
        if bad
    ]
    return failed, {
        "failed": ",".join(failed),
        "file": problem or "ok",
        "pdf": "not_checked" if is_pdf is None else ("ok" if is_pdf else "not_pdf"),
        "paper": paper or "not_checked",
        "paper_detail": paper_detail,
        "sha256": sha256,
        "bytes": size,
    }


@dg.multi_asset_check(
    specs=CHECK_SPECS,
    can_subset=True,
    description="Check the finished works among the run's partitions against the ledger.",
)
def artifact_checks(context: dg.AssetCheckExecutionContext, ledger: LedgerResource) -> Iterator[dg.AssetCheckResult]:
    keys = _keys(context)
    if CHECK not in {key.name for key in context.selected_asset_check_keys}:
        yield from ()
        return
    settings = ledger.settings.load()
    store = Store(settings)
    with ledger.reader() as led:
        rows = finished_artifacts(led, work_ids=keys or None)
        refs = work_references(led, [r[0] for r in rows])
    targets = latest_materializations(context.instance, [r[0] for r in rows])
    # One event batch per EVENTS_PER_BATCH evaluations (one transaction per shard on the SQLite
    # storage), not three transactions per evaluation as `log_event` writes them.
    log_batch = step_event_logger(context)
    evaluations: list[dg.AssetCheckEvaluation] = []
    passed = 0
    failures = dict.fromkeys(ASPECTS, 0)
    checked = 0
    try:
        for work_id, sha256, _path, size in rows:
            if deadline.stop_requested():
                break  # `dtkg backfill` stopped: the works not reached stay unevaluated
            checked += 1
            evaluation, failed = _evaluate(store, settings, refs, work_id, sha256, size, targets.get(work_id))
            passed += not failed
            for name in failed:
                failures[name] += 1
            evaluations.append(evaluation)
            if len(evaluations) == EVENTS_PER_BATCH:
                full, evaluations = evaluations, []
                log_batch(full)
    finally:
        # What was judged is logged, also when a later work's check raised.
        if evaluations:
            log_batch(evaluations)
    context.log.info(
        f"checked {checked} of {len(rows)} finished works of {len(keys) or 'all'} partitions: {passed} passed; "
        "failed: "
        + ", ".join(f"{name} {failures[name]}" for name in ASPECTS)
    )
    yield from ()


def latest_materializations(
    instance: dg.DagsterInstance, work_ids: list[str]
) -> dict[str, AssetCheckEvaluationTargetMaterializationData]:
    """The latest materialization of each work's partition, which its evaluation names as what it
    checked. Without it Dagster judges whether an evaluation is of the latest materialization by
    comparing the materialization's time with its check execution row's, which SQLite storage keeps
    in whole seconds: a check run created in the same second as the download run's end showed
    "Not evaluated" in the asset's Checks tab. Two queries for the batch (Dagster's own check results
    ask once per partition)."""
    if not work_ids:
        return {}
    ids = instance.get_latest_storage_id_by_partition(ASSET_KEY, dg.DagsterEventType.ASSET_MATERIALIZATION,
                                                      partitions=set(work_ids))
    if not ids:
        return {}
    latest = dg.AssetRecordsFilter(asset_key=ASSET_KEY, storage_ids=list(ids.values()))
    records = instance.fetch_materializations(latest, limit=len(ids)).records
    return {
        r.partition_key: AssetCheckEvaluationTargetMaterializationData(storage_id=r.storage_id, run_id=r.run_id,
                                                                       timestamp=r.timestamp)
        for r in records
        if r.partition_key is not None
    }


def _evaluate(store: Store, settings: Settings, refs: dict[str, tuple[str | None, str | None]], work_id: str,
              sha256: str, size: int, target: AssetCheckEvaluationTargetMaterializationData | None
              ) -> tuple[dg.AssetCheckEvaluation, list[str]]:
    """One finished work's check evaluation, and the aspects it failed."""
    path = store.work_path(work_id)
    problem = file_problem(path, sha256, size or None, "sha256")
    is_pdf: bool | None = None
    paper: str | None = None
    paper_detail = ""
    if problem != "file_missing":
        is_pdf = is_valid_pdf(path, settings.validation)
        doi, title = refs.get(work_id, (None, None))
        verdict = check_pdf(path, doi=doi, title=title)
        paper, paper_detail = verdict.verdict, verdict.detail
    failed, metadata = check_verdicts(problem, is_pdf, paper, paper_detail, sha256, size)
    # ERROR when the file or the PDF is wrong; a paper that only looks wrong is a WARN.
    severity = dg.AssetCheckSeverity.ERROR if {"file", "pdf"} & set(failed) else dg.AssetCheckSeverity.WARN
    evaluation = dg.AssetCheckEvaluation(asset_key=ASSET_KEY, check_name=CHECK, passed=not failed, partition=work_id,
                                         metadata=metadata, severity=severity, target_materialization_data=target)
    return evaluation, failed
