"""Fixtures shared by the strategy tests."""

from __future__ import annotations

import pytest

from schemas import AvroSerde


@pytest.fixture(scope="module")
def records() -> list[tuple[int, bytes, bytes]]:
    """A 300-loan synthetic book's events in event-time order, as one partition's (offset,
    key, Avro value) records (what ``PartitionProcessor.apply`` takes)."""
    from models.data.synthetic import generate_book

    encode = AvroSerde("LoanEvent").encode
    _, events, _ = generate_book(300, seed=5)
    events.sort(key=lambda e: e["occurred_at"])
    return [(i, e["loan_id"].encode(), encode(e)) for i, e in enumerate(events)]
