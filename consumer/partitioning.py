"""Which partition a loan's events land on, so `loan-recovery score` can replay the exact
per-partition sequences the stream sees.

The producer uses librdkafka's ``murmur2_random`` partitioner (``PARTITIONER``): for a non-empty
key, the 32-bit Murmur2 hash of the key bytes made positive (``& 0x7fffffff``) modulo the
partition count. It is the Java client's default, so a core banking system's outbox or Apache
Fineract's event publisher (Java producers) put a loan on the same partition as
`loan-recovery produce` does; librdkafka's own default (``consistent_random``, CRC-32) would
split a loan's state between two partitions when both kinds of producer feed one topic.
Kafka's ``UtilsTest.testMurmur2`` vectors check the hash here (tests/unit/consumer), and
``tests/integration/test_producer_partitioning.py`` checks it against a real broker.

Example::

    >>> murmur2(b"21")  # Kafka's own test vector
    -973932308
    >>> partition_for("L00001", 6) == partition_for(b"L00001", 6)
    True
    >>> partition_for("L00001", 1)
    0
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from schemas.client_config import PARTITIONER as PARTITIONER

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """``org.apache.kafka.common.utils.Utils.murmur2``: seed 0x9747B28C, signed 32-bit result."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length % 4
    if tail == 3:
        h ^= data[whole + 2] << 16
    if tail >= 2:
        h ^= data[whole + 1] << 8
    if tail >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: str | bytes, partitions: int) -> int:
    """The partition ``murmur2_random`` (and the Java default partitioner) chooses for a
    non-empty ``key``."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    data = key.encode() if isinstance(key, str) else key
    if not data:
        raise ValueError(
            "an empty key is partitioned randomly by librdkafka; loan events are keyed by loan_id"
        )
    return (murmur2(data) & 0x7FFFFFFF) % partitions


def split_by_partition(
    events: Iterable[dict[str, Any]], partitions: int
) -> dict[int, list[dict[str, Any]]]:
    """Events in source order -> per-partition lists in the order the producer sends them
    (one idempotent producer keeps the order within each partition)."""
    out: dict[int, list[dict[str, Any]]] = {p: [] for p in range(partitions)}
    for event in events:
        out[partition_for(event["loan_id"], partitions)].append(event)
    return out
