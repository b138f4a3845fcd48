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
  replaced: its successor's ``init_transactions`` aborts the transaction on the broker. So is
  a producer whose ``send_offsets_to_transaction`` / ``commit_transaction`` stays blocked a
  commit timeout past ``transaction.timeout.ms`` (confluentinc/librdkafka#5511): it is
  abandoned, and the group's committed offsets then say whether the unit is redone.
- :class:`AtLeastOnce` replaces the transaction by flushes (the outputs, then the changelog)
  and a synchronous offset commit: faster, and a crash may repeat outputs (never lose them).

**Commit in the background** (exactly once, ``ServeConfig.background_commit``): a due unit's
changelog records go into its transaction on the loop's thread, then its
``send_offsets_to_transaction`` and ``commit_transaction`` run on the calls' thread
(:class:`KafkaCalls`) while the loop polls and processes the next unit. No record may enter a
transaction that is committing, so the next unit's outputs are held and produced into its own
transaction once the commit returns; its stores keep a second generation of the undo log
(``PartitionStore.seal``). If the commit fails, or outlasts its timeout, the next unit is rolled
back and its input rewound, and the committing unit finishes exactly as a commit on the loop's
thread would: retried, or aborted, rolled back and redone. Exactly once is unchanged: a unit's
records, changelog and offsets still commit in one transaction, and a crash loses at most the
units not committed. What changes is that a decision's own commit no longer also delays the
decisions after it (measured in docs/BENCHMARKS.md).

Both sit behind :class:`Checkpoint`, so the loop (``consumer.app``) never asks which guarantee
it runs under. Fencing and fatal errors raise :class:`~consumer.errors.FatalError`.

A broker outage (ARCHITECTURE.md §5, "ride out a broker outage") is waited out, not a reason to
exit: a retriable error (timeouts, not enough in-sync replicas, a coordinator moving, transport
failures) is retried with capped exponential backoff, an abortable one aborts, rolls back and
redoes the unit, and the scorer counts as *stalled* from the first failed commit until the next
one succeeds (``/readyz`` fails, ``loanrec_stalled_seconds`` grows, the log says since when and
on what). Only a stall longer than ``outage_patience_s`` (``--outage-patience-s``) is fatal.
The Kafka clients come in as constructor arguments (the consumer, and a factory for producers,
since a failed abort needs a new one), which is what lets tests drive every path with fakes.
"""

from __future__ import annotations

import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as futures_wait
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from consumer.config import Guarantee, ServeConfig
from consumer.delivery import (
    UNKNOWN_TOPIC_CODES,
    DeliveryFailure,
    PermanentDeliveryError,
    Remedy,
    permanent_commit_error,
    record_size,
    remedy,
    stop_message,
)
from consumer.errors import ConsumerError, FatalError
from consumer.health import HealthState
from consumer.logs import log_event
from consumer.metrics import ScorerMetrics
from consumer.serializers import Headers

if TYPE_CHECKING:
    from consumer.partition_store import PartitionStore

ProducerFactory = Callable[[], Producer]
_FENCED = (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH)
_QUIET = (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN)  # librdkafka retries these
# Errors of a broker outage: waited out (within the patience) even where librdkafka does not
# flag them retriable, since they end when the brokers are back.
_OUTAGE = (
    KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._WAIT_COORD,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.CONCURRENT_TRANSACTIONS,  # the coordinator cannot finish the previous step yet
)
SEEK_ATTEMPTS = 50
BACKOFF_FIRST_S = 0.1
BACKOFF_CAP_S = 5.0  # a recovered cluster is noticed within this (plus one call's timeout)
# While stalled, each retried call gets at most this timeout (librdkafka resumes a timed-out
# transactional call when it is called again), so a stop is noticed within about a second.
STALLED_CALL_TIMEOUT_S = 1.0
# A call still running this long after its own timeout is blocked (librdkafka#5456): a stall.
OVERDUE_GRACE_S = 2.0
STOP_CHECK_S = 0.1  # how often a wait looks for a stop request
MAX_FAILURES_KEPT = 1000  # delivery failures remembered between two looks at them


def waits_out(error: KafkaError) -> bool:
    """Whether ``error`` (not fatal) is one a broker outage causes and time cures."""
    return error.retriable() or error.code() in _OUTAGE


def _gone(topic: str) -> DeliveryFailure:
    """What a topic missing from the cluster's metadata amounts to (a deleted topic)."""
    text = f"{topic} is not in the cluster's metadata"
    return DeliveryFailure(topic, KafkaError._UNKNOWN_TOPIC, "_UNKNOWN_TOPIC", text, 0)


class _Abort(ConsumerError):
    """The open transaction must be aborted (control flow inside this module only); ``error``
    is the Kafka error that said so, if one did."""

    def __init__(self, message: str, error: KafkaError | None = None) -> None:
        super().__init__(message)
        self.error = error


class _Stuck(ConsumerError):
    """A commit-phase call of the producer is blocked well past transaction.timeout.ms and may
    never return (control flow inside this module only): the producer is replaced, see
    :meth:`ExactlyOnce._replace_stuck_producer`."""

    def __init__(self, what: str, blocked_s: float) -> None:
        super().__init__(f"{what}: blocked for {blocked_s:.0f} s, past its timeout")
        self.what = what


class OutageError(FatalError):
    """A broker outage outlasted ``--outage-patience-s`` (ARCHITECTURE.md §5)."""


class Interrupted(ConsumerError):
    """A stop (SIGTERM/SIGINT) arrived while a broker outage stalled the unit: it is given up
    (:meth:`Checkpoint.abandon`), never committed."""


class KafkaCalls:
    """Runs the Kafka calls of a commit on one daemon thread while the loop's thread waits in
    short steps. librdkafka bounds them by their timeout -- except when it does not: with the
    group coordinator down, ``send_offsets_to_transaction`` waits past its timeout until the
    coordinator is back (confluentinc/librdkafka#5456), and the loop, blocked inside it, could
    neither report the stall nor enforce the patience nor honour SIGTERM. Waiting here keeps
    the loop's thread in Python, so signals are handled and the checkpoint decides."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], object], Future] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self.running: Future | None = None  # the call in progress (or blocked), if any

    def submit(self, call: Callable[[], object]) -> Future:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="kafka-calls", daemon=True)
            self._thread.start()
        future: Future = Future()
        self.running = future
        self._jobs.put((call, future))
        return future

    @property
    def busy(self) -> bool:
        """A call has not returned (it holds the producer: no other call may be made)."""
        return self.running is not None and not self.running.done()

    def retire(self) -> None:
        """No more calls: the thread ends once the call it is blocked in returns, if it ever
        does, and with it the last reference to that call's producer (which librdkafka then
        destroys). Until then an abandoned producer and this thread stay behind, idle."""
        self._jobs.put(None)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            call, future = job
            try:
                future.set_result(call())
            except BaseException as error:  # handed to the waiting thread
                future.set_exception(error)
            del call, future, job  # a retired thread must not keep its last producer alive


class ClientErrors:
    """What the Kafka clients report between calls, and how an error is worded.

    ``error_cb``, delivery reports and consumed error messages arrive inside poll(), consume()
    or flush(), where raising would lose them in librdkafka's callback machinery; they are
    recorded here and raised by the loop (:meth:`raise_if_fatal`) or by the next commit."""

    def __init__(self, transactional_id: str) -> None:
        self.transactional_id = transactional_id
        self.fatal: str | None = None
        self.delivery_failed: str | None = None
        # Every failed delivery since the last look (consumer.delivery decides what each means);
        # bounded, since a unit of a failing topic fails record by record.
        self.delivery_failures: list[DeliveryFailure] = []

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

    def on_delivery_error(self, error: KafkaError | None, message: Message | None) -> None:
        """``on_delivery`` of the producer (``delivery.report.only.error``): the first failure
        fails the next at-least-once commit; each is kept for :meth:`take_delivery_failures`."""
        if error is None:
            return
        if self.delivery_failed is None:
            self.delivery_failed = f"delivery failed: {error.str()}"
        if len(self.delivery_failures) < MAX_FAILURES_KEPT and message is not None:
            headers = message.headers()
            size = record_size(message.key(), message.value(), headers)
            topic = message.topic() or ""
            failure = DeliveryFailure(topic, error.code(), error.name(), error.str(), size)
            self.delivery_failures.append(failure)

    def take_delivery_failures(self) -> list[DeliveryFailure]:
        failures, self.delivery_failures = self.delivery_failures, []
        return failures

    def on_message_error(self, error: KafkaError) -> None:
        """An error in place of a consumed message."""
        if error.code() == KafkaError._PARTITION_EOF:
            return
        # A static member fenced by a newer one with the same group.instance.id arrives here as
        # _FATAL (librdkafka's consumer is unusable from then on), not always with fatal() set.
        if error.fatal() or error.code() in (KafkaError._FATAL, KafkaError.FENCED_INSTANCE_ID):
            self.fatal = self.describe("consume", error)
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


class _Skipped(ConsumerError):
    """commit_transaction was not called: the unit's send_offsets_to_transaction failed."""


