"""Checkpointing without a broker: small fakes stand in for librdkafka's producer and consumer,
so every path of ``consumer.checkpoint`` -- lazy begin, one transaction per commit, abort +
rollback + rewind, producer replacement after a failed abort, fencing, retries, riding out a
broker outage within the patience (on a fake clock: no test waits), and the at-least-once
variant -- is checked exactly and fast. (tests/integration/test_stream_abort.py and
tests/integration/test_stream_eos.py check the same guarantees end to end on a real broker.)"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from consumer.checkpoint import (
    AtLeastOnce,
    Checkpoint,
    ClientErrors,
    ExactlyOnce,
    OutageError,
)
from consumer.config import Guarantee, ServeConfig
from consumer.errors import ConsumerError, FatalError
from consumer.health import HealthState
from consumer.metrics import ScorerMetrics
from schemas.errors import LoanRecoveryError
from schemas.topics import Topics

TOPICS = Topics(events="ev", strategy_changes="ch", risk_alerts="al", dlq="dlq", app_id="app")
GROUP = object()  # what consumer_group_metadata() returns; must reach the producer as is


def failure(
    code: int, *, fatal: bool = False, retriable: bool = False, abort: bool = False
) -> KafkaException:
    return KafkaException(
        KafkaError(
            code, f"injected {code}", fatal=fatal, retriable=retriable, txn_requires_abort=abort
        )
    )


class FakeProducer:
    """Records every call as (method, args); ``fail[method]`` lists exceptions to raise on
    that method's next calls, in order (``None`` entries succeed)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[tuple[str, tuple]] = []
        self.fail: dict[str, list[BaseException | None]] = {}
        self.unflushed = 0  # what flush() reports as not delivered
        self.flush_left: list[int] = []  # what the next flush() calls report, then unflushed

    def _call(self, method: str, *args: object) -> None:
        self.calls.append((method, args))
        pending = self.fail.get(method)
        if pending:
            error = pending.pop(0)
            if error is not None:
                raise error

    def methods(self) -> list[str]:
        return [method for method, _ in self.calls]

    def init_transactions(self, timeout: float) -> None:
        self._call("init_transactions", timeout)

    def begin_transaction(self) -> None:
        self._call("begin_transaction")

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int = -1,
        headers: list | None = None,
    ) -> None:
        self._call("produce", topic, key, value, partition, headers)

    def poll(self, timeout: float) -> int:
        self._call("poll", timeout)
        return 0

    def flush(self, timeout: float) -> int:
        self._call("flush", timeout)
        return self.flush_left.pop(0) if self.flush_left else self.unflushed

    def send_offsets_to_transaction(self, offsets: list, group: object, timeout: float) -> None:
        self._call("send_offsets_to_transaction", offsets, group, timeout)

    def commit_transaction(self, timeout: float) -> None:
        self._call("commit_transaction", timeout)

    def abort_transaction(self, timeout: float) -> None:
        self._call("abort_transaction", timeout)


class FakeConsumer:
    def __init__(self) -> None:
        self.seeks: list[tuple[str, int, int]] = []
        self.commits: list[tuple[list, bool]] = []
        self.fail_commit: list[BaseException] = []
        self.committed_offsets: dict[int, int] = {}
        self.committed_asked: list[list[tuple[str, int]]] = []
        self.fail_committed: list[BaseException] = []

    def consumer_group_metadata(self) -> object:
        return GROUP

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def commit(self, offsets: list, asynchronous: bool) -> None:
        self.commits.append((offsets, asynchronous))
        if self.fail_commit:
            raise self.fail_commit.pop(0)

    def committed(self, partitions: list, timeout: float) -> list:
        """The group's committed offsets: ``committed_offsets`` (-1001 where none)."""
        self.committed_asked.append([(tp.topic, tp.partition) for tp in partitions])
        if self.fail_committed:
            raise self.fail_committed.pop(0)
        return [
            TopicPartition(tp.topic, tp.partition, self.committed_offsets.get(tp.partition, -1001))
            for tp in partitions
        ]


class FakeStore:
    """What a checkpoint uses of a ``PartitionStore``."""

    def __init__(self, changelog: list[tuple[bytes, bytes | None]]) -> None:
        self.changelog = changelog
        self.commits = self.rollbacks = 0
        self.input_offsets: list[int | None] = []  # what each unit's checkpoint records
        self.recovered = 0.0  # money recovered after write-offs in the open unit
        self.log: list[str] = []  # commit, rollback, seal, commit_sealed, unseal, in order
        self.sealed_recovered = 0.0

    def changelog_records(
        self, now_ms: int, input_offset: int | None = None
    ) -> list[tuple[bytes, bytes | None]]:
        self.input_offsets.append(input_offset)
        return self.changelog

        self.log: list[str] = []  # commit, rollback, seal, commit_sealed, unseal, in order
        self.sealed_recovered = 0.0

    def commit(self) -> float:
        self.commits += 1
        self.log.append("commit")
        recovered, self.recovered = self.recovered, 0.0
        return recovered

    def rollback(self) -> None:
        self.rollbacks += 1
        self.log.append("rollback")
        self.recovered = 0.0

    def seal(self) -> None:
        self.log.append("seal")
        self.sealed_recovered, self.recovered = self.recovered, 0.0

    def commit_sealed(self) -> float:
        self.log.append("commit_sealed")
        return self.sealed_recovered

    def unseal(self) -> None:
        self.log.append("unseal")
        self.recovered = self.sealed_recovered


