"""The compacted changelog: restore a partition's loan states and segmenter before its input
is processed. (Writes happen inside the scorer's transaction, see ``consumer.app``.)

The changelog is partitioned like the input, so input partition ``p``'s state is changelog
partition ``p``. Restore reads it from the beginning with ``read_committed`` up to its end
(librdkafka reports the end at the last stable offset, so records of aborted transactions are
never seen and pending ones are waited for), applying every record, last write wins.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from consumer.processor import PartitionProcessor

log = logging.getLogger("loanrec.restore")


class RestoreError(RuntimeError):
    pass


class ChangelogRestorer:
    """Reads changelog partitions into :class:`PartitionProcessor` objects."""

    def __init__(self, config: dict[str, str], topic: str) -> None:
        self.topic = topic
        self._consumer = Consumer(config)

    def restore(
        self,
        processors: dict[int, PartitionProcessor],
        keep_going: Callable[[], bool] = lambda: True,
        timeout_s: float = 600.0,
    ) -> int:
        """Fill each processor from its changelog partition; returns loan states restored."""
        if not processors:
            return 0
        remaining = set(self._non_empty(processors))
        if not remaining:
            return 0
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in remaining])
        restored = 0
        deadline = time.monotonic() + timeout_s
        try:
            while remaining and keep_going():
                if time.monotonic() > deadline:
                    raise RestoreError(
                        f"changelog {self.topic} partitions {sorted(remaining)} "
                        f"not restored within {timeout_s:.0f} s"
                    )
                restored += self._apply(
                    self._consumer.consume(1000, timeout=0.05), processors, remaining
                )
        finally:
            self._consumer.unassign()
        for p in processors:
            processors[p].finish_restore()
        return restored

    def _non_empty(self, processors: Iterable[int]) -> list[int]:
        out = []
        for p in processors:
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self.topic, p), timeout=10
            )
            if high > low:
                out.append(p)
        return out

    def _apply(
        self, messages: list, processors: dict[int, PartitionProcessor], remaining: set[int]
    ) -> int:
        restored = 0
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
                if processors[message.partition()].restore(message.key(), message.value()):
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
