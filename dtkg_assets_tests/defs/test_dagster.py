"""The Dagster layer on a real instance (`instance_for_test`), a real ledger and the local origin."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import pytest

from dtkg_assets.core.ledger import Ledger
from dtkg_assets.core.settings import Settings
from dtkg_assets.definitions import build_definitions
from dtkg_assets.defs.assets import artifact_pdfs, openalex_works
from dtkg_assets.defs.batching import partition_batches
from dtkg_assets.defs.dynamic_partitions import PackedKeys
from dtkg_assets.defs.jobs import release_leases_job, revalidate_job
from dtkg_assets.defs.partitions import ARTIFACT_PARTITIONS_NAME
from dtkg_assets.defs.resources import default_resources
from dtkg_assets.defs.schedules import refresh_run_config
from dtkg_assets.defs.sensors import reconcile_sensor, release_leases_on_failure, work_partitions_sensor
from dtkg_assets_tests.conftest import loopback_env, pdf_bytes
from dtkg_assets_tests.support.origin import FaultMode, OriginServer

REPO = Path(__file__).resolve().parents[2]
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Resources read settings from the environment: point them at a private home and loopback."""
    home = tmp_path / "home"
    for name, value in {
        "DTKG_HOME": str(home),
        "DTKG_ALLOW_HOSTS": "127.0.0.1,localhost",
        "DTKG_RATE_LIMITS": "*=0",
        "DTKG_HTTP_ROBOTS_ENABLED": "0",
        "DTKG_HTTP_CACHE_ENABLED": "0",
        "DTKG_HTTP_BACKOFF_INITIAL_S": "0.01",
        "DTKG_HTTP_BACKOFF_MAX_S": "0.05",
        "DTKG_QUOTA_FREE_BYTES_MIN": "0",
    }.items():
        monkeypatch.setenv(name, value)
    return home


def work_record(work_id: str, urls: list[str]) -> dict:
    locations = [{"is_oa": True, "pdf_url": u, "landing_page_url": u} for u in urls]
    return {
        "id": f"https://openalex.org/{work_id}",
        "doi": None,
        "title": f"Work {work_id}",
        "publication_year": 2024,
        "best_oa_location": locations[0] if locations else None,
        "locations": locations,
        "open_access": {"is_oa": True, "oa_url": urls[0] if urls else None},
    }


