"""Assignment and recovery (``consumer.recovery``) with fake clients: partitions are paused
until restored, a revoke commits before the partitions go (and parks them), a loss aborts and
commits nothing, and a parked partition nobody moved on comes back without a restore.
(tests/integration/test_stream_eos.py checks rebalances end to end on a real broker.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, TopicPartition
from test_consumer_checkpoint import TOPICS, FakeConsumer, FakeProducer

from consumer.checkpoint import ClientErrors, ExactlyOnce
from consumer.config import ServeConfig
from consumer.errors import FatalError
from consumer.health import HealthState
from consumer.metrics import ScorerMetrics
from consumer.recovery import ChangelogRestorer, Recovery

EV = TOPICS.events


class FakeGroupConsumer(FakeConsumer):
    """The scorer's group consumer: what recovery calls on it."""

    def __init__(self) -> None:
        super().__init__()
        self.paused: set[int] = set()
        self.resumed: list[int] = []
        self.group_offsets: dict[int, int] = {}  # what committed() answers

    def subscribe(self, topics: list[str], **callbacks: object) -> None:
        self.topics, self.callbacks = topics, callbacks

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = [tp.partition for tp in partitions]

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {tp.partition for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.resumed += [tp.partition for tp in partitions]
        self.paused -= {tp.partition for tp in partitions}

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list:
        return [
            TopicPartition(tp.topic, tp.partition, self.group_offsets.get(tp.partition, -1))
            for tp in partitions
        ]


class FakeMessage:
    def __init__(
        self,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        error: KafkaError | None = None,
    ) -> None:
        self._partition, self._key, self._value, self._error = partition, key, value, error

    def error(self) -> KafkaError | None:
        return self._error

    def partition(self) -> int:
        return self._partition

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def offset(self) -> int:
        return 0


class FakeChangelog:
    """The restore consumer over a changelog given as {partition: [(key, value), ...]}."""

    def __init__(self, partitions: dict[int, list[tuple[bytes, bytes | None]]]) -> None:
        self.partitions = partitions
        self.reads: list[int] = []  # partitions assigned for a restore
        self._queue: list[Message] = []

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        return 0, len(self.partitions.get(tp.partition, []))

    def assign(self, partitions: list[TopicPartition]) -> None:
        assert all(tp.offset == OFFSET_BEGINNING for tp in partitions)  # from the beginning
        for tp in partitions:
            self.reads.append(tp.partition)
            records = self.partitions[tp.partition]
            self._queue += [FakeMessage(tp.partition, k, v) for k, v in records]
            self._queue.append(
                FakeMessage(tp.partition, None, None, KafkaError(KafkaError._PARTITION_EOF))
            )

    def consume(self, n: int, timeout: float) -> list[Message]:
        out, self._queue = self._queue[:n], self._queue[n:]
        return out

    def unassign(self) -> None:
        pass

    def close(self) -> None:
        pass


class Scorer:
    """Recovery and an exactly-once checkpoint wired as ``ScorerApp`` wires them, on fakes."""

    def __init__(self, bundle, policy, changelog: dict | None = None) -> None:
        config = ServeConfig("b:9092", Path("m"), topics=TOPICS, instance_id="t")
        self.consumer = FakeGroupConsumer()
        self.changelog = FakeChangelog(changelog or {})
        self.errors, self.metrics, self.health = (
            ClientErrors("app-t"),
            ScorerMetrics(),
            HealthState(),
        )
        restorer = ChangelogRestorer(self.changelog, TOPICS.changelog)  # type: ignore[arg-type]
        self.recovery = Recovery(
            self.consumer,
            restorer,
            EV,
            bundle,
            policy,  # type: ignore[arg-type]
            self.errors,
            self.health,
            self.metrics,
        )
        self.producer = FakeProducer("only")
        self.checkpoint = ExactlyOnce(
            config,
            self.consumer,
            lambda: self.producer,  # type: ignore[arg-type]
            self.recovery.stores,
            self.errors,
            self.metrics,
        )
        self.recovery.subscribe(self.checkpoint)

    def assign(self, *partitions: int) -> None:
        self.recovery.on_assign(self.consumer, [TopicPartition(EV, p) for p in partitions])  # type: ignore[arg-type]

    def revoke(self, *partitions: int) -> None:
        self.recovery.on_revoke(self.consumer, [TopicPartition(EV, p) for p in partitions])  # type: ignore[arg-type]

    def lose(self, *partitions: int) -> None:
        self.recovery.on_lost(self.consumer, [TopicPartition(EV, p) for p in partitions])  # type: ignore[arg-type]

    def process(self, partition: int, first: int, next_offset: int) -> None:
        assert self.recovery.processor_for(partition, first) is not None
        self.checkpoint.begin()
        self.checkpoint.track(partition, first)
        self.checkpoint.advance(partition, next_offset)


def changelog_of(bundle, policy, partition: int) -> list[tuple[bytes, bytes | None]]:
    """A real partition's changelog: a few loans processed, then their records."""
    from consumer.processor import PartitionProcessor
    from models.data.synthetic import generate_book
    from schemas import AvroSerde

    encode = AvroSerde("LoanEvent").encode
    events = generate_book(4, seed=3)[1]
    processor = PartitionProcessor(bundle, policy, partition, EV)
    processor.process([(i, e["loan_id"].encode(), encode(e)) for i, e in enumerate(events)])
    return processor.store.changelog_records(now_ms=1)


def test_assigned_partitions_wait_paused_until_their_state_is_restored(bundle, policy) -> None:
    records = changelog_of(bundle, policy, 1)
    scorer = Scorer(bundle, policy, changelog={1: records})
    assert scorer.consumer.topics == [EV]
    scorer.assign(0, 1)
    assert scorer.consumer.paused == {0, 1} and scorer.recovery.pending == {0, 1}
    assert scorer.health.ready is False
    # A batch fetched before the restore (defensive): not processed, re-read afterwards.
    assert scorer.recovery.processor_for(1, 7) is None
    assert scorer.recovery.restore_pending(keep_going=lambda: True)
    assert scorer.changelog.reads == [1]  # partition 0's changelog is empty: nothing to read
    assert sorted(scorer.consumer.resumed) == [0, 1] and scorer.health.ready is True
    assert scorer.consumer.seeks == [(EV, 1, 7)]
    assert len(scorer.recovery.processors[1].store.states) == len(records) - 1
    assert not scorer.recovery.processors[1].store.has_uncommitted


def test_a_restore_cut_short_never_resumes_its_partitions(bundle, policy) -> None:
    scorer = Scorer(bundle, policy, changelog={0: changelog_of(bundle, policy, 0)})
    scorer.assign(0)
    assert scorer.recovery.restore_pending(keep_going=lambda: False) is False
    assert scorer.consumer.resumed == [] and scorer.health.ready is False


def test_revoke_commits_first_then_parks_and_an_unmoved_partition_skips_the_restore(
    bundle, policy
) -> None:
    scorer = Scorer(bundle, policy)
    scorer.assign(0, 1)
    scorer.recovery.restore_pending(keep_going=lambda: True)
    scorer.process(0, 0, 9)
    kept = scorer.recovery.processors[0]
    scorer.revoke(0, 1)
    assert scorer.producer.methods()[-1] == "commit_transaction"  # while still the owner
    ((offsets, _, _),) = [a for m, a in scorer.producer.calls if m == "send_offsets_to_transaction"]
    assert [(tp.partition, tp.offset) for tp in offsets] == [(0, 9)]
    assert scorer.recovery.processors == {} and set(scorer.recovery.parked) == {0}

    scorer.consumer.group_offsets = {0: 9}  # nobody committed progress on it meanwhile
    scorer.assign(0, 1)
    scorer.recovery.restore_pending(keep_going=lambda: True)
    assert scorer.recovery.processors[0] is kept  # its state in memory is still exact
    assert scorer.recovery.processors[1] is not kept


def test_a_parked_partition_someone_moved_on_is_restored_afresh(bundle, policy) -> None:
    scorer = Scorer(bundle, policy)
    scorer.assign(0)
    scorer.recovery.restore_pending(keep_going=lambda: True)
    scorer.process(0, 0, 9)
    kept = scorer.recovery.processors[0]
    scorer.revoke(0)
    scorer.consumer.group_offsets = {0: 30}  # another instance processed 9..29
    scorer.assign(0)
    scorer.recovery.restore_pending(keep_going=lambda: True)
    assert scorer.recovery.processors[0] is not kept


def test_lost_partitions_abort_and_commit_nothing(bundle, policy) -> None:
    scorer = Scorer(bundle, policy)
    scorer.assign(0)
    scorer.recovery.restore_pending(keep_going=lambda: True)
    scorer.process(0, 0, 9)
    scorer.lose(0)
    methods = scorer.producer.methods()
    assert "abort_transaction" in methods and "commit_transaction" not in methods
    assert scorer.recovery.processors == {} and scorer.recovery.parked == {}
    assert scorer.checkpoint.positions == {}


def test_a_revoke_after_a_fatal_error_commits_nothing_and_parks_nothing(bundle, policy) -> None:
    scorer = Scorer(bundle, policy)
    scorer.assign(0)
    scorer.recovery.restore_pending(keep_going=lambda: True)
    scorer.process(0, 0, 9)
    scorer.errors.fatal = "fenced during produce: ..."
    scorer.revoke(0)
    assert "commit_transaction" not in scorer.producer.methods()
    assert scorer.recovery.parked == {}
    with pytest.raises(FatalError, match="fenced"):
        scorer.errors.raise_if_fatal()


def test_a_stop_while_the_restore_waits_for_metadata_after_an_outage_ends_it_at_once() -> None:
    class LaggingChangelog(FakeChangelog):
        def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
            self.asked = getattr(self, "asked", 0) + 1
            raise KafkaException(KafkaError(KafkaError._UNKNOWN_PARTITION, "no leader yet"))

    changelog = LaggingChangelog({0: [], 1: []})
    restorer = ChangelogRestorer(changelog, TOPICS.changelog)  # type: ignore[arg-type]
    stops = iter([True, False])  # keep going once, then a SIGTERM arrives

    started = time.monotonic()
    assert restorer._non_empty([0, 1], keep_going=lambda: next(stops)) == []
    assert changelog.asked == 2 and time.monotonic() - started < 2  # not the 120 s wait
