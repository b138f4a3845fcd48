"""The Kafka loop of `loan-recovery serve`: consume -> :class:`PartitionProcessor` -> produce,
exactly once (or at least once, ``--guarantee at-least-once``).

This module only dispatches; each concern has one owner:

- ``consumer.checkpoint``: the open transaction (begin lazily, commit with the input offsets,
  abort + rollback + rewind, producer replacement), and how Kafka errors are classified;
- ``consumer.recovery``: assignment, revocation, loss, changelog restore and parking;
- ``consumer.processor`` / ``consumer.partition_store``: decode -> apply -> decide, and each
  partition's state (the Kafka-free code `loan-recovery score` shares);
- ``consumer.serializers``: output records -> Avro bytes and DLQ headers;
- ``consumer.topology``: partition counts and the changelog's compaction, at start and after.

What stays here: signals, the poll loop, a poll's cross-partition batch, the swap of reloaded
models (what a reload loads: ``consumer.reload``), and housekeeping (lag and population
gauges, idle exit). Input is read ``read_committed`` with auto-commit off; fencing and fatal
errors end :meth:`ScorerApp.run` with :class:`FatalError` (the CLI exits 1 with one clear
line), and so does a delivery error that no retry can fix (``consumer.delivery``: the topic,
the error and the fix).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from types import FrameType

from confluent_kafka import Consumer, KafkaException, Message, Producer

from consumer.checkpoint import CHECKPOINTS, Checkpoint, ClientErrors, Interrupted
from consumer.config import Guarantee, ServeConfig
from consumer.delivery import missing_topics, read_size_limits
from consumer.errors import FatalError as FatalError
from consumer.health import HealthState
from consumer.logs import log_event
from consumer.metrics import ScorerMetrics
from consumer.partition_store import DAY_MS, total_population
from consumer.processor import BatchResult, PartitionProcessor, Record, decide_together
from consumer.recovery import ChangelogRestorer, Recovery
from consumer.reload import ModelsLoader
from consumer.runtime import tune_gc_for_streaming
from consumer.serializers import OutputSerializer
from consumer.topology import TopologyWatch, start_watch
from models.serving.contracts import EarlyWarningModel, StrategyPolicy

HOUSEKEEPING_INTERVAL_S = 1.0
# The longest a poll waits for input that has not arrived: bounds the latency it adds.
IDLE_WAIT_S = 0.01


def poll_batch(
    consume: Callable[..., list[Message]],
    max_batch: int,
    wait_s: float,
    gather: int = 1,
    hold_s: float = 0.0,
) -> tuple[list[Message], bool]:
    """One poll: the records already fetched, up to ``max_batch``, without waiting; only an
    empty queue blocks, and then for ``wait_s`` at most. Fewer than ``gather`` records (the
    input trickling in) wait up to ``hold_s`` more for the rest: the scoring calls' cost per
    batch is fixed, so many small batches cost a loaded scorer the CPU it needs to keep up
    (``ServeConfig.min_batch``). Also whether the poll caught up with the input (fewer than a
    full batch: nothing fetched is left waiting), which lets the checkpoint commit on its
    cadence (``Checkpoint.due``).

    ``consume(n, timeout)`` waits for n messages or the timeout, so a single blocking call
    under a steady load held every event up to the whole timeout: the hold is bounded by the
    caller (the open unit's due time).

    >>> queue = [[1, 2], [], [3], [4, 5], [6]]
    >>> fake = lambda n, timeout: queue.pop(0)[:n]
    >>> poll_batch(fake, 2, 0.01), poll_batch(fake, 2, 0.01)
    (([1, 2], False), ([3], True))
    >>> poll_batch(fake, 4, 0.01, gather=3, hold_s=0.02)  # gathers [6] to [4, 5]
    ([4, 5, 6], True)
    """
    messages = consume(max_batch, timeout=0) or consume(max_batch, timeout=wait_s)
    if messages and len(messages) < gather and hold_s > 0:
        messages.extend(consume(gather - len(messages), timeout=hold_s))
    return messages, len(messages) < max_batch


class ScorerApp:
    def __init__(
        self,
        config: ServeConfig,
        bundle: EarlyWarningModel,
        policy: StrategyPolicy,
        metrics: ScorerMetrics | None = None,
        health: HealthState | None = None,
        models_loader: ModelsLoader | None = None,
    ) -> None:
        self.config = config
        self.bundle = bundle
        self.policy = policy
        self.metrics = metrics or ScorerMetrics()
        self.health = health or HealthState()
        self.models_loader = models_loader  # what SIGHUP reloads (consumer.reload)
        self.topics = config.topics
        # Before any client exists: their callbacks report here from the first call on.
        self.errors = ClientErrors(config.transactional_id)
        self.serializer = OutputSerializer(config.topics)
        self.stopping = False
        self.reload_requested = False
        self.last_activity = time.monotonic()
        self.processed = 0
        self._consumer: Consumer | None = None
        self._recovery: Recovery | None = None
        self._checkpoint: Checkpoint | None = None
        self._topology: TopologyWatch | None = None

    def request_stop(self, *_args: int | FrameType | None) -> None:
        self.stopping = True

    def request_reload(self, *_args: int | FrameType | None) -> None:
        self.reload_requested = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)

    # -- lifecycle ---------------------------------------------------------------------------------
    def run(self) -> None:
        """Process until stopped (signal, ``--exit-when-idle``); raises :class:`FatalError`.
        A stop during a broker-outage stall gives up the open unit (never committed) and
        returns as promptly as the clients allow (ARCHITECTURE.md §5)."""
        try:
            recovery, checkpoint = self._start()
        except Interrupted as stop:  # stopped while init_transactions waited out an outage
            log_event("stopped_while_stalled", level="warning", reason=str(stop))
            return
        try:
            self._loop(recovery, checkpoint)
            checkpoint.finish("shutdown")
        except FatalError as error:
            self.errors.fatal = self.errors.fatal or str(error)  # no flush/commit when closing
            raise
        except KafkaException as exc:  # e.g. poll() raising a fatal producer error
            self.errors.fatal = self.errors.describe("processing", exc.args[0])
            raise FatalError(self.errors.fatal) from None
        except BaseException as exc:  # a bug, MemoryError, a model failing: abort (§8)
            checkpoint.fail(f"{type(exc).__name__}: {exc}")  # so revoke/close never commit
            raise
        finally:
            self._close()

    def _start(self) -> tuple[Recovery, Checkpoint]:
        cfg = self.config
        topology = start_watch(cfg.admin_config(), self.topics, cfg.topology_check_s)
        self.metrics.set_model(self.bundle.version)
        self.metrics.set_policy(self.policy.version)
        consumer = Consumer({**cfg.consumer_config(), "error_cb": self.errors.on_client_error})
        restorer = ChangelogRestorer(
            Consumer(cfg.restore_consumer_config()),
            self.topics.changelog,
            wait_s=cfg.restore_wait_s,
            exactly_once=cfg.guarantee is Guarantee.exactly_once,
            source=f"group {cfg.group} on {self.topics.events}",
        )
        recovery = Recovery(
            consumer,
            restorer,
            self.topics.events,
            self.bundle,
            self.policy,
            self.errors,
            self.health,
            self.metrics,
            closed_retention_ms=cfg.closed_retention_days * DAY_MS,
        )
        try:  # opens the producer: a fenced or unusable transactional id stops us here
            clients = (consumer, self._new_producer, recovery.stores, self.errors, self.metrics)
            checkpoint = CHECKPOINTS[cfg.guarantee](
                cfg, *clients, self.health, stop_requested=lambda: self.stopping
            )
        except (FatalError, Interrupted):
            recovery.close()
            consumer.close()  # not subscribed yet: nobody rebalances
            raise
        # Outputs over their topic's max.message.bytes are dead-lettered, not produced (a
        # refused record would abort every redo of its unit: consumer.delivery).
        outputs = [self.topics.strategy_changes, self.topics.risk_alerts, self.topics.dlq]
        checkpoint.read_limits = lambda names: read_size_limits(cfg.admin_config(), names)
        checkpoint.size_limits = checkpoint.read_limits(outputs)
        checkpoint.missing_topics = lambda names: missing_topics(cfg.admin_config(), names)
        self._consumer, self._recovery, self._checkpoint = consumer, recovery, checkpoint
        self._topology = topology
        recovery.subscribe(checkpoint)
        self.health.partitions = recovery  # what GET /loans reads (consumer.lookup)
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
            caught_up_commit_ms=cfg.caught_up_commit_ms,
        )
        return recovery, checkpoint

    def _new_producer(self) -> Producer:
        """A producer reporting to :attr:`errors`; the checkpoint prepares it for its guarantee
        (and calls this again to replace one a failed abort left unusable)."""
        return Producer(
            {
                **self.config.producer_config(),
                "error_cb": self.errors.on_client_error,
                "delivery.report.only.error": True,
                "on_delivery": self.errors.on_delivery_error,
            }
        )

    def _loop(self, recovery: Recovery, checkpoint: Checkpoint) -> None:
        assert self._consumer is not None
        consume, max_batch = self._consumer.consume, self.config.max_batch
        wait_s = min(IDLE_WAIT_S, self.config.commit_interval_ms / 2000)
        gather = min(self.config.min_batch, max_batch)
        batch_wait_s = self.config.batch_wait_ms / 1000
        next_housekeeping = 0.0
        while not self.stopping:
            self.errors.raise_if_fatal()
            if self.reload_requested:
                self._reload(recovery, checkpoint)
            if recovery.pending:
                if recovery.restore_pending(keep_going=lambda: not self.stopping):
                    self.last_activity = time.monotonic()  # idle time counts from being ready
                if self.stopping:  # a restore cut short by a signal must not be used
                    break
            hold_s = min(batch_wait_s, checkpoint.until_due())  # never past a due commit
            messages, caught_up = poll_batch(consume, max_batch, wait_s, gather, hold_s)
            if messages:
                with self.health.lock:  # GET /loans never sees a poll half applied
                    self._process(messages, recovery, checkpoint)
            checkpoint.settle(wait=False)  # a commit in flight that returned: its outputs go
            if checkpoint.due(caught_up):
                checkpoint.commit_in_background()
            now = time.monotonic()
            self.health.beat(now)
            if now >= next_housekeeping:
                self._housekeeping(recovery, checkpoint)
                next_housekeeping = now + HOUSEKEEPING_INTERVAL_S
            self._exit_if_idle(recovery, now)

    def _close(self) -> None:
        self.health.alive = False
        self.health.ready = False
        self.metrics.up.set(0)
        if self._consumer is not None:
            try:
                self._consumer.close()  # leaves the group: the others rebalance at once
            except (KafkaException, RuntimeError) as error:
                log_event("consumer_close_failed", level="warning", error=str(error))
        if self._recovery is not None:
            self._recovery.close()
        if self._checkpoint is not None:
            self._checkpoint.close()
        # Drop the clients so librdkafka's threads end now, not whenever the app is collected.
        self._consumer = self._recovery = self._checkpoint = None
        log_event("stopped", processed=self.processed)

    # -- the hot path ------------------------------------------------------------------------------
    def _process(self, messages: list[Message], recovery: Recovery, checkpoint: Checkpoint) -> None:
        """One poll: apply per partition, score all partitions' rows in one call, emit."""
        started = time.perf_counter()
        by_partition = self._by_partition(messages)
        if not by_partition:
            return
        checkpoint.begin()
        now_ms = int(time.time() * 1000)
        applied: list[tuple[int, PartitionProcessor, BatchResult]] = []
        count = 0
        for partition, batch in by_partition.items():
            processor = recovery.processor_for(partition, batch[0][0])
            if processor is None:
                continue
            checkpoint.track(partition, batch[0][0])
            applied.append((partition, processor, processor.apply(batch)))
            checkpoint.advance(partition, batch[-1][0] + 1)
            count += len(batch)
        decide_together(self.bundle, [(p, r) for _, p, r in applied], now_ms)
        produce, records = checkpoint.produce, self.serializer.records
        for partition, _, result in applied:
            for topic, key, value, headers in records(
                partition, result.changes, result.alerts, result.dead_letters
            ):
                produce(topic, key, value, headers=headers)
            self.metrics.record_batch(result, now_ms)
        checkpoint.poll()
        self.processed += count
        self.last_activity = time.monotonic()
        self.metrics.batch_size.observe(count)
        self.metrics.processing.observe(time.perf_counter() - started)

    def _by_partition(self, messages: list[Message]) -> dict[int, list[Record]]:
        by_partition: dict[int, list[Record]] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                self.errors.on_message_error(error)
                continue
            by_partition.setdefault(message.partition(), []).append(
                (message.offset(), message.key(), message.value())
            )
        return by_partition

    # -- reload, housekeeping ----------------------------------------------------------------------
    def _reload(self, recovery: Recovery, checkpoint: Checkpoint) -> None:
        """SIGHUP: load and verify the early-warning bundle, the policy file and the treatment
        bundle (``consumer.reload``), then swap them together; if any fails, keep all the old
        ones and log which setting failed."""
        self.reload_requested = False
        if self.models_loader is None:
            return
        try:
            models = self.models_loader()
        except Exception as error:  # any failure keeps the running models
            log_event(
                "model_reload_failed",
                level="error",
                failed=getattr(error, "setting", "unknown"),
                error=f"{type(error).__name__}: {error}",
                keeping=self.bundle.version,
                keeping_policy=self.policy.version,
            )
            return
        checkpoint.finish("reload")  # decisions of the old models commit with them
        self.bundle, self.policy = models
        recovery.use_models(models.bundle, models.policy)
        self.metrics.set_model(models.bundle.version)
        self.metrics.set_policy(models.policy.version)
        log_event(
            "model_reloaded", version=models.bundle.version, policy_version=models.policy.version
        )

    def _housekeeping(self, recovery: Recovery, checkpoint: Checkpoint) -> None:
        if self._topology is not None:
            self._topology.check_if_due(time.monotonic())
        self._update_lag(recovery, checkpoint)
        self.metrics.set_population(*total_population(recovery.stores.values()))

    def _update_lag(self, recovery: Recovery, checkpoint: Checkpoint) -> None:
        assert self._consumer is not None
        self.metrics.set_lag(recovery.input_lag(self._consumer, checkpoint.positions))

    def _exit_if_idle(self, recovery: Recovery, now: float) -> None:
        idle = self.config.exit_when_idle_s
        if idle is None or not recovery.assignment_seen or recovery.pending:
            return
        if now - self.last_activity >= idle:
            log_event("idle_exit", idle_s=idle, processed=self.processed)
            self.stopping = True
