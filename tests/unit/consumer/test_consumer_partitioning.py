"""The batch reference's partitioner is the Java client's: Kafka's own Murmur2 test vectors."""

from __future__ import annotations

import pytest

from consumer.partitioning import murmur2, partition_for

# org.apache.kafka.common.utils.UtilsTest.testMurmur2
KAFKA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "expected"), KAFKA_VECTORS.items())
def test_murmur2_equals_kafkas_utils(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


def test_partition_is_the_positive_hash_modulo_the_count() -> None:
    # Utils.toPositive(murmur2(key)) % n: a negative hash is masked, not negated.
    assert partition_for(b"21", 7) == (-973932308 & 0x7FFFFFFF) % 7
    assert partition_for("foobar", 6) == partition_for(b"foobar", 6)


def test_an_empty_key_is_refused() -> None:
    with pytest.raises(ValueError, match="empty key"):
        partition_for(b"", 6)
