"""The producer engine: encoding, ordering checks, rate limit, properties files (no broker),
then delivery accounting against the real broker."""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict

from confluent_kafka import Consumer, TopicPartition
from producer_books import T0, book, loan_history

from producer.engine import EventProducer, StopFlag
from producer.sources import paced_by_event_time
from schemas import AvroSerde

# -- no broker ---------------------------------------------------------------------------------


# -- against the broker ------------------------------------------------------------------------


def watermark_total(bootstrap: str, topic: str, partitions: int) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
    try:
        return sum(
            hi - lo
            for lo, hi in (
                consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                for p in range(partitions)
            )
        )
    finally:
        consumer.close()


def consume(bootstrap: str, topic: str, expected: int) -> list:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    messages: list = []
    try:
        for _ in range(60):
            messages += [m for m in consumer.consume(1000, timeout=1.0) if not m.error()]
            if len(messages) >= expected:
                break
    finally:
        consumer.close()
    return messages


def test_every_event_acknowledged_keyed_and_in_per_loan_order(
    bootstrap_servers: str, make_topic
) -> None:
    topic = make_topic("produce", partitions=6)
    events = book(400)
    summary = EventProducer({"bootstrap.servers": bootstrap_servers}, topic).run(events)
    assert summary.ok, summary.first_error
    assert summary.acknowledged == summary.sent == len(events) == 2000
    assert watermark_total(bootstrap_servers, topic, 6) == len(events)

    serde = AvroSerde("LoanEvent")
    partitions_of, times_of = defaultdict(set), defaultdict(list)
    for message in sorted(
        consume(bootstrap_servers, topic, len(events)), key=lambda m: (m.partition(), m.offset())
    ):
        event = serde.decode(message.value())
        assert message.key() == event["loan_id"].encode()
        partitions_of[event["loan_id"]].add(message.partition())
        times_of[event["loan_id"]].append(event["occurred_at"])
    assert all(len(p) == 1 for p in partitions_of.values())  # a loan lives on one partition
    assert all(t == sorted(t) for t in times_of.values())  # ...in event-time order
    assert len({p for ps in partitions_of.values() for p in ps}) == 6  # spread over all


def test_rate_limit_is_respected(bootstrap_servers: str, make_topic) -> None:
    topic = make_topic("rate")
    summary = EventProducer({"bootstrap.servers": bootstrap_servers}, topic, rate=400).run(
        book(60)
    )  # 300 events; the first burst (40) is free
    assert summary.ok
    assert 0.55 < summary.seconds < 1.5, summary.seconds


def test_stop_flag_flushes_what_was_sent(bootstrap_servers: str, make_topic) -> None:
    topic = make_topic("stop")
    stop = StopFlag()

    def endless():
        loan = 0
        while True:
            yield from loan_history(loan)
            loan += 1
            if loan == 50:
                stop.set()  # as the SIGTERM handler would

    summary = EventProducer({"bootstrap.servers": bootstrap_servers}, topic, chunk=64).run(
        endless(), stop
    )
    assert summary.interrupted and summary.ok
    assert summary.sent >= 250
    assert watermark_total(bootstrap_servers, topic, 1) == summary.sent


def test_delivery_failures_are_counted_never_dropped(bootstrap_servers: str, make_topic) -> None:
    # A real broker-side rejection: the topic accepts batches of at most 1 KiB.
    topic = make_topic("small", config={"max.message.bytes": "1024"})
    events = book(5)
    huge = loan_history(99, T0 + 10**9)[0]
    huge["body"][1]["employment_type"] = "x" * 5000
    summary = EventProducer(
        {"bootstrap.servers": bootstrap_servers, "compression.type": "none"}, topic
    ).run([*events, huge])
    assert not summary.ok
    assert summary.failed >= 1 and "MSG_SIZE_TOO_LARGE" in summary.errors
    assert summary.acknowledged + summary.failed == summary.sent == len(events) + 1
    assert watermark_total(bootstrap_servers, topic, 1) == summary.acknowledged


def test_unreachable_broker_fails_every_event_with_a_reason() -> None:
    from loan_recovery.broker import free_port

    producer = EventProducer(
        {
            "bootstrap.servers": f"127.0.0.1:{free_port()}",
            "message.timeout.ms": "1500",
            "log_level": "0",
        },
        "nowhere",
    )
    summary = producer.run(book(3))
    assert not summary.ok
    assert summary.failed == summary.sent == 15 and summary.acknowledged == 0
    assert "_MSG_TIMED_OUT" in summary.errors


def test_a_live_source_that_ends_on_stop_counts_as_interrupted(
    bootstrap_servers: str, make_topic
) -> None:
    topic = make_topic("live-stop")
    stop = StopFlag()
    live = paced_by_event_time(book(20), months_per_second=0.001, stop=stop.is_set)
    threading.Timer(1.0, stop.set).start()  # as SIGTERM would, while the source waits
    # The 20 openings fill 5 chunks of 4; the next chunk waits a month of event time and
    # comes back empty when the stop arrives.
    summary = EventProducer({"bootstrap.servers": bootstrap_servers}, topic, chunk=4).run(
        live, stop
    )
    assert summary.interrupted and summary.ok
    assert summary.sent == watermark_total(bootstrap_servers, topic, 1) == 20