def write_works(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def ingest(instance: dg.DagsterInstance, home: Path, jsonl: Path) -> dg.ExecuteInJobResult:
    return dg.materialize(
        [openalex_works],
        instance=instance,
        resources=default_resources(str(home)),
        run_config={"ops": {"openalex_works": {"config": {"jsonl_path": str(jsonl)}}}},
    )


def run_range(instance: dg.DagsterInstance, home: Path, start: str, end: str) -> dg.ExecuteInJobResult:
    return dg.materialize(
        [artifact_pdfs],
        instance=instance,
        resources=default_resources(str(home)),
        tags={RANGE_START: start, RANGE_END: end},
        raise_on_error=False,
    )


def materialized_partitions(instance: dg.DagsterInstance, run_id: str) -> set[str]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    return {r.event_log_entry.dagster_event.partition for r in records if r.event_log_entry.dagster_event}


def ledger_states(home: Path) -> dict[str, bool]:
    """work id -> finished (INDEXED/DEDUPED) per the ledger."""
    led = Ledger.open_reader(Settings.from_env().with_home(home))
    try:
        rows = led.query("SELECT work_id, bool_or(state IN ('INDEXED', 'DEDUPED')) FROM artifact_jobs GROUP BY work_id")
    finally:
        led.close()
    return {str(w): bool(ok) for w, ok in rows}


@pytest.fixture
def five_works(tmp_path: Path, origin: OriginServer, home: Path) -> tuple[list[str], dict[str, bytes]]:
    """W1..W5 on the origin; W3 answers 404 (permanent failure)."""
    bodies = {}
    records = []
    for i in range(1, 6):
        wid = f"W{i}"
        body = pdf_bytes(20_000 + i * 1000, seed=i)
        bodies[wid] = body
        url = origin.add(f"/{wid}.pdf", body, FaultMode(status=404) if i == 3 else None)
        records.append(work_record(wid, [url]))
    write_works(tmp_path / "works.jsonl", records)
    return [f"W{i}" for i in range(1, 6)], bodies


def test_definitions_load_and_validate() -> None:
    defs = build_definitions()
    repo = defs.get_repository_def()
    assert {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()} == {"openalex_works", "artifact_pdfs"}
    assert {s.name for s in repo.sensor_defs} >= {"work_partitions_sensor", "reconcile_sensor"}
    assert {s.name for s in repo.schedule_defs} == {"works_refresh_schedule", "revalidation_schedule"}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_range_run_matches_ledger_and_rerun_downloads_nothing(
    tmp_path: Path, origin: OriginServer, home: Path, five_works: tuple[list[str], dict[str, bytes]]
) -> None:
    keys, bodies = five_works
    with dg.instance_for_test() as instance:
        assert ingest(instance, home, tmp_path / "works.jsonl").success
        assert list(instance.get_dynamic_partitions(ARTIFACT_PARTITIONS_NAME)) == keys

        result = run_range(instance, home, "W1", "W5")
        assert not result.success  # W3 failed, so the step fails at the end
        status = instance.get_status_by_partition(
            dg.AssetKey("artifact_pdfs"), keys, dg.DynamicPartitionsDefinition(name=ARTIFACT_PARTITIONS_NAME)
        )
        finished = ledger_states(home)
        assert finished == {"W1": True, "W2": True, "W3": False, "W4": True, "W5": True}
        for key in keys:
            expected = dg.AssetPartitionStatus.MATERIALIZED if finished[key] else dg.AssetPartitionStatus.FAILED
            assert status[key] == expected, key
        # Bytes on disk are the origin's bytes.
        for key in ("W1", "W2", "W4", "W5"):
            path = home / "store" / "works" / f"{key}.pdf"
            assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(bodies[key]).hexdigest()

        # Materializing again is the user's command: complete works are verified on disk and reported
        # materialized without a download; the permanently failed W3 is tried again.
        served = {k: origin.stats(f"/{k}.pdf").body_bytes for k in keys}
        w3_requests = origin.stats("/W3.pdf").requests
        rerun = run_range(instance, home, "W1", "W5")
        assert not rerun.success  # W3 still answers 404
        assert materialized_partitions(instance, rerun.run_id) == {"W1", "W2", "W4", "W5"}
        assert {k: origin.stats(f"/{k}.pdf").body_bytes for k in keys} == served  # nothing downloaded again
        assert origin.stats("/W3.pdf").requests > w3_requests
        run = instance.get_run_by_id(rerun.run_id)
        assert run is not None
        assert run.tags["dtkg/outcome"] == "data_failures" and run.tags["dtkg/works_failed"] == "1"
        assert run.tags["dtkg/works_stored"] == "4"
        # The failed partition's reason and what to do are on its own events.
        records = instance.fetch_observations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("artifact_pdfs"), asset_partitions=["W3"]), limit=1
        ).records
        observation = records[0].asset_observation
        assert observation is not None
        assert observation.metadata["reason"].value == "http_404"
        assert "materialize the partition again" in str(observation.metadata["what_to_do"].value)

        # The URL is fixed; a deleted file comes back on the next request too.
        origin.set_mode("/W3.pdf", FaultMode())
        (home / "store" / "works" / "W1.pdf").unlink()
        fixed = run_range(instance, home, "W1", "W5")
        assert fixed.success
        assert ledger_states(home) == dict.fromkeys(keys, True)
        assert hashlib.sha256((home / "store" / "works" / "W1.pdf").read_bytes()).hexdigest() == hashlib.sha256(
            bodies["W1"]).hexdigest()
        status = instance.get_status_by_partition(
            dg.AssetKey("artifact_pdfs"), keys, dg.DynamicPartitionsDefinition(name=ARTIFACT_PARTITIONS_NAME)
        )
        assert set(status.values()) == {dg.AssetPartitionStatus.MATERIALIZED}


def test_automation_runs_do_not_retry_permanent_failures(
    tmp_path: Path, origin: OriginServer, home: Path, five_works: tuple[list[str], dict[str, bytes]]
) -> None:
    with dg.instance_for_test() as instance:
        assert ingest(instance, home, tmp_path / "works.jsonl").success
        run_range(instance, home, "W3", "W3")
        requests = origin.stats("/W3.pdf").requests
        origin.set_mode("/W3.pdf", FaultMode())
        job = build_definitions(str(home)).resolve_job_def("artifact_pdfs_job")
        automated = job.execute_in_process(
            instance=instance,
            tags={RANGE_START: "W3", RANGE_END: "W3", "dagster/sensor_name": "reconcile_sensor"},
            raise_on_error=False,
        )
        assert not automated.success
        assert origin.stats("/W3.pdf").requests == requests  # not tried again
        assert ledger_states(home)["W3"] is False