class FakeClock:
    """The stall's clock: ``sleep`` advances it and records the backoff, and ``on_sleep`` sees
    the checkpoint while it waits (what the probes would read then)."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[], None] = lambda: None

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.on_sleep()
        self.t += seconds


class Rig:
    """A checkpoint with its fakes; ``producers`` are all the producers its factory made."""

    def __init__(
        self,
        kind: type[Checkpoint],
        prepare: Callable[[FakeProducer], None] = lambda p: None,
        patience_s: float = 30.0,
    ) -> None:
        self.config = ServeConfig(
            "b:9092",
            Path("m"),
            topics=TOPICS,
            instance_id="t",
            commit_timeout_s=0.05,
            outage_patience_s=patience_s,
            commit_interval_ms=100,
            caught_up_commit_ms=100,
        )
        self.health = HealthState()
        self.health.ready = True
        self.clock = FakeClock()
        self.consumer = FakeConsumer()
        self.stores = {
            0: FakeStore([(b"L1", b"state-1"), (b"__partition__", b"checkpoint")]),
            1: FakeStore([(b"__partition__", b"checkpoint")]),
        }
        self.errors = ClientErrors(self.config.transactional_id)
        self.metrics = ScorerMetrics()
        self.producers: list[FakeProducer] = []
        self.prepare = prepare
        self.checkpoint = kind(
            self.config,
            self.consumer,
            self._new_producer,  # type: ignore[arg-type]
            self.stores,
            self.errors,
            self.metrics,
            self.health,
        )  # type: ignore[arg-type]
        self.checkpoint.clock, self.checkpoint.sleep = self.clock.now, self.clock.sleep

    def _new_producer(self) -> FakeProducer:
        producer = FakeProducer(f"producer-{len(self.producers)}")
        self.prepare(producer)
        self.producers.append(producer)
        return producer

    def process(self, partition: int, first: int, next_offset: int) -> None:
        """What the loop does for one fetched batch."""
        self.checkpoint.begin()
        self.checkpoint.track(partition, first)
        self.checkpoint.advance(partition, next_offset)

    def transactions(self, result: str) -> float:
        return self.metrics.transactions.labels(result=result)._value.get()

    def stalled_gauge(self) -> float:
        value = self.metrics.registry.get_sample_value("loanrec_stalled_seconds")
        assert value is not None
        return value


def test_a_unit_is_due_at_the_interval_or_early_once_caught_up() -> None:
    rig = Rig(ExactlyOnce)  # commit interval 100 ms
    rig.checkpoint.config = dataclasses.replace(rig.config, caught_up_commit_ms=20)
    assert not rig.checkpoint.due(caught_up=True)  # nothing open
    rig.process(0, 10, 15)
    assert rig.checkpoint.commit()
    rig.process(0, 15, 20)
    ages = {0.005: (False, False), 0.03: (False, True), 0.15: (True, True)}
    for age_s, (with_backlog, caught_up) in ages.items():
        rig.checkpoint.started = rig.checkpoint.last_commit_started = time.monotonic() - age_s
        assert rig.checkpoint.due() is with_backlog, age_s
        assert rig.checkpoint.due(caught_up=True) is caught_up, age_s


def test_the_interval_counts_from_the_last_commits_start_not_the_units_begin() -> None:
    """Caught up, events that arrived during a 60 ms commit begin the next unit when it
    returns; that unit is due 100 ms after the commit began, not 100 ms after it returned (a
    decision would otherwise wait commit + interval + commit). Under a backlog a unit lasts the
    whole interval, as before."""
    rig = Rig(ExactlyOnce)
    rig.process(0, 10, 15)
    assert rig.checkpoint.due(caught_up=True)  # no commit yet: commits with its first batch
    assert not rig.checkpoint.due()  # under a backlog: the whole interval
    now = time.monotonic()
    assert rig.checkpoint.commit()
    assert rig.checkpoint.last_commit_started >= now  # stamped when the commit began
    rig.process(0, 15, 20)
    rig.checkpoint.last_commit_started, rig.checkpoint.started = now - 0.11, now - 0.05
    assert rig.checkpoint.due(caught_up=True)  # 110 ms since the commit began, 50 since begin
    assert not rig.checkpoint.due()  # a backlog: 50 ms into the unit
    rig.checkpoint.last_commit_started = now - 0.09
    assert not rig.checkpoint.due(caught_up=True)  # at most one commit per interval


def test_a_transaction_begins_lazily_once_and_commits_outputs_state_and_offsets() -> None:
    rig = Rig(ExactlyOnce)
    producer = rig.producers[0]
    assert producer.methods() == ["init_transactions"]  # no transaction while idle
    assert rig.checkpoint.commit() and not rig.checkpoint.due()  # nothing open: nothing to do
    rig.process(0, 10, 15)
    rig.process(0, 15, 20)  # the same open transaction
    rig.process(1, 3, 4)
    assert producer.methods().count("begin_transaction") == 1
    assert rig.checkpoint.commit()
    calls, log = producer.calls[2:], TOPICS.changelog
    assert [c[1][:4] for c in calls if c[0] == "produce"] == [
        (log, b"L1", b"state-1", 0),
        (log, b"__partition__", b"checkpoint", 0),
        (log, b"__partition__", b"checkpoint", 1),
    ]
    ((offsets, group, _),) = [
        args for method, args in calls if method == "send_offsets_to_transaction"
    ]
    assert [(tp.topic, tp.partition, tp.offset) for tp in offsets] == [("ev", 0, 20), ("ev", 1, 4)]
    assert group is GROUP  # fences a zombie of an older group generation
    assert [c[0] for c in calls][-2:] == ["send_offsets_to_transaction", "commit_transaction"]
    assert (rig.stores[0].commits, rig.stores[1].commits) == (1, 1)
    assert not rig.checkpoint.open and rig.transactions("commit") == 1
    rig.process(0, 20, 21)  # the next batch opens the next transaction
    assert producer.methods().count("begin_transaction") == 2


@pytest.mark.parametrize("kind", [ExactlyOnce, AtLeastOnce])
def test_every_commit_s_checkpoint_records_the_input_offset_it_commits(kind) -> None:
    """The restore check (consumer.recovery) rests on this: each unit that commits input
    offsets writes each of its partitions' checkpoint with exactly that offset."""
    rig = Rig(kind)
    rig.process(0, 10, 15)
    rig.process(1, 3, 4)
    assert rig.checkpoint.commit()
    rig.process(0, 15, 20)  # partition 1 is not in this unit: no checkpoint, no offset
    assert rig.checkpoint.commit()
    assert rig.stores[0].input_offsets == [15, 20] and rig.stores[1].input_offsets == [4]
    committed = [
        [(tp.partition, tp.offset) for tp in args[0]]
        for producer in rig.producers
        for method, args in producer.calls
        if method == "send_offsets_to_transaction"
    ] or [[(tp.partition, tp.offset) for tp in offsets] for offsets, _ in rig.consumer.commits]
    assert committed == [[(0, 15), (1, 4)], [(0, 20)]]


def test_an_abortable_error_aborts_rolls_back_and_rewinds_to_the_first_offset() -> None:
    rig = Rig(ExactlyOnce)
    producer = rig.producers[0]
    producer.fail["send_offsets_to_transaction"] = [failure(KafkaError._STATE, abort=True)]
    rig.process(0, 10, 15)
    rig.process(0, 15, 20)
    rig.process(1, 3, 4)
    assert rig.checkpoint.commit() is False
    assert "abort_transaction" in producer.methods()
    assert "commit_transaction" not in producer.methods()
    assert (rig.stores[0].rollbacks, rig.stores[1].rollbacks) == (1, 1)
    assert (rig.stores[0].commits, rig.stores[1].commits) == (0, 0)
    assert rig.consumer.seeks == [("ev", 0, 10), ("ev", 1, 3)]  # the fetch position was past
    assert rig.checkpoint.positions == {0: 10, 1: 3}
    assert not rig.checkpoint.open and rig.transactions("abort") == 1
    assert len(rig.producers) == 1  # a successful abort keeps the producer


@pytest.mark.parametrize("kind", [ExactlyOnce, AtLeastOnce])
def test_recovered_money_is_counted_when_its_unit_commits_once_when_redone(kind) -> None:
    rig = Rig(kind)
    if kind is ExactlyOnce:
        rig.producers[0].fail["send_offsets_to_transaction"] = [
            failure(KafkaError._STATE, abort=True)
        ]
    else:  # an output not delivered: the unit is rewound and redone
        rig.errors.on_delivery_error(KafkaError(KafkaError._MSG_TIMED_OUT, "lost"), None)

    def counted() -> float:
        return rig.metrics.registry.get_sample_value("loanrec_recovered_after_write_off_total")

    rig.stores[0].recovered = 120.5  # the unit applied recoveries
    rig.process(0, 10, 15)
    assert rig.checkpoint.commit() is False and counted() == 0.0  # aborted: not final
    rig.stores[0].recovered = 120.5  # the redo applies them again
    rig.process(0, 10, 15)
    rig.stores[1].recovered = 30.0
    rig.process(1, 3, 4)
    assert rig.checkpoint.commit() and counted() == 150.5
    rig.process(0, 15, 16)
    assert rig.checkpoint.commit() and counted() == 150.5  # nothing new: nothing added


