"""Checkpointing without a broker: small fakes stand in for librdkafka's producer and consumer,
so every path of ``consumer.checkpoint`` -- lazy begin, one transaction per commit, abort +
rollback + rewind, producer replacement after a failed abort, fencing, retries, and the
at-least-once variant -- is checked exactly and fast. (tests/integration/test_stream_abort.py and
tests/integration/test_stream_eos.py check the same guarantees end to end on a real broker.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from consumer.checkpoint import AtLeastOnce, Checkpoint, ClientErrors, ExactlyOnce
from consumer.config import Guarantee, ServeConfig
from consumer.errors import ConsumerError, FatalError
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
        return self.unflushed

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

    def consumer_group_metadata(self) -> object:
        return GROUP

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def commit(self, offsets: list, asynchronous: bool) -> None:
        self.commits.append((offsets, asynchronous))
        if self.fail_commit:
            raise self.fail_commit.pop(0)


class FakeStore:
    """What a checkpoint uses of a ``PartitionStore``."""

    def __init__(self, changelog: list[tuple[bytes, bytes | None]]) -> None:
        self.changelog = changelog
        self.commits = self.rollbacks = 0

    def changelog_records(self, now_ms: int) -> list[tuple[bytes, bytes | None]]:
        return self.changelog

    def commit(self) -> None:
        self.commits += 1

    def rollback(self) -> None:
        self.rollbacks += 1


class Rig:
    """A checkpoint with its fakes; ``producers`` are all the producers its factory made."""

    def __init__(
        self, kind: type[Checkpoint], prepare: Callable[[FakeProducer], None] = lambda p: None
    ) -> None:
        self.config = ServeConfig(
            "b:9092", Path("m"), topics=TOPICS, instance_id="t", commit_timeout_s=0.05
        )
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
        )  # type: ignore[arg-type]

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


@pytest.mark.parametrize(("kind", "fatal"), [(ExactlyOnce, True), (AtLeastOnce, False)])
def test_a_lasting_error_is_fatal_exactly_once_and_a_rewind_at_least_once(kind, fatal) -> None:
    rig = Rig(kind)
    lasting = failure(KafkaError._TIMED_OUT, retriable=True)
    rig.producers[0].fail["commit_transaction"] = [lasting] * 1000
    rig.consumer.fail_commit = [lasting] * 1000  # retried past the deadline (3 x 0.05 s)
    rig.process(0, 10, 15)
    if fatal:
        with pytest.raises(FatalError, match="fatal Kafka error during commit_transaction"):
            rig.checkpoint.commit()
    else:
        assert rig.checkpoint.commit() is False
        assert rig.stores[0].rollbacks == 1 and rig.consumer.seeks == [("ev", 0, 10)]


def test_cannot_initialise_transactions_is_fatal_and_names_the_transactional_id() -> None:
    def refuse(producer: FakeProducer) -> None:
        producer.fail["init_transactions"] = [failure(KafkaError._TIMED_OUT)]

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
    assert rig.checkpoint.commit()
    assert producer.methods() == ["produce", "produce", "flush"]  # changelog, then flush
    ((offsets, asynchronous),) = rig.consumer.commits
    assert [(tp.partition, tp.offset) for tp in offsets] == [(0, 15)] and asynchronous is False
    assert rig.stores[0].commits == 1 and rig.transactions("commit") == 1


def test_at_least_once_rewinds_when_outputs_are_not_acknowledged() -> None:
    rig = Rig(AtLeastOnce)
    rig.producers[0].unflushed = 3
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
