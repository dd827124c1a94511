"""Per-partition Dagster events written by one background thread, so download workers never wait.

On the embedded (SQLite) storage each event is two write transactions (the run's shard, then the
index shard) under one storage lock: sixteen workers logging inline would queue on that lock instead
of downloading. Here workers hand the event over and go on; one thread takes every event waiting
(at most a batch run's worth) and logs them as one Dagster event batch, which the instance stores
with one `store_event_batch` (one transaction per shard on `DtkgDagsterInstance`'s SQLite storage;
on PostgreSQL one insert when the batch holds only materializations or, with `DtkgPostgresStorage`,
one transaction for a batch of check evaluations).
`close()` drains the queue before the step ends, so every event is written inside the step, in the
order the works finished.
"""

from collections.abc import Callable, Sequence
from typing import Any

import dagster as dg
from dagster._core.events import DagsterEvent, DagsterEventBatchMetadata, DagsterEventType, generate_event_batch_id

from dtkg_assets.core.background import BackgroundWorker

# Events logged per batch at most (Dagster also flushes a batch at DAGSTER_EVENT_BATCH_SIZE).
EVENTS_PER_BATCH = 100

PartitionEvent = dg.AssetMaterialization | dg.AssetObservation | dg.AssetCheckEvaluation


def step_event_logger(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext,
) -> Callable[[Sequence[PartitionEvent]], None]:
    """Logs materializations, observations and check evaluations as `context.log_event` does (event
    log and the step's events), as one Dagster event batch: `log_event` has no way to say that events
    belong together."""
    op_context = context.op_execution_context
    step_context = op_context._step_execution_context  # noqa: SLF001 (what log_event itself uses)
    # Check evaluations go as a batch only to a storage that takes them (ours, on SQLite and on
    # PostgreSQL): Dagster's own PostgreSQL storage refuses them in a batch, and the instance would
    # write them again one by one after printing the error.
    checks_batch = bool(getattr(op_context.instance.event_log_storage, "batches_check_evaluations", False))

    def log(events: Sequence[PartitionEvent]) -> None:
        batch_id = generate_event_batch_id()
        last = len(events) - 1
        for i, event in enumerate(events):
            batch = DagsterEventBatchMetadata(batch_id, i == last)
            if isinstance(event, dg.AssetMaterialization):
                logged = DagsterEvent.asset_materialization(step_context, event, batch)
            elif isinstance(event, dg.AssetObservation):
                logged = DagsterEvent.asset_observation(step_context, event, batch)
            else:
                # `DagsterEvent.asset_check_evaluation` takes no batch: the same event, its message as
                # Dagster 1.13 words it.
                verdict = "passed." if event.passed else "did not pass."
                logged = DagsterEvent.from_step(
                    DagsterEventType.ASSET_CHECK_EVALUATION, step_context, event,
                    f"Asset check '{event.check_name}' on '{event.asset_key.to_user_string()}' {verdict}"
                    + ("" if event.description is None else f" Description: '{event.description}'"),
                    batch if checks_batch else None,
                )
            op_context._events.append(logged)  # noqa: SLF001 (as log_event does: the step's events)

    return log


class BackgroundEvents(BackgroundWorker):
    """`log(event)` from any thread; `close()` (or leaving the `with` block) waits for all of them and
    raises the first error (a later `log` raises it too: the step stops handing events over)."""

    def __init__(self, log_events: Callable[[Sequence[Any]], None]) -> None:
        self.written = 0

        def write(events: Sequence[Any]) -> None:
            log_events(events)
            self.written += len(events)

        super().__init__(write, name="dtkg-dagster-events", batch=EVENTS_PER_BATCH)

    def log(self, event: Any) -> None:
        if self.error is not None:
            raise self.error
        self.put(event)

    def __enter__(self) -> "BackgroundEvents":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
