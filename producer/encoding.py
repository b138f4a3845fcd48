"""LoanEvent dict -> Kafka key and value bytes, with the checks the producer promises.

The value is :meth:`schemas.AvroSerde.encode` (Avro single-object encoding); the key is the
loan_id, so the default partitioner keeps each loan on one partition.

Example::

    >>> from schemas.events import make_event
    >>> event = make_event("00000000-0000-0000-0000-000000000001", "L1", "B1", 0,
    ...                    "LoanClosed", {"reason": "REPAID"})
    >>> encoder = EventEncoder()
    >>> key, value = encoder.encode(event)
    >>> key, value == AvroSerde("LoanEvent").encode(event)
    (b'L1', True)
    >>> try:
    ...     encoder.encode({**event, "occurred_at": -1})   # older than the loan's last event
    ... except RejectedEvent as error:
    ...     error.reason
    'out_of_order'
"""

from __future__ import annotations

from typing import Any

from producer.errors import ProducerError
from schemas import AvroSerde


class RejectedEvent(ProducerError, ValueError):
    """An event that is not sent; ``reason`` is a short snake_case name for the summary."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class EventEncoder:
    """LoanEvent dict -> (key, value) bytes, checking per-loan event-time order."""

    def __init__(self, serde: AvroSerde | None = None) -> None:
        self.serde = serde or AvroSerde("LoanEvent")
        self._encode_value = self.serde.encode
        self._last_time: dict[str, int] = {}

    def encode(self, event: dict[str, Any]) -> tuple[bytes, bytes]:
        try:
            loan_id = event["loan_id"]
            occurred_at = event["occurred_at"]
        except (KeyError, TypeError) as error:
            raise RejectedEvent("invalid_record", f"not a LoanEvent dict: no {error}") from None
        previous = self._last_time.get(loan_id)
        if previous is not None and occurred_at < previous:
            raise RejectedEvent(
                "out_of_order",
                f"loan {loan_id}: event {event.get('event_id')} at {occurred_at} ms is older "
                f"than the loan's previous event ({previous} ms); sort the input by loan and "
                "event time",
            )
        try:
            value = self._encode_value(event)
        except Exception as error:  # fastavro raises ValueError/TypeError/KeyError/...
            raise RejectedEvent(
                "invalid_record",
                f"event {event.get('event_id')} of loan {loan_id}: {type(error).__name__}: {error}",
            ) from None
        self._last_time[loan_id] = occurred_at
        return loan_id.encode(), value
