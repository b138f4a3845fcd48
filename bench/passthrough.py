"""The ceiling for any Python scorer on this broker: consume -> produce with no work.

Same transaction settings and commit interval as the scorer's exactly-once mode: a
transactional producer, ``read_committed`` input, and one transaction (outputs + input
offsets) every ``commit_interval_ms``.

Run alone: ``python -m bench.passthrough --bootstrap-servers HOST:PORT --topic T --json``.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from dataclasses import asdict, dataclass

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition


@dataclass
class PassthroughResult:
    events: int
    seconds: float
    transactions: int

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def run_passthrough(
    bootstrap_servers: str,
    input_topic: str,
    output_topic: str,
    expected_events: int,
    commit_interval_ms: int = 100,
    batch_size: int = 1000,
    timeout_s: float = 600.0,
    group: str | None = None,
) -> PassthroughResult:
    """Copy ``expected_events`` records from input to output exactly once; time it."""
    group = group or f"bench-passthrough-{uuid.uuid4().hex[:8]}"
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": bootstrap_servers,
            "transactional.id": f"{group}-tx",
            "linger.ms": 5,
        }
    )
    producer.init_transactions(30)
    consumer.subscribe([input_topic])
    seen = transactions = 0
    offsets: dict[int, int] = {}
    started: float | None = None
    deadline = time.monotonic() + timeout_s
    in_transaction = False
    last_commit = time.monotonic()
    while seen < expected_events and time.monotonic() < deadline:
        batch = consumer.consume(batch_size, timeout=0.1)
        if batch and started is None:
            started = time.perf_counter()
        if batch and not in_transaction:
            producer.begin_transaction()
            in_transaction = True
        for message in batch:
            if message.error():
                if message.error().code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(message.error())
                continue
            producer.produce(output_topic, key=message.key(), value=message.value())
            offsets[message.partition()] = message.offset() + 1
            seen += 1
        producer.poll(0)
        now = time.monotonic()
        if in_transaction and (now - last_commit) * 1000 >= commit_interval_ms:
            _commit(producer, consumer, input_topic, offsets)
            transactions += 1
            in_transaction = False
            last_commit = now
    if in_transaction:
        _commit(producer, consumer, input_topic, offsets)
        transactions += 1
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return PassthroughResult(seen, elapsed, transactions)


def _commit(producer: Producer, consumer: Consumer, topic: str, offsets: dict[int, int]) -> None:
    positions = [TopicPartition(topic, p, o) for p, o in offsets.items()]
    producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), 30)
    producer.commit_transaction(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topic", required=True, help="pre-produced input topic")
    parser.add_argument("--events", type=int, required=True, help="events in the topic")
    parser.add_argument("--commit-interval-ms", type=int, default=100)
    parser.add_argument("--group-id", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = f"{args.topic}.passthrough-{uuid.uuid4().hex[:6]}"
    result = run_passthrough(
        args.bootstrap_servers,
        args.topic,
        out,
        args.events,
        args.commit_interval_ms,
        group=args.group_id,
    )
    payload = {**asdict(result), "events_per_s": result.events_per_s}
    print(json.dumps(payload) if args.json else f"passthrough: {result.events_per_s:,.0f} ev/s")


if __name__ == "__main__":
    main()
