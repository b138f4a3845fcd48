"""The batch reference (`loan-recovery score`) must put every loan on the partition the producer
really sends it to. The producer uses librdkafka's default partitioner (``consistent_random``:
CRC32 of the key modulo the partition count, for keyed messages); the scorer reproduces it in
``consumer.partitioning.partition_for``. This checks the two against the broker."""

from __future__ import annotations

import zlib

from confluent_kafka import Consumer, TopicPartition
from test_producer_engine import book  # tests/ is on sys.path (pytest rootdir mode)

from producer.engine import EventProducer


def partitions_on_broker(bootstrap: str, topic: str, partitions: int, expected: int) -> dict:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "partition-check", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    seen: dict[bytes, int] = {}
    try:
        for _ in range(60):
            for message in consumer.consume(1000, timeout=1.0):
                if not message.error():
                    seen[message.key()] = message.partition()
            if len(seen) >= expected:
                break
    finally:
        consumer.close()
    return seen


def test_scorer_partitioning_matches_the_producer(bootstrap_servers: str, make_topic) -> None:
    from consumer.partitioning import partition_for

    for partitions in (6, 7):
        topic = make_topic("partitioning", partitions=partitions)
        events = [e for e in book(300) if e["body"][0].endswith("LoanOpened")]
        assert EventProducer({"bootstrap.servers": bootstrap_servers}, topic).run(events).ok
        seen = partitions_on_broker(bootstrap_servers, topic, partitions, len(events))
        assert len(seen) == len(events)
        for key, partition in seen.items():
            assert zlib.crc32(key) % partitions == partition  # librdkafka's consistent_random
            assert partition_for(key.decode(), partitions) == partition, key
