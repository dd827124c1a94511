"""A ranged run and a ranged check run of 30 partitions, each check evaluation logged through
`step_event_logger`, and what Dagster's own event storage must then read back: the scenario behind
the batched check evaluations of our SQLite and PostgreSQL event storages (tests in
defs/test_event_storage.py and defs/test_scale_out.py)."""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from dtkg_assets.defs.event_writer import step_event_logger

KEYS = [f"k{i:02d}" for i in range(30)]
FAILING = {"k03", "k17"}
TAGS = {"dagster/asset_partition_range_start": KEYS[0], "dagster/asset_partition_range_end": KEYS[-1]}

_parts = dg.DynamicPartitionsDefinition(name="keys")


@dg.asset(partitions_def=_parts, backfill_policy=dg.BackfillPolicy.single_run())
def many(context: dg.AssetExecutionContext) -> None:
    return None


@dg.multi_asset_check(specs=[dg.AssetCheckSpec("looks_right", asset=many, partitions_def=_parts)], can_subset=True)
def looks_right(context: dg.AssetCheckExecutionContext) -> Iterator[dg.AssetCheckResult]:
    step_event_logger(context)([
        dg.AssetCheckEvaluation(asset_key=dg.AssetKey("many"), check_name="looks_right", passed=key not in FAILING,
                                partition=key, metadata={"key": key})
        for key in context.op_execution_context.partition_keys
    ])
    yield from ()


def materialize_then_check(instance: dg.DagsterInstance) -> tuple[str, str]:
    """Register the keys, materialize them in one ranged run, check them in another; the run ids."""
    instance.add_dynamic_partitions("keys", KEYS)
    materialized = dg.materialize([many], instance=instance, tags=TAGS)
    assert materialized.success
    checked = dg.materialize([many, looks_right], selection=dg.AssetSelection.checks(looks_right),
                             instance=instance, tags=TAGS)
    assert checked.success
    return materialized.run_id, checked.run_id


def assert_read_by_dagster(reader: Any, check_run_id: str) -> None:
    """Dagster's own storage `reader` finds each partition's check execution with its status and
    evaluation, and the check run's evaluation events in the order they were logged."""
    records = reader.get_asset_check_execution_history(dg.AssetCheckKey(dg.AssetKey("many"), "looks_right"),
                                                       limit=100)
    by_partition = {r.partition: r for r in records if r.run_id == check_run_id}
    assert set(by_partition) == set(KEYS)
    for key, record in by_partition.items():
        expected = "FAILED" if key in FAILING else "SUCCEEDED"
        assert record.status.value == expected, (key, record.status)
        assert record.event is not None and record.event.dagster_event is not None
        assert record.event.dagster_event.asset_check_evaluation_data.partition == key
    run_events = [r.event_log_entry.dagster_event for r in reader.get_records_for_run(check_run_id).records]
    logged = [e.asset_check_evaluation_data.partition for e in run_events
              if e is not None and e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert logged == KEYS  # in the order logged


def record_batches(monkeypatch: Any, storage_cls: type) -> list[tuple[int, set[str], int]]:
    """Wrap `storage_cls.store_event_batch`: each batch stored is recorded as (events, their types,
    connections `_connect` opened for it: one per transaction in our storages)."""
    batches: list[tuple[int, set[str], int]] = []
    store_batch, connect = storage_cls.store_event_batch, storage_cls._connect
    connections = [0]

    def counted(self: Any, events: Any) -> None:
        before = connections[0]
        store_batch(self, events)
        batches.append((len(events), {e.dagster_event_type.value for e in events}, connections[0] - before))

    def counted_connect(self: Any, *args: Any) -> Any:
        connections[0] += 1
        return connect(self, *args)

    monkeypatch.setattr(storage_cls, "store_event_batch", counted)
    monkeypatch.setattr(storage_cls, "_connect", counted_connect)
    return batches
