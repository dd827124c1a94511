"""Partition ranges for batch runs.

A range run covers every key between its ends (in insertion order), so a batch is a window of
consecutive keys that contains pending ones; the asset skips keys the ledger marks complete.
"""

from collections.abc import Iterator, Sequence


def partition_batches(keys: Sequence[str], pending: set[str], batch_size: int) -> Iterator[tuple[str, str]]:
    """(start, end) windows of at most `batch_size` consecutive keys, each holding a pending key."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    positions = [i for i, key in enumerate(keys) if key in pending]
    i = 0
    while i < len(positions):
        start = positions[i]
        end_limit = start + batch_size - 1
        j = i
        while j + 1 < len(positions) and positions[j + 1] <= end_limit:
            j += 1
        yield keys[start], keys[positions[j]]
        i = j + 1
