"""Checkpointing: one commit interval's work, committed whole or rolled back whole.

What a checkpoint carries, and the classic pitfalls it avoids (DESIGN.md §5 and §8, "a batch
is either committed whole or aborted"):

- :class:`ExactlyOnce` (default). One transactional producer; a transaction is begun lazily by
  the first batch with records and carries the batch's outputs, the changelog records of the
  loans changed since the last commit plus each touched partition's checkpoint, and the input
  offsets (``send_offsets_to_transaction`` with ``consumer_group_metadata()``, so a zombie from
  an older group generation is fenced). On an abortable error the transaction is aborted, the
  partition stores roll back to their last commit and the consumer is *seeked back* to the
  first offset of the aborted transaction (its fetch position is already past those records).
  If the abort itself fails (librdkafka can fail one with INVALID_TXN_STATE) the producer is
  replaced: its successor's ``init_transactions`` aborts the transaction on the broker.
- :class:`AtLeastOnce` replaces the transaction by flush + synchronous offset commit: faster,
  and a crash may repeat outputs (never lose them).

Both sit behind :class:`Checkpoint`, so the loop (``consumer.app``) never asks which guarantee
it runs under. Fencing and fatal errors raise :class:`~consumer.errors.FatalError`; retriable
errors are retried with backoff until the commit timeout. The Kafka clients come in as
constructor arguments (the consumer, and a factory for producers, since a failed abort needs a
new one), which is what lets tests drive every path with fakes.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from consumer.config import Guarantee, ServeConfig
from consumer.errors import ConsumerError, FatalError
from consumer.logs import log_event
from consumer.metrics import ScorerMetrics
from consumer.serializers import Headers

if TYPE_CHECKING:
    from consumer.partition_store import PartitionStore

ProducerFactory = Callable[[], Producer]
_FENCED = (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH)
_QUIET = (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN)  # librdkafka retries these
SEEK_ATTEMPTS = 50


class _Abort(ConsumerError):
    """The open transaction must be aborted (control flow inside this module only)."""


class ClientErrors:
    """What the Kafka clients report between calls, and how an error is worded.

    ``error_cb``, delivery reports and consumed error messages arrive inside poll(), consume()
    or flush(), where raising would lose them in librdkafka's callback machinery; they are
    recorded here and raised by the loop (:meth:`raise_if_fatal`) or by the next commit."""

    def __init__(self, transactional_id: str) -> None:
        self.transactional_id = transactional_id
        self.fatal: str | None = None
        self.delivery_failed: str | None = None

    def describe(self, what: str, error: KafkaError) -> str:
        """One clear line; fencing names its usual cause (two instances, one instance id)."""
        if error.code() in _FENCED or "fenced" in error.str().lower():
            return (
                f"fenced during {what}: another scorer uses transactional.id "
                f"{self.transactional_id}; give each instance its own --instance-id "
                f"({error.str()})"
            )
        return f"fatal Kafka error during {what}: {error.name()}: {error.str()}"

    def on_client_error(self, error: KafkaError) -> None:
        """``error_cb`` of every client."""
        if error.fatal():
            self.fatal = self.describe("processing", error)
        elif error.code() not in _QUIET:
            log_event("kafka_error", level="warning", error=error.str())

    def on_delivery_error(self, error: KafkaError | None, _message: object) -> None:
        """``on_delivery`` of the producer (``delivery.report.only.error``): the first failure
        fails the next at-least-once commit."""
        if error is not None and self.delivery_failed is None:
            self.delivery_failed = f"delivery failed: {error.str()}"

    def on_message_error(self, error: KafkaError) -> None:
        """An error in place of a consumed message."""
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal():
            self.fatal = f"fatal consumer error: {error.name()}: {error.str()}"
            return
        log_event("consume_error", level="warning", error=error.str())

    def raise_if_fatal(self) -> None:
        if self.fatal:
            raise FatalError(self.fatal)


def seek(consumer: Consumer, positions: list[TopicPartition]) -> None:
    """Seek each partition, waiting briefly for a fetcher that has not started yet (right
    after assign/resume librdkafka refuses the seek for a moment)."""
    for tp in positions:
        for attempt in range(SEEK_ATTEMPTS):
            try:
                consumer.seek(tp)
                break
            except KafkaException:
                if attempt == SEEK_ATTEMPTS - 1:
                    raise
                time.sleep(0.05)


class Checkpoint(ABC):
    """The open unit of work: which input it covers, its outputs, its commit and its abort.

    ``stores`` maps each assigned partition to its state (owned by ``consumer.recovery``;
    read here). Offsets: ``positions[p]`` is the next offset to process of partition ``p``,
    ``first[p]`` the first offset processed in the open unit (where an abort rewinds to)."""

    def __init__(
        self,
        config: ServeConfig,
        consumer: Consumer,
        new_producer: ProducerFactory,
        stores: Mapping[int, PartitionStore],
        errors: ClientErrors,
        metrics: ScorerMetrics,
    ) -> None:
        self.config = config
        self.topics = config.topics
        self.consumer = consumer
        self.stores = stores
        self.errors = errors
        self.metrics = metrics
        self.positions: dict[int, int] = {}
        self.first: dict[int, int] = {}
        self.open = False
        self.started = 0.0
        self._new_producer = new_producer
        self.producer: Producer | None = self._open_producer()

    # -- what each guarantee does differently ---------------------------------------------------
    @abstractmethod
    def _open_producer(self) -> Producer:
        """A producer ready for this guarantee's first unit."""

    @abstractmethod
    def _begin(self) -> None:
        """Start a unit on the broker side, if the guarantee has one."""

    @abstractmethod
    def _commit(self, offsets: list[TopicPartition]) -> None:
        """Make the outputs and ``offsets`` durable; raise :class:`_Abort` to roll back."""

    @abstractmethod
    def _abort(self) -> None:
        """Undo the unit on the broker side, if the guarantee can."""

    @abstractmethod
    def _requires_abort(self, error: KafkaError) -> bool:
        """Whether ``error`` (not fatal) means the unit must be aborted at once."""

    @abstractmethod
    def _gave_up(self, what: str, error: KafkaError) -> Exception:
        """What a non-retriable error, or one retried past the deadline, becomes."""

    # -- the unit -------------------------------------------------------------------------------
    def begin(self) -> None:
        """Open a unit unless one is open (called by the first batch with records, so an idle
        scorer keeps no transaction open)."""
        if not self.open:
            self._begin()
            self.open, self.started = True, time.monotonic()

    def track(self, partition: int, first: int) -> None:
        """``first`` is about to be processed in the open unit (an abort rewinds to it)."""
        self.first.setdefault(partition, first)

    def advance(self, partition: int, next_offset: int) -> None:
        """Records before ``next_offset`` are processed; the commit covers them."""
        self.positions[partition] = next_offset

    def due(self) -> bool:
        """The open unit is ``commit_interval_ms`` old."""
        return (
            self.open and (time.monotonic() - self.started) * 1000 >= self.config.commit_interval_ms
        )

    def forget(self, partition: int) -> int | None:
        """The partition is gone (revoked or lost); its next offset, if any was processed."""
        self.first.pop(partition, None)
        return self.positions.pop(partition, None)

    def commit(self) -> bool:
        """Commit the open unit; False if it had to be aborted (state rolled back, input
        rewound). Raises :class:`FatalError` if neither is possible."""
        if not self.open:
            return True
        self._write_changelog()
        offsets = [
            TopicPartition(self.topics.events, p, self.positions[p])
            for p in self.first
            if p in self.positions
        ]
        try:
            self._commit(offsets)
        except _Abort as why:
            self.abort(str(why))
            return False
        for partition in self.first:
            store = self.stores.get(partition)
            if store is not None:
                store.commit()
        self.first.clear()
        self.open = False
        self.metrics.transactions.labels(result="commit").inc()
        return True

    def finish(self, why: str) -> bool:
        """Commit the open unit, if any, before ``why`` (shutdown, revoke, reload); False if
        it had to be aborted."""
        if self.open and not self.commit():
            log_event("transaction_not_committed", level="warning", on=why)
            return False
        return True

    def abort(self, why: str) -> None:
        """Abort, roll every store of the unit back and rewind its input."""
        self._abort()
        rewind = []
        for partition, first in self.first.items():
            store = self.stores.get(partition)
            if store is None:
                continue
            store.rollback()
            self.positions[partition] = first
            rewind.append(TopicPartition(self.topics.events, partition, first))
        seek(self.consumer, rewind)
        self.first.clear()
        self.open = False
        self.metrics.transactions.labels(result="abort").inc()
        log_event(
            "transaction_aborted",
            level="warning",
            reason=why,
            rewound={tp.partition: tp.offset for tp in rewind},
        )

    def fail(self, why: str) -> None:
        """An unexpected exception in the loop (ARCHITECTURE.md §8: "any unexpected exception
        aborts"): abort the open unit on the broker and mark the errors fatal, so that neither
        the revoke callback of ``consumer.close()`` nor :meth:`close` commits or flushes
        outputs of a batch that was never finished. Offsets then stay at the last commit."""
        self.errors.fatal = self.errors.fatal or f"unexpected error while processing: {why}"
        if not self.open:
            return
        self.open = False
        try:
            self._abort()
        except Exception as error:  # the broker aborts it anyway: transaction timeout, or
            # our successor's init_transactions with the same transactional.id
            log_event("abort_failed", level="warning", error=str(error))
        self.metrics.transactions.labels(result="abort").inc()
        log_event("transaction_aborted", level="error", reason=self.errors.fatal)

    def _write_changelog(self) -> None:
        now_ms = int(time.time() * 1000)
        for partition in self.first:
            store = self.stores.get(partition)
            if store is None:
                continue
            for key, value in store.changelog_records(now_ms):
                self.produce(self.topics.changelog, key, value, partition=partition)

    # -- the producer ---------------------------------------------------------------------------
    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int = -1,
        headers: Headers | None = None,
    ) -> None:
        """Produce into the open unit: waits out a full local queue; a dead letter too big
        for the broker goes without its bytes; anything else fatal raises."""
        producer = self.producer
        assert producer is not None
        while True:
            try:
                if headers is None:
                    producer.produce(topic, value, key, partition=partition)
                else:
                    producer.produce(topic, value, key, partition=partition, headers=headers)
                return
            except BufferError:  # local queue full: let librdkafka deliver, then retry
                producer.poll(0.05)
            except KafkaException as exc:
                error = exc.args[0]
                if (
                    error.code() == KafkaError.MSG_SIZE_TOO_LARGE
                    and topic == self.topics.dlq
                    and value
                ):
                    # A poison record too big to copy must not stop the stream: dead-letter
                    # it without its bytes (the headers say where the original is).
                    headers = [*(headers or []), ("error.value_dropped", str(len(value)).encode())]
                    value = None
                    continue
                # Fatal: fenced, or the transaction is unusable.
                raise FatalError(self.errors.describe("produce", self._root_cause(exc))) from None

    def poll(self) -> None:
        """Serve delivery reports and client errors (they are recorded, not raised)."""
        assert self.producer is not None
        self.producer.poll(0)

    def close(self) -> None:
        """Flush what is queued unless a fatal error means nothing can be delivered; then drop
        the producer so librdkafka's threads end now, not whenever this is collected."""
        if self.producer is not None and not self.errors.fatal:
            self.producer.flush(self.config.commit_timeout_s)
        self.producer = None

    def _root_cause(self, exc: KafkaException) -> KafkaError:
        """produce() only says "_FATAL"; the producer's fatal error (e.g. _FENCED) surfaces
        from the next poll(), raised or through error_cb."""
        error: KafkaError = exc.args[0]
        if error.code() == KafkaError._FATAL and self.producer is not None:
            try:
                self.producer.poll(0)
            except KafkaException as cause:
                return cause.args[0]
        return error

    def _retrying(self, what: str, call: Callable[[], object]) -> None:
        """Run ``call``; retry retriable errors with backoff until the commit timeout; turn
        abortable errors into :class:`_Abort` and fatal ones into :class:`FatalError`."""
        deadline = time.monotonic() + self.config.commit_timeout_s * 3
        backoff = 0.05
        while True:
            try:
                call()
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.fatal():
                    raise FatalError(self.errors.describe(what, error)) from None
                if self._requires_abort(error):
                    raise _Abort(f"{what}: {error.name()}: {error.str()}") from None
                if not error.retriable() or time.monotonic() > deadline:
                    raise self._gave_up(what, error) from None
                log_event(
                    "commit_retry", level="warning", step=what, error=error.str(), backoff_s=backoff
                )
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)


