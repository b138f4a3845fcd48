"""Assignment and recovery: which partitions this instance owns, and their state before any of
their input is processed (DESIGN.md §5: "on partition assignment, the partition's state is
restored from the changelog before its input is processed; on revocation, commit or abort
within a bounded time").

- Assign: the new partitions are paused, their stores restored from the changelog
  (:class:`ChangelogRestorer`, ``read_committed``, to the end), then resumed; until then
  ``/readyz`` says 503.
- Revoke: the open checkpoint is committed (or aborted) while the partitions are still ours;
  after a commit a partition is *parked* (see :class:`Recovery`).
- Lost: someone else may own the partitions already, so the open checkpoint is aborted and
  nothing is committed for them.

Only eager (whole) reassignments are supported (``ServeConfig`` refuses cooperative ones).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from consumer.checkpoint import Checkpoint, ClientErrors, seek
from consumer.config import RESTORE_TIMEOUT_S, RESTORE_WAIT_S
from consumer.errors import FatalError, RestoreError
from consumer.health import HealthState
from consumer.logs import log_event
from consumer.metrics import ScorerMetrics
from consumer.partition_store import DAY_MS, DEFAULT_CLOSED_RETENTION_DAYS, PartitionStore
from consumer.processor import PartitionProcessor
from consumer.runtime import freeze_long_lived
from models.serving.contracts import EarlyWarningModel, StrategyPolicy

log = logging.getLogger("loanrec.restore")
# The group's committed offset per input partition (None: none committed); None when it could
# not be read (asked again).
CommittedOffsets = Callable[[list[int]], Mapping[int, int | None] | None]
VERIFY_POLL_S = 0.5  # while waiting, how long the changelog's tail is read between two asks


def _unequal(
    stores: Mapping[int, PartitionStore],
    offsets: Mapping[int, int | None] | None,
    partitions: list[int],
) -> dict[int, tuple[int | None, int | None]]:
    """{partition: (checkpoint's offset, committed offset)} where the two differ; every
    partition when the committed offsets could not be read (``offsets`` None)."""
    out: dict[int, tuple[int | None, int | None]] = {}
    for p in partitions:
        have = stores[p].restored_offset
        want = None if offsets is None else offsets.get(p)
        if offsets is None or have != want:
            out[p] = (have, want)
    return out


def _report(pairs: Mapping[int, tuple[int | None, int | None]]) -> dict[int, dict[str, int | None]]:
    return {p: {"changelog": have, "committed": want} for p, (have, want) in pairs.items()}


def _unchecked(store: PartitionStore) -> bool:
    """A v1/v2 checkpoint: the state is restored, but it says no input offset to check."""
    return store.restored_checkpoint and store.restored_offset is None


class ChangelogRestorer:
    """Reads changelog partitions into :class:`PartitionStore` objects, and checks that the
    state read reflects the input offset the group committed.

    The changelog is partitioned like the input, so input partition ``p``'s state is changelog
    partition ``p``. It is read from the beginning with ``read_committed`` up to its end
    (librdkafka reports the end at the last stable offset, so records of aborted transactions
    are never seen and pending ones are waited for), every record applied, last write wins.

    The end read is not always the end the previous owner committed. Committing a transaction
    (KIP-98) writes its commit markers to every partition it touched -- the changelog's and
    ``__consumer_offsets``' -- one by one after ``commit_transaction`` returns, and a
    ``read_committed`` reader sees a partition's records only below its last stable offset,
    i.e. once that partition's marker is written. The group's committed offset is read with
    ``require_stable`` (KIP-447: librdkafka sets it for ``read_committed`` consumers, so an
    offset of a transaction in flight is waited for), and can be visible while the same
    transaction's changelog records are not yet. Resuming then would apply the newer input
    to older state. So each partition's last checkpoint (``PartitionCheckpoint`` v3) records
    the next input offset its state reflects, the one committed in the same unit, and
    :meth:`restore` compares it with the group's committed offset (``committed``):

    - equal (or no committed offset and no checkpoint: a new partition): resume;
    - the checkpoint behind: keep reading the changelog's tail (the missing records appear
      once their markers land) and asking the group again, for at most ``wait_s``;
      still behind then, a :class:`RestoreError` names the partition, both offsets, the
      likely cause and the fix, and the scorer stops having committed nothing;
    - the checkpoint ahead: at least once flushes the changelog before it commits the
      offsets, so a crash between the two leaves exactly this. The state reflects every
      event before the checkpoint's offset, and their outputs are in Kafka (at least once
      flushes the outputs before it writes the changelog, ``consumer.checkpoint``): resume
      *from the checkpoint's offset* (:attr:`ahead`, which the caller seeks to), logged and
      counted. Not from the committed one: re-read, those events would not all be no-ops --
      a loan that left state after its retention within them would be opened again by its
      re-read LoanOpened, re-decided and re-emitted, and move the partition's segmenter
      (ARCHITECTURE.md §8). Exactly once writes both in one transaction, so there it means
      the group's offsets were reset, deleted or expired: waited for like "behind" (an old
      broker without KIP-447 can answer the older offset for a moment), then the same stop;
    - a v1/v2 checkpoint (no input offset): nothing to check, logged once per restore.

    The whole restore, waits included, stays within ``timeout_s`` (by default
    :data:`~consumer.config.RESTORE_TIMEOUT_S`, which ``max.poll.interval.ms`` exceeds), so
    the group consumer, not polled meanwhile, keeps its membership; it is not polled because
    that would run rebalance callbacks in the middle of the restore."""

    def __init__(
        self,
        consumer: Consumer,
        topic: str,
        wait_s: float = RESTORE_WAIT_S,
        exactly_once: bool = True,
        source: str = "the group",
    ) -> None:
        self.topic = topic
        self.wait_s = wait_s
        self.exactly_once = exactly_once
        self.source = source  # names the group and the input topic in messages
        # Partitions restored ahead of the committed offset (at least once), not yet taken by
        # the caller: {partition: the checkpoint's offset, where its input resumes}.
        self.ahead: dict[int, int] = {}
        self._consumer = consumer

    def restore(
        self,
        stores: Mapping[int, PartitionStore],
        keep_going: Callable[[], bool] = lambda: True,
        timeout_s: float = RESTORE_TIMEOUT_S,
        committed: CommittedOffsets | None = None,
    ) -> int:
        """Fill each store from its changelog partition; returns loan states restored. With
        ``committed`` (the group's committed offsets), check the result against them."""
        self.ahead = {}  # a restore cut short before is never used (Recovery discards it)
        if not stores:
            return 0
        deadline = time.monotonic() + timeout_s
        remaining = set(self._non_empty(stores, keep_going))
        reading = set(remaining)
        if remaining:
            tps = [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in remaining]
            self._consumer.assign(tps)
        restored = 0
        try:
            while remaining and keep_going():
                if time.monotonic() > deadline:
                    raise RestoreError(
                        f"changelog {self.topic} partitions {sorted(remaining)} "
                        f"not restored within {timeout_s:.0f} s"
                    )
                restored += self._apply(
                    self._consumer.consume(1000, timeout=0.05), stores, remaining
                )
            if committed is not None and keep_going():
                restored += self._verify(stores, committed, keep_going, deadline, reading)
        finally:
            if reading:
                self._consumer.unassign()
        unfinished = {p: n for p, store in stores.items() if (n := store.finish_restore())}
        if unfinished:
            log_event(
                "restore_unfinished_unit_undone",
                level="warning",
                records=unfinished,
                why="changelog records after the partition's last checkpoint (at least once: "
                "a crash while the changelog was flushed); the unit is redone",
            )
        return restored

    # -- the check against the committed input offsets ------------------------------------------
    def _verify(
        self,
        stores: Mapping[int, PartitionStore],
        committed: CommittedOffsets,
        keep_going: Callable[[], bool],
        deadline: float,
        reading: set[int],
    ) -> int:
        """Wait until every store's checkpoint agrees with the group's committed offset (see
        the class docstring); returns the loan states read meanwhile."""
        unchecked = [p for p in sorted(stores) if _unchecked(stores[p])]
        if unchecked:
            log_event(
                "restore_unverified",
                level="warning",
                partitions=unchecked,
                reason="checkpoint written before PartitionCheckpoint v3: no input offset to "
                "check against the committed offsets; the next commit writes one",
            )
        check = [p for p in sorted(stores) if p not in unchecked]
        if not check:
            return 0
        started = time.monotonic()
        give_up = min(started + self.wait_s, deadline)
        restored, waiting_logged = 0, False
        while True:
            offsets = committed(check)
            unequal = _unequal(stores, offsets, check)
            wrong = {
                p: pair
                for p, pair in unequal.items()
                if offsets is None or self._must_wait(pair)  # unknown: ask again
            }
            if not wrong:
                break
            if not waiting_logged:
                report = _report(wrong)
                log_event("restore_waiting", level="warning", partitions=report, wait_s=self.wait_s)
                waiting_logged = True
            if time.monotonic() >= give_up:
                waited = time.monotonic() - started
                if offsets is None:
                    raise RestoreError(
                        f"could not read {self.source}'s committed offsets for partitions "
                        f"{sorted(wrong)} within {waited:.0f} s, so the state restored from "
                        f"{self.topic} cannot be checked against them (nothing was committed); "
                        "is the group coordinator available?"
                    )
                raise RestoreError(self._mismatch(wrong, waited))
            if not keep_going():
                return restored
            # Read the tail of every partition not in agreement: its missing records become
            # visible when their commit markers land (the last stable offset moves on).
            new = sorted(set(wrong) - reading)
            if new:
                tps = [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in new]
                self._consumer.incremental_assign(tps)
                reading.update(new)
            until = min(time.monotonic() + VERIFY_POLL_S, give_up)
            while time.monotonic() < until and keep_going():
                restored += self._apply(self._consumer.consume(1000, timeout=0.05), stores, set())
        if waiting_logged:
            log_event("restore_caught_up", waited_s=round(time.monotonic() - started, 3))
        if unequal:  # what is left is ahead, under at least once only (see the class docstring)
            for p, (have, _) in unequal.items():
                assert have is not None  # no checkpoint is never ahead (_must_wait)
                self.ahead[p] = have
            log_event(
                "restore_ahead",
                level="warning",
                partitions=_report(unequal),
                why="at least once: a crash between the changelog's flush and the offset "
                "commit; the input resumes from the changelog's offset, the outputs of the "
                "events before it being already acknowledged",
            )
        return restored

    def _must_wait(self, pair: tuple[int | None, int | None]) -> bool:
        """Whether a partition whose (checkpoint offset, committed offset) differ may not
        resume: behind, or ahead under exactly once."""
        have, want = pair
        return self.exactly_once or (want is not None and (have is None or have < want))

    def _mismatch(self, wrong: Mapping[int, tuple[int | None, int | None]], waited: float) -> str:
        """The stop's message: the first partition in disagreement, its cause and its fix."""
        p = min(wrong)
        have, want = wrong[p]
        others = f" (also partitions {sorted(set(wrong) - {p})})" if len(wrong) > 1 else ""
        state = "no checkpoint" if have is None else f"state up to input offset {have}"
        group = "no committed offset" if want is None else f"committed offset {want}"
        head = (
            f"changelog {self.topic} partition {p} holds {state}, but {self.source} has "
            f"{group} for that partition{others}; they did not agree within {waited:.0f} s "
            "(nothing was committed). "
        )
        if want is not None and (have is None or have < want):
            return head + (
                "Likely cause: the changelog is not the one these offsets were committed with "
                "(it was deleted or recreated, or the group id is shared with another app id), "
                "or the previous owner's commit markers are still not visible. Fix: if the "
                "brokers are healthy, restore that changelog or start from scratch with a new "
                "--app-id and --group-id; a restart retries the check (--restore-wait-s)."
            )
        return head + (
            "Likely cause: under exactly-once the state and the offsets commit together, so "
            "the group's offsets were reset, deleted or expired (offsets.retention.minutes). "
            f"Fix: set them back to the state's, e.g. kafka-consumer-groups.sh --group ... "
            f"--topic <input>:{p} --reset-offsets --to-offset {have} --execute."
        )

    def _non_empty(
        self,
        partitions: Iterable[int],
        keep_going: Callable[[], bool] = lambda: True,
        timeout_s: float = 120.0,
    ) -> list[int]:
        out: list[int] = []
        deadline = time.monotonic() + timeout_s
        for p in partitions:
            tp = TopicPartition(self.topic, p)
            while True:
                try:
                    low, high = self._consumer.get_watermark_offsets(tp, timeout=10)
                    break
                except KafkaException as exc:
                    # Right after a broker outage the client's metadata can lag (unknown
                    # partition, no leader yet): wait for it rather than exit (ARCHITECTURE.md §5).
                    if exc.args[0].fatal() or time.monotonic() > deadline:
                        raise
                    if not keep_going():  # stopping: the caller discards a partial restore
                        return out
                    log_event("restore_retry", level="warning", error=exc.args[0].str())
                    time.sleep(0.5)
            if high > low:
                out.append(p)
        return out

    def _apply(
        self, messages: list[Message], stores: Mapping[int, PartitionStore], remaining: set[int]
    ) -> int:
        restored = 0
        by_partition = {p: stores[p] for p in stores}  # a dict: StoreView's lookup is Python
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    remaining.discard(message.partition())
                    continue
                if error.fatal():
                    raise KafkaException(error)
                log.warning("changelog read error: %s", error)
                continue
            try:
                if by_partition[message.partition()].restore(message.key(), message.value()):
                    restored += 1
            except Exception as error:  # an incompatible record: never guess a loan's state
                raise RestoreError(
                    f"changelog {self.topic} partition {message.partition()} offset "
                    f"{message.offset()}: cannot restore record {message.key()!r} "
                    f"({type(error).__name__}: {error}); was it written by an incompatible "
                    "version? Use a new --app-id to start from an empty changelog"
                ) from None
        return restored

    def close(self) -> None:
        self._consumer.close()


class StoreView(Mapping[int, PartitionStore]):
    """The stores of a ``{partition: processor}`` dict, live (what a checkpoint reads)."""

    def __init__(self, processors: Mapping[int, PartitionProcessor]) -> None:
        self._processors = processors

    def __getitem__(self, partition: int) -> PartitionStore:
        return self._processors[partition].store

    def __iter__(self) -> Iterator[int]:
        return iter(self._processors)

    def __len__(self) -> int:
        return len(self._processors)


class Recovery:
    """The partitions this instance owns, their processors, and the rebalance callbacks.

    Parking: eager rebalances revoke everything every time, so a partition revoked right
    after a commit keeps its processor with the committed offset. If it comes back and nobody
    committed progress on it meanwhile, its state is still exact and the changelog need not be
    re-read."""

    def __init__(
        self,
        consumer: Consumer,
        restorer: ChangelogRestorer,
        topic: str,
        bundle: EarlyWarningModel,
        policy: StrategyPolicy,
        errors: ClientErrors,
        health: HealthState,
        metrics: ScorerMetrics,
        closed_retention_ms: float = DEFAULT_CLOSED_RETENTION_DAYS * DAY_MS,
    ) -> None:
        self.consumer = consumer
        self.closed_retention_ms = closed_retention_ms
        self.restorer = restorer
        self.topic = topic  # the input topic
        self.bundle = bundle
        self.policy = policy
        self.errors = errors
        self.health = health
        self.metrics = metrics
        self.processors: dict[int, PartitionProcessor] = {}
        self.stores = StoreView(self.processors)
        self.checkpoint: Checkpoint | None = None  # set by subscribe(): it reads our stores
        self.pending: set[int] = set()  # assigned, not restored yet
        self.rewind_after_restore: dict[int, int] = {}
        self.parked: dict[int, tuple[PartitionProcessor, int]] = {}  # (processor, committed)
        self.reuse_offsets: dict[int, int] = {}
        self.assignment_seen = False

    def subscribe(self, checkpoint: Checkpoint) -> None:
        """Join the group; rebalances commit or abort through ``checkpoint``."""
        self.checkpoint = checkpoint
        self.consumer.subscribe(
            [self.topic], on_assign=self.on_assign, on_revoke=self.on_revoke, on_lost=self.on_lost
        )

    def use_models(self, bundle: EarlyWarningModel, policy: StrategyPolicy) -> None:
        """Reloaded models (SIGHUP): every processor decides with them from now on (parked
        ones get them when they come back)."""
        self.bundle, self.policy = bundle, policy
        for processor in self.processors.values():
            processor.use_models(bundle, policy)

    def new_processor(self, partition: int) -> PartitionProcessor:
        return PartitionProcessor(
            self.bundle,
            self.policy,
            partition,
            self.topic,
            closed_retention_ms=self.closed_retention_ms,
        )

    def processor_for(self, partition: int, first_offset: int) -> PartitionProcessor | None:
        """The processor that may process a fetched batch of ``partition``, or None: revoked
        meanwhile (its next owner starts from the committed offset), or not restored yet
        (paused at assignment, so only defensively: re-read from ``first_offset`` later)."""
        processor = self.processors.get(partition)
        if processor is not None and partition in self.pending:
            self.rewind_after_restore.setdefault(partition, first_offset)
            return None
        return processor

    # -- rebalance callbacks (run inside consumer.consume / close) ------------------------------
    def input_lag(self, consumer: Consumer, positions: dict[int, int]) -> dict[int, int]:
        """Records not yet processed per owned partition (``positions``: next offset to
        process, where known), from the consumer's cached high watermarks."""
        lag = {}
        for partition in list(self.processors):
            tp = TopicPartition(self.topic, partition)
            try:
                low, high = consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            position = positions.get(partition)
            if position is None:  # nothing processed here yet: from where it will start
                position = consumer.position([tp])[0].offset
                if position < 0:
                    position = low
            if high >= 0 and position >= 0:
                lag[partition] = max(0, high - position)
        return lag

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        consumer.assign(partitions)
        consumer.pause(partitions)  # no input until its state is restored
        for tp in partitions:
            parked = self.parked.pop(tp.partition, None)
            if parked is not None:
                processor, committed = parked
                processor.use_models(self.bundle, self.policy)  # a reload may have happened
                self.processors[tp.partition] = processor
                self.reuse_offsets[tp.partition] = committed
            else:
                self.processors[tp.partition] = self.new_processor(tp.partition)
            self.pending.add(tp.partition)
        self.parked.clear()  # the rest belongs to other instances now
        self.assignment_seen = True
        self.health.ready = not self.pending
        self.metrics.assigned_partitions.set(len(self.processors))
        log_event("partitions_assigned", partitions=sorted(tp.partition for tp in partitions))

    def on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Commit what was processed while we still own the partitions (bounded by the commit
        # timeout); the next owner restores exactly this from the changelog. After a fatal
        # error nothing can commit: the broker aborts the open transaction.
        assert self.checkpoint is not None
        committed = False
        try:
            committed = not self.errors.fatal and self.checkpoint.finish("revoke")
        except FatalError as error:
            self.errors.fatal = str(error)
        self._drop(partitions, park=committed)
        log_event("partitions_revoked", partitions=sorted(tp.partition for tp in partitions))

    def on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Someone else may own them already: abort, never commit for them.
        assert self.checkpoint is not None
        if self.checkpoint.unsettled:
            try:
                self.checkpoint.abort("partitions lost")
            except FatalError as error:
                self.errors.fatal = str(error)
        self._drop(partitions)
        log_event(
            "partitions_lost", level="warning", partitions=sorted(tp.partition for tp in partitions)
        )

    def _drop(self, partitions: list[TopicPartition], park: bool = False) -> None:
        assert self.checkpoint is not None
        for tp in partitions:
            processor = self.processors.pop(tp.partition, None)
            position = self.checkpoint.forget(tp.partition)
            if (
                park
                and processor is not None
                and position is not None
                and tp.partition not in self.pending
            ):
                self.parked[tp.partition] = (processor, position)
            self.reuse_offsets.pop(tp.partition, None)
            self.pending.discard(tp.partition)
            self.rewind_after_restore.pop(tp.partition, None)
        self.metrics.assigned_partitions.set(len(self.processors))
        self.metrics.set_lag({})

    # -- restore --------------------------------------------------------------------------------
    def restore_pending(self, keep_going: Callable[[], bool]) -> bool:
        """Restore every pending partition, then resume its input; False if ``keep_going``
        stopped it (partial state: those partitions must never resume)."""
        started = time.monotonic()
        partitions = sorted(self.pending)
        reused = self._still_current(partitions)
        for p in partitions:
            if p in self.reuse_offsets and p not in reused:  # someone else moved it on
                self.processors[p] = self.new_processor(p)
        self.reuse_offsets.clear()
        targets = {p: self.processors[p].store for p in partitions if p not in reused}

        def going() -> bool:  # a restore making progress is a live loop (health.py)
            self.health.beat()
            return keep_going()

        try:
            restored = self.restorer.restore(
                targets, keep_going=going, committed=self._committed_offsets
            )
        except RestoreError as error:
            raise FatalError(str(error)) from None
        if not keep_going():
            return False
        self.metrics.restored_loans.inc(restored)
        ahead, self.restorer.ahead = self.restorer.ahead, {}
        self.metrics.restored_ahead.inc(len(ahead))
        freeze_long_lived()
        self.pending.clear()
        self.consumer.resume([TopicPartition(self.topic, p) for p in partitions])
        # A partition restored ahead resumes where its state does (ChangelogRestorer), also
        # when a batch was fetched for it meanwhile (from the committed offset).
        starts, self.rewind_after_restore = {**self.rewind_after_restore, **ahead}, {}
        seek(
            self.consumer,
            [TopicPartition(self.topic, p, o) for p, o in starts.items() if p in self.processors],
        )
        self._commit_with_next_unit(ahead)
        self.health.ready = True
        log_event(
            "state_restored",
            partitions=partitions,
            restored_loans=restored,
            kept_in_memory=sorted(reused),
            seconds=round(time.monotonic() - started, 3),
        )
        return True

    def _commit_with_next_unit(self, offsets: Mapping[int, int]) -> None:
        """Put each partition's restored offset into the open unit, so the group's offset
        comes to agree with the state even if no new input arrives for it (else the group
        would show the events skipped as lag until then)."""
        assert self.checkpoint is not None
        for partition, offset in offsets.items():
            if partition in self.processors:
                self.checkpoint.begin()
                self.checkpoint.track(partition, offset)
                self.checkpoint.advance(partition, offset)

    def _committed_offsets(self, partitions: list[int]) -> dict[int, int | None] | None:
        """The group's committed input offsets (``read_committed``: stable ones, KIP-447), or
        None if the group coordinator did not answer (the check asks again)."""
        try:
            got = self.consumer.committed(
                [TopicPartition(self.topic, p) for p in partitions], timeout=10
            )
        except KafkaException as exc:
            log_event("restore_retry", level="warning", error=exc.args[0].str())
            return None
        if any(tp.error is not None for tp in got):
            return None
        return {tp.partition: tp.offset if tp.offset >= 0 else None for tp in got}

    def _still_current(self, partitions: list[int]) -> set[int]:
        """Parked partitions whose committed offset is still the one we committed: nobody
        processed them since, so the state in memory equals the changelog's."""
        ours = {p: self.reuse_offsets[p] for p in partitions if p in self.reuse_offsets}
        if not ours:
            return set()
        try:
            committed = self.consumer.committed(
                [TopicPartition(self.topic, p) for p in ours], timeout=10
            )
        except KafkaException:
            return set()  # unknown: restore, which is always right
        return {
            tp.partition for tp in committed if tp.error is None and tp.offset == ours[tp.partition]
        }

    def close(self) -> None:
        self.restorer.close()
