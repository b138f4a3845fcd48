"""Assignment and recovery (``consumer.recovery``) with fake clients: partitions are paused
until restored, a revoke commits before the partitions go (and parks them), a loss aborts and
commits nothing, a parked partition nobody moved on comes back without a restore, and a
restored partition resumes only once its checkpoint's input offset agrees with the group's
committed offset (ARCHITECTURE.md §8: waits for the changelog's tail, or stops naming both).
(tests/integration/test_stream_eos.py checks rebalances end to end on a real broker.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, TopicPartition
from test_consumer_checkpoint import TOPICS, FakeConsumer, FakeProducer

from consumer.checkpoint import AtLeastOnce, ClientErrors, ExactlyOnce
from consumer.config import ServeConfig
from consumer.errors import FatalError
from consumer.health import HealthState
from consumer.metrics import ScorerMetrics
from consumer.recovery import ChangelogRestorer, Recovery
from schemas import AvroSerde

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
    """The restore consumer over a changelog given as {partition: [(key, value), ...]}.

    ``tail`` holds records of a transaction whose commit markers are not written yet: they
    become visible (delivered, then the end again) on the ``reveal_at``-th consume call."""

    def __init__(
        self,
        partitions: dict[int, list[tuple[bytes, bytes | None]]],
        tail: dict[int, list[tuple[bytes, bytes | None]]] | None = None,
        reveal_at: int | None = None,
    ) -> None:
        self.partitions = partitions
        self.tail = tail or {}
        self.reveal_at = reveal_at
        self.consumed = 0
        self.reads: list[int] = []  # partitions assigned for a restore
        self._queue: list[Message] = []

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        return 0, len(self.partitions.get(tp.partition, []))

    def assign(self, partitions: list[TopicPartition]) -> None:
        assert all(tp.offset == OFFSET_BEGINNING for tp in partitions)  # from the beginning
        for tp in partitions:
            self.reads.append(tp.partition)
            records = self.partitions.get(tp.partition, [])
            self._queue += [FakeMessage(tp.partition, k, v) for k, v in records]
            self._queue.append(
                FakeMessage(tp.partition, None, None, KafkaError(KafkaError._PARTITION_EOF))
            )

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        self.assign(partitions)

    def consume(self, n: int, timeout: float) -> list[Message]:
        self.consumed += 1
        if self.consumed == self.reveal_at:  # the markers land
            for p, records in self.tail.items():
                self.partitions.setdefault(p, []).extend(records)
                if p in self.reads:
                    self._queue += [FakeMessage(p, k, v) for k, v in records]
                    eof = KafkaError(KafkaError._PARTITION_EOF)
                    self._queue.append(FakeMessage(p, None, None, eof))
        out, self._queue = self._queue[:n], self._queue[n:]
        return out

    def unassign(self) -> None:
        pass

    def close(self) -> None:
        pass


class Scorer:
    """Recovery and an exactly-once checkpoint wired as ``ScorerApp`` wires them, on fakes."""

    def __init__(
        self,
        bundle,
        policy,
        changelog: dict | None = None,
        tail: dict | None = None,
        reveal_at: int | None = None,
        wait_s: float = 60.0,
        exactly_once: bool = True,
    ) -> None:
        config = ServeConfig("b:9092", Path("m"), topics=TOPICS, instance_id="t")
        self.consumer = FakeGroupConsumer()
        self.changelog = FakeChangelog(changelog or {}, tail, reveal_at)
        self.errors, self.metrics, self.health = (
            ClientErrors("app-t"),
            ScorerMetrics(),
            HealthState(),
        )
        self.restorer = ChangelogRestorer(
            self.changelog,  # type: ignore[arg-type]
            TOPICS.changelog,
            wait_s=wait_s,
            exactly_once=exactly_once,
            source=f"group app on {EV}",
        )
        self.recovery = Recovery(
            self.consumer,
            self.restorer,
            EV,
            bundle,
            policy,  # type: ignore[arg-type]
            self.errors,
            self.health,
            self.metrics,
        )
        self.producer = FakeProducer("only")
        self.checkpoint = (ExactlyOnce if exactly_once else AtLeastOnce)(
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


def changelog_of(
    bundle, policy, partition: int, input_offset: int | None = None
) -> list[tuple[bytes, bytes | None]]:
    """A real partition's changelog: a few loans processed, then their records (the
    checkpoint recording ``input_offset``)."""
    return changelogs_of(bundle, policy, partition, [input_offset])[0]


def changelogs_of(
    bundle, policy, partition: int, offsets: list[int | None], loans: int = 4
) -> list[list[tuple[bytes, bytes | None]]]:
    """The changelog records of successive commits of one partition: its events split in
    ``len(offsets)`` parts, each part's commit recording its offset."""
    from consumer.processor import PartitionProcessor
    from models.data.synthetic import generate_book
    from schemas import AvroSerde

    encode = AvroSerde("LoanEvent").encode
    events = generate_book(loans, seed=3)[1]
    processor = PartitionProcessor(bundle, policy, partition, EV)
    size = -(-len(events) // len(offsets))
    commits = []
    for i, offset in enumerate(offsets):
        part = list(enumerate(events))[i * size : (i + 1) * size]
        processor.process([(j, e["loan_id"].encode(), encode(e)) for j, e in part])
        commits.append(processor.store.changelog_records(now_ms=1, input_offset=offset))
        processor.store.commit()
    return commits


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
    scorer.changelog.partitions[0] = changelog_of(bundle, policy, 0, 30)  # and committed this
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


# -- the restored state is checked against the group's committed offset (ARCHITECTURE.md §8) --
def events_of(records: list[tuple[bytes, bytes | None]]) -> set[bytes]:
    return {k for k, _ in records if k != b"__partition__"}


def test_a_checkpoint_equal_to_the_committed_offset_resumes(bundle, policy) -> None:
    scorer = Scorer(bundle, policy, changelog={0: changelog_of(bundle, policy, 0, 9)})
    scorer.consumer.group_offsets = {0: 9}
    scorer.assign(0)
    assert scorer.recovery.restore_pending(keep_going=lambda: True)
    assert scorer.consumer.resumed == [0] and scorer.recovery.processors[0].store.states
    assert scorer.recovery.processors[0].store.restored_offset == 9


def test_a_checkpoint_behind_waits_for_the_changelog_s_tail_then_resumes(
    bundle, policy, capsys
) -> None:
    # The previous owner's last transaction committed offset 20, but the changelog's commit
    # marker is not written yet: only the transaction before it (offset 9) is visible.
    first, last = changelogs_of(bundle, policy, 0, [9, 20], loans=8)
    scorer = Scorer(bundle, policy, changelog={0: first}, tail={0: last}, reveal_at=5)
    scorer.consumer.group_offsets = {0: 20}
    scorer.assign(0)
    started = time.monotonic()
    assert scorer.recovery.restore_pending(keep_going=lambda: True)
    assert time.monotonic() - started < 5  # resumed as soon as the tail was read
    store = scorer.recovery.processors[0].store
    assert store.restored_offset == 20 and scorer.changelog.consumed >= 5
    assert set(store.states) >= {k.decode() for k in events_of(last)}  # the newer state
    assert scorer.consumer.resumed == [0]
    err = capsys.readouterr().err
    assert '"restore_waiting"' in err and '"changelog": 9, "committed": 20' in err
    assert '"restore_caught_up"' in err


@pytest.mark.parametrize("have", [4, None])
def test_a_checkpoint_behind_for_good_stops_naming_the_partition_and_offsets(
    bundle, policy, have
) -> None:
    changelog = {0: changelog_of(bundle, policy, 0, have)} if have is not None else {}
    scorer = Scorer(bundle, policy, changelog=changelog, wait_s=0.3)
    scorer.consumer.group_offsets = {0: 9}
    scorer.assign(0)
    started = time.monotonic()
    with pytest.raises(FatalError) as caught:
        scorer.recovery.restore_pending(keep_going=lambda: True)
    assert 0.3 <= time.monotonic() - started < 3
    message = str(caught.value)
    state = "state up to input offset 4" if have is not None else "no checkpoint"
    assert f"{TOPICS.changelog} partition 0 holds {state}" in message
    assert "committed offset 9" in message and "nothing was committed" in message
    assert "--app-id" in message and "Likely cause" in message
    # Never resumed, nothing produced: the scorer exits with nothing committed.
    assert scorer.consumer.resumed == [] and scorer.health.ready is False
    assert "commit_transaction" not in scorer.producer.methods()


def test_a_checkpoint_ahead_resumes_from_its_own_offset_under_at_least_once(
    bundle, policy, capsys
) -> None:
    # A crash after the changelog's flush, before the offset commit: partition 0's state
    # reflects offsets up to 9, the group committed 4; partition 2's state reflects up to 6
    # and the group committed nothing (the crash came before its first offset commit).
    # Both resume where their state does, never re-reading 4..8 (or 0..5).
    changelog = {p: changelog_of(bundle, policy, p, o) for p, o in [(0, 9), (1, 7), (2, 6)]}
    scorer = Scorer(bundle, policy, changelog=changelog, wait_s=5, exactly_once=False)
    scorer.consumer.group_offsets = {0: 4, 1: 7}
    scorer.assign(0, 1, 2)
    assert scorer.recovery.processor_for(0, 4) is None  # fetched before the restore ended
    started = time.monotonic()
    assert scorer.recovery.restore_pending(keep_going=lambda: True)
    assert time.monotonic() - started < 2  # no waiting: nothing would change
    assert sorted(scorer.consumer.resumed) == [0, 1, 2]
    assert sorted(scorer.consumer.seeks) == [(EV, 0, 9), (EV, 2, 6)]  # 1 agrees: no seek
    assert scorer.metrics.restored_ahead._value.get() == 2 and scorer.restorer.ahead == {}
    err = capsys.readouterr().err
    assert '"restore_ahead"' in err and '"0": {"changelog": 9, "committed": 4}' in err
    assert '"2": {"changelog": 6, "committed": null}' in err
    # The next commit moves the group's offsets to the state's, new input or not, and the
    # checkpoints it writes record them.
    assert scorer.checkpoint.open and scorer.checkpoint.commit()
    ((offsets, _),) = scorer.consumer.commits
    assert [(tp.partition, tp.offset) for tp in offsets] == [(0, 9), (2, 6)]
    serde = AvroSerde("PartitionCheckpoint")
    written = [a for m, a in scorer.producer.calls if m == "produce" and a[1] == b"__partition__"]
    assert [(a[3], serde.decode(a[2])["input_offset"]) for a in written] == [(0, 9), (2, 6)]


def test_a_checkpoint_ahead_under_exactly_once_stops_with_the_reset_to_do(bundle, policy) -> None:
    scorer = Scorer(bundle, policy, changelog={0: changelog_of(bundle, policy, 0, 9)}, wait_s=0.2)
    scorer.consumer.group_offsets = {0: 4}  # reset behind the scorer's back
    scorer.assign(0)
    with pytest.raises(FatalError, match="--reset-offsets --to-offset 9") as caught:
        scorer.recovery.restore_pending(keep_going=lambda: True)
    assert "input offset 9" in str(caught.value) and "committed offset 4" in str(caught.value)
    assert scorer.consumer.resumed == []


def test_a_v2_checkpoint_restores_unchecked_and_says_so_once(bundle, policy, capsys) -> None:
    from consumer.partition_store import CHECKPOINT_KEY
    from schemas import AvroSerde

    v2, v3 = (AvroSerde("PartitionCheckpoint", writer_version=v) for v in (2, 3))
    records = []
    for p in (0, 1):
        loans = changelog_of(bundle, policy, p)
        checkpoint = v3.decode(dict(loans)[CHECKPOINT_KEY.encode()])
        del checkpoint["input_offset"]
        records.append([*loans[:-1], (CHECKPOINT_KEY.encode(), v2.encode(checkpoint))])
    scorer = Scorer(bundle, policy, changelog={0: records[0], 1: records[1]}, wait_s=30)
    scorer.consumer.group_offsets = {0: 9, 1: 3}  # cannot be checked: no offset in v2
    scorer.assign(0, 1)
    started = time.monotonic()
    assert scorer.recovery.restore_pending(keep_going=lambda: True)
    assert time.monotonic() - started < 2
    store = scorer.recovery.processors[0].store
    assert store.restored_checkpoint and store.restored_offset is None and store.states
    err = capsys.readouterr().err
    assert err.count('"restore_unverified"') == 1 and '"partitions": [0, 1]' in err


def test_a_stop_while_waiting_for_the_changelog_never_resumes(bundle, policy) -> None:
    scorer = Scorer(bundle, policy, changelog={0: changelog_of(bundle, policy, 0, 4)}, wait_s=30)
    scorer.consumer.group_offsets = {0: 9}
    scorer.assign(0)
    calls = iter(range(1000))
    started = time.monotonic()
    assert not scorer.recovery.restore_pending(keep_going=lambda: next(calls) < 40)
    assert time.monotonic() - started < 5 and scorer.consumer.resumed == []


def test_committed_offsets_that_cannot_be_read_are_asked_again_then_stop(bundle, policy) -> None:
    scorer = Scorer(bundle, policy, changelog={0: changelog_of(bundle, policy, 0, 9)}, wait_s=0.3)
    asked = []

    def unanswered(partitions: list[TopicPartition], timeout: float) -> list:
        asked.append(len(partitions))
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "coordinator away"))

    scorer.consumer.committed = unanswered  # type: ignore[method-assign]
    scorer.assign(0)
    with pytest.raises(FatalError, match="could not read group app on ev's committed offsets"):
        scorer.recovery.restore_pending(keep_going=lambda: True)
    assert len(asked) >= 2 and scorer.consumer.resumed == []