def test_a_failed_abort_replaces_the_producer_and_the_scorer_carries_on() -> None:
    rig = Rig(ExactlyOnce)
    old = rig.producers[0]
    broken = failure(KafkaError.INVALID_TXN_STATE, fatal=True)
    old.fail["commit_transaction"] = [failure(KafkaError._STATE, abort=True)]
    old.fail["abort_transaction"] = [broken]
    # The dying producer's error_cb reported the same error; it must not stop the loop.
    rig.errors.on_client_error(broken.args[0])
    assert rig.errors.fatal
    rig.process(0, 10, 15)
    assert rig.checkpoint.commit() is False
    assert len(rig.producers) == 2
    new = rig.producers[1]
    assert rig.checkpoint.producer is new
    assert new.methods() == ["init_transactions"]  # which aborts the old one's on the broker
    assert rig.stores[0].rollbacks == 1 and rig.consumer.seeks == [("ev", 0, 10)]
    assert rig.errors.fatal is None
    rig.errors.raise_if_fatal()
    rig.process(0, 10, 15)  # the replay goes through the new producer
    assert rig.checkpoint.commit()
    assert new.methods()[-1] == "commit_transaction"
    assert old.methods()[-1] == "abort_transaction"  # never used again


def test_an_unrelated_fatal_error_survives_the_producer_replacement() -> None:
    rig = Rig(ExactlyOnce)
    rig.producers[0].fail["commit_transaction"] = [failure(KafkaError._STATE, abort=True)]
    rig.producers[0].fail["abort_transaction"] = [failure(KafkaError.INVALID_TXN_STATE, fatal=True)]
    rig.errors.fatal = "fatal consumer error: something else"
    rig.process(0, 10, 15)
    assert rig.checkpoint.commit() is False
    with pytest.raises(FatalError, match="something else"):
        rig.errors.raise_if_fatal()


def test_a_fenced_abort_is_fatal_and_does_not_replace_the_producer() -> None:
    rig = Rig(ExactlyOnce)
    rig.producers[0].fail["commit_transaction"] = [failure(KafkaError._STATE, abort=True)]
    rig.producers[0].fail["abort_transaction"] = [failure(KafkaError.PRODUCER_FENCED, fatal=True)]
    rig.process(0, 10, 15)
    with pytest.raises(
        FatalError,
        match=r"fenced during abort_transaction: another scorer "
        r"uses transactional.id app-t",
    ):
        rig.checkpoint.commit()
    assert len(rig.producers) == 1


@pytest.mark.parametrize("step", ["send_offsets_to_transaction", "commit_transaction"])
def test_fencing_while_committing_is_fatal_and_commits_no_state(step: str) -> None:
    rig = Rig(ExactlyOnce)
    rig.producers[0].fail[step] = [failure(KafkaError._FENCED, fatal=True)]
    rig.process(0, 10, 15)
    with pytest.raises(FatalError, match=f"fenced during {step}: .*--instance-id"):
        rig.checkpoint.commit()
    assert rig.stores[0].commits == 0  # the broker aborts; the next owner restores
    assert "abort_transaction" not in rig.producers[0].methods()


def test_retriable_errors_are_retried_with_backoff_until_they_pass() -> None:
    rig = Rig(ExactlyOnce)
    retriable = failure(KafkaError._TIMED_OUT, retriable=True)
    rig.producers[0].fail["commit_transaction"] = [retriable, retriable]
    rig.process(0, 10, 15)
    assert rig.checkpoint.commit()
    assert rig.producers[0].methods().count("commit_transaction") == 3
    assert rig.stores[0].commits == 1


@pytest.mark.parametrize("kind", [ExactlyOnce, AtLeastOnce])
def test_an_outage_is_ridden_out_with_capped_exponential_backoff(kind) -> None:
    rig = Rig(kind, patience_s=60)
    timeout = failure(KafkaError._TIMED_OUT, retriable=True)
    rig.producers[0].fail["commit_transaction"] = [timeout] * 8
    rig.consumer.fail_commit = [timeout] * 8
    seen: list[tuple[bool, str, float]] = []
    rig.clock.on_sleep = lambda: seen.append((*rig.health.readiness(), rig.stalled_gauge()))
    rig.process(0, 10, 15)
    assert rig.checkpoint.commit()  # the same commit, resumed: nothing rolled back or redone
    assert rig.clock.sleeps == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert rig.stores[0].commits == 1 and rig.stores[0].rollbacks == 0
    assert rig.consumer.seeks == [] and rig.transactions("abort") == 0
    ready, why, _ = seen[0]
    assert not ready and why.startswith("stalled for") and "_TIMED_OUT" in why
    assert all(not ready for ready, _, _ in seen)
    assert rig.health.readiness() == (True, "ready") and rig.stalled_gauge() == 0.0
    assert rig.health.stalled_since is None
    rig.process(0, 15, 20)  # the next stall starts from the first backoff again
    rig.producers[0].fail["commit_transaction"] = [timeout]
    rig.consumer.fail_commit = [timeout]
    assert rig.checkpoint.commit() and rig.clock.sleeps[-1] == 0.1


def test_the_stall_gauge_counts_seconds_since_the_first_failure() -> None:
    rig = Rig(ExactlyOnce)
    timeout = failure(KafkaError._TIMED_OUT, retriable=True)
    rig.producers[0].fail["commit_transaction"] = [timeout, timeout]
    gauges: list[float] = []
    rig.clock.on_sleep = lambda: gauges.append(rig.stalled_gauge())
    rig.health.stalled_since = None
    rig.process(0, 10, 15)
    assert rig.checkpoint.commit()
    assert len(gauges) == 2 and all(g >= 0.0 for g in gauges)
    rig.health.stall("commit_transaction", "why")
    rig.health.stalled_since -= 42  # as if stalled 42 s ago
    assert 42 <= rig.stalled_gauge() < 60


@pytest.mark.parametrize(
    "code",
    [
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError._TRANSPORT,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError._ALL_BROKERS_DOWN,
    ],
)
def test_outage_errors_are_waited_out_even_if_not_flagged_retriable(code: int) -> None:
    rig = Rig(ExactlyOnce)
    rig.producers[0].fail["send_offsets_to_transaction"] = [failure(code)] * 3
    rig.process(0, 10, 15)
    assert rig.checkpoint.commit()
    assert rig.producers[0].methods().count("send_offsets_to_transaction") == 4
    assert len(rig.clock.sleeps) == 3