class ExactlyOnce(Checkpoint):
    """A Kafka transaction per unit; see the module docstring."""

    def _open_producer(self) -> Producer:
        """A producer with transactions initialised, which also aborts what a previous
        producer with our transactional.id left open, and fences it."""
        producer = self._new_producer()
        try:
            producer.init_transactions(self.config.commit_timeout_s * 3)
        except KafkaException as error:
            raise FatalError(
                f"cannot initialise transactions for transactional.id "
                f"{self.config.transactional_id}: {error.args[0].str()}"
            ) from None
        return producer

    def _begin(self) -> None:
        assert self.producer is not None
        self.producer.begin_transaction()

    def _commit(self, offsets: list[TopicPartition]) -> None:
        producer = self.producer
        assert producer is not None
        timeout = self.config.commit_timeout_s
        if offsets:
            group = self.consumer.consumer_group_metadata()
            self._retrying(
                "send_offsets_to_transaction",
                lambda: producer.send_offsets_to_transaction(offsets, group, timeout),
            )
        self._retrying("commit_transaction", lambda: producer.commit_transaction(timeout))

    def _abort(self) -> None:
        assert self.producer is not None
        try:
            self.producer.abort_transaction(self.config.commit_timeout_s)
        except KafkaException as exc:
            self._replace_producer(exc.args[0])

    def _replace_producer(self, error: KafkaError) -> None:
        """An abort that failed: librdkafka can fail a legitimate abort with INVALID_TXN_STATE
        (confluentinc/librdkafka#4849, seen in tests/integration/test_stream_abort.py), after which
        its producer is unusable. A new producer with the same transactional.id aborts on the broker
        whatever is still open there, so the scorer rolls back and carries on instead of
        exiting. Fenced (another instance owns the id): fatal, as before."""
        message = self.errors.describe("abort_transaction", error)
        if message.startswith("fenced"):
            raise FatalError(message)
        log_event("producer_replaced", level="warning", error=error.str())
        self.producer = None  # destroyed before its replacement fences it
        self.producer = self._open_producer()
        if self.errors.fatal == self.errors.describe("processing", error):
            self.errors.fatal = None  # the replaced producer's error_cb reported this very error

    def _requires_abort(self, error: KafkaError) -> bool:
        return error.txn_requires_abort()

    def _gave_up(self, what: str, error: KafkaError) -> Exception:
        return FatalError(self.errors.describe(what, error))


