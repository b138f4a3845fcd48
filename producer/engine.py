"""The event producer: any iterable of ``LoanEvent`` dicts -> Avro single-object bytes -> Kafka.

Guarantees, and what they rest on:

- **Every event is accounted for.** The producer is idempotent with ``acks=all``; at the end it
  flushes, and each event is either acknowledged by the broker, or counted as failed with the
  error librdkafka reported, or rejected before sending (invalid record, out of per-loan order).
  Nothing is dropped without being counted, and any failure makes :attr:`ProduceSummary.ok`
  false (the CLI exits non-zero).
- **Per-loan event-time order.** Records are keyed by ``loan_id`` and partitioned by
  librdkafka's default partitioner, so one loan's events share one partition, whose order the
  idempotent producer preserves across retries. The source must yield each loan's events in
  event-time order; an event older than its loan's previous one is rejected, not sent.
- **A lean hot path.** Events go in chunks: one rate-limiter call, one ``poll`` and one progress
  update per chunk; librdkafka reports deliveries only when they fail
  (``delivery.report.only.error``), so successes cost no Python callback. After the final
  flush, ``acknowledged = sent - failed`` is exact because a message leaves librdkafka's queue
  only once it is acknowledged or has failed.

Example (needs a broker)::

    producer = EventProducer({"bootstrap.servers": "127.0.0.1:9092"}, topic="loan.events")
    summary = producer.run(events)            # events: iterable of LoanEvent dicts
    assert summary.ok, summary.first_error
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from producer.config import producer_config
from producer.encoding import EventEncoder, RejectedEvent
from producer.ratelimit import TokenBucket
from schemas.events import short_type

CHUNK = 1024  # events per hot-loop iteration when unthrottled


@dataclass
class ProduceSummary:
    """What happened to every event read from the source."""

    topic: str
    read: int = 0  # taken from the source
    sent: int = 0  # handed to librdkafka (or written to the file in a dry run)
    acknowledged: int = 0  # confirmed by the broker (dry run: written)
    failed: int = 0  # delivery failed (after librdkafka's retries) or flush timed out
    rejected: int = 0  # never sent: invalid record or out of per-loan event-time order
    errors: dict[str, int] = field(default_factory=dict)  # error name -> count
    first_error: str | None = None
    by_type: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    interrupted: bool = False  # stopped by SIGINT/SIGTERM (or stop()) before the source ended
    fatal_error: str | None = None  # the producer hit a fatal error and stopped early
    dry_run: bool = False
    out: str | None = None

    @property
    def events_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return (
            self.failed == 0
            and self.rejected == 0
            and self.fatal_error is None
            and self.acknowledged == self.sent
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "events_per_s": round(self.events_per_s, 1), "ok": self.ok}


class StopFlag:
    """Set from a signal handler or another thread; checked once per chunk."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


ProgressCallback = Callable[[ProduceSummary, int], None]  # (summary so far, in flight)