@pytest.mark.parametrize("kind", [ExactlyOnce, AtLeastOnce])
def test_an_outage_longer_than_the_patience_exits_naming_the_outage_and_the_setting(kind) -> None:
    rig = Rig(kind, patience_s=12)
    lasting = failure(KafkaError._TIMED_OUT, retriable=True)
    rig.producers[0].fail["commit_transaction"] = [lasting] * 1000
    rig.consumer.fail_commit = [lasting] * 1000
    rig.process(0, 10, 15)
    step = "commit_transaction" if kind is ExactlyOnce else "commit offsets"
    with pytest.raises(FatalError) as raised:
        rig.checkpoint.commit()
    message = str(raised.value)
    assert isinstance(raised.value, OutageError)  # a FatalError: the CLI exits 1
    assert message.startswith(f"Kafka outage: {step} has failed since ")
    assert "gave up after the outage patience of 12 s" in message
    assert "--outage-patience-s / LOANREC_OUTAGE_PATIENCE_S" in message and "_TIMED_OUT" in message
    assert 12 < sum(rig.clock.sleeps) <= 12 + 5.0  # gave up at the first retry past it
    assert rig.stores[0].commits == 0


def test_a_non_retriable_error_still_fails_fast() -> None:
    rig = Rig(ExactlyOnce)
    rig.producers[0].fail["commit_transaction"] = [failure(KafkaError.INVALID_CONFIG)]
    rig.process(0, 10, 15)
    with pytest.raises(FatalError, match="fatal Kafka error during commit_transaction"):
        rig.checkpoint.commit()
    assert rig.clock.sleeps == []
    alo = Rig(AtLeastOnce)
    alo.consumer.fail_commit = [failure(KafkaError.INVALID_CONFIG)]
    alo.process(0, 10, 15)
    assert alo.checkpoint.commit() is False  # at least once: rewind and redo
    assert alo.stores[0].rollbacks == 1 and alo.consumer.seeks == [("ev", 0, 10)]


def test_aborts_during_an_outage_redo_the_batch_until_a_commit_resumes() -> None:
    rig = Rig(ExactlyOnce, patience_s=30)
    abortable = failure(KafkaError.NOT_ENOUGH_REPLICAS, abort=True)
    rig.producers[0].fail["commit_transaction"] = [abortable, abortable]
    for _ in range(2):  # aborted, rolled back, rewound; still stalled; backing off
        rig.process(0, 10, 15)
        assert rig.checkpoint.commit() is False
        assert rig.health.readiness()[0] is False
    assert rig.clock.sleeps == [0.1, 0.2]
    assert rig.stores[0].rollbacks == 2 and rig.consumer.seeks == [("ev", 0, 10)] * 2
    rig.process(0, 10, 15)  # the redo commits: the brokers are back
    assert rig.checkpoint.commit()
    assert rig.health.readiness() == (True, "ready") and rig.transactions("abort") == 2


def test_aborts_past_the_patience_are_fatal() -> None:
    rig = Rig(ExactlyOnce, patience_s=5)
    rig.producers[0].fail["commit_transaction"] = [
        failure(KafkaError.NOT_ENOUGH_REPLICAS, abort=True)
    ] * 100
    with pytest.raises(FatalError, match="Kafka outage: commit has failed since"):
        for _ in range(100):
            rig.process(0, 10, 15)
            assert rig.checkpoint.commit() is False


def test_an_abort_that_times_out_is_retried_not_replaced() -> None:
    rig = Rig(ExactlyOnce)
    timeout = failure(KafkaError._TIMED_OUT, retriable=True)
    rig.producers[0].fail["commit_transaction"] = [failure(KafkaError._STATE, abort=True)]
    rig.producers[0].fail["abort_transaction"] = [timeout, timeout]
    rig.process(0, 10, 15)
    assert rig.checkpoint.commit() is False
    assert rig.producers[0].methods().count("abort_transaction") == 3
    assert len(rig.producers) == 1 and rig.stores[0].rollbacks == 1


def test_a_replacement_producer_waits_out_the_outage_to_initialise() -> None:
    def later(producer: FakeProducer) -> None:
        if producer.name == "producer-1":
            producer.fail["init_transactions"] = [failure(KafkaError._TIMED_OUT)] * 2

    rig = Rig(ExactlyOnce, prepare=later)
    rig.producers[0].fail["commit_transaction"] = [failure(KafkaError._STATE, abort=True)]
    rig.producers[0].fail["abort_transaction"] = [failure(KafkaError.INVALID_TXN_STATE, fatal=True)]
    rig.process(0, 10, 15)
    assert rig.checkpoint.commit() is False
    assert rig.producers[1].methods() == ["init_transactions"] * 3
    assert rig.checkpoint.producer is rig.producers[1]


def test_at_least_once_waits_for_queued_outputs_instead_of_producing_them_again() -> None:
    rig = Rig(AtLeastOnce)
    rig.producers[0].flush_left = [7, 3]
    rig.process(0, 10, 15)
    assert rig.checkpoint.commit()
    assert rig.producers[0].methods().count("flush") == 4  # 7, 3, 0 left; then the changelog
    assert rig.clock.sleeps == [0.1, 0.2] and rig.consumer.seeks == []
    assert rig.stores[0].commits == 1 and rig.health.readiness() == (True, "ready")


