"""The dynamic partitions of `artifact_pdfs`: one key per work (its OpenAlex short id)."""

from collections.abc import Iterable

import dagster as dg

ARTIFACT_PARTITIONS_NAME = "artifact_pdfs"
artifact_partitions = dg.DynamicPartitionsDefinition(name=ARTIFACT_PARTITIONS_NAME)
# Keys per `add_dynamic_partitions` call. Dagster looks a call's keys up in one `IN (...)` and
# inserts the new ones in one transaction: SQLite refuses more than 32,766 variables, so a million
# keys at once fail, and smaller calls keep memory flat.
PARTITION_CHUNK = 10_000


def add_work_partitions(instance: dg.DagsterInstance, work_ids: Iterable[str], chunk: int = PARTITION_CHUNK) -> None:
    """Register `work_ids` as partitions of `artifact_pdfs` (idempotent; first-seen order kept)."""
    batch: dict[str, None] = {}
    for work_id in work_ids:
        batch[work_id] = None
        if len(batch) >= chunk:
            instance.add_dynamic_partitions(ARTIFACT_PARTITIONS_NAME, list(batch))
            batch = {}
    if batch:
        instance.add_dynamic_partitions(ARTIFACT_PARTITIONS_NAME, list(batch))

# Every op or asset that writes the ledger runs in this pool; dagster.yaml limits it to one run at
# a time because DuckDB allows a single read-write process.
LEDGER_POOL = "ledger"
