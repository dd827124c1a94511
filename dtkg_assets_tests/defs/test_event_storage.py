"""`PooledSqliteEventLogStorage`: Dagster's SQLite event storage with kept-open connections stays
readable by Dagster's own storage on the same files (another process: the webserver, the daemon),
wakes the webserver's watcher of a run's file, and keeps a bounded number of shards open."""

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._core.definitions.partitions.utils import generate_partition_key_based_definition_id
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log import SqliteEventLogStorage

from dtkg_assets.core.settings import Settings
from dtkg_assets.defs import dynamic_partitions
from dtkg_assets.defs.dynamic_partitions import DynamicPartitionKeys, PackedKeys
from dtkg_assets.defs.event_storage import (
    DtkgDagsterInstance,
    PooledDagsterSqliteStorage,
    PooledSqliteEventLogStorage,
)
from dtkg_assets.defs.event_writer import BackgroundEvents, step_event_logger
from dtkg_assets.defs.instance import instance_yaml
from dtkg_assets_tests.support.check_batches import assert_read_by_dagster, materialize_then_check, record_batches


def _entry(run_id: str, message: str) -> EventLogEntry:
    return EventLogEntry(error_info=None, level="INFO", user_message=message, run_id=run_id,
                         timestamp=time.time())


def test_pooled_writes_reach_dagsters_reader_and_its_run_watcher(tmp_path: Path) -> None:
    base = str(tmp_path / "history" / "runs")
    writer = PooledSqliteEventLogStorage(base, open_run_shards=2)
    reader = SqliteEventLogStorage(base)
    try:
        seen: list[str] = []
        woke = threading.Event()

        def on_event(entry: EventLogEntry, _cursor: str) -> None:
            seen.append(entry.user_message)
            if len(seen) == 3:
                woke.set()

        writer.store_event(_entry("run-a", "first"))  # the shard exists before it is watched
        reader.watch("run-a", None, on_event)
        for message in ("second", "third"):
            writer.store_event(_entry("run-a", message))
        assert woke.wait(10), seen
        assert seen == ["first", "second", "third"]
        reader.end_watch("run-a", on_event)
        # A reader opening the file afterwards sees every committed event.
        assert [r.event_log_entry.user_message for r in reader.get_records_for_run("run-a").records] == \
            ["first", "second", "third"]
        # One engine per shard, reused; only the last `open_run_shards` run shards stay open.
        for run_id in ("run-b", "run-c", "run-d"):
            writer.store_event(_entry(run_id, "x"))
        assert sorted(writer._engines) == ["index", "run-c", "run-d"]
        assert len(writer.get_records_for_run("run-a").records) == 3  # reopened on demand
    finally:
        writer.dispose()
        reader.dispose()


def test_instance_configured_with_the_pooled_storage(tmp_path: Path) -> None:
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml(Settings().with_home(tmp_path), {}))

    @dg.asset
    def one() -> int:
        return 1

    with dg.DagsterInstance.from_config(str(home)) as instance:
        # Opened by path (no DAGSTER_HOME): the storage is in that directory.
        assert isinstance(instance, DtkgDagsterInstance) and instance.root_directory == str(home)
        assert isinstance(instance.get_ref().storage, PooledDagsterSqliteStorage)
        assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
        assert dg.materialize([one], instance=instance).success
        assert instance.get_latest_materialization_event(dg.AssetKey("one")) is not None
    assert (home / "history" / "runs" / "index.db").is_file()


