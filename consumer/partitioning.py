"""Which partition the producer puts a loan on, so `loan-recovery score` can replay the exact
per-partition sequences the stream sees.

The producer uses confluent-kafka's default partitioner, librdkafka's ``consistent_random``:
for a non-empty key it is CRC-32 of the key bytes modulo the partition count (empty or missing
keys are spread randomly; loan events always carry the loan_id). ``tests/
test_producer_partitioning.py`` checks this against a real broker.

Example::

    >>> partition_for("L00001", 6) == partition_for(b"L00001", 6)
    True
    >>> partition_for("L00001", 1)
    0
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any


def partition_for(key: str | bytes, partitions: int) -> int:
    """The partition librdkafka's default partitioner chooses for a non-empty ``key``."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    data = key.encode() if isinstance(key, str) else key
    if not data:
        raise ValueError(
            "an empty key is partitioned randomly by librdkafka; loan events are keyed by loan_id"
        )
    return zlib.crc32(data) % partitions


def split_by_partition(
    events: Iterable[dict[str, Any]], partitions: int
) -> dict[int, list[dict[str, Any]]]:
    """Events in source order -> per-partition lists in the order the producer sends them
    (one idempotent producer keeps the order within each partition)."""
    out: dict[int, list[dict[str, Any]]] = {p: [] for p in range(partitions)}
    for event in events:
        out[partition_for(event["loan_id"], partitions)].append(event)
    return out
