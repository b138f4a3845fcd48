"""The scorer's output records, typed: what a decision or an unusable input produces.

Only a changed strategy, a tier rising to HIGH or a bad record makes one (DESIGN.md §5: emit
outputs only on change), so a small frozen object per output costs nothing measurable; the
per-event hot path stays column-wise in ``BatchResult``. Encoding to Avro and the DLQ headers
live in one place, ``consumer.serializers``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

UNKNOWN_TYPE = "unknown"  # event_type label of records that could not be decoded


class Reason(NamedTuple):
    """One driver of a risk score (schema record ``Reason``): a reason-code catalogue entry and
    its exact path-decomposition contribution to the forest's probability.

    A named tuple, not a frozen dataclass like the other outputs: ~2.5 of them are built per
    emitted record, and a frozen dataclass's ``__init__`` (one ``object.__setattr__`` per
    field) cost 2.7 us against 1.1 us for this on the shared bench machine (timeit, 3.11)."""

    code: str
    feature: str
    text: str
    contribution: float


@dataclass(frozen=True, slots=True)
class GuardrailIntervention:
    """A guardrail changed the policy's choice (schema record ``GuardrailIntervention``)."""

    rule: str
    wanted_strategy: str
    detail: str


@dataclass(frozen=True, slots=True)
class StrategyChanged:
    """A loan's strategy changed (schema ``StrategyChanged``; fields in schema order)."""

    event_id: str  # uuid5 of the source event id: a replay yields the identical record
    loan_id: str
    borrower_id: str
    previous_strategy: str | None
    new_strategy: str
    risk_score: float
    risk_tier: str
    segment: str
    model_version: str
    policy_version: str
    reason: str
    source_event_id: str
    source_topic: str
    source_partition: int
    source_offset: int
    occurred_at: int
    decided_at: int
    # v2: every field below has a default, in the schema and here.
    reasons: tuple[Reason, ...] = ()
    policy_rule: str | None = None
    guardrails: tuple[GuardrailIntervention, ...] = ()
    hold_reason: str | None = None
    next_contact_not_before: int | None = None
    experiment_id: str | None = None
    arm: str | None = None
    propensity: float | None = None
    expected_net_recovery: float | None = None


@dataclass(frozen=True, slots=True)
class EarlyWarningAlert:
    """A loan's risk tier rose to HIGH (schema ``EarlyWarningAlert``)."""

    event_id: str
    loan_id: str
    borrower_id: str
    previous_tier: str | None
    risk_tier: str
    risk_score: float
    segment: str
    model_version: str
    source_event_id: str
    source_offset: int
    occurred_at: int
    decided_at: int
    reasons: tuple[Reason, ...] = ()  # v2


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An input record the scorer could not use, with why; sent as-is to the DLQ."""

    offset: int
    key: bytes | None
    value: bytes | None
    reason: str  # snake_case: bad_header, unknown_fingerprint, unknown_loan, negative_amount...
    error_class: str
    message: str
    event_type: str = UNKNOWN_TYPE