def test_cannot_initialise_transactions_is_fatal_and_names_the_transactional_id() -> None:
    def refuse(producer: FakeProducer) -> None:
        producer.fail["init_transactions"] = [
            failure(KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
        ]

    with pytest.raises(
        FatalError,
        match=r"cannot initialise transactions for transactional\.id "
        r"app-t",
    ):
        Rig(ExactlyOnce, prepare=refuse)


def test_at_least_once_flushes_then_commits_offsets_without_transactions() -> None:
    rig = Rig(AtLeastOnce)
    producer = rig.producers[0]
    rig.process(0, 10, 15)
    rig.checkpoint.produce(TOPICS.strategy_changes, b"L1", b"change")
    assert rig.checkpoint.commit()
    # The outputs are acknowledged before the changelog is written (ARCHITECTURE.md §8: a
    # checkpoint in the changelog never reflects an output that could still be lost).
    assert [(m, a[0] if m == "produce" else None) for m, a in producer.calls] == [
        ("produce", TOPICS.strategy_changes),
        ("flush", None),
        ("produce", TOPICS.changelog),
        ("produce", TOPICS.changelog),
        ("flush", None),
    ]
    ((offsets, asynchronous),) = rig.consumer.commits
    assert [(tp.partition, tp.offset) for tp in offsets] == [(0, 15)] and asynchronous is False
    assert rig.stores[0].commits == 1 and rig.transactions("commit") == 1


def test_at_least_once_writes_no_changelog_when_an_output_was_not_delivered() -> None:
    rig = Rig(AtLeastOnce)
    producer = rig.producers[0]
    rig.process(0, 10, 15)
    rig.checkpoint.produce(TOPICS.strategy_changes, b"L1", b"change")
    rig.errors.on_delivery_error(KafkaError(KafkaError._MSG_TIMED_OUT, "lost"), None)
    assert rig.checkpoint.commit() is False  # rolled back and rewound, to be redone
    assert [a[0] for m, a in producer.calls if m == "produce"] == [TOPICS.strategy_changes]
    assert rig.stores[0].input_offsets == [] and rig.consumer.commits == []
    assert rig.consumer.seeks == [("ev", 0, 10)] and rig.stores[0].rollbacks == 1


def test_at_least_once_rewinds_when_outputs_are_not_delivered() -> None:
    rig = Rig(AtLeastOnce)
    rig.producers[0].unflushed = 3
    rig.errors.on_delivery_error(KafkaError(KafkaError._MSG_TIMED_OUT, "lost"), None)
    rig.process(0, 10, 15)
    assert rig.checkpoint.commit() is False
    assert rig.consumer.commits == [] and rig.stores[0].rollbacks == 1
    assert rig.consumer.seeks == [("ev", 0, 10)]
    rig.producers[0].unflushed = 0
    rig.errors.on_delivery_error(KafkaError(KafkaError._MSG_TIMED_OUT, "lost"), None)
    rig.process(0, 10, 15)
    assert rig.checkpoint.commit() is False  # a failed delivery fails the commit once
    assert rig.errors.delivery_failed is None
    rig.process(0, 10, 15)
    assert rig.checkpoint.commit()


def test_produce_waits_out_a_full_queue_and_drops_an_oversized_dead_letters_bytes() -> None:
    rig = Rig(ExactlyOnce)
    producer = rig.producers[0]
    producer.fail["produce"] = [BufferError(), None, failure(KafkaError.MSG_SIZE_TOO_LARGE)]
    rig.checkpoint.produce("ch", b"L1", b"change")
    rig.checkpoint.produce("dlq", b"L2", b"x" * 10, headers=[("error.reason", b"bad")])
    produced = [args for method, args in producer.calls if method == "produce"]
    assert produced[1] == ("ch", b"L1", b"change", -1, None)  # retried after a poll
    assert producer.calls[2][0] == "poll"
    assert produced[-1] == (
        "dlq",
        b"L2",
        None,
        -1,
        [("error.reason", b"bad"), ("error.value_dropped", b"10")],
    )


def test_a_produce_failure_reports_the_producers_root_cause() -> None:
    rig = Rig(ExactlyOnce)
    producer = rig.producers[0]
    producer.fail["produce"] = [failure(KafkaError._FATAL, fatal=True)]
    producer.fail["poll"] = [failure(KafkaError._FENCED, fatal=True)]
    with pytest.raises(FatalError, match="fenced during produce"):
        rig.checkpoint.produce("ch", b"L1", b"change")


def test_forgetting_a_partition_drops_it_from_the_next_commit() -> None:
    rig = Rig(ExactlyOnce)
    rig.process(0, 10, 15)
    rig.process(1, 3, 4)
    assert rig.checkpoint.forget(1) == 4 and rig.checkpoint.forget(1) is None
    assert rig.checkpoint.commit()
    ((offsets, _, _),) = [
        a for m, a in rig.producers[0].calls if m == "send_offsets_to_transaction"
    ]
    assert [tp.partition for tp in offsets] == [0] and rig.stores[1].commits == 0


def test_close_flushes_unless_a_fatal_error_makes_delivery_impossible() -> None:
    healthy, failed = Rig(ExactlyOnce), Rig(ExactlyOnce)
    failed.errors.on_client_error(KafkaError(KafkaError._FENCED, "fenced", fatal=True))
    healthy.checkpoint.close()
    failed.checkpoint.close()
    assert healthy.producers[0].methods()[-1] == "flush"
    assert "flush" not in failed.producers[0].methods()
    assert healthy.checkpoint.producer is None and failed.checkpoint.producer is None


def test_every_guarantee_has_a_checkpoint_and_errors_share_one_root() -> None:
    from consumer.checkpoint import CHECKPOINTS

    assert set(CHECKPOINTS) == set(Guarantee)
    assert issubclass(FatalError, ConsumerError) and issubclass(ConsumerError, LoanRecoveryError)


def test_a_static_member_fenced_by_its_twin_is_fatal_and_names_the_instance_id() -> None:
    from consumer.checkpoint import ClientErrors

    errors = ClientErrors("app-t")
    fenced = KafkaError(
        KafkaError._FATAL, "Static consumer fenced by other consumer with same group.instance.id"
    )
    errors.on_message_error(fenced)
    with pytest.raises(FatalError, match=r"fenced during consume: .*--instance-id"):
        errors.raise_if_fatal()


class BlockingProducer(FakeProducer):
    """``send_offsets_to_transaction`` blocks past its timeout until ``release`` is set, as
    librdkafka's does while the group coordinator is down (confluentinc/librdkafka#5456)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.release = threading.Event()
        self.blocking = False

    def send_offsets_to_transaction(self, offsets: list, group: object, timeout: float) -> None:
        super().send_offsets_to_transaction(offsets, group, timeout)
        if self.blocking:
            assert self.release.wait(10)


def blocking_rig(patience_s: float = 30.0) -> tuple[Rig, BlockingProducer]:
    rig = Rig(ExactlyOnce, patience_s=patience_s)
    producer = BlockingProducer("blocking")
    rig.checkpoint.producer = producer  # type: ignore[assignment]
    rig.checkpoint.clock = time.monotonic  # the blocked call is waited for in real time
    rig.checkpoint.overdue_grace_s = 0.05
    producer.blocking = True
    return rig, producer


def test_a_call_blocked_past_its_timeout_is_a_stall_and_its_result_is_used_when_it_returns() -> (
    None
):
    rig, producer = blocking_rig()
    seen: list[tuple[bool, str]] = []

    def watch() -> None:  # what /readyz says while the loop's call is blocked
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and rig.health.stalled_since is None:
            time.sleep(0.01)
        seen.append(rig.health.readiness())
        producer.release.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    rig.process(0, 10, 15)
    assert rig.checkpoint.commit()  # the call returned: the same commit completes
    watcher.join()
    ((ready, why),) = seen
    assert not ready and "send_offsets_to_transaction" in why and "blocked past its" in why
    assert rig.health.readiness() == (True, "ready") and rig.stores[0].commits == 1
    assert producer.methods()[-1] == "commit_transaction"


def stuck_rig(step: str) -> tuple[Rig, BlockingProducer]:
    """``step`` of the first producer blocks until released (librdkafka#5511: it may never
    return), and a call is taken as stuck 0.3 s after it began."""
    rig = Rig(ExactlyOnce, patience_s=30)
    rig.config.transaction_timeout_ms = 300
    stuck = StuckProducer("stuck", step)
    rig.checkpoint.producer = stuck  # type: ignore[assignment]
    rig.checkpoint.clock = time.monotonic
    rig.checkpoint.overdue_grace_s = 0.05
    return rig, stuck


class StuckProducer(FakeProducer):
    """``step`` blocks until ``release`` is set (then it fails fenced, as a late call of a
    producer whose successor bumped the epoch would)."""

    def __init__(self, name: str, step: str) -> None:
        super().__init__(name)
        self.step, self.release, self.returned = step, threading.Event(), threading.Event()

    def _call(self, method: str, *args: object) -> None:
        super()._call(method, *args)
        if method == self.step:
            try:
                assert self.release.wait(10)
                raise failure(KafkaError.PRODUCER_FENCED, fatal=True)
            finally:
                self.returned.set()


@pytest.mark.parametrize("step", ["send_offsets_to_transaction", "commit_transaction"])
def test_a_commit_call_stuck_past_the_transaction_timeout_replaces_the_producer(
    step: str,
) -> None:
    rig, stuck = stuck_rig(step)
    rig.consumer.committed_offsets = {0: 10}  # the last commit: the stuck unit did not commit
    rig.process(0, 10, 15)
    started = time.monotonic()
    assert rig.checkpoint.commit() is False
    assert time.monotonic() - started < 3
    # A new producer with the same transactional.id: its init_transactions fenced the stuck
    # one and ended its transaction, which the committed offsets show aborted.
    assert len(rig.producers) == 2 and rig.checkpoint.producer is rig.producers[1]
    new = rig.producers[1]
    assert new.methods() == ["init_transactions"]
    assert rig.consumer.committed_asked == [[("ev", 0)]]
    assert rig.stores[0].rollbacks == 1 and rig.stores[0].commits == 0
    assert rig.consumer.seeks == [("ev", 0, 10)]
    assert rig.health.stalled_since is not None  # stalled until a commit goes through
    assert rig.metrics.producer_replacements.labels(reason="stuck_call")._value.get() == 1
    rig.process(0, 10, 15)  # the redo, on the new producer
    assert rig.checkpoint.commit()
    assert new.methods()[-1] == "commit_transaction" and rig.stores[0].commits == 1
    assert rig.health.readiness() == (True, "ready")
    # The stuck call returning late (fenced) reaches nobody: not the errors, not the loop.
    stuck.release.set()
    assert stuck.returned.wait(5)
    time.sleep(0.1)
    rig.errors.raise_if_fatal()
    assert stuck.methods()[-1] == step  # never used again
    rig.checkpoint.close()
    assert new.methods()[-1] == "flush" and "flush" not in stuck.methods()


def test_a_stuck_commit_transaction_that_committed_is_not_redone() -> None:
    """The EndTxn of the stuck commit_transaction reached the coordinator, which completed the
    commit without the producer: the group's offsets are the unit's, so it is not redone
    (a redo would duplicate its outputs)."""
    rig, stuck = stuck_rig("commit_transaction")
    rig.consumer.committed_offsets = {0: 15, 1: 4}
    rig.consumer.fail_committed = [failure(KafkaError._TIMED_OUT, retriable=True)]
    rig.process(0, 10, 15)
    rig.process(1, 3, 4)
    assert rig.checkpoint.commit() is True
    assert len(rig.consumer.committed_asked) == 2  # the failed look-up is retried
    assert rig.stores[0].commits == 1 and rig.stores[1].commits == 1
    assert rig.stores[0].rollbacks == 0 and rig.consumer.seeks == []
    assert not rig.checkpoint.open and rig.health.readiness() == (True, "ready")
    assert rig.transactions("commit") == 1
    stuck.release.set()


def test_a_stop_while_the_replacement_waits_for_the_outage_gives_the_unit_up() -> None:
    def later(producer: FakeProducer) -> None:
        if producer.name == "producer-1":
            producer.fail["init_transactions"] = [failure(KafkaError._TIMED_OUT)] * 100

    rig, stuck = stuck_rig("send_offsets_to_transaction")
    rig.prepare = later
    stop = threading.Event()
    rig.checkpoint.stop_requested = stop.is_set
    rig.checkpoint.sleep = lambda _s: stop.set()  # SIGTERM during the first backoff
    rig.process(0, 10, 15)
    assert rig.checkpoint.commit() is False
    assert rig.checkpoint.abandoned and rig.stores[0].commits == 0
    assert rig.stores[0].rollbacks == 1
    assert rig.checkpoint.producer is None  # the new one never initialised; nothing commits
    rig.checkpoint.close()
    stuck.release.set()


def test_a_call_blocked_past_the_patience_is_an_outage_error() -> None:
    rig, producer = blocking_rig(patience_s=0.3)
    rig.process(0, 10, 15)
    started = time.monotonic()
    with pytest.raises(OutageError, match=r"gave up after the outage patience of 0\.3 s"):
        rig.checkpoint.commit()
    assert time.monotonic() - started < 3
    assert rig.stores[0].commits == 0
    rig.checkpoint.close()  # the call still holds the producer: no flush
    assert "flush" not in producer.methods()
    producer.release.set()


def test_a_stop_during_a_blocked_call_gives_the_unit_up_and_nothing_commits() -> None:
    rig, producer = blocking_rig()
    stop = threading.Event()
    rig.checkpoint.stop_requested = stop.is_set
    threading.Timer(0.3, stop.set).start()  # SIGTERM while stalled
    rig.process(0, 10, 15)
    started = time.monotonic()
    assert rig.checkpoint.commit() is False
    assert time.monotonic() - started < 2
    assert rig.checkpoint.abandoned and not rig.checkpoint.open
    assert rig.stores[0].rollbacks == 1 and rig.stores[0].commits == 0
    assert "abort_transaction" not in producer.methods()  # the blocked call holds it
    assert rig.checkpoint.finish("revoke") is True  # nothing open, nothing committed
    rig.process(0, 10, 15)  # a batch after the stop is not committed either
    assert rig.checkpoint.finish("shutdown") is False and rig.stores[0].commits == 0
    rig.checkpoint.close()
    assert "flush" not in producer.methods() and "commit_transaction" not in producer.methods()
    producer.release.set()


@pytest.mark.parametrize("kind", [ExactlyOnce, AtLeastOnce])
def test_a_stop_during_the_backoff_aborts_the_unit_instead_of_waiting_out_the_outage(kind) -> None:
    rig = Rig(kind, patience_s=300)
    lasting = failure(KafkaError._TIMED_OUT, retriable=True)
    rig.producers[0].fail["commit_transaction"] = [lasting] * 1000
    rig.consumer.fail_commit = [lasting] * 1000
    stop = {"now": False}
    rig.checkpoint.stop_requested = lambda: stop["now"]
    rig.clock.on_sleep = lambda: stop.update(now=len(rig.clock.sleeps) >= 3)
    rig.process(0, 10, 15)
    assert rig.checkpoint.commit() is False
    assert len(rig.clock.sleeps) == 3  # acted on at the first check after the signal
    assert rig.checkpoint.abandoned and rig.stores[0].commits == 0
    assert rig.stores[0].rollbacks == 1
    if kind is ExactlyOnce:
        assert rig.producers[0].methods()[-1] == "abort_transaction"
        assert rig.producers[0].calls[-1][1] == (1.0,)  # one short attempt
        assert rig.consumer.commits == []
    calls = len(rig.producers[0].calls)
    rig.checkpoint.close()  # no flush: the outputs of a given-up unit wait for nobody
    assert len(rig.producers[0].calls) == calls


def test_while_stalled_each_retry_gets_a_short_timeout() -> None:
    rig = Rig(ExactlyOnce)
    rig.config.commit_timeout_s = 10.0
    timeout = failure(KafkaError._TIMED_OUT, retriable=True)
    rig.producers[0].fail["commit_transaction"] = [timeout, timeout]
    rig.process(0, 10, 15)
    assert rig.checkpoint.commit()
    timeouts = [args[0] for m, args in rig.producers[0].calls if m == "commit_transaction"]
    assert timeouts == [10.0, 1.0, 1.0]  # a stop is looked at every second, not every ten


def test_a_poll_is_caught_up_only_when_it_took_less_than_a_full_batch() -> None:
    from consumer.app import poll_batch

    calls: list[tuple[int, float]] = []
    fetched = [[1, 2, 3], [], [4], [], []]

    def consume(n: int, timeout: float) -> list[int]:
        calls.append((n, timeout))
        return fetched.pop(0)[:n]

    assert poll_batch(consume, 3, 0.01) == ([1, 2, 3], False)  # a full batch: more may wait
    assert calls == [(3, 0)]  # what was fetched is taken without waiting
    assert poll_batch(consume, 3, 0.01) == ([4], True)  # only an empty queue blocks, briefly
    assert calls[1:] == [(3, 0), (3, 0.01)]
    assert poll_batch(consume, 3, 0.01) == ([], True)


def test_a_trickle_is_gathered_into_a_bigger_batch_for_at_most_the_hold() -> None:
    """Fewer than ``gather`` records wait up to ``hold_s`` for the rest (one blocking call for
    exactly the missing count); a full or an empty poll does not wait, nor a zero hold."""
    from consumer.app import poll_batch

    calls: list[tuple[int, float]] = []
    fetched = [[1, 2], [3, 4, 5], [6], [], [7, 8, 9, 10], [11]]

    def consume(n: int, timeout: float) -> list[int]:
        calls.append((n, timeout))
        return fetched.pop(0)[:n]

    assert poll_batch(consume, 10, 0.01, gather=5, hold_s=0.02) == ([1, 2, 3, 4, 5], True)
    assert calls == [(10, 0), (3, 0.02)]
    assert poll_batch(consume, 10, 0.01, gather=5, hold_s=0.0) == ([6], True)  # due: no hold
    assert poll_batch(consume, 10, 0.01, gather=5, hold_s=0.02) == ([7, 8, 9, 10, 11], True)
    assert calls[3:] == [(10, 0), (10, 0.01), (1, 0.02)]


def test_a_poll_never_holds_past_the_units_due_time() -> None:
    """``until_due``: the hold's bound. Nothing open and the last commit an interval ago: 0 (the
    first batch after an idle spell commits at once); otherwise the time left until the last
    commit's start plus the interval, or the early commit's age if that comes first."""
    rig = Rig(ExactlyOnce)  # commit interval 100 ms
    assert rig.checkpoint.until_due() == 0.0  # no commit yet
    rig.process(0, 10, 15)
    assert rig.checkpoint.commit()
    assert 0.09 < rig.checkpoint.until_due() <= 0.1  # the commit just began
    rig.checkpoint.last_commit_started = time.monotonic() - 0.03
    assert 0.06 < rig.checkpoint.until_due() <= 0.07
    rig.checkpoint.config = dataclasses.replace(rig.config, caught_up_commit_ms=20)
    rig.process(0, 15, 20)  # a unit opens now: the early commit comes first
    assert 0.01 < rig.checkpoint.until_due() <= 0.02
    rig.checkpoint.last_commit_started = time.monotonic() - 0.5
    assert rig.checkpoint.until_due() == 0.0


# -- commit in the background ---------------------------------------------------------------------
class GatedProducer(FakeProducer):
    """``commit_transaction`` waits for ``gate`` (a commit the broker takes its time over)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.gate = threading.Event()

    def commit_transaction(self, timeout: float) -> None:
        super().commit_transaction(timeout)
        assert self.gate.wait(10)


