"""``produce`` throughput, unthrottled, against a plain confluent-kafka loop — in one run.

Contenders, each sending the same synthetic events to its own fresh topic with the same
librdkafka settings (``producer.config.producer_config``: idempotent, ``acks=all``):

- ``plain``: ``for key, value in pre_encoded: producer.produce(topic, value, key)`` + flush;
  the ceiling for Python on this broker.
- ``engine_pre_encoded``: :class:`producer.engine.EventProducer` minus the encoding (the
  chunked loop, per-loan order check, counting) — fed the *same pre-encoded bytes* through
  a pass-through encoder, so its ratio to ``plain`` is the engine's own overhead.
- ``produce``: the full path of ``loan-recovery produce`` (dict -> Avro -> Kafka), encoding
  included, which is what a replay really costs.

Each round runs the three in rotated order; the median of the rounds is reported, and each
topic's message count is checked (sum of high-low watermarks), so every contender is timed to
full acknowledgement. Self-contained: only the project's packages and confluent-kafka.

Run: ``python -m bench.bench_produce [--events 200000] [--rounds 3] [--json]``
(``KAFKA_BOOTSTRAP_SERVERS`` or ``--bootstrap-servers``; else a temporary local broker).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bench.common import benchmark_broker
from producer.config import producer_config
from producer.encoding import EventEncoder
from producer.engine import EventProducer
from schemas import AvroSerde

PARTITIONS = 6


def synthetic_events(n_events: int, seed: int = 0) -> list[dict[str, Any]]:
    """At least ``n_events`` events from the project's synthetic generator, truncated to
    ``n_events`` after whole loans so each loan's history stays intact and in order."""
    from models.data.synthetic import generate_book

    loans = max(10, n_events // 10)
    while True:
        _, events, _ = generate_book(loans, seed)
        events = list(events)
        if len(events) >= n_events:
            return events[:n_events]
        loans = int(loans * n_events / max(1, len(events)) * 1.1) + 10


def _new_topic(admin: AdminClient, prefix: str) -> str:
    name = f"bench-{prefix}-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(name, PARTITIONS, 1)])[name].result(timeout=30)
    return name


def _count(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-produce-count"})
    try:
        return sum(
            hi - lo
            for lo, hi in (
                consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                for p in range(PARTITIONS)
            )
        )
    finally:
        consumer.close()


def run_plain(config: dict[str, str], topic: str, keys: list[bytes], values: list[bytes]) -> float:
    producer = Producer(config)
    produce, poll = producer.produce, producer.poll
    started = time.perf_counter()
    for i, (key, value) in enumerate(zip(keys, values, strict=True)):
        while True:
            try:
                produce(topic, value, key)
                break
            except BufferError:
                poll(0.05)
        if i % 1024 == 0:
            poll(0)
    if producer.flush(120):
        raise RuntimeError("plain loop: messages left unacknowledged")
    return time.perf_counter() - started


class _PreEncoded(EventEncoder):
    """Hands the engine bytes encoded beforehand: the engine's loop without Avro work."""

    def __init__(self, encoded: dict[int, tuple[bytes, bytes]]) -> None:
        super().__init__()
        self._encoded = encoded

    def encode(self, event: dict[str, Any]) -> tuple[bytes, bytes]:
        return self._encoded[id(event)]


def run_engine(
    config: dict[str, str],
    topic: str,
    events: list[dict[str, Any]],
    encoder: EventEncoder | None = None,
) -> float:
    summary = EventProducer(config, topic).run(events, encoder=encoder)
    if not summary.ok:
        raise RuntimeError(f"engine: {summary.first_error}")
    return summary.seconds


def bench(bootstrap: str, n_events: int, rounds: int) -> dict[str, Any]:
    events = synthetic_events(n_events)
    serde = AvroSerde("LoanEvent")
    keys = [e["loan_id"].encode() for e in events]
    values = [serde.encode(e) for e in events]
    pre = _PreEncoded(
        {id(e): kv for e, kv in zip(events, zip(keys, values, strict=True), strict=True)}
    )
    config = producer_config(bootstrap, {})
    admin = AdminClient({"bootstrap.servers": bootstrap})
    contenders: dict[str, Callable[[str], float]] = {
        "plain": lambda t: run_plain(config, t, keys, values),
        "engine_pre_encoded": lambda t: run_engine(config, t, events, pre),
        "produce": lambda t: run_engine(config, t, events),
    }
    names = list(contenders)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % 3 :] + names[: r % 3]:  # rotate who goes first
            topic = _new_topic(admin, name.replace("_", "-"))
            seconds[name].append(contenders[name](topic))
            if _count(bootstrap, topic) != len(events):
                raise RuntimeError(f"{name}: topic {topic} does not hold {len(events)} events")
    median = {n: statistics.median(s) for n, s in seconds.items()}
    rate = {n: len(events) / median[n] for n in names}
    return {
        "events": len(events),
        "rounds": rounds,
        "partitions": PARTITIONS,
        "avg_value_bytes": round(sum(map(len, values)) / len(values), 1),
        "seconds_median": {n: round(v, 3) for n, v in median.items()},
        "events_per_s": {n: round(v) for n, v in rate.items()},
        "ratio_produce_vs_plain": round(rate["produce"] / rate["plain"], 3),
        "ratio_engine_pre_encoded_vs_plain": round(rate["engine_pre_encoded"] / rate["plain"], 3),
    }


def _print_table(result: dict[str, Any]) -> None:
    print(
        f"{result['events']:,} events ({result['avg_value_bytes']} B avg), "
        f"{result['partitions']} partitions, median of {result['rounds']} rounds"
    )
    for name, rate in result["events_per_s"].items():
        print(f"  {name:<20} {rate:>10,} events/s  ({result['seconds_median'][name]:.2f} s)")
    print(f"  produce / plain            = {result['ratio_produce_vs_plain']:.2f}")
    print(f"  engine (pre-encoded)/plain = {result['ratio_engine_pre_encoded_vs_plain']:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap-servers", default=None)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="Machine-readable output.")
    args = parser.parse_args(argv)
    with benchmark_broker(args.bootstrap_servers) as bootstrap:
        result = bench(bootstrap, args.events, args.rounds)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_table(result)


if __name__ == "__main__":
    main()
