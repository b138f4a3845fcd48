"""Nothing lost, nothing doubled on the real broker (ARCHITECTURE.md §8):

- an unexpected exception in the middle of a batch (here: the bundle's ``predict_proba``
  raising) aborts the open transaction, and the consumer's close -- whose revoke callback
  used to commit -- moves no offset past an event whose outputs were not committed; a
  restarted scorer gives the batch reference's outputs, none twice;
- odd loan ids (``__partition__``, the changelog's checkpoint key; 5,000 characters;
  non-ASCII) are dead-lettered as ``invalid_loan_id`` and never break a restart, also with a
  changelog an older version wrote a loan called ``__partition__`` into.

The scorers run in-process (the failure is injected into the model); clients, transactions,
group and broker are real.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from test_stream_eos import (
    PARTITIONS,
    assert_same_changes,
    change_keys,
    encoded,
    produce,
    read_all,
    reference_keys,
)

from consumer.app import ScorerApp
from consumer.config import ServeConfig
from consumer.partition_store import CHECKPOINT_KEY
from consumer.partitioning import partition_for
from consumer.reference import score_events
from producer.admin import create_topics
from schemas import AvroSerde
from schemas.topics import Topics

pytestmark = pytest.mark.integration
FAST_GROUP = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}


class FailingModel:
    """The real bundle, except that ``predict_proba`` raises from its ``nth`` call on."""

    def __init__(self, bundle: Any, nth: int) -> None:
        self._bundle, self.nth, self.calls = bundle, nth, 0

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls >= self.nth:
            raise RuntimeError("injected: the reloaded model cannot predict")
        return self._bundle.predict_proba(rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bundle, name)


def new_topics(bootstrap: str, app: str) -> Topics:
    topics = Topics(
        events=f"{app}.events",
        strategy_changes=f"{app}.changes",
        risk_alerts=f"{app}.alerts",
        dlq=f"{app}.dlq",
        app_id=app,
    )
    create_topics(bootstrap, topics, partitions=PARTITIONS)
    return topics


def config(bootstrap: str, model: Path, topics: Topics, instance: str, **kw: Any) -> ServeConfig:
    return ServeConfig(
        bootstrap,
        model,
        topics=topics,
        instance_id=instance,
        kafka_properties=dict(FAST_GROUP),
        exit_when_idle_s=3,
        metrics_port=None,
        **kw,
    )


def committed_offsets(bootstrap: str, topics: Topics) -> dict[int, int]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": topics.app_id,
            "isolation.level": "read_uncommitted",  # not waiting for pending transactions
        }
    )
    try:
        got = consumer.committed(
            [TopicPartition(topics.events, p) for p in range(PARTITIONS)], timeout=30
        )
    finally:
        consumer.close()
    return {tp.partition: max(tp.offset, 0) for tp in got}


def test_an_exception_mid_batch_commits_nothing_of_it_and_a_restart_completes(
    bootstrap_servers: str, trained_model: Path, unique_name
) -> None:
    from models.data.synthetic import generate_book
    from models.serving.bundle import ModelBundle
    from models.serving.policy import Policy

    topics = new_topics(bootstrap_servers, unique_name("crash"))
    events = generate_book(400, seed=41)[1]
    produce(bootstrap_servers, topics.events, encoded(events))
    bundle, policy = ModelBundle.load(trained_model), Policy.load(None)
    reference = score_events(events, bundle, policy, PARTITIONS)
    want = reference_keys([asdict(c) for c in reference.changes])

    # Small polls, a transaction per poll: the failure comes after many commits, mid-stream.
    crashing = ScorerApp(
        config(
            bootstrap_servers, trained_model, topics, "crash", commit_interval_ms=1, max_batch=50
        ),
        FailingModel(bundle, nth=25),
        policy,
    )
    with pytest.raises(RuntimeError, match="injected"):
        crashing.run()

    # The committed offsets cover exactly the events whose outputs are committed.
    committed = committed_offsets(bootstrap_servers, topics)
    assert 0 < sum(committed.values()) < len(events)
    covered = Counter(
        (c.loan_id, c.source_event_id, c.new_strategy)
        for c in reference.changes
        if c.source_offset < committed[c.source_partition]
    )
    serde = AvroSerde("StrategyChanged")
    out = read_all(bootstrap_servers, topics.strategy_changes, sum(covered.values()), 30)
    records = [serde.decode(m.value()) for m in out]
    got = Counter((r["loan_id"], r["source_event_id"], r["new_strategy"]) for r in records)
    assert_same_changes(got, covered)
    assert crashing.errors.fatal and "injected" in crashing.errors.fatal

    restarted = ScorerApp(config(bootstrap_servers, trained_model, topics, "crash"), bundle, policy)
    restarted.run()
    got, _ = change_keys(bootstrap_servers, topics, len(reference.changes))
    assert_same_changes(got, want)
    assert sum(committed_offsets(bootstrap_servers, topics).values()) == len(events)


def test_odd_loan_ids_are_dead_lettered_and_never_break_a_restart(
    bootstrap_servers: str, trained_model: Path, unique_name
) -> None:
    from models.data.synthetic import generate_book
    from models.features.state import LoanState
    from models.features.state_codec import LoanStateCodec
    from models.serving.bundle import ModelBundle
    from models.serving.policy import Policy

    topics = new_topics(bootstrap_servers, unique_name("oddids"))
    bundle, policy = ModelBundle.load(trained_model), Policy.load(None)
    book = generate_book(300, seed=42)[1]
    odd_ids = [CHECKPOINT_KEY, "L" * 5000, "Lé-ünïcødé", "贷款-1"]
    odd = []
    for template in [e for e in book if e["loan_id"] == book[0]["loan_id"]][:3]:
        odd += [
            {**template, "loan_id": loan, "event_id": f"{loan[:8]}-{template['event_id']}"}
            for loan in odd_ids
        ]
    half = len(book) // 2
    first, second = book[:half] + odd, book[half:] + odd  # odd ones again after the restart

    # What an older version left: a loan called "__partition__" under the checkpoint's key.
    legacy = LoanState.open({**book[0], "loan_id": CHECKPOINT_KEY})
    p = partition_for(CHECKPOINT_KEY.encode(), PARTITIONS)
    producer = Producer({"bootstrap.servers": bootstrap_servers})
    producer.produce(
        topics.changelog, LoanStateCodec().encode(legacy), CHECKPOINT_KEY.encode(), partition=p
    )
    assert producer.flush(30) == 0

    produce(bootstrap_servers, topics.events, encoded(first))
    one = ScorerApp(config(bootstrap_servers, trained_model, topics, "odd"), bundle, policy)
    one.run()
    produce(bootstrap_servers, topics.events, encoded(second))
    two = ScorerApp(config(bootstrap_servers, trained_model, topics, "odd"), bundle, policy)
    two.run()  # restores every partition from the changelog the first one wrote
    assert two.metrics.restored_loans._value.get() > 0
    assert one.processed + two.processed == len(first) + len(second)

    reference = score_events(first + second, bundle, policy, PARTITIONS)
    assert Counter(d.reason for d in reference.dead_letters) == {"invalid_loan_id": 2 * len(odd)}
    got, _ = change_keys(bootstrap_servers, topics, len(reference.changes))
    assert_same_changes(got, reference_keys([asdict(c) for c in reference.changes]))
    dead = read_all(bootstrap_servers, topics.dlq, 2 * len(odd))
    reasons = Counter(dict(m.headers())["error.reason"].decode() for m in dead)
    assert reasons == {"invalid_loan_id": 2 * len(odd)}
    assert {m.key().decode() for m in dead} == set(odd_ids)
    assert AvroSerde("LoanEvent").decode(dead[0].value())["loan_id"] in odd_ids
