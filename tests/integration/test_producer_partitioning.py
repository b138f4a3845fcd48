"""The batch reference (`loan-recovery score`) must put every loan on the partition the producer
really sends it to. The producer uses librdkafka's ``murmur2_random`` (the Java client's default:
Murmur2 of the key, made positive, modulo the partition count); the scorer reproduces it in
``consumer.partitioning.partition_for``. This checks the two against the broker, and that a plain
librdkafka producer with that setting (what a Java outbox does by default) agrees."""

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
            assert partition_for(key.decode(), partitions) == partition, key
        # Not a tautology: librdkafka's own default (CRC-32) spreads these keys differently.
        assert any(zlib.crc32(k) % partitions != p for k, p in seen.items())


def test_a_plain_murmur2_producer_agrees_with_odd_keys(bootstrap_servers: str, make_topic) -> None:
    """What a Java outbox sends (the Java default partitioner; librdkafka's murmur2_random is
    its twin): long, non-ASCII and 1-3 byte keys land where ``partition_for`` says."""
    from confluent_kafka import Producer

    from consumer.partitioning import partition_for
    from schemas.client_config import PARTITIONER

    topic = make_topic("partitioning-plain", partitions=6)
    keys = [f"L{i}".encode() for i in range(200)] + [
        "prêt-Ünïcødé-€".encode(),
        b"x" * 5000,
        b"a",
        b"ab",
        b"abc",
    ]
    producer = Producer({"bootstrap.servers": bootstrap_servers, "partitioner": PARTITIONER})
    for key in keys:
        producer.produce(topic, b"v", key)
    assert producer.flush(30) == 0
    seen = partitions_on_broker(bootstrap_servers, topic, 6, len(keys))
    assert len(seen) == len(keys)
    assert all(partition_for(key, 6) == partition for key, partition in seen.items())
