"""The dynamic partitions of `artifact_pdfs`: one key per work (its OpenAlex short id)."""

import dagster as dg

ARTIFACT_PARTITIONS_NAME = "artifact_pdfs"
artifact_partitions = dg.DynamicPartitionsDefinition(name=ARTIFACT_PARTITIONS_NAME)

# Every op or asset that writes the ledger runs in this pool; dagster.yaml limits it to one run at
# a time because DuckDB allows a single read-write process.
LEDGER_POOL = "ledger"