class _InFlight:
    """A unit whose commit calls run on :class:`KafkaCalls`' thread (commit in the
    background): what it covers, and the futures of its two calls."""

    __slots__ = (
        "commit_future",
        "finished",
        "first",
        "group",
        "offsets",
        "offsets_future",
        "started",
    )

    def __init__(
        self, first: dict[int, int], offsets: list[TopicPartition], group: object, started: float
    ) -> None:
        self.first = first  # the unit's first offset per partition (an abort rewinds to it)
        self.offsets = offsets  # the input offsets it commits
        self.group = group  # consumer_group_metadata() when it was submitted
        self.started = started  # monotonic, when its commit began
        self.finished = 0.0  # monotonic, when commit_transaction returned
        self.offsets_future: Future | None = None
        self.commit_future: Future | None = None

    def run(self, producer: Producer, timeout: float) -> None:
        """The commit job: only after the offsets went into the transaction."""
        sent = self.offsets_future
        if sent is not None and sent.exception() is not None:  # done: it ran first
            raise _Skipped("send_offsets_to_transaction failed")
        producer.commit_transaction(timeout)
        self.finished = time.monotonic()

    def done(self) -> bool:
        future = self.commit_future
        return future is not None and future.done()

    def succeeded(self) -> bool:
        future = self.commit_future
        return future is not None and future.done() and future.exception() is None


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
        health: HealthState | None = None,
        stop_requested: Callable[[], bool] | None = None,
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
        # Commit in the background (see the module docstring): the unit committing, whether
        # the open unit's transaction has begun, and the outputs it holds until it does.
        self.in_flight: _InFlight | None = None
        self.begun = False
        self._held: list[tuple[str, bytes | None, bytes | None, int, Headers | None]] = []
        self.started = 0.0  # when the open unit began (monotonic)
        # When the last commit began (monotonic): the commit interval is the cadence of
        # commits from one commit's start to the next (see :meth:`due`).
        self.last_commit_started = float("-inf")
        # The stall (see the module docstring): since when (monotonic) and the next backoff.
        self.health = health or HealthState()
        self._stalled_at: float | None = None
        self._backoff = BACKOFF_FIRST_S
        self.clock: Callable[[], float] = time.monotonic  # the stall's clock (tests: a fake)
        self.sleep: Callable[[float], None] = self._nap
        # A stop (SIGTERM) is acted on during a stall: the unit is given up, not committed.
        self.stop_requested: Callable[[], bool] = stop_requested or (lambda: False)
        self.abandoned = False
        self.calls = KafkaCalls()
        self.overdue_grace_s = OVERDUE_GRACE_S
        metrics.stalled.set_function(self.health.stalled_seconds)
        # max.message.bytes of the output topics (consumer.delivery): records over it are
        # dead-lettered instead of produced. Read at start by the app and again, through
        # read_limits, when the broker refuses a record as too large.
        self.size_limits: dict[str, int] = {}
        self.read_limits: Callable[[list[str]], dict[str, int]] = lambda _topics: {}
        # Which of these topics the cluster does not have (the app asks the brokers' metadata):
        # tells a deleted topic from a partition moving, both UNKNOWN_TOPIC_OR_PART.
        self.missing_topics: Callable[[list[str]], list[str]] = lambda _names: []
        # Set when a produce() finds the transaction already failed (a record the broker
        # refused makes it abortable, and every later produce fails with _STATE): the unit
        # is aborted at its commit instead of the scorer exiting on the produce.
        self.doomed: _Abort | None = None
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
    def _deliver_outputs(self) -> None:
        """Before the changelog is written: make the unit's outputs durable, if the guarantee
        does not commit them together with it; raise :class:`_Abort` to roll back."""

    @abstractmethod
    def _commit(self, offsets: list[TopicPartition]) -> None:
        """Make the outputs and ``offsets`` durable; raise :class:`_Abort` to roll back."""

    @abstractmethod
    def _abort(self) -> None:
        """Undo the unit on the broker side, if the guarantee can."""

    @abstractmethod
    def _requires_abort(self, error: KafkaError) -> bool:
        """Whether ``error`` (not fatal) means the unit must be aborted at once."""

    def _doomed_by(self, error: KafkaError) -> bool:
        """Whether ``error`` from produce() means the open unit can only be aborted."""
        return False

    def _failed_with(self, offsets: list[TopicPartition]) -> KafkaError | None:
        """The error that failed a doomed unit, if the guarantee can tell (produce() only
        says _STATE), without committing anything."""
        return None

    @abstractmethod
    def _gave_up(self, what: str, error: KafkaError) -> Exception:
        """What a non-retriable error becomes (an outage past the patience is always fatal)."""

    background = False  # whether this guarantee can commit in the background

    def _submit_commit(self, flight: _InFlight) -> None:
        """Start ``flight``'s commit calls on :attr:`calls` (guarantees with :attr:`background`)."""
        raise NotImplementedError

    def _finish_commit(self, flight: _InFlight) -> None:
        """Wait for ``flight``'s calls as :meth:`_commit` would have made them: retried,
        :class:`_Abort`, :class:`_Stuck` or fatal alike."""
        raise NotImplementedError

    # -- the unit -------------------------------------------------------------------------------
    def begin(self) -> None:
        """Open a unit unless one is open (called by the first batch with records, so an idle
        scorer keeps no transaction open)."""
        if not self.open:
            # With a commit in flight no record may enter the producer: the unit's
            # transaction begins when that commit returns (:meth:`settle`).
            self.begun = self.in_flight is None
            if self.begun:
                self._begin()
            self.open, self.started = True, time.monotonic()

    def track(self, partition: int, first: int) -> None:
        """``first`` is about to be processed in the open unit (an abort rewinds to it)."""
        self.first.setdefault(partition, first)

    def advance(self, partition: int, next_offset: int) -> None:
        """Records before ``next_offset`` are processed; the commit covers them."""
        self.positions[partition] = next_offset

    def due(self, caught_up: bool = False) -> bool:
        """The open unit is ``commit_interval_ms`` old; or the loop's last poll took every
        record already fetched (``caught_up``: it returned fewer than a full batch) and the
        last commit *began* ``commit_interval_ms`` ago or the unit is ``caught_up_commit_ms``
        old.

        Why from the last commit's start once caught up: a unit's decisions become visible
        only when it commits, and the events that arrive while a commit runs wait for it.
        Timed from the unit's begin (right after that commit) they then waited a whole
        interval more, up to commit + interval + commit; timed from the commit's start, the
        commit's own time counts toward the next interval, still at most one commit per
        interval (docs/SERVING.md has the A/B). Under a backlog (never caught up) a unit
        lasts the whole interval as before: more, shorter units would take CPU from scoring.
        The early commit (``caught_up_commit_ms``) trades more transactions for less waiting
        (off by default: docs/BENCHMARKS.md).
        """
        if not self.open:
            return False
        if (time.monotonic() - self.started) * 1000 >= self.config.commit_interval_ms:
            return True
        return caught_up and self.until_due() == 0.0

    def until_due(self) -> float:
        """Seconds until a caught-up unit is due (:meth:`due`): 0 when none is open and the
        last commit began an interval ago or more, so the first batch after an idle spell is
        not held back."""
        config = self.config
        now = time.monotonic()
        deadline = self.last_commit_started + config.commit_interval_ms / 1000
        if self.open:
            deadline = min(deadline, self.started + config.caught_up_commit_ms / 1000)
        return max(0.0, deadline - now)

    def forget(self, partition: int) -> int | None:
        """The partition is gone (revoked or lost); its next offset, if any was processed."""
        self.first.pop(partition, None)
        return self.positions.pop(partition, None)

    @property
    def unsettled(self) -> bool:
        """A unit is open or committing: something a revoke or a loss must settle."""
        return self.open or self.in_flight is not None

    def commit(self) -> bool:
        """Commit the open unit (after the one committing in the background, if any), and
        return when it is committed; False if one had to be aborted (state rolled back, input
        rewound) or was given up because a stop arrived during a stall. Raises
        :class:`FatalError` if neither is possible."""
        if self.in_flight is not None and not self.settle():
            return False
        if not self.open:
            return True
        if self.abandoned:
            self.abandon("stopping")
            return False
        self.last_commit_started = time.monotonic()
        committed = self._commit_guarded(None)
        if committed:
            self.metrics.commit_seconds.observe(time.monotonic() - self.last_commit_started)
        return committed

    def commit_in_background(self) -> bool:
        """Start committing the open unit and return while its commit calls run (the module
        docstring); the loop goes on with the next unit, and :meth:`settle` ends the commit.
        While the previous commit still runs this returns at once and the unit stays open:
        under a slow broker the loop keeps scoring (measured in ``make bench``: commits of
        54 ms on average against a 50 ms interval, and a loop that waited for each had a
        produce-to-decision p99 of 203 ms).
        Where the guarantee cannot, or a stall or a failed record is being dealt with, this
        is :meth:`commit`. False if a unit had to be aborted."""
        if (
            not (self.background and self.config.background_commit)
            or self.abandoned
            or self._stalled_at is not None
        ):
            return self.commit()
        flight = self.in_flight
        if flight is not None:
            # The previous commit is still running: the open unit goes on (it is due again at
            # the next poll) instead of the loop waiting for the broker, unless that commit is
            # a commit timeout old (then :meth:`settle` takes over).
            waited = time.monotonic() - flight.started
            if not flight.done() and waited < self._timeout(self.config.commit_timeout_s):
                return True
            if not self.settle():
                return False
        if not self.open or self.doomed is not None:
            return self.commit()
        self.last_commit_started = started = time.monotonic()
        offsets = self._unit_offsets()
        self._write_changelog()
        if self.doomed is not None:  # a changelog record failed the transaction: abort now
            return self._commit_guarded(None)
        flight = _InFlight(self.first, offsets, self.consumer.consumer_group_metadata(), started)
        for partition in flight.first:
            store = self.stores.get(partition)
            if store is not None:
                store.seal()
        self._submit_commit(flight)
        self.in_flight, self.first = flight, {}
        self.open = self.begun = False
        return True

    def settle(self, wait: bool = True) -> bool:
        """End the commit in flight, if any: on success the units it covered are final and
        the unit opened since begins its transaction with the outputs it held. If the commit
        failed, or is still running a commit timeout after it began, the unit opened since is
        rolled back and rewound, and the committing one ends the way :meth:`commit` ends a
        unit. With ``wait`` False a commit still running is left running (True). False if
        the committing unit was aborted."""
        flight = self.in_flight
        if flight is None or (not wait and not flight.done()):
            return True
        deadline = flight.started + self._timeout(self.config.commit_timeout_s)
        while not flight.done() and time.monotonic() < deadline:
            assert flight.commit_future is not None
            futures_wait([flight.commit_future], timeout=STOP_CHECK_S)
        if flight.succeeded():
            self._committed_in_background(flight)
            return True
        self._reopen(flight)
        committed = self._commit_guarded(flight)
        if committed:
            self.metrics.commit_seconds.observe(time.monotonic() - flight.started)
        return committed

    def _committed_in_background(self, flight: _InFlight) -> None:
        self.in_flight = None
        recovered = 0.0
        for partition in flight.first:
            store = self.stores.get(partition)
            if store is not None:
                recovered += store.commit_sealed()
        self.metrics.transactions.labels(result="commit").inc()
        self.metrics.commit_seconds.observe(flight.finished - flight.started)
        if recovered:
            self.metrics.recovered_after_write_off.inc(recovered)
        if self.open:  # the unit opened meanwhile: its transaction, with what it held
            self._begin()
            self.begun = True
            held, self._held = self._held, []
            for topic, key, value, partition, headers in held:
                self.produce(topic, key, value, partition, headers)

    def _reopen(self, flight: _InFlight) -> None:
        """The commit in flight did not succeed (yet): roll back and rewind the unit opened
        since, and make the committing unit the open one again, as if it had never been
        sealed, so the rest of its commit runs on the loop's thread."""
        self.in_flight = None
        self._held.clear()
        rewind = []
        for partition, first in self.first.items():
            store = self.stores.get(partition)
            if store is None:
                continue
            store.rollback()  # to the committing unit's end
            self.positions[partition] = first
            rewind.append(TopicPartition(self.topics.events, partition, first))
        seek(self.consumer, rewind)
        for partition in flight.first:
            store = self.stores.get(partition)
            if store is not None:
                store.unseal()
        for tp in flight.offsets:
            self.positions[tp.partition] = tp.offset
        self.first = flight.first
        self.open = self.begun = True
        self.started = flight.started
        if rewind:
            log_event(
                "background_commit_reopened",
                level="warning",
                rewound={tp.partition: tp.offset for tp in rewind},
            )

    def _commit_guarded(self, flight: _InFlight | None) -> bool:
        try:
            return self._commit_unit(flight)
        except Interrupted as stop:
            self.abandon(str(stop))
            return False

    def _unit_offsets(self) -> list[TopicPartition]:
        return [
            TopicPartition(self.topics.events, p, self.positions[p])
            for p in self.first
            if p in self.positions
        ]

    def _commit_unit(self, flight: _InFlight | None = None) -> bool:
        """Commit the open unit; with ``flight``, the rest of a background commit (its
        changelog is written and its calls started)."""
        offsets = self._unit_offsets() if flight is None else flight.offsets
        try:
            if flight is not None:
                self._finish_commit(flight)
            else:
                if self.doomed is None:
                    self._deliver_outputs()
                    self._write_changelog()
                if self.doomed is not None:
                    raise _Abort(str(self.doomed), self._failed_with(offsets) or self.doomed.error)
                self._commit(offsets)
        except _Stuck as stuck:
            failures = self._delivery_failures(None)  # served before: the stuck one is not polled
            self.doomed = None
            if not self._replace_stuck_producer(stuck, offsets):
                self._roll_back(str(stuck))
                return self._redo(str(stuck), failures)
        except _Abort as why:
            failures = self._delivery_failures(why.error)
            self._abort_unit(str(why))  # first: a permanent error below ends the scorer
            return self._redo(str(why), failures)
        self._resumed()
        recovered = 0.0
        for partition in self.first:
            store = self.stores.get(partition)
            if store is not None:
                recovered += store.commit()
        self.first.clear()
        self.open = False
        self.metrics.transactions.labels(result="commit").inc()
        if recovered:  # counted when final: an aborted unit's redo counts it once
            self.metrics.recovered_after_write_off.inc(recovered)
        return True

    def _redo(self, why: str, failures: list[DeliveryFailure]) -> bool:
        """After the unit was rolled back: False, once the delivery failures are acted on and,
        unless a record at fault will be dead-lettered by the redo, the stall's backoff slept
        (redoing at once would fail at once while the brokers are away)."""
        if not self._settle(failures):  # first: a permanent error ends the scorer
            self.stall("commit", why)
            self._wait()
        return False

    def _replace_stuck_producer(self, stuck: _Stuck, offsets: list[TopicPartition]) -> bool:
        """A commit-phase call is stuck (only guarantees whose ``_commit`` passes
        ``stuck_after_s`` raise :class:`_Stuck`); True if the unit turned out committed."""
        raise NotImplementedError

    def _lost_a_topic(self, error: KafkaError) -> bool:
        """A retriable failure that may be a deleted topic (records for it wait in
        librdkafka until message.timeout.ms, and the commit times out meanwhile): asked once
        per stall, at its first failure, so an outage costs one metadata request, not one per
        retry. The unit is then aborted and :meth:`_settle` stops naming the topic."""
        return error.code() in UNKNOWN_TOPIC_CODES and bool(self.missing_topics(self._written()))

    def _written(self) -> list[str]:
        """Every topic a unit writes to."""
        t = self.topics
        return [t.strategy_changes, t.risk_alerts, t.dlq, t.changelog]

    def _delivery_failures(self, error: KafkaError | None) -> list[DeliveryFailure]:
        """The delivery reports of the failed unit (librdkafka may still hold some in its
        queue after a failed commit, so serve them first), and the commit's own error when no
        retry can fix it: a topic denied by an ACL fails AddPartitionsToTxn with
        TOPIC_AUTHORIZATION_FAILED, and its records then report only the abort's _PURGE_QUEUE.
        The topic is the one the error text names, else all the unit may have written."""
        if self.producer is not None and not self.calls.busy:
            self.producer.poll(0)
        failures = self.errors.take_delivery_failures()
        written = self._written()
        codes = {f.code for f in failures} | ({error.code()} if error is not None else set())
        if codes & set(UNKNOWN_TOPIC_CODES):
            # A deleted topic fails AddPartitionsToTxn with UNKNOWN_TOPIC_OR_PART, exactly as
            # a partition in the middle of moving does: only the metadata tells them apart.
            failures.extend(_gone(topic) for topic in self.missing_topics(written))
        if error is not None and permanent_commit_error(error.code()):
            named = [t for t in written if t in error.str()]
            topic = named[0] if named else " / ".join(written)
            failures.append(DeliveryFailure(topic, error.code(), error.name(), error.str(), 0))
        return failures

    def _settle(self, failures: list[DeliveryFailure]) -> bool:
        """Act on the delivery failures of the aborted unit (``consumer.delivery``): raise
        :class:`PermanentDeliveryError` for one no retry can fix (the unit is already aborted,
        so nothing past the last commit is committed); True if a record at fault will be
        dead-lettered by the redo, False if only transient errors failed it."""
        learnt = False
        for failure in failures:
            action = remedy(failure.code, failure.topic, self.topics)
            if action is Remedy.retry:
                continue
            limit = None
            if action is Remedy.dead_letter:
                limit = self.read_limits([failure.topic]).get(failure.topic)
                if limit is not None and failure.size > limit:
                    learnt = learnt or self.size_limits.get(failure.topic) != limit
                    self.size_limits[failure.topic] = limit
                    continue
                if limit is None:
                    continue  # the limit is unknown (the admin request failed): retry
            message = stop_message(failure, limit)
            self.errors.fatal = message  # neither the revoke callback nor close() commits
            log_event(
                "permanent_delivery_error",
                level="error",
                topic=failure.topic,
                error=failure.name,
                detail=failure.text,
            )
            raise PermanentDeliveryError(message)
        if learnt:
            log_event("output_size_limits", level="warning", limits=self.size_limits)
        return learnt

    def finish(self, why: str) -> bool:
        """Commit the open unit, if any, before ``why`` (shutdown, revoke, reload); False if
        it had to be aborted."""
        if self.abandoned:
            return not self.open
        if self.unsettled and not self.commit():
            log_event("transaction_not_committed", level="warning", on=why)
            return False
        return True

    def abort(self, why: str) -> None:
        """Abort, roll every store of the unit back and rewind its input (after the commit
        in flight, if any, has ended)."""
        try:
            if self.in_flight is not None and not self.settle():
                return  # aborted with the open unit
            if not self.open:
                return
            self._abort_unit(why)
        except Interrupted as stop:
            self.abandon(str(stop))

    def abandon(self, why: str) -> None:
        """A stop during a stall (ARCHITECTURE.md §5): the open unit is never committed. It is
        aborted on the broker if one short attempt can reach it; otherwise the broker aborts
        it (after ``transaction.timeout.ms``, or when the next start with the same
        transactional id initialises). The stores roll back; nothing commits from now on (not
        the revoke callback of ``consumer.close()``, not :meth:`close`)."""
        self.abandoned = True
        outcome = "nothing open"
        if self.in_flight is not None:  # its commit may still land: nothing else does
            self._reopen(self.in_flight)
        if self.open:
            self.open = False
            outcome = self._abort_now()
            for partition in self.first:
                store = self.stores.get(partition)
                if store is not None:
                    store.rollback()
            self.first.clear()
            self.metrics.transactions.labels(result="abort").inc()
        stalled_s = 0.0 if self._stalled_at is None else self.clock() - self._stalled_at
        log_event(
            "stopped_while_stalled",
            level="warning",
            reason=why,
            unit=outcome,
            stalled_s=round(stalled_s, 3),
            on=self.health.stalled_on,
        )

    def _abort_now(self) -> str:
        """One bounded abort attempt for :meth:`abandon`; what became of the unit."""
        return "not committed (offsets stay at the last commit)"

    def _abort_unit(self, why: str) -> None:
        self.doomed = None
        self._abort()
        self._roll_back(why)

    def _roll_back(self, why: str) -> None:
        """The unit is aborted on the broker: roll its stores back and rewind its input."""
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
        self._held.clear()
        flight = self.in_flight
        if flight is not None and flight.commit_future is not None:
            # A whole unit, processed before the error: it lands (or not) before we exit.
            futures_wait([flight.commit_future], timeout=self.config.commit_timeout_s)
        if not self.open:
            return
        self.open = False
        if not self.begun:
            return  # nothing of the unit reached the broker
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
            # The checkpoint records the input offset this unit commits (every partition of
            # the unit has one: track() and advance() go together), so a restore can tell
            # whether the changelog it read reflects the group's committed offset.
            for key, value in store.changelog_records(now_ms, self.positions.get(partition)):
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
        """Produce into the open unit: waits out a full local queue; an output over its
        topic's ``max.message.bytes`` is dead-lettered (``output_too_large``), a dead letter
        too big goes without its bytes; an error no retry can fix stops with its fix. While a
        commit is in flight the record is held for the open unit's transaction."""
        if self.in_flight is not None:
            self._held.append((topic, key, value, partition, headers))
            return
        producer = self.producer
        assert producer is not None
        limit = self.size_limits.get(topic)
        if limit is not None and record_size(key, value, headers) > limit:
            if topic != self.topics.dlq and topic != self.topics.changelog:
                self._dead_letter_output(topic, key, value, limit)
                return
            if topic == self.topics.dlq and value:
                headers = [*(headers or []), ("error.value_dropped", str(len(value)).encode())]
                value = None
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
                if not error.fatal() and self._doomed_by(error):
                    if self.doomed is None:
                        why = f"produce to {topic}: {error.name()}: {error.str()}"
                        self.doomed = _Abort(why, error)
                    return  # the unit is aborted and redone: this record is produced then
                if (
                    error.code() == KafkaError.MSG_SIZE_TOO_LARGE
                    and topic in (self.topics.strategy_changes, self.topics.risk_alerts)
                    and value
                ):
                    # Over the producer's own message.max.bytes: the record is at fault.
                    self._dead_letter_output(topic, key, value, None)
                    return
                cause = self._root_cause(exc)
                if not cause.fatal() and remedy(cause.code(), topic, self.topics) is Remedy.stop:
                    failure = DeliveryFailure(
                        topic, cause.code(), cause.name(), cause.str(), record_size(key, value)
                    )
                    self.fail(f"produce to {topic}: {cause.name()}")  # abort the open unit
                    self.errors.fatal = stop_message(failure)
                    raise PermanentDeliveryError(self.errors.fatal) from None
                # Fatal: fenced, or the transaction is unusable.
                raise FatalError(self.errors.describe("produce", cause)) from None

    def _dead_letter_output(
        self, topic: str, key: bytes | None, value: bytes | None, limit: int | None
    ) -> None:
        """An output record larger than its topic accepts: to the DLQ with its bytes (so it
        can be re-published once the limit is raised) and headers saying why. Its
        ``source.topic`` is the output topic, not the input, so ``dlq redrive`` (which
        re-sends only records of the input topic) leaves it alone."""
        size = len(value or b"")
        self.metrics.dlq.labels(reason="output_too_large").inc()
        self.produce(
            self.topics.dlq,
            key,
            value,
            headers=[
                ("error.reason", b"output_too_large"),
                ("error.class", b"MSG_SIZE_TOO_LARGE"),
                (
                    "error.message",
                    (
                        f"{size}-byte record exceeds {topic}'s max.message.bytes={limit}"
                        if limit is not None
                        else f"{size}-byte record exceeds the producer's message.max.bytes"
                    ).encode(),
                ),
                ("source.topic", topic.encode()),
                ("source.partition", b"-1"),
                ("source.offset", b"-1"),
            ],
        )

    def poll(self) -> None:
        """Serve delivery reports and client errors (they are recorded, not raised); a commit
        in flight serves them itself."""
        assert self.producer is not None
        if self.in_flight is None:
            self.producer.poll(0)

    def close(self) -> None:
        """Flush what is queued unless a fatal error means nothing can be delivered; then drop
        the producer so librdkafka's threads end now, not whenever this is collected."""
        if (
            self.producer is not None
            and not self.errors.fatal
            and not self.abandoned
            and not self.calls.busy
        ):
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

    def _timeout(self, timeout_s: float) -> float:
        """A call's timeout: short while stalled (a retried call resumes where it was)."""
        return timeout_s if self._stalled_at is None else min(timeout_s, STALLED_CALL_TIMEOUT_S)

    def _call(
        self,
        what: str,
        call: Callable[[float], object],
        timeout_s: float,
        stuck_after_s: float | None = None,
        running: tuple[Future, float] | None = None,
    ) -> object:
        """``call(timeout)`` on :attr:`calls`' thread. Past its timeout (plus a grace) it is
        blocked: the scorer is stalled, the patience counts and a stop is honoured, while the
        call keeps running (librdkafka cannot cancel it); its result is used if it returns.
        Still blocked ``stuck_after_s`` after it began, it raises :class:`_Stuck`.
        ``running``: the call was submitted already (its future, and when: monotonic)."""
        timeout = self._timeout(timeout_s)
        if running is None:
            future = self.calls.submit(lambda: call(timeout))
            started = time.monotonic()
        else:
            future, started = running
        overdue_at = started + timeout + self.overdue_grace_s
        stuck_at = None if stuck_after_s is None else started + stuck_after_s
        while True:
            try:
                return future.result(timeout=STOP_CHECK_S)
            except FutureTimeout:
                pass
            now = time.monotonic()
            if now >= overdue_at:
                self.stall(
                    what,
                    f"no answer from Kafka for {now - started:.0f} s (blocked past its "
                    f"{timeout:g} s timeout)",
                )
            if self._stalled_at is not None and self.stop_requested():
                raise Interrupted(f"stop requested while stalled on {what}")
            if stuck_at is not None and now >= stuck_at:
                raise _Stuck(what, now - started)

    def _retrying(
        self,
        what: str,
        call: Callable[[float], object],
        timeout_s: float,
        stuck_after_s: float | None = None,
        running: tuple[Future, float] | None = None,
    ) -> object:
        """Run ``call(timeout)`` and return its result; retry outage errors with capped
        exponential backoff within the outage patience; turn abortable errors into
        :class:`_Abort` and fatal ones into :class:`FatalError`. ``running``: its first
        attempt was submitted already (:meth:`_call`)."""
        while True:
            try:
                first, running = running, None
                return self._call(what, call, timeout_s, stuck_after_s, first)
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.fatal():
                    raise FatalError(self.errors.describe(what, error)) from None
                if self._requires_abort(error):
                    raise _Abort(f"{what}: {error.name()}: {error.str()}", error) from None
                if not waits_out(error):
                    raise self._gave_up(what, error) from None
                if self._stalled_at is None and self._lost_a_topic(error):
                    raise _Abort(f"{what}: {error.name()}: {error.str()}", error) from None
                self.stall(what, f"{error.name()}: {error.str()}")
                log_event(
                    "commit_retry",
                    level="warning",
                    step=what,
                    error=error.str(),
                    backoff_s=self._backoff,
                )
                self._wait()

    # -- the stall ------------------------------------------------------------------------------
    def stall(self, what: str, why: str) -> None:
        """``what`` failed because of ``why``: the scorer is stalled (from the first failure on)
        and exits with :class:`OutageError` once that is longer than the outage patience."""
        now = self.clock()
        if self._stalled_at is None:
            self._stalled_at = now
            self.health.stall(what, why)
            log_event(
                "stalled",
                level="warning",
                since=_iso(self.health.stalled_since),
                on=what,
                error=why,
                patience_s=self.config.outage_patience_s,
            )
        else:
            self.health.stalled_on = what
        if now - self._stalled_at > self.config.outage_patience_s:
            raise OutageError(
                f"Kafka outage: {what} has failed since {_iso(self.health.stalled_since)} "
                f"({now - self._stalled_at:.0f} s, last: {why}); gave up after the outage "
                f"patience of {self.config.outage_patience_s:g} s (--outage-patience-s / "
                "LOANREC_OUTAGE_PATIENCE_S)"
            )

    def _wait(self) -> None:
        """Sleep the stall's current backoff and double it (up to :data:`BACKOFF_CAP_S`)."""
        if self._stalled_at is None:
            return
        self._check_stop()
        self.sleep(self._backoff)
        self._backoff = min(self._backoff * 2, BACKOFF_CAP_S)
        self._check_stop()

    def _check_stop(self) -> None:
        if self.stop_requested():
            raise Interrupted(f"stop requested while stalled on {self.health.stalled_on}")

    def _nap(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if a stop is requested meanwhile."""
        deadline = time.monotonic() + seconds
        while not self.stop_requested() and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, STOP_CHECK_S))

    def _resumed(self) -> None:
        """A commit went through: the stall, if any, is over."""
        if self._stalled_at is None:
            return
        log_event(
            "resumed",
            since=_iso(self.health.stalled_since),
            stalled_s=round(self.clock() - self._stalled_at, 3),
            on=self.health.stalled_on,
        )
        self._stalled_at = None
        self._backoff = BACKOFF_FIRST_S
        self.health.resume()


class ExactlyOnce(Checkpoint):
    """A Kafka transaction per unit; see the module docstring."""

    def _open_producer(self) -> Producer:
        """A producer with transactions initialised, which also aborts what a previous
        producer with our transactional.id left open, and fences it."""
        producer = self._new_producer()
        timeout = self.config.commit_timeout_s * 3
        try:
            self._retrying("init_transactions", producer.init_transactions, timeout)
        except OutageError:
            raise
        except (FatalError, _Abort) as error:
            raise FatalError(
                f"cannot initialise transactions for transactional.id "
                f"{self.config.transactional_id}: {error}"
            ) from None
        return producer

    def _begin(self) -> None:
        assert self.producer is not None
        self.producer.begin_transaction()

    def _deliver_outputs(self) -> None:
        pass  # the transaction commits the outputs, the changelog and the offsets together

    def _commit(self, offsets: list[TopicPartition]) -> None:
        producer = self.producer
        assert producer is not None
        timeout = self.config.commit_timeout_s
        if offsets:
            group = self.consumer.consumer_group_metadata()
            self._retrying(
                "send_offsets_to_transaction",
                lambda t: producer.send_offsets_to_transaction(offsets, group, t),
                timeout,
                self._stuck_after_s,
            )
        self._retrying(
            "commit_transaction", producer.commit_transaction, timeout, self._stuck_after_s
        )

    background = True

    def _submit_commit(self, flight: _InFlight) -> None:
        producer = self.producer
        assert producer is not None
        timeout = self._timeout(self.config.commit_timeout_s)
        if flight.offsets:
            offsets, group = flight.offsets, flight.group
            flight.offsets_future = self.calls.submit(
                lambda: producer.send_offsets_to_transaction(offsets, group, timeout)
            )
        flight.commit_future = self.calls.submit(lambda: flight.run(producer, timeout))

    def _finish_commit(self, flight: _InFlight) -> None:
        producer = self.producer
        assert producer is not None
        timeout = self.config.commit_timeout_s
        sent = flight.offsets_future
        if sent is not None:
            self._retrying(
                "send_offsets_to_transaction",
                lambda t: producer.send_offsets_to_transaction(flight.offsets, flight.group, t),
                timeout,
                self._stuck_after_s,
                (sent, flight.started),
            )
        # If the first send_offsets failed (and a retry went through), its commit job skipped.
        first_sent = sent is None or sent.exception() is None
        commit_future = flight.commit_future
        assert commit_future is not None
        self._retrying(
            "commit_transaction",
            producer.commit_transaction,
            timeout,
            self._stuck_after_s,
            (commit_future, flight.started) if first_sent else None,
        )

    @cached_property
    def _stuck_after_s(self) -> float:
        """How long a commit-phase call may block before its producer is replaced: the
        producer's transaction.timeout.ms plus the call's own timeout. librdkafka gives up a
        transactional request in flight after transaction.timeout.ms (measured: "Timed out
        AddOffsetsToTxnRequest in flight (after 30038ms)", and the call then returns), and the
        coordinator aborts the transaction by then; a call blocked past that waits for no
        request of its own. Exactly once does not depend on this value (the fencing and the
        committed offsets do, see :meth:`_replace_stuck_producer`): it only keeps a call that
        would still return from costing a producer."""
        configured = int(self.config.producer_config()["transaction.timeout.ms"]) / 1000
        return configured + self.config.commit_timeout_s + self.overdue_grace_s

    def _abort(self) -> None:
        producer = self.producer
        assert producer is not None
        timeout = self.config.commit_timeout_s
        while True:
            try:
                self._call("abort_transaction", producer.abort_transaction, timeout)
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.fatal() or not waits_out(error):
                    self._replace_producer(error)
                    return
                if self._stalled_at is None:
                    self._stop_if_a_topic_is_gone()
                # The abort timed out (brokers away): it resumes when called again.
                self.stall("abort_transaction", f"{error.name()}: {error.str()}")
                self._wait()

    def _stop_if_a_topic_is_gone(self) -> None:
        """At the first failed abort, whether a topic the unit writes was deleted: then the
        abort can hang for good (measured: _CONFLICT "commit_transaction API call is already
        in progress" for over 100 s after a commit whose records for a deleted topic timed
        out), and only the outage patience would end it. The scorer stops now instead, naming
        the topic; nothing past the last commit is committed, and the broker aborts the open
        transaction (transaction.timeout.ms, or the next instance's init_transactions)."""
        self._settle([_gone(topic) for topic in self.missing_topics(self._written())])

    def _abort_now(self) -> str:
        producer = self.producer
        if producer is None or self.calls.busy:
            return "left for the broker to abort (a Kafka call is still blocked)"
        try:
            producer.abort_transaction(STALLED_CALL_TIMEOUT_S)
        except KafkaException as exc:
            return f"left for the broker to abort ({exc.args[0].str()})"
        return "aborted"

    def _replace_producer(self, error: KafkaError) -> None:
        """An abort that failed: librdkafka can fail a legitimate abort with INVALID_TXN_STATE
        (confluentinc/librdkafka#4849, seen in tests/integration/test_stream_abort.py), after which
        its producer is unusable. A new producer with the same transactional.id aborts on the broker
        whatever is still open there, so the scorer rolls back and carries on instead of
        exiting. Fenced (another instance owns the id): fatal, as before."""
        message = self.errors.describe("abort_transaction", error)
        if message.startswith("fenced"):
            raise FatalError(message)
        log_event("producer_replaced", level="warning", reason="failed_abort", error=error.str())
        self.metrics.producer_replacements.labels(reason="failed_abort").inc()
        self.producer = None  # destroyed before its replacement fences it
        self.producer = self._open_producer()
        if self.errors.fatal == self.errors.describe("processing", error):
            self.errors.fatal = None  # the replaced producer's error_cb reported this very error

    def _replace_stuck_producer(self, stuck: _Stuck, offsets: list[TopicPartition]) -> bool:
        """A commit-phase call blocked past :attr:`_stuck_after_s`. librdkafka can leave one
        blocked for good, ignoring its timeout: ``send_offsets_to_transaction`` waits for a
        state change of its cached group coordinator, and when that broker dropped out of
        the metadata during the outage (decommissioned: its thread is gone) none comes, even
        with every broker back (confluentinc/librdkafka#5511, made unbounded by #5456; seen
        for 3 minutes in tests/integration/test_stream_outage.py). Nothing can cancel the
        call, and no other transactional call can be made on its producer meanwhile.

        So that producer is abandoned, never used or polled again (its helper thread is
        retired; if the call ever returns, the producer is destroyed there), and a new one
        with the same transactional.id is initialised. Its ``init_transactions`` bumps the
        epoch -- the abandoned producer is fenced: anything it still sends, a late
        TxnOffsetCommit or a commit, is refused by the brokers -- and returns only once the
        coordinator has ended the abandoned transaction (it answers CONCURRENT_TRANSACTIONS
        until then). Ended aborted, unless the stuck call was commit_transaction and its
        EndTxn had reached the coordinator: the committed offsets tell which, so the unit is
        either taken as committed (True) or rolled back and redone, and exactly once holds
        both ways."""
        log_event("producer_replaced", level="warning", reason="stuck_call", error=str(stuck))
        self.metrics.producer_replacements.labels(reason="stuck_call").inc()
        self.calls.retire()
        self.calls = KafkaCalls()  # the retired thread is still inside the stuck call
        self.producer = None
        self.producer = self._open_producer()
        return self._committed_anyway(offsets)

    def _committed_anyway(self, offsets: list[TopicPartition]) -> bool:
        """Whether the group's committed offsets are the unit's own (``offsets``): only its
        transaction can have moved every one of them there. read_committed makes the
        consumer ask for stable offsets (no pending transactional commit in them)."""
        if not offsets:
            return False
        asked = [TopicPartition(tp.topic, tp.partition) for tp in offsets]
        committed = self._retrying(
            "committed offsets",
            lambda t: _committed(self.consumer, asked, t),
            self.config.commit_timeout_s,
        )
        assert isinstance(committed, dict)
        return all(committed.get(tp.partition) == tp.offset for tp in offsets)

    def _requires_abort(self, error: KafkaError) -> bool:
        return error.txn_requires_abort()

    def _doomed_by(self, error: KafkaError) -> bool:
        # librdkafka refuses produce() with _STATE once the transaction is in its abortable
        # error state (rd_kafka_txn_may_enq_msg), e.g. after the broker refused a record.
        return error.txn_requires_abort() or error.code() == KafkaError._STATE

    def _failed_with(self, offsets: list[TopicPartition]) -> KafkaError | None:
        """In the abortable state every transactional call fails at its state check with the
        error that caused it (TOPIC_AUTHORIZATION_FAILED from AddPartitionsToTxn, say):
        send_offsets_to_transaction asks, and cannot commit anything even if it succeeded --
        the unit is aborted right after."""
        producer = self.producer
        if not offsets or producer is None or self.calls.busy:
            return None
        group = self.consumer.consumer_group_metadata()
        try:
            self._call(
                "send_offsets_to_transaction",
                lambda t: producer.send_offsets_to_transaction(offsets, group, t),
                STALLED_CALL_TIMEOUT_S,
                self._stuck_after_s,
            )
        except KafkaException as exc:
            return exc.args[0]
        return None

    def _gave_up(self, what: str, error: KafkaError) -> Exception:
        return FatalError(self.errors.describe(what, error))


class AtLeastOnce(Checkpoint):
    """Flush the outputs, then write and flush the changelog, then commit the offsets
    synchronously; a failure rewinds and reprocesses (the outputs already delivered are
    delivered again: at least once).

    The order is what makes a restore safe after a crash between two of the steps
    (ARCHITECTURE.md §8): a partition's checkpoint in the changelog reflects input whose
    outputs are all acknowledged, so a restore whose checkpoint is ahead of the group's
    committed offset resumes from the checkpoint's offset (``consumer.recovery``) and loses
    nothing. Flushed together, a checkpoint could land while some of its unit's outputs had
    not (the producer keeps order per partition only), and resuming from it would lose them.
    The price is one more flush per commit."""

    def _open_producer(self) -> Producer:
        return self._new_producer()

    def _begin(self) -> None:
        pass  # nothing on the broker: the unit is just the offsets not yet committed

    def _deliver_outputs(self) -> None:
        self._flush("outputs")

    def _commit(self, offsets: list[TopicPartition]) -> None:
        self._flush("changelog records")
        if offsets:
            self._retrying(
                "commit offsets",
                lambda _t: self.consumer.commit(offsets=offsets, asynchronous=False),
                self.config.commit_timeout_s,
            )

    def _flush(self, what: str) -> None:
        """Wait until everything produced is acknowledged; :class:`_Abort` if a delivery
        failed. Records still queued are delivered once the brokers are back (librdkafka
        retries them up to message.timeout.ms): waited for rather than produced again."""
        producer = self.producer
        assert producer is not None
        timeout = self.config.commit_timeout_s
        while (left := self._call("flush", producer.flush, timeout)) > 0:
            if self.errors.delivery_failed:
                break
            self.stall("flush", f"{left} {what} not acknowledged")
            self._wait()
        if self.errors.delivery_failed:
            why, self.errors.delivery_failed = self.errors.delivery_failed, None
            raise _Abort(why)

    def _abort(self) -> None:
        pass  # nothing to undo on the broker; rollback + rewind reprocess the unit

    def _requires_abort(self, error: KafkaError) -> bool:
        return False

    def _gave_up(self, what: str, error: KafkaError) -> Exception:
        # An offset commit's own error names no topic written: redone as before, not judged
        # as a delivery error (that is for a transaction's, ExactlyOnce).
        return _Abort(f"{what}: {error.name()}: {error.str()}")


CHECKPOINTS: dict[Guarantee, type[Checkpoint]] = {
    Guarantee.exactly_once: ExactlyOnce,
    Guarantee.at_least_once: AtLeastOnce,
}


def _committed(
    consumer: Consumer, partitions: list[TopicPartition], timeout: float
) -> dict[int, int]:
    """The group's committed offset of each partition; a partition's own error is raised, so
    that it is retried like the request's."""
    committed: dict[int, int] = {}
    for tp in consumer.committed(partitions, timeout=timeout):
        if tp.error is not None:
            raise KafkaException(tp.error)
        committed[tp.partition] = tp.offset
    return committed


def _iso(epoch_s: float | None) -> str:
    return "" if epoch_s is None else datetime.fromtimestamp(epoch_s, UTC).isoformat()
