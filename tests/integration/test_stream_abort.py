"""Aborted transactions on the real broker: the scorer rolls its state back and rewinds its
input (the consumer's fetch position is already past the aborted records), so the committed
output is exactly that of a run without aborts.

The scorer runs in-process so that the test can make some transactions fail with an abortable
error; everything else (producer, abort, consumer, seek, broker) is real.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from test_stream_eos import (
    PARTITIONS,
    assert_same_changes,
    change_keys,
    encoded,
    produce,
    reference_keys,
)

from consumer.app import ScorerApp
from consumer.config import ServeConfig
from consumer.reference import score_events
from producer.admin import create_topics
from schemas.topics import Topics

pytestmark = pytest.mark.integration


class FlakyTransactions:
    """The real producer, except that every ``every``-th offsets commit fails, abortably, and
    the first abort fails as librdkafka sometimes fails one (INVALID_TXN_STATE, fatal for
    that producer; confluentinc/librdkafka#4849) after really aborting."""

    def __init__(self, every: int, failures: int) -> None:
        self._producer: Any = None
        self.every, self.left, self.calls = every, failures, 0
        self.abort_failures, self.producers = 1, 0

    def wrap(self, producer: Any) -> FlakyTransactions:
        self._producer, self.producers = producer, self.producers + 1
        return self

    def send_offsets_to_transaction(self, *args: Any) -> None:
        self.calls += 1
        if self.left and self.calls % self.every == 0:
            self.left -= 1
            raise KafkaException(
                KafkaError(KafkaError._STATE, "injected abortable failure", txn_requires_abort=True)
            )
        self._producer.send_offsets_to_transaction(*args)

    def abort_transaction(self, *args: Any) -> None:
        self._producer.abort_transaction(*args)
        if self.abort_failures:
            self.abort_failures -= 1
            raise KafkaException(
                KafkaError(KafkaError.INVALID_TXN_STATE, "injected failed abort", fatal=True)
            )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)


class FlakyScorer(ScorerApp):
    flaky = None

    def _new_producer(self) -> Any:  # every producer, also one replacing a failed abort's
        if self.flaky is None:
            self.flaky = FlakyTransactions(every=3, failures=4)
        return self.flaky.wrap(super()._new_producer())


def test_aborted_transactions_roll_back_and_rewind(
    bootstrap_servers: str, trained_model: Path, unique_name
) -> None:
    from models.data.synthetic import generate_book
    from models.serving.bundle import ModelBundle
    from models.serving.policy import Policy

    app = unique_name("abort")
    topics = Topics(
        events=f"{app}.events",
        strategy_changes=f"{app}.changes",
        risk_alerts=f"{app}.alerts",
        dlq=f"{app}.dlq",
        app_id=app,
    )
    create_topics(bootstrap_servers, topics, partitions=PARTITIONS)
    events = generate_book(500, seed=31)[1]
    produce(bootstrap_servers, topics.events, encoded(events))
    bundle, policy = ModelBundle.load(trained_model), Policy.load(None)

    # Small polls and a commit after each: the ~7,500 events take well over the 12
    # transactions the 4 injected failures need, however fast the scorer is.
    config = ServeConfig(
        bootstrap_servers,
        trained_model,
        topics=topics,
        instance_id="flaky",
        commit_interval_ms=1,
        exit_when_idle_s=3,
        max_batch=50,
    )
    scorer = FlakyScorer(config, bundle, policy)
    scorer.run()

    aborts = scorer.metrics.transactions.labels(result="abort")._value.get()
    assert aborts >= 4, f"only {aborts} aborts"  # ours, plus any the broker caused
    assert scorer.flaky.producers >= 2, "the failed abort's producer was not replaced"
    reference = score_events(events, bundle, policy, PARTITIONS)
    got, _ = change_keys(bootstrap_servers, topics, len(reference.changes))
    assert_same_changes(got, reference_keys(reference.changes))
    assert scorer.processed > len(events)  # the aborted stretches were processed twice


def test_at_least_once_mode_without_failures_gives_the_same_outputs(
    bootstrap_servers: str, trained_model: Path, unique_name
) -> None:
    from consumer.config import Guarantee
    from models.data.synthetic import generate_book
    from models.serving.bundle import ModelBundle
    from models.serving.policy import Policy

    app = unique_name("alo")
    topics = Topics(
        events=f"{app}.events",
        strategy_changes=f"{app}.changes",
        risk_alerts=f"{app}.alerts",
        dlq=f"{app}.dlq",
        app_id=app,
    )
    create_topics(bootstrap_servers, topics, partitions=PARTITIONS)
    events = generate_book(300, seed=32)[1]
    produce(bootstrap_servers, topics.events, encoded(events))
    bundle, policy = ModelBundle.load(trained_model), Policy.load(None)
    config = ServeConfig(
        bootstrap_servers,
        trained_model,
        topics=topics,
        instance_id="alo",
        guarantee=Guarantee.at_least_once,
        exit_when_idle_s=2,
    )
    scorer = ScorerApp(config, bundle, policy)
    scorer.run()
    assert scorer.processed == len(events)
    reference = score_events(events, bundle, policy, PARTITIONS)
    got, _ = change_keys(bootstrap_servers, topics, len(reference.changes))
    assert_same_changes(got, reference_keys(reference.changes))