def test_instance_lists_dynamic_partitions_as_its_storage_does(tmp_path: Path, monkeypatch) -> None:
    """The instance keeps the keys between calls and reads only what was added: after additions,
    deletions (first, middle, last; by this instance or, once it counts again, by another process)
    and SQLite's reuse of a deleted last row's id, it answers what the storage itself lists, reading
    the whole table again only when keys were deleted (or there were none)."""
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml(Settings().with_home(tmp_path), {}))
    full_reads: list[str] = []
    read_all = DynamicPartitionKeys._read_all

    def counted(conn: Any, name: str) -> Any:
        full_reads.append(name)
        return read_all(conn, name)

    monkeypatch.setattr(DynamicPartitionKeys, "_read_all", staticmethod(counted))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage

        def check(reads: int) -> None:
            for name in ("a", "b"):
                assert list(instance.get_dynamic_partitions(name)) == storage.get_dynamic_partitions(name)
            assert full_reads.count("a") == reads, full_reads

        check(1)  # first listing; empty
        instance.add_dynamic_partitions("a", ["k1", "k2", "k3"])
        check(2)  # nothing to continue from
        instance.add_dynamic_partitions("b", ["x"])
        instance.add_dynamic_partitions("a", ["k4", "k5"])
        check(2)  # only the new keys were read
        instance.add_dynamic_partitions("a", ["k6"])
        check(2)
        listed = instance.get_dynamic_partitions("a")
        assert instance.get_dynamic_partitions("a") is listed  # shared, not copied per call
        with pytest.raises(AttributeError):
            listed.append("mine")  # type: ignore[attr-defined]  # no caller can change what the others get
        assert list(listed) == ["k1", "k2", "k3", "k4", "k5", "k6"]
        held = instance.get_dynamic_partitions("b")
        instance.add_dynamic_partitions("b", ["y"])
        assert list(instance.get_dynamic_partitions("b")) == ["x", "y"]
        assert list(held) == ["x"]  # what a caller holds stays as it was
        instance.delete_dynamic_partition("a", "k3")
        check(3)
        instance.delete_dynamic_partition("a", "k6")  # the last row: its id goes to the next insert
        instance.add_dynamic_partitions("a", ["k7"])
        check(4)
        instance.delete_dynamic_partition("a", "k1")
        instance.add_dynamic_partitions("a", ["k8"])  # same count as before
        check(5)
        assert list(instance.get_dynamic_partitions("a")) == ["k2", "k4", "k5", "k7", "k8"]
        check(5)
        # Deleted elsewhere (the storage itself, as another process would): seen once it counts.
        monkeypatch.setattr(dynamic_partitions, "RECOUNT_S", 0.0)
        storage.delete_dynamic_partition("a", "k4")
        check(6)
        storage.delete_dynamic_partition("a", "k8")  # the last one, its id then reused
        storage.add_dynamic_partitions("a", ["k9"])
        check(7)
        instance.add_dynamic_partitions("a", ["k10"])
        check(7)


@pytest.mark.parametrize("chunk", [3, 65_536])
def test_packed_keys_answer_as_a_tuple_of_the_same_keys(monkeypatch, chunk: int) -> None:
    """Every sequence operation on packed keys gives what the tuple of the same keys gives: lookups of
    keys that are prefixes, suffixes or parts of others, non-ASCII and empty keys, negative and
    stepped slices, iteration in several chunks, and Dagster's definition id."""
    monkeypatch.setattr(dynamic_partitions, "_ITER_CHUNK", chunk)
    keys = ("W1", "W10", "W100", "", "wé€", "a b", "1", "x" * 300, "W101")
    packed = PackedKeys.of([keys[:3], [], keys[3:]])
    assert len(packed) == len(keys) and list(packed) == list(keys) and packed == keys and packed == list(keys)
    assert list(reversed(packed)) == list(reversed(keys))
    for i in range(-len(keys), len(keys)):
        assert packed[i] == keys[i]
    for bad in (len(keys), -len(keys) - 1):
        with pytest.raises(IndexError):
            packed[bad]
    for sl in (slice(None), slice(1, 4), slice(-3, None), slice(2, 2), slice(5, 1), slice(None, None, 2),
               slice(None, None, -1), slice(-100, 100)):
        assert packed[sl] == list(keys[sl]), sl
    for i, key in enumerate(keys):
        assert key in packed and packed.index(key) == i == keys.index(key)
        assert packed.index(key, i) == i
        with pytest.raises(ValueError):
            packed.index(key, i + 1)
        with pytest.raises(ValueError):
            packed.index(key, 0, i)
    for absent in ("W1000", "W", "10", "W1\nW10", "\n", 1, None):
        assert absent not in packed
        with pytest.raises(ValueError):
            packed.index(absent)
    assert packed.definition_id() == generate_partition_key_based_definition_id(list(keys))
    longer = packed.extended(["W102"])
    assert list(longer) == [*keys, "W102"] and packed == keys  # the one callers hold stays as it was
    assert PackedKeys() == () and list(PackedKeys()) == [] and PackedKeys().definition_id() == \
        generate_partition_key_based_definition_id([])
    with pytest.raises(ValueError):
        packed.extended(["a\nb"])