def background_rig(gated: bool = True, timeout_s: float = 5.0) -> tuple[Rig, FakeProducer]:
    rig = Rig(ExactlyOnce)
    rig.checkpoint.config = dataclasses.replace(rig.config, commit_timeout_s=timeout_s)
    producer = GatedProducer("gated") if gated else FakeProducer("fast")
    rig.checkpoint.producer = producer  # type: ignore[assignment]
    return rig, producer


def committing_and_open(
    gated: bool = True, timeout_s: float = 5.0
) -> tuple[Rig, FakeProducer, Checkpoint]:
    """A unit (offsets 10-15 of partition 0) committing in the background, and the next one
    (15-20) open behind it."""
    rig, producer = background_rig(gated, timeout_s)
    checkpoint = rig.checkpoint
    rig.process(0, 10, 15)
    assert checkpoint.commit_in_background()
    rig.process(0, 15, 20)
    return rig, producer, checkpoint


def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.002)
    return condition()


def sent_offsets(producer: FakeProducer) -> list[list[tuple[int, int]]]:
    return [
        [(tp.partition, tp.offset) for tp in args[0]]
        for method, args in producer.calls
        if method == "send_offsets_to_transaction"
    ]


def produced(producer: FakeProducer, topic: str) -> list[bytes]:
    return [args[2] for method, args in producer.calls if method == "produce" and args[0] == topic]


