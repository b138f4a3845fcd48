"""Shared benchmark plumbing: one local broker, topics, and progress measured from outside.

Throughput of every contender (passthrough, scorer EOS, scorer ALO) is measured the same way:
by polling the consumer group's committed offsets, from the first commit to the commit that
reaches the end of the input. Start-up (model load, restore, group join) is excluded alike.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


@contextmanager
def benchmark_broker(explicit: str | None = None) -> Iterator[str]:
    """``explicit``, else ``KAFKA_BOOTSTRAP_SERVERS``, else a fresh local broker stopped after."""
    external = explicit or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    from loan_recovery.broker import LocalBroker

    data_dir = Path(tempfile.mkdtemp(prefix="loanrec-bench-broker-"))
    broker = LocalBroker(data_dir)
    try:
        yield broker.start().bootstrap_servers
    finally:
        broker.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def create_topics(bootstrap: str, names: list[str], partitions: int,
                  config: dict[str, str] | None = None) -> None:  # fmt: skip
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, partitions, 1, config=config or {})
                                   for n in names])  # fmt: skip
    for future in futures.values():
        future.result(timeout=30)


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-watermarks"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in partitions}  # fmt: skip
    finally:
        consumer.close()


def topic_count(bootstrap: str, topic: str) -> int:
    return sum(end_offsets(bootstrap, topic).values())


@dataclass
class CommitProgress:
    events: int
    first_commit_at: float
    done_at: float

    @property
    def seconds(self) -> float:
        return self.done_at - self.first_commit_at

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def watch_group_until_done(
    bootstrap: str, group: str, topic: str, ends: dict[int, int],
    timeout_s: float = 600.0, poll_s: float = 0.05,
) -> CommitProgress:  # fmt: skip
    """Poll ``group``'s committed offsets on ``topic`` until they reach ``ends``.

    The events between the first observed commit and the end are what the rate counts, so the
    clock starts when work is visibly under way for every contender.
    """
    watcher = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    partitions = [TopicPartition(topic, p) for p in ends]
    total = sum(ends.values())
    first: tuple[float, int] | None = None
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            committed = watcher.committed(partitions, timeout=10)
            done = sum(max(tp.offset, 0) for tp in committed)
            now = time.perf_counter()
            if done > 0 and first is None:
                first = (now, done)
            if done >= total and first is not None:
                return CommitProgress(total - first[1], first[0], now)
            time.sleep(poll_s)
    finally:
        watcher.close()
    raise TimeoutError(f"group {group} did not finish {topic} within {timeout_s:.0f} s")