class EventProducer:
    """Send LoanEvents to one topic with an idempotent producer; see the module docstring."""

    def __init__(
        self,
        config: dict[str, str],
        topic: str,
        rate: float | None = None,
        flush_timeout_s: float = 120.0,
        chunk: int = CHUNK,
    ) -> None:
        self.topic = topic
        self.flush_timeout_s = flush_timeout_s
        self.chunk = chunk if rate is None else max(1, min(chunk, int(rate / 20) or 1))
        self.bucket = TokenBucket(rate, burst=max(self.chunk, rate / 10)) if rate else None
        self.summary = ProduceSummary(topic=topic)
        self.fatal: str | None = None
        full = producer_config(config.get("bootstrap.servers"), config)
        self._producer = Producer(
            {
                **full,
                "delivery.report.only.error": True,
                "on_delivery": self._on_delivery_error,
                "error_cb": self._on_client_error,
            }
        )

    # -- callbacks: served from poll()/flush() on this thread -------------------------------
    def _on_delivery_error(self, error: KafkaError | None, _message: Any) -> None:
        if error is None:  # only-error reports: defensive, in case a user file turned it off
            return
        self.summary.failed += 1
        self._count_error(error.name(), f"delivery failed: {error.str()}")

    def _on_client_error(self, error: KafkaError) -> None:
        # Transient broker/network errors are retried by librdkafka; only fatal ones (e.g. the
        # idempotent producer fenced) stop the run.
        if error.fatal():
            self.fatal = f"fatal producer error: {error.name()}: {error.str()}"
            self._count_error(error.name(), self.fatal)

    def _count_error(self, name: str, message: str) -> None:
        self.summary.errors[name] = self.summary.errors.get(name, 0) + 1
        if self.summary.first_error is None:
            self.summary.first_error = message

    # -- the run ---------------------------------------------------------------------------
    def run(
        self,
        events: Iterable[dict[str, Any]],
        stop: StopFlag | None = None,
        progress: ProgressCallback | None = None,
        encoder: EventEncoder | None = None,
    ) -> ProduceSummary:
        """Send every event, flush, and return the summary (also kept in ``self.summary``)."""
        stop = stop or StopFlag()
        encoder = encoder or EventEncoder()
        started = time.monotonic()
        self._send_all(iter(events), encoder, stop, progress)
        self._flush()
        s = self.summary
        s.seconds = time.monotonic() - started
        s.acknowledged = s.sent - s.failed
        if progress:
            progress(s, 0)
        return s

    def _send_all(
        self,
        events: Iterator[dict[str, Any]],
        encoder: EventEncoder,
        stop: StopFlag,
        progress: ProgressCallback | None,
    ) -> None:
        s, by_type = self.summary, Counter[str]()
        exhausted = False
        while not stop.is_set() and self.fatal is None:
            if self.bucket and not self.bucket.acquire(self.chunk, stop.is_set):
                break
            chunk = list(islice(events, self.chunk))
            if not chunk:
                # A live source also ends when asked to stop: that is an interruption.
                exhausted = not stop.is_set()
                break
            s.read += len(chunk)
            self._send_chunk(chunk, encoder, by_type)
            self._producer.poll(0)
            if progress:
                progress(s, len(self._producer))
        s.interrupted = not exhausted and stop.is_set()
        s.fatal_error = self.fatal
        s.by_type = {short_type(k): v for k, v in sorted(by_type.items())}

    def _send_chunk(
        self, chunk: list[dict[str, Any]], encoder: EventEncoder, by_type: Counter[str]
    ) -> None:
        produce, topic, encode = self._producer.produce, self.topic, encoder.encode
        sent = 0
        for event in chunk:
            try:
                key, value = encode(event)
            except RejectedEvent as error:
                self.summary.rejected += 1
                self._count_error(error.reason, str(error))
                continue
            if not self._produce_one(produce, topic, key, value):
                continue
            by_type[event["body"][0]] += 1
            sent += 1
        self.summary.sent += sent

    def _produce_one(
        self, produce: Callable[..., None], topic: str, key: bytes, value: bytes
    ) -> bool:
        """Queue one message; False if librdkafka refused it synchronously (counted)."""
        while True:
            try:
                produce(topic, value, key)
                return True
            except BufferError:  # local queue full: let librdkafka drain it, then retry
                self._producer.poll(0.05)
            except KafkaException as error:  # e.g. larger than message.max.bytes
                self.summary.sent += 1  # handed over and failed: counted in both
                self.summary.failed += 1
                kafka_error = error.args[0]
                self._count_error(kafka_error.name(), f"produce refused: {kafka_error.str()}")
                return False

    def _flush(self) -> None:
        remaining = self._producer.flush(self.flush_timeout_s)
        if remaining:
            # Not confirmed within the timeout: purge, so each one is reported as failed
            # through the delivery callback instead of vanishing.
            self._producer.purge(in_queue=True, in_flight=True, blocking=False)
            remaining = self._producer.flush(5.0)
        if remaining:  # still no verdict: count them as failed rather than as acknowledged
            self.summary.failed += remaining
            self._count_error("_UNCONFIRMED", f"{remaining} events without a delivery report")


def write_avro_file(
    events: Iterable[dict[str, Any]],
    out: Path,
    stop: StopFlag | None = None,
    progress: ProgressCallback | None = None,
    codec: str = "deflate",
) -> ProduceSummary:
    """``--dry-run``: validate and encode exactly like the producer, but write the events to an
    Avro object container file (fastavro) instead of Kafka. ``--source events`` reads it back."""
    from fastavro.write import Writer

    stop = stop or StopFlag()
    encoder = EventEncoder()
    summary = ProduceSummary(topic="", dry_run=True, out=str(out))
    by_type: Counter[str] = Counter()
    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as handle:
        writer = Writer(handle, encoder.serde.writer.parsed, codec=codec)
        iterator = iter(events)
        while not stop.is_set():
            chunk = list(islice(iterator, CHUNK))
            if not chunk:
                break
            summary.read += len(chunk)
            for event in chunk:
                try:
                    encoder.encode(event)  # the same validation as a real run
                except RejectedEvent as error:
                    summary.rejected += 1
                    summary.errors[error.reason] = summary.errors.get(error.reason, 0) + 1
                    summary.first_error = summary.first_error or str(error)
                    continue
                writer.write(event)
                by_type[event["body"][0]] += 1
                summary.sent += 1
            if progress:
                progress(summary, 0)
        else:
            summary.interrupted = True
        writer.flush()
    summary.acknowledged = summary.sent
    summary.by_type = {short_type(k): v for k, v in sorted(by_type.items())}
    summary.seconds = time.monotonic() - started
    return summary
