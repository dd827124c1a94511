"""Partition ranges for batch runs.

A range run covers every key between its ends (in insertion order), so a batch is a window of
consecutive keys that contains pending ones; the asset skips keys the ledger marks complete.
"""

from collections.abc import Collection, Iterator, Sequence


def partition_batches(
    keys: Sequence[str], pending: set[str], batch_size: int, barrier: Collection[str] = ()
) -> Iterator[tuple[str, str]]:
    """(start, end) windows of at most `batch_size` consecutive keys, each holding a pending key.

    No window spans a key in `barrier` (e.g. partitions another run or backfill targets, or works
    automation must not touch): a window ends before it and the next starts after it."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    blocked = set(barrier)
    # One pass over the keys (a million at most once): the pending keys' positions and the segment
    # between barrier keys each is in.
    positions: list[int] = []
    segments: list[int] = []
    segment = 0
    for index, key in enumerate(keys):
        if key in blocked:
            segment += 1
        elif key in pending:
            positions.append(index)
            segments.append(segment)
    i = 0
    while i < len(positions):
        start = positions[i]
        end_limit = start + batch_size - 1
        j = i
        while (
            j + 1 < len(positions)
            and positions[j + 1] <= end_limit
            and segments[j + 1] == segments[i]
        ):
            j += 1
        yield keys[start], keys[positions[j]]
        i = j + 1
