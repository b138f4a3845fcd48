"""Output records -> Kafka records (topic, key, Avro value, headers), in one place.

The processor decides in typed objects (``consumer.outputs``); this turns them into bytes, so
the wire format (Avro single-object encoding, DLQ headers as listed in docs/INTERNALS.md) is
defined once, for every output topic.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields
from typing import Any

from consumer.outputs import DeadLetter, EarlyWarningAlert, StrategyChanged
from schemas import AvroSerde
from schemas.topics import Topics

Headers = list[tuple[str, bytes]]
# (topic, key, value, headers); headers None = none, so produce() is called without them.
KafkaRecord = tuple[str, bytes | None, bytes | None, Headers | None]
MAX_ERROR_MESSAGE = 1000  # characters of error.message kept in a DLQ header


def as_record(output: StrategyChanged | EarlyWarningAlert) -> dict[str, Any]:
    """The Avro record (a dict, which fastavro wants) of an output, fields in schema order;
    nested records (reasons, guardrail interventions) become dicts too."""
    record = {name: getattr(output, name) for name in _field_names(type(output))}
    for name in _NESTED:
        items = record.get(name)
        if items:
            record[name] = [
                {f: getattr(item, f) for f in _field_names(type(item))} for item in items
            ]
        elif name in record:
            record[name] = []
    return record


_NESTED = ("reasons", "guardrails")


_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _NAMES.get(cls)
    if names is None:
        named = getattr(cls, "_fields", None)  # a NamedTuple (``Reason``) or a dataclass
        names = _NAMES[cls] = named if named is not None else tuple(f.name for f in fields(cls))
    return names


class OutputSerializer:
    """Encodes what one partition's batch produced for the topics in ``topics``."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self._change = AvroSerde("StrategyChanged")
        self._alert = AvroSerde("EarlyWarningAlert")

    def records(
        self,
        partition: int,
        changes: list[StrategyChanged],
        alerts: list[EarlyWarningAlert],
        dead_letters: list[DeadLetter],
    ) -> Iterator[KafkaRecord]:
        """Changes, then alerts, then dead letters, each keyed like its input (the loan id) so
        a loan's outputs keep their order downstream."""
        topics = self.topics
        for change in changes:
            yield topics.strategy_changes, change.loan_id.encode(), self.encode_change(change), None
        for alert in alerts:
            yield topics.risk_alerts, alert.loan_id.encode(), self.encode_alert(alert), None
        for dead in dead_letters:
            yield topics.dlq, dead.key, dead.value, self.dlq_headers(partition, dead)

    def encode_change(self, change: StrategyChanged) -> bytes:
        return self._change.encode(as_record(change))

    def encode_alert(self, alert: EarlyWarningAlert) -> bytes:
        return self._alert.encode(as_record(alert))

    def dlq_headers(self, partition: int, dead: DeadLetter) -> Headers:
        """Why the record is here and where its original is (the DLQ record carries the
        original key and bytes unchanged, so it can be re-driven after a fix, DESIGN.md §8)."""
        return [
            ("error.reason", dead.reason.encode()),
            ("error.class", dead.error_class.encode()),
            ("error.message", dead.message[:MAX_ERROR_MESSAGE].encode()),
            ("source.topic", self.topics.events.encode()),
            ("source.partition", str(partition).encode()),
            ("source.offset", str(dead.offset).encode()),
        ]
