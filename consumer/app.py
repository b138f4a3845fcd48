"""The Kafka loop of `loan-recovery serve`: consume -> :class:`PartitionProcessor` -> produce,
exactly once.

Exactly-once (default), and the classic pitfalls it avoids:

- One transactional producer. Every ``commit_interval_ms`` one transaction carries the batch's
  outputs (strategy changes, alerts, dead letters), the changelog records of the loans changed
  since the last commit plus each touched partition's checkpoint (the online segmenter), and
  the input offsets (``send_offsets_to_transaction`` with ``consumer_group_metadata()``, so a
  zombie from an older group generation is fenced). Input is read ``read_committed`` with
  auto-commit off.
- On an abortable error the transaction is aborted, the processors roll back to their last
  committed state and the consumer is *seeked back* to the first offset of the aborted
  transaction (its fetch position is already past those records). If the abort itself fails
  (librdkafka can fail one with INVALID_TXN_STATE), the producer is replaced: its successor's
  ``init_transactions`` aborts the transaction on the broker.
- On assignment the new partitions are paused, their states and segmenters restored from the
  changelog (``read_committed``, to the end), then resumed; until then ``/readyz`` says 503.
  On revocation the open transaction is committed (or aborted) before the partitions go.
- Fencing and fatal errors raise :class:`FatalError` (the CLI exits 1 with one clear line);
  retriable errors are retried with backoff until the commit timeout.

``--guarantee at-least-once`` replaces the transaction by flush + synchronous offset commit:
faster, and a crash may repeat outputs (never lose them).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from consumer.config import Guarantee, ServeConfig
from consumer.health import HealthState
from consumer.logs import log_event
from consumer.metrics import ScorerMetrics
from consumer.processor import BatchResult, DeadLetter, PartitionProcessor
from consumer.runtime import freeze_long_lived, tune_gc_for_streaming
from consumer.state_store import ChangelogRestorer, RestoreError
from schemas import AvroSerde

HOUSEKEEPING_INTERVAL_S = 1.0
# The longest a poll waits for input that has not arrived: bounds the latency it adds.
IDLE_WAIT_S = 0.01


class FatalError(RuntimeError):
    """The scorer cannot continue (fenced, fatal client error, unrecoverable commit)."""


class ScorerApp:
    def __init__(
        self,
        config: ServeConfig,
        bundle: Any,
        policy: Any,
        metrics: ScorerMetrics | None = None,
        health: HealthState | None = None,
        bundle_loader: Callable[[], Any] | None = None,
    ) -> None:
        self.config = config
        self.bundle = bundle
        self.policy = policy
        self.metrics = metrics or ScorerMetrics()
        self.health = health or HealthState()
        self.bundle_loader = bundle_loader
        self.topics = config.topics
        self.eos = config.guarantee is Guarantee.exactly_once
        self.processors: dict[int, PartitionProcessor] = {}
        self.pending_restore: set[int] = set()
        self.rewind_after_restore: dict[int, int] = {}
        # Partitions revoked right after a commit: (processor, committed offset). If one comes
        # back and nobody committed progress on it meanwhile, its state is still exact and the
        # changelog need not be re-read (eager rebalances revoke everything every time).
        self.parked: dict[int, tuple[PartitionProcessor, int]] = {}
        self.reuse_offsets: dict[int, int] = {}
        self.positions: dict[int, int] = {}  # next offset to process, per partition
        self.txn_first: dict[int, int] = {}  # first offset processed in the open transaction
        self.in_txn = False
        self.txn_started = 0.0
        self.stopping = False
        self.reload_requested = False
        self.fatal: str | None = None
        self.delivery_failed: str | None = None
        self.assignment_seen = False
        self.last_activity = time.monotonic()
        self.processed = 0
        self._change_serde = AvroSerde("StrategyChanged")
        self._alert_serde = AvroSerde("EarlyWarningAlert")
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._restorer: ChangelogRestorer | None = None

    # -- control, from signal handlers -------------------------------------------------------------
    def request_stop(self, *_args: Any) -> None:
        self.stopping = True

    def request_reload(self, *_args: Any) -> None:
        self.reload_requested = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)

    # -- lifecycle ---------------------------------------------------------------------------------
    def run(self) -> None:
        """Process until stopped (signal, ``--exit-when-idle``); raises :class:`FatalError`."""
        self._start()
        try:
            self._loop()
            self._finish_transaction("shutdown")
        except FatalError as error:
            self.fatal = self.fatal or str(error)  # no flush/commit attempts when closing
            raise
        except KafkaException as exc:  # e.g. poll() raising a fatal producer error
            self.fatal = self._fatal_message("processing", exc.args[0])
            raise FatalError(self.fatal) from None
        finally:
            self._close()

    def _start(self) -> None:
        cfg = self.config
        self.metrics.set_model(self.bundle.version)
        self.metrics.set_policy(self.policy.version)
        self._producer = self._new_producer()
        self._restorer = ChangelogRestorer(cfg.restore_consumer_config(), self.topics.changelog)
        self._consumer = Consumer({**cfg.consumer_config(), "error_cb": self._on_client_error})
        self._consumer.subscribe(
            [self.topics.events],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        tune_gc_for_streaming()
        self.health.alive = True
        self.metrics.up.set(1)
        log_event(
            "started",
            group=cfg.group,
            instance=cfg.instance_id,
            guarantee=cfg.guarantee.value,
            input=self.topics.events,
            model_version=self.bundle.version,
            policy_version=self.policy.version,
            commit_interval_ms=cfg.commit_interval_ms,
        )

    def _new_producer(self) -> Any:
        """The producer; with exactly-once, transactions initialised (which also aborts what a
        previous producer with our transactional.id left open, and fences it)."""
        cfg = self.config
        producer = Producer(
            {
                **cfg.producer_config(),
                "error_cb": self._on_client_error,
                "delivery.report.only.error": True,
                "on_delivery": self._on_delivery_error,
            }
        )
        if self.eos:
            try:
                producer.init_transactions(cfg.commit_timeout_s * 3)
            except KafkaException as error:
                raise FatalError(
                    f"cannot initialise transactions for transactional.id "
                    f"{cfg.transactional_id}: {error.args[0].str()}"
                ) from None
        return producer

    def _loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        max_batch = self.config.max_batch
        wait_s = min(IDLE_WAIT_S, self.config.commit_interval_ms / 2000)
        next_housekeeping = 0.0
        while not self.stopping:
            self._raise_if_fatal()
            if self.reload_requested:
                self._reload()
            if self.pending_restore:
                self._restore_pending()
                if self.stopping:  # a restore cut short by a signal must not be used
                    break
            # Take what is already fetched without waiting; only an empty queue blocks (and
            # then briefly). consume(n, timeout) waits for n messages or the timeout, so one
            # blocking call under a steady load held every event up to the whole timeout.
            messages = consumer.consume(max_batch, timeout=0) or consumer.consume(
                max_batch, timeout=wait_s
            )
            if messages:
                self._process(messages)
            if (
                self.in_txn
                and (time.monotonic() - self.txn_started) * 1000 >= self.config.commit_interval_ms
            ):
                self._commit()
            now = time.monotonic()
            if now >= next_housekeeping:
                self._housekeeping()
                next_housekeeping = now + HOUSEKEEPING_INTERVAL_S
            self._exit_if_idle(now)

    def _close(self) -> None:
        self.health.alive = False
        self.health.ready = False
        self.metrics.up.set(0)
        if self._consumer is not None:
            try:
                self._consumer.close()  # leaves the group: the others rebalance at once
            except (KafkaException, RuntimeError) as error:
                log_event("consumer_close_failed", level="warning", error=str(error))
        if self._restorer is not None:
            self._restorer.close()
        if self._producer is not None and not self.fatal:
            self._producer.flush(self.config.commit_timeout_s)
        # Drop the clients so librdkafka's threads end now, not whenever the app is collected.
        self._producer = self._consumer = self._restorer = None
        log_event("stopped", processed=self.processed)

    # -- the hot path ------------------------------------------------------------------------------
    def _process(self, messages: list) -> None:
        started = time.perf_counter()
        by_partition: dict[int, list[tuple[int, bytes | None, bytes | None]]] = {}
        for message in messages:
            if message.error() is not None:
                self._on_message_error(message.error())
                continue
            by_partition.setdefault(message.partition(), []).append(
                (message.offset(), message.key(), message.value())
            )
        if not by_partition:
            return
        if self.eos and not self.in_txn:
            self._begin()
        elif not self.in_txn:
            self.in_txn, self.txn_started = True, time.monotonic()
        now_ms = int(time.time() * 1000)
        applied: list[tuple[int, PartitionProcessor, BatchResult]] = []
        count = 0
        for partition, batch in by_partition.items():
            processor = self.processors.get(partition)
            if processor is None:
                continue  # revoked meanwhile: its next owner starts from the committed offset
            if partition in self.pending_restore:  # (paused at assignment; defensive)
                self.rewind_after_restore.setdefault(partition, batch[0][0])
                continue
            self.txn_first.setdefault(partition, batch[0][0])
            applied.append((partition, processor, processor.apply(batch)))
            self.positions[partition] = batch[-1][0] + 1
            count += len(batch)
        # One vectorised scoring call for the whole poll, across partitions (each row's score
        # depends on that row only, so this changes no result, only the per-call overhead).
        matrices = [result.rows() for _, _, result in applied if result.n]
        rows = matrices[0] if len(matrices) == 1 else np.concatenate(matrices or [[]])
        scores = self.bundle.predict_proba(rows) if len(rows) else ()
        start = 0
        for partition, processor, result in applied:
            n = result.n
            if n:
                processor.decide(result, scores[start : start + n], now_ms)
                start += n
            self._emit(partition, result)
            self._record(result, now_ms)
        assert self._producer is not None
        self._producer.poll(0)
        self.processed += count
        self.last_activity = time.monotonic()
        self.metrics.batch_size.observe(count)
        self.metrics.processing.observe(time.perf_counter() - started)

    def _emit(self, partition: int, result: BatchResult) -> None:
        topics, produce = self.topics, self._produce
        encode_change, encode_alert = self._change_serde.encode, self._alert_serde.encode
        for change in result.changes:
            produce(topics.strategy_changes, change["loan_id"].encode(), encode_change(change))
        for alert in result.alerts:
            produce(topics.risk_alerts, alert["loan_id"].encode(), encode_alert(alert))
        for dead in result.dead_letters:
            produce(topics.dlq, dead.key, dead.value, headers=self._dlq_headers(partition, dead))

    def _dlq_headers(self, partition: int, dead: DeadLetter) -> list[tuple[str, bytes]]:
        return [
            ("error.reason", dead.reason.encode()),
            ("error.class", dead.error_class.encode()),
            ("error.message", dead.message[:1000].encode()),
            ("source.topic", self.topics.events.encode()),
            ("source.partition", str(partition).encode()),
            ("source.offset", str(dead.offset).encode()),
        ]

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int = -1,
        headers: list | None = None,
    ) -> None:
        producer = self._producer
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
                raise FatalError(self._fatal_message("produce", self._root_cause(exc))) from None

    def _record(self, result: BatchResult, now_ms: int) -> None:
        m = self.metrics
        for (event_type, outcome), n in result.outcomes.items():
            m.events.labels(event_type=event_type, outcome=outcome).inc(n)
        for change in result.changes:
            m.strategy_changes.labels(
                from_strategy=change["previous_strategy"] or "NONE",
                to_strategy=change["new_strategy"],
            ).inc()
        if result.alerts:
            m.alerts.labels(tier="HIGH").inc(len(result.alerts))
        for dead in result.dead_letters:
            m.dlq.labels(reason=dead.reason).inc()
        if result.n:
            lag_ms = now_ms - result.occurred_at.astype(np.float64)
            m.event_latency.observe_many(np.maximum(lag_ms, 0.0) / 1000)

    # -- transactions ------------------------------------------------------------------------------
    def _begin(self) -> None:
        assert self._producer is not None
        self._producer.begin_transaction()
        self.in_txn, self.txn_started = True, time.monotonic()

    def _changelog_records(self) -> None:
        now_ms = int(time.time() * 1000)
        for partition in self.txn_first:
            processor = self.processors.get(partition)
            if processor is None:
                continue
            for key, value in processor.changelog_records(now_ms):
                self._produce(self.topics.changelog, key, value, partition=partition)

    def _commit(self) -> bool:
        """Commit the open transaction (or, at-least-once, flush + commit offsets).
        Returns False if it had to be aborted (state rolled back, input rewound)."""
        if not self.in_txn:
            return True
        self._changelog_records()
        offsets = [
            TopicPartition(self.topics.events, p, self.positions[p])
            for p in self.txn_first
            if p in self.positions
        ]
        try:
            if self.eos:
                self._commit_transaction(offsets)
            else:
                self._commit_at_least_once(offsets)
        except _Abort as why:
            self._abort(str(why))
            return False
        for partition in self.txn_first:
            if partition in self.processors:
                self.processors[partition].commit()
        self.txn_first.clear()
        self.in_txn = False
        self.metrics.transactions.labels(result="commit").inc()
        return True

    def _commit_transaction(self, offsets: list[TopicPartition]) -> None:
        producer, consumer = self._producer, self._consumer
        assert producer is not None and consumer is not None
        timeout = self.config.commit_timeout_s
        if offsets:
            group = consumer.consumer_group_metadata()
            self._retrying(
                "send_offsets_to_transaction",
                lambda: producer.send_offsets_to_transaction(offsets, group, timeout),
            )
        self._retrying("commit_transaction", lambda: producer.commit_transaction(timeout))

    def _commit_at_least_once(self, offsets: list[TopicPartition]) -> None:
        producer, consumer = self._producer, self._consumer
        assert producer is not None and consumer is not None
        if producer.flush(self.config.commit_timeout_s) > 0:
            raise _Abort("outputs not acknowledged within the commit timeout")
        if self.delivery_failed:
            why, self.delivery_failed = self.delivery_failed, None
            raise _Abort(why)
        if offsets:
            self._retrying(
                "commit offsets", lambda: consumer.commit(offsets=offsets, asynchronous=False)
            )

    def _retrying(self, what: str, call: Callable[[], Any]) -> None:
        """Run ``call``; retry retriable errors with backoff until the commit timeout; turn
        abortable errors into :class:`_Abort` and everything else into :class:`FatalError`."""
        deadline = time.monotonic() + self.config.commit_timeout_s * 3
        backoff = 0.05
        while True:
            try:
                call()
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.fatal():
                    raise FatalError(self._fatal_message(what, error)) from None
                if self.eos and error.txn_requires_abort():
                    raise _Abort(f"{what}: {error.name()}: {error.str()}") from None
                if not error.retriable() or time.monotonic() > deadline:
                    if not self.eos:
                        raise _Abort(f"{what}: {error.name()}: {error.str()}") from None
                    raise FatalError(self._fatal_message(what, error)) from None
                log_event(
                    "commit_retry", level="warning", step=what, error=error.str(), backoff_s=backoff
                )
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _root_cause(self, exc: KafkaException) -> KafkaError:
        """produce() only says "_FATAL"; the producer's fatal error (e.g. _FENCED) surfaces
        from the next poll(), raised or through error_cb."""
        error: KafkaError = exc.args[0]
        if error.code() == KafkaError._FATAL and self._producer is not None:
            try:
                self._producer.poll(0)
            except KafkaException as cause:
                return cause.args[0]
        return error

    def _fatal_message(self, what: str, error: KafkaError) -> str:
        fenced = error.code() in (
            KafkaError._FENCED,
            KafkaError.PRODUCER_FENCED,
            KafkaError.INVALID_PRODUCER_EPOCH,
        )
        if fenced or "fenced" in error.str().lower():
            return (
                f"fenced during {what}: another scorer uses transactional.id "
                f"{self.config.transactional_id}; give each instance its own --instance-id "
                f"({error.str()})"
            )
        return f"fatal Kafka error during {what}: {error.name()}: {error.str()}"

    def _abort(self, why: str) -> None:
        """Abort, roll every processor of the transaction back and rewind its input."""
        if self.eos:
            assert self._producer is not None
            try:
                self._producer.abort_transaction(self.config.commit_timeout_s)
            except KafkaException as exc:
                self._replace_producer(exc.args[0])
        rewind = []
        for partition, first in self.txn_first.items():
            processor = self.processors.get(partition)
            if processor is None:
                continue
            processor.rollback()
            self.positions[partition] = first
            rewind.append(TopicPartition(self.topics.events, partition, first))
        self._seek(rewind)
        self.txn_first.clear()
        self.in_txn = False
        self.metrics.transactions.labels(result="abort").inc()
        log_event(
            "transaction_aborted",
            level="warning",
            reason=why,
            rewound={tp.partition: tp.offset for tp in rewind},
        )

    def _replace_producer(self, error: KafkaError) -> None:
        """An abort that failed: librdkafka can fail a legitimate abort with INVALID_TXN_STATE
        (confluentinc/librdkafka#4849, seen in tests/test_stream_abort.py), after which its
        producer is unusable. A new producer with the same transactional.id aborts on the
        broker whatever is still open there, so the scorer rolls back and carries on instead of
        exiting. Fenced (another instance owns the id): fatal, as before."""
        message = self._fatal_message("abort_transaction", error)
        if message.startswith("fenced"):
            raise FatalError(message)
        log_event("producer_replaced", level="warning", error=error.str())
        self._producer = None  # destroyed before its replacement fences it
        self._producer = self._new_producer()
        if self.fatal == self._fatal_message("processing", error):
            self.fatal = None  # the replaced producer's error_cb reported this very error

    def _seek(self, positions: list[TopicPartition]) -> None:
        assert self._consumer is not None
        for tp in positions:
            for attempt in range(50):
                try:
                    self._consumer.seek(tp)
                    break
                except KafkaException:  # the fetcher may not be started yet: give it a moment
                    if attempt == 49:
                        raise
                    time.sleep(0.05)

    def _finish_transaction(self, why: str) -> bool:
        """Commit the open transaction, if any; False if it had to be aborted."""
        if self.in_txn and not self._commit():
            log_event("transaction_not_committed", level="warning", on=why)
            return False
        return True

    # -- rebalancing -------------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        consumer.assign(partitions)
        consumer.pause(partitions)  # no input until its state is restored
        for tp in partitions:
            parked = self.parked.pop(tp.partition, None)
            if parked is not None:
                parked[0].bundle = self.bundle  # a reload may have happened meanwhile
                self.processors[tp.partition] = parked[0]
                self.reuse_offsets[tp.partition] = parked[1]
            else:
                self.processors[tp.partition] = self._new_processor(tp.partition)
            self.pending_restore.add(tp.partition)
        self.parked.clear()  # the rest belongs to other instances now
        self.assignment_seen = True
        self.health.ready = not self.pending_restore
        self.metrics.assigned_partitions.set(len(self.processors))
        log_event("partitions_assigned", partitions=sorted(tp.partition for tp in partitions))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Commit what was processed while we still own the partitions (bounded by the commit
        # timeout); the next owner restores exactly this from the changelog. After a fatal
        # error nothing can commit: the broker aborts the open transaction.
        committed = False
        try:
            committed = not self.fatal and self._finish_transaction("revoke")
        except FatalError as error:
            self.fatal = str(error)
        self._drop(partitions, park=committed)
        log_event("partitions_revoked", partitions=sorted(tp.partition for tp in partitions))

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Someone else may own them already: abort, never commit for them.
        if self.in_txn:
            try:
                self._abort("partitions lost")
            except FatalError as error:
                self.fatal = str(error)
        self._drop(partitions)
        log_event(
            "partitions_lost", level="warning", partitions=sorted(tp.partition for tp in partitions)
        )

    def _new_processor(self, partition: int) -> PartitionProcessor:
        return PartitionProcessor(self.bundle, self.policy, partition, self.topics.events)

    def _drop(self, partitions: list[TopicPartition], park: bool = False) -> None:
        for tp in partitions:
            processor = self.processors.pop(tp.partition, None)
            position = self.positions.pop(tp.partition, None)
            if (
                park
                and processor is not None
                and position is not None
                and tp.partition not in self.pending_restore
            ):
                self.parked[tp.partition] = (processor, position)
            self.reuse_offsets.pop(tp.partition, None)
            self.txn_first.pop(tp.partition, None)
            self.pending_restore.discard(tp.partition)
            self.rewind_after_restore.pop(tp.partition, None)
        self.metrics.assigned_partitions.set(len(self.processors))
        self.metrics.set_lag({})

    def _restore_pending(self) -> None:
        started = time.monotonic()
        partitions = sorted(self.pending_restore)
        assert self._restorer is not None and self._consumer is not None
        reused = self._still_current(partitions)
        for p in partitions:
            if p in self.reuse_offsets and p not in reused:  # someone else moved it on
                self.processors[p] = self._new_processor(p)
        self.reuse_offsets.clear()
        targets = {p: self.processors[p] for p in partitions if p not in reused}
        try:
            restored = self._restorer.restore(targets, keep_going=lambda: not self.stopping)
        except RestoreError as error:
            raise FatalError(str(error)) from None
        if self.stopping:
            return  # interrupted: partial state, never resume these partitions
        self.metrics.restored_loans.inc(restored)
        freeze_long_lived()
        self.pending_restore.clear()
        self._consumer.resume([TopicPartition(self.topics.events, p) for p in partitions])
        rewind, self.rewind_after_restore = self.rewind_after_restore, {}
        self._seek(
            [
                TopicPartition(self.topics.events, p, o)
                for p, o in rewind.items()
                if p in self.processors
            ]
        )
        self.health.ready = True
        self.last_activity = time.monotonic()  # idleness counts from being able to work
        log_event(
            "state_restored",
            partitions=partitions,
            restored_loans=restored,
            kept_in_memory=sorted(reused),
            seconds=round(time.monotonic() - started, 3),
        )

    def _still_current(self, partitions: list[int]) -> set[int]:
        """Parked partitions whose committed offset is still the one we committed: nobody
        processed them since, so the state in memory equals the changelog's."""
        ours = {p: self.reuse_offsets[p] for p in partitions if p in self.reuse_offsets}
        if not ours:
            return set()
        assert self._consumer is not None
        try:
            committed = self._consumer.committed(
                [TopicPartition(self.topics.events, p) for p in ours], timeout=10
            )
        except KafkaException:
            return set()  # unknown: restore, which is always right
        return {
            tp.partition for tp in committed if tp.error is None and tp.offset == ours[tp.partition]
        }

    # -- errors, reload, housekeeping --------------------------------------------------------------
    def _on_client_error(self, error: KafkaError) -> None:
        if error.fatal():
            self.fatal = self._fatal_message("processing", error)
        elif error.code() not in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
            log_event("kafka_error", level="warning", error=error.str())

    def _on_delivery_error(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None and self.delivery_failed is None:
            self.delivery_failed = f"delivery failed: {error.str()}"

    def _on_message_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal():
            self.fatal = f"fatal consumer error: {error.name()}: {error.str()}"
            return
        log_event("consume_error", level="warning", error=error.str())

    def _raise_if_fatal(self) -> None:
        if self.fatal:
            raise FatalError(self.fatal)

    def _reload(self) -> None:
        """SIGHUP: load and validate the new bundle, then swap; on failure keep the old one."""
        self.reload_requested = False
        if self.bundle_loader is None:
            return
        try:
            bundle = self.bundle_loader()
        except Exception as error:  # any failure keeps the running model
            log_event(
                "model_reload_failed",
                level="error",
                error=f"{type(error).__name__}: {error}",
                keeping=self.bundle.version,
            )
            return
        self._finish_transaction("reload")  # decisions of the old model commit with it
        self.bundle = bundle
        for processor in self.processors.values():
            processor.bundle = bundle
        self.metrics.set_model(bundle.version)
        log_event("model_reloaded", version=bundle.version)

    def _housekeeping(self) -> None:
        self._update_lag()
        segments: dict[str, int] = {}
        tiers: dict[str, int] = {}
        loans = 0
        for processor in self.processors.values():
            by_segment, by_tier = processor.population()
            loans += len(processor.states)
            for k, v in by_segment.items():
                segments[k] = segments.get(k, 0) + v
            for k, v in by_tier.items():
                tiers[k] = tiers.get(k, 0) + v
        self.metrics.set_population(loans, segments, tiers)

    def _update_lag(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        lag = {}
        for partition in list(self.processors):
            tp = TopicPartition(self.topics.events, partition)
            try:
                low, high = consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            position = self.positions.get(partition)
            if position is None:  # nothing processed here yet: from where it will start
                position = consumer.position([tp])[0].offset
                if position < 0:
                    position = low
            if high >= 0 and position >= 0:
                lag[partition] = max(0, high - position)
        self.metrics.set_lag(lag)

    def _exit_if_idle(self, now: float) -> None:
        idle = self.config.exit_when_idle_s
        if idle is None or not self.assignment_seen or self.pending_restore:
            return
        if now - self.last_activity >= idle:
            log_event("idle_exit", idle_s=idle, processed=self.processed)
            self.stopping = True


class _Abort(Exception):
    """The open transaction must be aborted (internal control flow)."""