def test_instance_lists_packed_keys_and_a_key_with_a_line_break_unpacked(tmp_path: Path) -> None:
    """The instance hands out packed keys, and Dagster's id of the definition is computed from them as
    from a list. Dagster does not check a dynamic key for a line break: with one the listing stays a
    tuple, right after a full read and after keys are added."""
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml(Settings().with_home(tmp_path), {}))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("a", ["k1", "k2"])
        assert isinstance(instance.get_dynamic_partitions("a"), PackedKeys)
        instance.add_dynamic_partitions("a", ["k3"])
        listed = instance.get_dynamic_partitions("a")
        assert isinstance(listed, PackedKeys) and listed == ["k1", "k2", "k3"]
        assert instance.get_dynamic_partitions_definition_id("a") == \
            generate_partition_key_based_definition_id(["k1", "k2", "k3"])
        instance.add_dynamic_partitions("a", ["k\n4"])
        assert instance.get_dynamic_partitions("a") == ("k1", "k2", "k3", "k\n4")
        instance.add_dynamic_partitions("b", ["x\ny", "z"])
        assert instance.get_dynamic_partitions("b") == ("x\ny", "z")
        assert instance.get_dynamic_partitions_definition_id("b") == \
            generate_partition_key_based_definition_id(["x\ny", "z"])


def test_event_batches_read_as_dagsters_own_events(tmp_path: Path, monkeypatch) -> None:
    """A ranged run whose step logs its per-partition events through `BackgroundEvents`: the planned
    events and the step's events are stored as batches (one transaction per shard), and Dagster's own
    SQLite storage on the same files reads every one of them, per partition."""
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml(Settings().with_home(tmp_path), {}))
    keys = [f"k{i:02d}" for i in range(30)]
    parts = dg.DynamicPartitionsDefinition(name="keys")

    @dg.asset(partitions_def=parts, backfill_policy=dg.BackfillPolicy.single_run(), output_required=False)
    def many(context: dg.AssetExecutionContext) -> Iterator[dg.Output[None]]:
        with BackgroundEvents(step_event_logger(context)) as events:
            for key in context.partition_keys:
                events.log(dg.AssetMaterialization(asset_key=context.asset_key, partition=key))
            events.log(dg.AssetObservation(asset_key=context.asset_key, partition="k00", metadata={"reason": "x"}))
        yield from ()

    batches: list[int] = []
    store_batch = PooledSqliteEventLogStorage.store_event_batch

    def counted(self: PooledSqliteEventLogStorage, events: Any) -> None:
        batches.append(len(events))
        store_batch(self, events)

    monkeypatch.setattr(PooledSqliteEventLogStorage, "store_event_batch", counted)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("keys", keys)
        result = dg.materialize([many], instance=instance, tags={
            "dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]})
        assert result.success
        assert len(result.asset_materializations_for_node("many")) == 30  # the step's events too
    assert batches and batches[0] == 30  # the planned events: one batch
    assert sum(batches) >= 60 and max(batches) > 1
    reader = SqliteEventLogStorage(str(home / "history" / "runs"))
    try:
        by_type: dict[dg.DagsterEventType, list[str | None]] = {}
        for record in reader.get_records_for_run(result.run_id).records:
            event = record.event_log_entry.dagster_event
            if event is not None and event.event_type in (dg.DagsterEventType.ASSET_MATERIALIZATION,
                                                          dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
                                                          dg.DagsterEventType.ASSET_OBSERVATION):
                by_type.setdefault(event.event_type, []).append(event.partition)
        assert sorted(by_type[dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED]) == keys
        assert by_type[dg.DagsterEventType.ASSET_MATERIALIZATION] == keys  # in the order logged
        assert by_type[dg.DagsterEventType.ASSET_OBSERVATION] == ["k00"]
        # The cross-run index (what the UI's partition status reads) has every partition.
        assert reader.get_materialized_partitions(dg.AssetKey("many")) == set(keys)
    finally:
        reader.dispose()


def test_check_evaluations_logged_as_a_batch_read_as_dagsters_own(tmp_path: Path, monkeypatch) -> None:
    """A ranged check run logging one evaluation per partition through `step_event_logger`: the
    evaluations are stored as one batch (one transaction per shard), and Dagster's own SQLite storage
    on the same files reads each partition's execution with its status, and the evaluation events."""
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml(Settings().with_home(tmp_path), {}))
    batches = record_batches(monkeypatch, PooledSqliteEventLogStorage)
    asked: list[str] = []  # Dagster's catalog queries (a new engine and connection each)
    catalog = SqliteEventLogStorage.has_table
    monkeypatch.setattr(SqliteEventLogStorage, "has_table",
                        lambda self, name: asked.append(name) or catalog(self, name))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        _, check_run = materialize_then_check(instance)
    # One transaction on the run's shard, one on the index shard (Dagster's own: 3 per evaluation).
    assert (30, {"ASSET_CHECK_EVALUATION"}, 2) in batches, batches
    # Dagster asks whether the check table exists before storing each evaluation: answered once.
    assert asked.count("asset_check_executions") == 1, asked
    reader = SqliteEventLogStorage(str(home / "history" / "runs"))
    try:
        assert_read_by_dagster(reader, check_run)
    finally:
        reader.dispose()