def commit_count(rig: Rig) -> float:
    value = rig.metrics.registry.get_sample_value("loanrec_commit_seconds_count")
    assert value is not None
    return value


def test_a_background_commit_holds_the_next_units_outputs_until_it_returns() -> None:
    rig, producer = background_rig()
    checkpoint = rig.checkpoint
    rig.process(0, 10, 15)
    checkpoint.produce("ch", b"L1", b"change-1")
    assert checkpoint.commit_in_background()  # returns while commit_transaction runs
    assert eventually(lambda: "commit_transaction" in producer.methods())
    assert checkpoint.in_flight is not None and not checkpoint.open
    rig.process(0, 15, 20)  # the next unit, processed meanwhile
    checkpoint.produce("ch", b"L2", b"change-2")
    checkpoint.poll()
    assert checkpoint.settle(wait=False)  # still running: nothing changes
    assert produced(producer, "ch") == [b"change-1"]  # held: no record enters a committing txn
    assert producer.methods().count("begin_transaction") == 1 and "poll" not in producer.methods()
    assert rig.stores[0].log == ["seal"] and rig.transactions("commit") == 0

    producer.gate.set()  # type: ignore[attr-defined]
    assert eventually(lambda: checkpoint.in_flight is not None and checkpoint.in_flight.done())
    assert checkpoint.settle(wait=False)
    assert checkpoint.in_flight is None and checkpoint.open and checkpoint.begun
    assert producer.methods()[-2:] == ["begin_transaction", "produce"]  # its txn, its output
    assert produced(producer, "ch") == [b"change-1", b"change-2"]
    assert rig.stores[0].log == ["seal", "commit_sealed"] and rig.transactions("commit") == 1

    assert checkpoint.commit()  # the next unit, on the loop's thread
    assert sent_offsets(producer) == [[(0, 15)], [(0, 20)]]
    assert rig.stores[0].log == ["seal", "commit_sealed", "commit"]
    assert rig.transactions("commit") == 2 and commit_count(rig) == 2
    assert rig.consumer.seeks == []