def test_backfill_runs_created_ahead_match_the_ledger_and_none_is_left_pending(
    tmp_path: Path, origin: OriginServer, home: Path, five_works: tuple[list[str], dict[str, bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Batch runs are created one ahead (planned events written while the previous run downloads):
    every run executes in order with its own range, per-partition status matches the ledger, and a
    backfill stopped after its first batch leaves the run created for the next one canceled."""
    from dtkg_assets.cli.launch import backfill

    keys, _ = five_works
    monkeypatch.setenv("DTKG_RUN_BATCH_SIZE", "2")
    with dg.instance_for_test() as instance:
        assert ingest(instance, home, tmp_path / "works.jsonl").success
        settings = Settings.from_env()

        class Stop(Exception):
            pass

        def stop_after_first(batch: object, size: int) -> None:
            raise Stop

        with pytest.raises(Stop):
            backfill(instance, settings, keys=keys, workers=4, on_batch=stop_after_first)
        runs = instance.get_runs(filters=dg.RunsFilter(job_name="artifact_pdfs_job"))
        by_status = sorted(r.status.value for r in runs)
        assert by_status == ["CANCELED", "SUCCESS"], by_status  # W1-W2 ran; the W3-W4 run never started
        assert ledger_states(home) == {"W1": True, "W2": True, "W3": False, "W4": False, "W5": False}

        report = backfill(instance, settings, keys=["W3", "W4", "W5"], workers=4)
        assert [(b.start, b.end, b.success) for b in report.batches] == [("W3", "W4", False), ("W5", "W5", True)]
        finished = ledger_states(home)
        assert finished == {"W1": True, "W2": True, "W3": False, "W4": True, "W5": True}
        status = instance.get_status_by_partition(
            dg.AssetKey("artifact_pdfs"), keys, dg.DynamicPartitionsDefinition(name=ARTIFACT_PARTITIONS_NAME)
        )
        for key in keys:
            expected = dg.AssetPartitionStatus.MATERIALIZED if finished[key] else dg.AssetPartitionStatus.FAILED
            assert status[key] == expected, key
        statuses = {r.status for r in instance.get_runs(filters=dg.RunsFilter(job_name="artifact_pdfs_job"))}
        assert dg.DagsterRunStatus.NOT_STARTED not in statuses and dg.DagsterRunStatus.STARTED not in statuses


def test_work_partitions_sensor_registers_new_works(tmp_path: Path, home: Path, origin: OriginServer) -> None:
    records = [work_record(f"W{i}", [origin.add(f"/{i}.pdf", pdf_bytes(5000, i))]) for i in range(1, 4)]
    jsonl = write_works(tmp_path / "works.jsonl", records)
    settings = Settings.from_env()
    from dtkg_assets.core.sources import WorksSource, iter_works

    works = [w for w in iter_works(WorksSource(jsonl_path=str(jsonl)), settings) if hasattr(w, "candidates")]
    led = Ledger.open_writer(settings)
    led.plan(works)  # type: ignore[arg-type]
    led.close()
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(ARTIFACT_PARTITIONS_NAME, ["W1"])  # one is known already
        with dg.build_sensor_context(instance=instance, resources=default_resources(str(home))) as ctx:
            data = work_partitions_sensor.evaluate_tick(ctx)
        requests = data.dynamic_partitions_requests or []
        assert [sorted(r.partition_keys) for r in requests] == [["W2", "W3"]]
        # The tick says what it did (not "returned an empty result").
        assert data.skip_message is not None and "added 2 partitions" in data.skip_message
        assert data.cursor is not None and float(data.cursor) > 0
        # Same cursor, nothing new: no request.
        instance.add_dynamic_partitions(ARTIFACT_PARTITIONS_NAME, ["W2", "W3"])
        with dg.build_sensor_context(
            instance=instance, resources=default_resources(str(home)), cursor=data.cursor
        ) as ctx2:
            again = work_partitions_sensor.evaluate_tick(ctx2)
        assert not again.dynamic_partitions_requests


def _tick(instance: dg.DagsterInstance, home: Path, sensor: dg.SensorDefinition, cursor: str | None = None
          ) -> dg.SensorExecutionData:
    with dg.build_sensor_context(instance=instance, resources=default_resources(str(home)), cursor=cursor) as ctx:
        return sensor.evaluate_tick(ctx)


def test_reconcile_sensor_redoes_what_broke_and_leaves_new_works_to_the_user(
    tmp_path: Path, origin: OriginServer, home: Path, five_works: tuple[list[str], dict[str, bytes]]
) -> None:
    with dg.instance_for_test() as instance:
        assert ingest(instance, home, tmp_path / "works.jsonl").success
        first = _tick(instance, home, reconcile_sensor)
        # Never-attempted works are the user's to download: only the hourly reconcile run.
        assert [r.job_name for r in first.run_requests or []] == ["reconcile_job"]
        cursor = first.cursor
        idle = _tick(instance, home, reconcile_sensor, cursor)
        assert not idle.run_requests
        assert idle.skip_message is not None and "5 never-attempted works left for you" in idle.skip_message

        run_range(instance, home, "W1", "W5")
        (home / "store" / "works" / "W2.pdf").unlink()
        missing = _tick(instance, home, reconcile_sensor, cursor)
        ranges = [(r.tags[RANGE_START], r.tags[RANGE_END]) for r in missing.run_requests or []]
        # W2's file is gone: redo it; W3 failed permanently and is not retried by automation, so no
        # window spans it.
        assert ranges == [("W2", "W2")]

        # A run that targets W2 is in progress: the sensor leaves W2 to it.
        job = build_definitions(str(home)).resolve_job_def("artifact_pdfs_job")
        instance.create_run_for_job(job, tags={RANGE_START: "W1", RANGE_END: "W2"}, status=dg.DagsterRunStatus.STARTED)
        held = _tick(instance, home, reconcile_sensor, cursor)
        assert not held.run_requests
        assert held.skip_message is not None and "1 left to the run or backfill" in held.skip_message


def test_run_batch_size_splits_evenly_into_fewest_runs() -> None:
    from dtkg_assets.cli.launch import run_batch_size

    assert run_batch_size(2000, 100) == 100
    assert run_batch_size(2001, 1000) == 667  # three runs of 667, not 1000 + 1000 + 1
    assert run_batch_size(50, 100) == 50
    assert run_batch_size(0, 100) == 100


def test_background_events_keep_order_and_report_the_first_error() -> None:
    from dtkg_assets.defs.event_writer import EVENTS_PER_BATCH, BackgroundEvents

    seen: list[int] = []
    batches: list[int] = []

    def log(events: list[int]) -> None:
        batches.append(len(events))
        seen.extend(events)

    with BackgroundEvents(log) as events:
        for i in range(500):
            events.log(i)
    # In order, each once, in batches of what was waiting (at most a batch run's worth).
    assert seen == list(range(500)) and sum(batches) == 500 and max(batches) <= EVENTS_PER_BATCH

    def broken(events: list[int]) -> None:
        for event in events:
            if event == 3:
                raise RuntimeError("storage down")
            seen.append(event)

    seen.clear()
    events = BackgroundEvents(broken)
    for i in range(10):
        try:
            events.log(i)
        except RuntimeError:
            break
    with pytest.raises(RuntimeError, match="storage down"):
        events.close()
    assert seen == [0, 1, 2]


@pytest.mark.parametrize("packed", [False, True])
def test_partition_batches_cover_pending_only(packed: bool) -> None:
    listed = [f"K{i:02d}" for i in range(10)]
    keys: Sequence[str] = PackedKeys.of([listed]) if packed else listed  # as the instance lists them
    assert list(partition_batches(keys, {"K01", "K02", "K07"}, 3)) == [("K01", "K02"), ("K07", "K07")]
    assert list(partition_batches(keys, set(keys), 4)) == [("K00", "K03"), ("K04", "K07"), ("K08", "K09")]
    assert list(partition_batches(keys, set(), 4)) == []
    # No window spans a barrier key.
    assert list(partition_batches(keys, {"K01", "K03", "K04"}, 10, barrier={"K02"})) == [("K01", "K01"), ("K03", "K04")]
    assert list(partition_batches(keys, {"K01", "K02"}, 10, barrier={"K02"})) == [("K01", "K01")]
    assert list(partition_batches(keys, {"K00", "K03", "K05", "K06", "K09"}, 10, barrier={"K02", "K04", "K08"})) \
        == [("K00", "K00"), ("K03", "K03"), ("K05", "K06"), ("K09", "K09")]


def test_check_ranges_join_where_no_pending_key_lies_between() -> None:
    from dtkg_assets.cli.launch import joined_ranges, key_positions

    keys = [f"K{i:02d}" for i in range(12)]
    assert key_positions(keys, ["K03", "K11", "X"]) == {"K03": 3, "K11": 11}
    pending = {"K01", "K02", "K05", "K06", "K09"}
    ranges = [("K05", "K06"), ("K01", "K02"), ("K09", "K09")]
    # K03, K04, K07 and K08 are not pending: every range joins, in partition order.
    assert joined_ranges(ranges, keys, pending) == [("K01", "K09")]
    # K04 pending but in no range (another worker's batch): the ranges around it stay apart.
    assert joined_ranges(ranges, keys, pending | {"K04"}) == [("K01", "K02"), ("K05", "K09")]
    # Positions given by the caller (of every range end and pending key) give the same answer.
    given = key_positions(keys, pending | {"K04"})
    assert joined_ranges(ranges, keys, pending | {"K04"}, positions=given) == [("K01", "K02"), ("K05", "K09")]
    assert joined_ranges(ranges, keys, set()) == [("K01", "K09")]


def test_failed_run_leases_are_released(tmp_path: Path, home: Path, origin: OriginServer) -> None:
    url = origin.add("/slow.pdf", pdf_bytes(50_000, 9))
    write_works(tmp_path / "works.jsonl", [work_record("W1", [url])])
    settings = Settings.from_env()
    with dg.instance_for_test() as instance:
        assert ingest(instance, home, tmp_path / "works.jsonl").success
        # A run that died holding a lease: take one in its name.
        led = Ledger.open_writer(settings)
        job_id = led.jobs_for_work("W1")[0].job_id
        assert led.lease(job_id, "run:dead-run", run_id="dead-run") is not None
        led.close()
        # An import that failed holds no leases: nothing to release, and the tick says so.
        failing = dg.materialize(
            [openalex_works],
            instance=instance,
            resources=default_resources(str(home)),
            run_config={"ops": {"openalex_works": {"config": {"jsonl_path": str(tmp_path / "missing.jsonl")}}}},
            raise_on_error=False,
        )
        assert not failing.success
        failure_event = next(e for e in failing.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
        run = instance.get_run_by_id(failing.run_id)
        assert run is not None
        ctx = dg.build_run_status_sensor_context(
            sensor_name=release_leases_on_failure.name,
            dagster_event=failure_event,
            dagster_instance=instance,
            dagster_run=run,
        ).for_run_failure()
        skipped = release_leases_on_failure(ctx)
        assert isinstance(skipped, dg.SkipReason) and "holds no leases" in (skipped.skip_message or "")
        # A download run that died (no outcome tag: it never ended normally) gets its leases released.
        job = build_definitions(str(home)).resolve_job_def("artifact_pdfs_job")
        dead = instance.create_run_for_job(job, tags={RANGE_START: "W1", RANGE_END: "W1"},
                                           status=dg.DagsterRunStatus.FAILURE)
        ctx = dg.build_run_status_sensor_context(
            sensor_name=release_leases_on_failure.name,
            dagster_event=failure_event,
            dagster_instance=instance,
            dagster_run=dead,
        ).for_run_failure()
        request = release_leases_on_failure(ctx)
        assert isinstance(request, dg.RunRequest)
        assert request.run_config["ops"]["release_run_leases"]["config"]["run_id"] == dead.run_id
        ended = instance.create_run_for_job(job, tags={RANGE_START: "W1", RANGE_END: "W1",
                                                       "dtkg/outcome": "data_failures"},
                                            status=dg.DagsterRunStatus.FAILURE)
        ctx = dg.build_run_status_sensor_context(
            sensor_name=release_leases_on_failure.name,
            dagster_event=failure_event,
            dagster_instance=instance,
            dagster_run=ended,
        ).for_run_failure()
        assert isinstance(release_leases_on_failure(ctx), dg.SkipReason)
        # Release the dead run's leases with the same job the sensor requests.
        released = release_leases_job.execute_in_process(
            instance=instance,
            resources=default_resources(str(home)),
            run_config={"ops": {"release_run_leases": {"config": {"run_id": "dead-run"}}}},
        )
        # Opening the writer already voids leases of writers that are gone, so the job may find
        # none left; either way the dead run holds nothing afterwards.
        assert released.success and released.output_for_node("release_run_leases") in (0, 1)
        led = Ledger.open_reader(settings)
        try:
            rows = led.query("SELECT state, lease_owner FROM artifact_jobs WHERE job_id = ?", [job_id])
            assert rows == [("PLANNED", None)]
        finally:
            led.close()


def test_revalidation_304_changes_nothing_and_changed_object_is_a_new_version(
    tmp_path: Path, origin: OriginServer, home: Path
) -> None:
    url_a = origin.add("/a.pdf", pdf_bytes(30_000, 1))
    url_b = origin.add("/b.pdf", pdf_bytes(30_000, 2))
    write_works(tmp_path / "works.jsonl", [work_record("W1", [url_a]), work_record("W2", [url_b])])
    with dg.instance_for_test() as instance:
        assert ingest(instance, home, tmp_path / "works.jsonl").success
        assert run_range(instance, home, "W1", "W2").success
        old_b = (home / "store" / "works" / "W2.pdf").read_bytes()
        new_b = pdf_bytes(31_000, 3)
        origin.mutate("/b.pdf", new_b)
        origin.reset_stats()

        result = revalidate_job.execute_in_process(instance=instance, resources=default_resources(str(home)))
        counts = result.output_for_node("revalidate_artifacts")
        assert counts["checked"] == 2 and counts["unchanged"] == 1 and counts["changed"] == 1
        assert counts["new_versions"] == 1
        assert 304 in origin.stats("/a.pdf").statuses and origin.stats("/a.pdf").body_bytes == 0
        assert (home / "store" / "works" / "W2.pdf").read_bytes() == new_b
        # The old version's blob stays, addressed by its hash; the ledger records both versions.
        old_sha = hashlib.sha256(old_b).hexdigest()
        assert (home / "store" / old_sha[:2] / f"{old_sha}.pdf").read_bytes() == old_b
        led = Ledger.open_reader(Settings.from_env())
        try:
            versions = {r[0] for r in led.query("SELECT sha256 FROM work_versions WHERE work_id = 'W2'")}
            assert versions == {old_sha, hashlib.sha256(new_b).hexdigest()}
        finally:
            led.close()


def test_refresh_schedule_reads_its_source_from_the_environment() -> None:
    assert refresh_run_config({}) is None
    config = refresh_run_config({"DTKG_REFRESH_FILTER": "publication_year:2024", "DTKG_REFRESH_MAX": "50"})
    assert config == {"ops": {"openalex_works": {"config": {"filter": "publication_year:2024", "max_results": 50}}}}


def test_cli_backfill_honours_limit_and_checks_what_it_finished(
    tmp_path: Path, origin: OriginServer, five_works: tuple[list[str], dict[str, bytes]]
) -> None:
    # Two runs of one work: the checks run in the second process (cli/check_worker.py).
    # Robots on: the two runs of one process share the HTTP client, so robots.txt is fetched once.
    origin.add_robots()
    env = {**loopback_env(tmp_path / "cli-home"), "DTKG_RUN_BATCH_SIZE": "1", "DTKG_HTTP_ROBOTS_ENABLED": "1"}
    dtkg = str(Path(sys.executable).parent / "dtkg")
    imported = subprocess.run([dtkg, "works", "import", str(tmp_path / "works.jsonl")], env=env,
                              capture_output=True, text=True, timeout=300)
    assert imported.returncode == 0, imported.stderr
    proc = subprocess.run([dtkg, "backfill", "--limit", "2", "--json"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["pending"] == 2 and data["materialized"] == 2 and data["runs"] == 2
    assert data["checks"] == {"artifact_pdf_verified": True} and data["checked"] == 2
    # Only the first two works were fetched; the others were not touched.
    assert [origin.stats(f"/W{i}.pdf").get_requests for i in range(1, 6)] == [1, 1, 0, 0, 0]
    assert origin.stats("/robots.txt").requests == 1
    assert sorted(p.name for p in (tmp_path / "cli-home" / "store" / "works").iterdir()) == ["W1.pdf", "W2.pdf"]


def test_cli_backfill_checks_its_last_batch_in_two_processes_at_once(
    tmp_path: Path, origin: OriginServer, five_works: tuple[list[str], dict[str, bytes]]
) -> None:
    # Runs of three works: the first run's checks go to the check worker; the last run's are halved
    # between the worker and the backfill process, and every stored work is evaluated exactly once.
    env = {**loopback_env(tmp_path / "cli-home"), "DTKG_RUN_BATCH_SIZE": "3"}
    dtkg = str(Path(sys.executable).parent / "dtkg")
    imported = subprocess.run([dtkg, "works", "import", str(tmp_path / "works.jsonl")], env=env,
                              capture_output=True, text=True, timeout=300)
    assert imported.returncode == 0, imported.stderr
    proc = subprocess.run([dtkg, "backfill", "--json"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr  # W3 answers 404: its run failed
    data = json.loads(proc.stdout)
    assert data["runs"] == 2 and data["materialized"] == 4
    assert data["checks"] == {"artifact_pdf_verified": True} and data["checked"] == 4
    with dg.DagsterInstance.from_config(str(tmp_path / "cli-home" / "dagster")) as instance:
        check_runs = instance.get_runs(dg.RunsFilter(job_name="artifact_checks_job"))
        assert sorted((r.tags[RANGE_START], r.tags[RANGE_END]) for r in check_runs) == [
            ("W1", "W3"), ("W4", "W4"), ("W5", "W5")]
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in check_runs)
        evaluations = [
            record.event_log_entry.dagster_event.event_specific_data
            for run in check_runs
            for record in instance.get_records_for_run(
                run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
        ]
        assert sorted(e.partition for e in evaluations) == ["W1", "W2", "W4", "W5"]
        # Each evaluation names its partition's latest materialization (what the Checks tab's
        # "latest execution" and "target materialization" go by, not timestamps in whole seconds).
        latest = instance.get_latest_storage_id_by_partition(dg.AssetKey("artifact_pdfs"),
                                                             dg.DagsterEventType.ASSET_MATERIALIZATION)
        assert {e.partition: e.target_materialization_data.storage_id for e in evaluations} == {
            w: latest[w] for w in ("W1", "W2", "W4", "W5")}


# Evaluates the definitions' declarative automation against the home's Dagster instance the way the
# daemon's default automation sensor does: one tick, then `dtkg works import` of argv[1] (if given),
# then a second tick with the first tick's cursor. Prints the sensors and what each tick requested.
EVALUATE_AUTOMATION = """
import json, os, subprocess, sys
import dagster as dg
from dtkg_assets.definitions import defs
instance = dg.DagsterInstance.from_config(os.path.join(os.environ["DTKG_HOME"], "dagster"))
key = dg.AssetKey("artifact_pdfs")
first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
if len(sys.argv) > 1:
    dtkg = os.path.join(os.path.dirname(sys.executable), "dtkg")
    subprocess.run([dtkg, "works", "import", sys.argv[1]], check=True, capture_output=True)
second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
print(json.dumps({
    "sensors": sorted(s.name for s in defs.get_repository_def().sensor_defs),
    "first": sorted(first.get_requested_partitions(key)) if first.total_requested else [],
    "second": sorted(second.get_requested_partitions(key)) if second.total_requested else [],
}))
"""


def test_opt_in_automation_requests_only_newly_imported_works(
    tmp_path: Path, origin: OriginServer, five_works: tuple[list[str], dict[str, bytes]]
) -> None:
    env = loopback_env(tmp_path / "cli-home")
    dtkg = str(Path(sys.executable).parent / "dtkg")
    for args in (["works", "import", str(tmp_path / "works.jsonl")], ["backfill", "--limit", "2", "--json"]):
        proc = subprocess.run([dtkg, *args], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
    later = write_works(tmp_path / "later.jsonl", [
        work_record(w, [origin.add(f"/{w}.pdf", pdf_bytes(25_000, seed=i))]) for i, w in enumerate(["W6", "W7"])
    ])

    def evaluate(*args: str, **extra: str) -> dict[str, list[str]]:
        proc = subprocess.run([sys.executable, "-c", EVALUATE_AUTOMATION, *args], env={**env, **extra}, cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        result: dict[str, list[str]] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result

    # Off by default: no automation sensor exists and nothing is requested.
    off = evaluate()
    assert "default_automation_condition_sensor" not in off["sensors"]
    assert off["first"] == off["second"] == []
    # Opted in: works registered before the opt-in stay the user's to backfill (Dagster's on_missing
    # acts on partitions added after it applies); works imported afterwards are requested, once.
    on = evaluate(str(later), DTKG_RUN_AUTO_DOWNLOAD="1")
    assert "default_automation_condition_sensor" in on["sensors"]
    assert on["first"] == [] and on["second"] == ["W6", "W7"]
    # Evaluating requests nothing by itself: only the backfill's two works were fetched.
    assert [origin.stats(f"/W{i}.pdf").get_requests for i in range(1, 8)] == [1, 1, 0, 0, 0, 0, 0]


def test_cli_import_is_visible_in_dagster_and_retry_reopens_failed_works(
    tmp_path: Path, origin: OriginServer, five_works: tuple[list[str], dict[str, bytes]]
) -> None:
    home = tmp_path / "cli-home"
    env = loopback_env(home)
    dtkg = str(Path(sys.executable).parent / "dtkg")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([dtkg, *args], env=env, capture_output=True, text=True, timeout=300, check=False)

    assert run("works", "import", str(tmp_path / "works.jsonl")).returncode == 0
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    try:
        event = instance.get_latest_materialization_event(dg.AssetKey("openalex_works"))
        assert event is not None and event.asset_materialization is not None
        assert "dtkg works import" in (event.asset_materialization.description or "")
        assert list(instance.get_dynamic_partitions(ARTIFACT_PARTITIONS_NAME)) == [f"W{i}" for i in range(1, 6)]
    finally:
        instance.dispose()
    assert run("works", "download").returncode == 1  # W3 answers 404
    status = json.loads(run("status", "--json").stdout)
    assert status["works"] == {"stored": 4, "failed": 1}

    usage = run("works", "retry")
    assert usage.returncode == 2 and "--reason" in usage.stderr and "Traceback" not in usage.stderr
    dry = json.loads(run("works", "retry", "--reason", "http_404", "--dry-run", "--json").stdout)
    assert dry["matched"] == 1 and dry["works"] == ["W3"] and dry["reopened"] == 0
    assert json.loads(run("works", "retry", "--reason", "http_410", "--json").stdout)["matched"] == 0
    origin.set_mode("/W3.pdf", FaultMode())
    retried = json.loads(run("works", "retry", "--host", "127.0.0.1", "--json").stdout)
    assert retried["reopened"] == 1
    assert json.loads(run("status", "--json").stdout)["works"] == {"stored": 4, "pending": 1}
    assert run("works", "download").returncode == 0
    assert json.loads(run("status", "--json").stdout)["works"] == {"stored": 5}


def test_a_data_failure_is_recorded_without_a_stack_trace(
    tmp_path: Path, origin: OriginServer, home: Path, five_works: tuple[list[str], dict[str, bytes]]
) -> None:
    with dg.instance_for_test() as instance:
        assert ingest(instance, home, tmp_path / "works.jsonl").success
        result = run_range(instance, home, "W1", "W5")
        assert not result.success
        failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
        assert len(failures) == 1
        error = failures[0].step_failure_data.error
        assert error is not None and "1 of 5 works failed" in error.message and "http_404" in error.message
        assert list(error.stack) == []
        # Stack traces are back for whatever fails next in this process.
        from dtkg_assets.defs.assets import restore_stacks

        restore_stacks()
        assert getattr(sys, "tracebacklimit", None) != 0


def test_checks_warn_on_a_wrong_paper_and_error_on_a_broken_file(
    tmp_path: Path, origin: OriginServer, home: Path
) -> None:
    """One check evaluation per finished work on the instance: a PDF naming its work's title passes; a
    PDF naming another paper fails with WARN severity and stays on disk (flagged for analysts, never
    deleted); a stored file with a flipped byte fails with ERROR severity."""
    from dtkg_assets.definitions import defs
    from dtkg_assets_tests.support.landing_corpus import paper

    bodies = {"W1": paper("Work W1", 1), "W2": paper("Graphene Growth on Copper Foils", 2), "W3": paper("Work W3", 3)}
    write_works(tmp_path / "works.jsonl",
                [work_record(w, [origin.add(f"/{w}.pdf", body)]) for w, body in bodies.items()])
    with dg.instance_for_test() as instance:
        assert ingest(instance, home, tmp_path / "works.jsonl").success
        assert run_range(instance, home, "W1", "W3").success
        broken = home / "store" / "works" / "W3.pdf"
        data = bytearray(broken.read_bytes())
        data[len(data) // 2] ^= 0xFF
        broken.write_bytes(bytes(data))  # the blob shares the inode: the work's own bytes change

        checked = defs.resolve_job_def("artifact_checks_job").execute_in_process(
            instance=instance, tags={RANGE_START: "W1", RANGE_END: "W3"}, raise_on_error=False)
        evaluations = {
            e.event_specific_data.partition: e.event_specific_data
            for e in checked.all_events if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION}
        assert set(evaluations) == {"W1", "W2", "W3"}
        assert evaluations["W1"].passed is True
        w2, w3 = evaluations["W2"], evaluations["W3"]
        assert (w2.passed, w2.severity) == (False, dg.AssetCheckSeverity.WARN)
        assert w2.metadata["paper"].value == "wrong_paper"
        assert (w3.passed, w3.severity) == (False, dg.AssetCheckSeverity.ERROR)
        assert w3.metadata["file"].value != "ok"
        # The wrong paper is flagged, never deleted: its bytes are the origin's.
        assert (home / "store" / "works" / "W2.pdf").read_bytes() == bodies["W2"]