class AtLeastOnce(Checkpoint):
    """Flush, then commit the offsets synchronously; a failure rewinds and reprocesses (the
    outputs already delivered are delivered again: at least once)."""

    def _open_producer(self) -> Producer:
        return self._new_producer()

    def _begin(self) -> None:
        pass  # nothing on the broker: the unit is just the offsets not yet committed

    def _commit(self, offsets: list[TopicPartition]) -> None:
        producer = self.producer
        assert producer is not None
        if producer.flush(self.config.commit_timeout_s) > 0:
            raise _Abort("outputs not acknowledged within the commit timeout")
        if self.errors.delivery_failed:
            why, self.errors.delivery_failed = self.errors.delivery_failed, None
            raise _Abort(why)
        if offsets:
            self._retrying(
                "commit offsets", lambda: self.consumer.commit(offsets=offsets, asynchronous=False)
            )

    def _abort(self) -> None:
        pass  # nothing to undo on the broker; rollback + rewind reprocess the unit

    def _requires_abort(self, error: KafkaError) -> bool:
        return False

    def _gave_up(self, what: str, error: KafkaError) -> Exception:
        return _Abort(f"{what}: {error.name()}: {error.str()}")


CHECKPOINTS: dict[Guarantee, type[Checkpoint]] = {
    Guarantee.exactly_once: ExactlyOnce,
    Guarantee.at_least_once: AtLeastOnce,
}
