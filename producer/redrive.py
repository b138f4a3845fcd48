"""``loan-recovery dlq redrive``: send dead letters back to the input topic after a fix.

A dead letter carries its input record's key and bytes unchanged and says why in headers
(``error.reason``, ``source.topic``, ... docs/INTERNALS.md), so after the cause is fixed — a
corrected ``LoanOpened`` was sent, the model or schema was upgraded — the same bytes can be
scored. The redrive is exactly once and idempotent:

- progress is the committed offset of a consumer group of its own on the dead-letter topic,
  ``<app-id>.dlq-redrive`` (plus the reason filter, so redriving ``unknown_loan`` first and
  the rest later are two independent cursors);
- the copies and that offset commit in one Kafka transaction, so a crash mid-way re-sends
  nothing twice and loses nothing; a second redrive finds nothing new and sends nothing;
- the scorer's own idempotency (a loan ignores an event id it applied, DESIGN.md §8) makes even
  a record sent twice by other means harmless.

What it never sends: a dead letter whose bytes were dropped (``error.value_dropped``: too big
to copy), or one from another source topic than ``--input-topic``; both are counted. The input
is partitioned like every producer here (Murmur2 of the loan id), so a loan's redriven events
land on the partition that holds its state, after the events already there.

Example (against a broker)::

    summary = redrive({"bootstrap.servers": "127.0.0.1:9092"}, Topics(), reasons={"unknown_loan"})
    print(summary.redriven, summary.by_reason)
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from schemas.client_config import PARTITIONER
from schemas.topics import Topics

TRANSACTION_RECORDS = 10_000  # copies per transaction: bounds what a crash makes redo


@dataclass
class RedriveSummary:
    dlq_topic: str
    input_topic: str
    group: str
    read: int = 0
    redriven: int = 0
    skipped_by_filter: int = 0
    skipped_value_dropped: int = 0
    skipped_other_source: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)  # what was redriven, by reason


def redrive_group(topics: Topics, reasons: frozenset[str] | None) -> str:
    """The consumer group whose committed offsets are this redrive's progress."""
    suffix = "" if not reasons else "." + "+".join(sorted(reasons))
    return f"{topics.app_id}.dlq-redrive{suffix}"


def _header(headers: list[tuple[str, bytes]] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name:
            return value.decode(errors="replace") if value is not None else None
    return None


def redrive(
    client_config: dict[str, str],
    topics: Topics,
    reasons: frozenset[str] | None = None,
    timeout_s: float = 30.0,
) -> RedriveSummary:
    """Copy every dead letter not redriven before (optionally only those whose
    ``error.reason`` is in ``reasons``) to ``topics.events``, exactly once."""
    group = redrive_group(topics, reasons)
    summary = RedriveSummary(topics.dlq, topics.events, group)
    consumer = Consumer(
        {
            **client_config,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    producer = Producer(
        {
            **client_config,
            "transactional.id": group,
            "enable.idempotence": True,
            "partitioner": PARTITIONER,
        }
    )
    try:
        producer.init_transactions(timeout_s)
        ends = _end_offsets(consumer, topics.dlq, timeout_s)
        starts = _committed(consumer, topics.dlq, ends, timeout_s)
        todo = {p: end for p, end in ends.items() if starts[p] < end}
        if not todo:
            return summary
        consumer.assign([TopicPartition(topics.dlq, p, starts[p]) for p in todo])
        by_reason: Counter[str] = Counter()
        positions = dict(starts)
        producer.begin_transaction()
        in_transaction = 0
        deadline = time.monotonic() + max(timeout_s, 60.0)
        while todo:
            if time.monotonic() > deadline:
                raise KafkaException(f"reading {topics.dlq} stalled at {positions}")
            for message in consumer.consume(1000, timeout=0.5):
                if message.error():
                    raise KafkaException(message.error())
                p, offset = message.partition(), message.offset()
                if p not in todo or offset >= todo[p]:
                    continue  # arrived after the redrive began: the next redrive's
                summary.read += 1
                if _select(message, topics, reasons, summary):
                    producer.produce(topics.events, message.value(), message.key())
                    by_reason[_header(message.headers(), "error.reason") or "unknown"] += 1
                    summary.redriven += 1
                    in_transaction += 1
            # The position, not the last record, says how far a partition was read: the
            # scorer writes dead letters in transactions, so each batch ends in a commit
            # marker that occupies an offset but is never delivered.
            for tp in consumer.position([TopicPartition(topics.dlq, p) for p in todo]):
                if tp.offset >= 0:
                    positions[tp.partition] = min(tp.offset, todo[tp.partition])
                    if tp.offset >= todo[tp.partition]:
                        del todo[tp.partition]
            if in_transaction >= TRANSACTION_RECORDS:
                _commit(producer, consumer, topics.dlq, positions, timeout_s)
                producer.begin_transaction()
                in_transaction = 0
        _commit(producer, consumer, topics.dlq, positions, timeout_s)
        summary.by_reason = dict(by_reason)
        return summary
    finally:
        consumer.close()
        producer.flush(timeout_s)


def _select(
    message: Message, topics: Topics, reasons: frozenset[str] | None, summary: RedriveSummary
) -> bool:
    headers = message.headers()
    if reasons and _header(headers, "error.reason") not in reasons:
        summary.skipped_by_filter += 1
        return False
    source = _header(headers, "source.topic")
    if source is not None and source != topics.events:
        summary.skipped_other_source += 1
        return False
    if message.value() is None or _header(headers, "error.value_dropped") is not None:
        summary.skipped_value_dropped += 1
        return False
    return True


def _commit(
    producer: Producer,
    consumer: Consumer,
    topic: str,
    positions: dict[int, int],
    timeout_s: float,
) -> None:
    offsets = [TopicPartition(topic, p, offset) for p, offset in positions.items()]
    producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), timeout_s)
    producer.commit_transaction(timeout_s)


def _end_offsets(consumer: Consumer, topic: str, timeout_s: float) -> dict[int, int]:
    metadata = consumer.list_topics(topic, timeout=timeout_s)
    if topic not in metadata.topics or metadata.topics[topic].error is not None:
        raise KafkaException(f"dead-letter topic {topic} not found")
    partitions = sorted(metadata.topics[topic].partitions)
    return {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)[1]
        for p in partitions
    }


def _committed(
    consumer: Consumer, topic: str, ends: dict[int, int], timeout_s: float
) -> dict[int, int]:
    committed = consumer.committed([TopicPartition(topic, p) for p in ends], timeout=timeout_s)
    starts = {}
    for tp in committed:
        if tp.offset >= 0:
            starts[tp.partition] = tp.offset
        else:  # never redriven: from the partition's first retained record
            low, _ = consumer.get_watermark_offsets(tp, timeout=timeout_s)
            starts[tp.partition] = low
    return starts