def test_a_background_commit_that_fails_rolls_back_the_next_unit_then_aborts_its_own() -> None:
    rig, producer = background_rig(gated=False)
    producer.fail["commit_transaction"] = [failure(KafkaError._STATE, abort=True)]
    checkpoint = rig.checkpoint
    rig.process(0, 10, 15)
    rig.process(1, 3, 4)
    assert checkpoint.commit_in_background()
    rig.process(0, 15, 20)
    checkpoint.produce("ch", b"L2", b"held")
    assert checkpoint.settle() is False
    # The next unit first (back to the committing unit's end), then the committing unit.
    assert rig.stores[0].log == ["seal", "rollback", "unseal", "rollback"]
    assert rig.stores[1].log == ["seal", "unseal", "rollback"]
    assert rig.consumer.seeks == [("ev", 0, 15), ("ev", 0, 10), ("ev", 1, 3)]
    assert checkpoint.positions == {0: 10, 1: 3} and not checkpoint.open
    assert "abort_transaction" in producer.methods() and b"held" not in produced(producer, "ch")
    assert rig.transactions("abort") == 1 and rig.transactions("commit") == 0
    rig.process(0, 10, 20)  # the redo: one unit, committed
    assert checkpoint.commit() and sent_offsets(producer)[-1] == [(0, 20)]


@pytest.mark.parametrize("step", ["send_offsets_to_transaction", "commit_transaction"])
def test_a_background_commit_with_a_retriable_error_is_retried_on_the_loop(step: str) -> None:
    rig, producer = background_rig(gated=False)
    producer.fail[step] = [failure(KafkaError._TIMED_OUT, retriable=True)]
    checkpoint = rig.checkpoint
    rig.process(0, 10, 15)
    assert checkpoint.commit_in_background()
    rig.process(0, 15, 20)
    assert checkpoint.settle() is True  # the committing unit went through on a retry
    calls = [m for m in producer.methods() if m in ("send_offsets_to_transaction", step)]
    # A failed send_offsets skips its commit job: commit_transaction runs once, after it.
    assert producer.methods()[-1] == "commit_transaction"
    assert producer.methods().count("commit_transaction") == (
        2 if step == "commit_transaction" else 1
    )
    assert calls.count(step) == 2
    assert rig.stores[0].log == ["seal", "rollback", "unseal", "commit"]
    assert rig.consumer.seeks == [("ev", 0, 15)]  # only the next unit is redone
    assert checkpoint.positions == {0: 15} and not checkpoint.open
    assert rig.transactions("commit") == 1 and rig.health.readiness() == (True, "ready")


def test_a_background_commit_slower_than_its_timeout_finishes_on_the_loop() -> None:
    rig, producer, checkpoint = committing_and_open(timeout_s=0.05)
    checkpoint.clock = time.monotonic  # the slow call is waited for in real time

    def release_once_reopened() -> None:
        eventually(lambda: "unseal" in rig.stores[0].log)
        producer.gate.set()  # type: ignore[attr-defined]

    releaser = threading.Thread(target=release_once_reopened)
    releaser.start()
    assert checkpoint.settle() is True  # the same call's result is used when it returns
    releaser.join()
    assert producer.methods().count("commit_transaction") == 1
    assert rig.stores[0].log == ["seal", "rollback", "unseal", "commit"]
    assert rig.consumer.seeks == [("ev", 0, 15)] and checkpoint.positions == {0: 15}


def test_a_revoke_or_a_loss_during_a_background_commit_settles_it_first() -> None:
    rig, producer, checkpoint = committing_and_open()
    checkpoint.produce("ch", b"L2", b"change-2")
    threading.Timer(0.05, producer.gate.set).start()  # type: ignore[attr-defined]
    assert checkpoint.finish("revoke")  # both units commit, in order
    assert sent_offsets(producer) == [[(0, 15)], [(0, 20)]]
    assert produced(producer, "ch") == [b"change-2"]
    assert not checkpoint.unsettled

    rig, producer, checkpoint = committing_and_open()
    assert checkpoint.in_flight is not None and checkpoint.open and not checkpoint.begun
    threading.Timer(0.05, producer.gate.set).start()  # type: ignore[attr-defined]
    checkpoint.abort("partitions lost")  # the unit committing lands; the open one aborts
    assert sent_offsets(producer) == [[(0, 15)]]
    assert rig.stores[0].log == ["seal", "commit_sealed", "rollback"]
    assert producer.methods()[-2:] == ["begin_transaction", "abort_transaction"]
    assert rig.consumer.seeks == [("ev", 0, 15)] and not checkpoint.unsettled


@pytest.mark.parametrize("how", ["at-least-once", "switched off"])
def test_without_background_commits_the_loop_waits_for_every_commit(how: str) -> None:
    rig = Rig(AtLeastOnce if how == "at-least-once" else ExactlyOnce)
    if how == "switched off":
        rig.checkpoint.config = dataclasses.replace(rig.config, background_commit=False)
    rig.process(0, 10, 15)
    assert rig.checkpoint.commit_in_background()
    assert rig.checkpoint.in_flight is None and rig.stores[0].log == ["commit"]
    assert rig.transactions("commit") == 1


def test_a_due_unit_stays_open_while_the_previous_commit_runs_and_commits_once_it_returns() -> None:
    rig, producer, checkpoint = committing_and_open()
    assert checkpoint.commit_in_background()  # due, but the first commit runs: no waiting
    assert checkpoint.in_flight is not None and checkpoint.open
    rig.process(0, 20, 25)  # the loop keeps scoring into the same open unit
    assert eventually(lambda: "commit_transaction" in producer.methods())
    assert sent_offsets(producer) == [[(0, 15)]]
    producer.gate.set()  # type: ignore[attr-defined]
    assert eventually(lambda: checkpoint.in_flight is not None and checkpoint.in_flight.done())
    assert checkpoint.settle(wait=False) and checkpoint.begun
    assert checkpoint.commit_in_background()  # now it starts, covering both batches
    assert eventually(lambda: checkpoint.in_flight is not None and checkpoint.in_flight.done())
    assert checkpoint.settle(wait=False)
    assert sent_offsets(producer) == [[(0, 15)], [(0, 25)]]
    assert rig.stores[0].log == ["seal", "commit_sealed", "seal", "commit_sealed"]


def test_a_due_unit_waits_for_a_commit_in_flight_past_its_timeout() -> None:
    rig, producer, checkpoint = committing_and_open(timeout_s=0.05)
    checkpoint.clock = time.monotonic
    time.sleep(0.06)  # the commit in flight is now older than its timeout
    threading.Timer(0.05, producer.gate.set).start()  # type: ignore[attr-defined]
    assert checkpoint.commit_in_background()  # settles it (reopened, finished on the loop)
    assert rig.stores[0].log[:4] == ["seal", "rollback", "unseal", "commit"]
    assert rig.consumer.seeks == [("ev", 0, 15)]
