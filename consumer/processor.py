"""The pure heart of the scorer: one input partition's loans, its online segmenter, and the
decisions its events cause. No Kafka here, so `loan-recovery serve` (``consumer.app``) and
`loan-recovery score` (the batch reference) run exactly the same code.

``PartitionProcessor.process(batch)`` takes ``(offset, key, value_bytes)`` tuples of one
partition in offset order and, for each record:

1. decodes it (``SchemaDecodeError`` -> dead letter with the serde's reason);
2. skips a duplicate ``event_id`` (counted, not dead-lettered);
3. opens the loan (``LoanOpened``) or applies the event to its state with the one feature
   state machine, ``models.state``; unknown loans and ``InvalidEvent`` -> dead letter;
4. remembers the loan's feature row right after this event.

Then it scores every row of the batch in ONE vectorised ``predict_proba`` call and, in offset
order, updates the partition's online segmenter, applies the policy, and emits a
``StrategyChanged`` when the loan's strategy changes and an ``EarlyWarningAlert`` when its tier
rises to HIGH. Output ids are uuid5 of the source event id, so a replay yields identical
records. Every result is a pure function of the partition's input sequence and the state
committed before it (DESIGN.md §5, Determinism).

Transactions: loans touched since the last :meth:`commit` keep their committed image in an
undo log, and the segmenter its committed JSON; :meth:`rollback` restores both after an
aborted Kafka transaction.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from models.state import DuplicateEvent, InvalidEvent, LoanState
from models.state_codec import LoanStateCodec
from schemas import AvroSerde, SchemaDecodeError
from schemas.events import short_type

_short_type = cache(short_type)  # a handful of body types, named once per event

CHECKPOINT_KEY = "__partition__"
# Beyond float32 (what the trees compare in) a value is corrupt input, not a measurement.
_FEATURE_LIMIT = 1e38
_CHANGE_NS = uuid.UUID("6f1c3a52-8d1e-4c55-9a8e-0d5b2f7c1e01")
_ALERT_NS = uuid.UUID("2b7e9c14-3f6a-4d0b-8e21-5c9d7a4f3b02")
UNKNOWN_TYPE = "unknown"  # event_type label of records that could not be decoded


def model_row(row: list[float]) -> list[float]:
    """``features()`` made safe for the model: an infinite or absurdly large value (e.g. a
    ratio over a near-zero income) becomes missing (NaN, which the pipeline imputes) instead
    of making ``predict_proba`` -- and with it the whole batch -- fail.

    >>> model_row([1.0, float("inf"), 2e300, float("nan")])[:3]
    [1.0, nan, nan]
    """
    total = sum(row)
    if -_FEATURE_LIMIT < total < _FEATURE_LIMIT:  # the common case: one cheap check
        return row
    return [v if -_FEATURE_LIMIT < v < _FEATURE_LIMIT else math.nan for v in row]


@dataclass(slots=True)
class DeadLetter:
    """An input record the scorer could not use, with why; sent as-is to the DLQ."""

    offset: int
    key: bytes | None
    value: bytes | None
    reason: str  # snake_case: bad_header, unknown_fingerprint, unknown_loan, negative_amount...
    error_class: str
    message: str
    event_type: str = UNKNOWN_TYPE


@dataclass
class BatchResult:
    changes: list[dict[str, Any]] = field(default_factory=list)  # StrategyChanged records
    alerts: list[dict[str, Any]] = field(default_factory=list)  # EarlyWarningAlert records
    dead_letters: list[DeadLetter] = field(default_factory=list)
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (type, outcome)
    occurred_at: list[int] = field(default_factory=list)  # of scored events, for latency
    next_offset: int | None = None
    pending: list[_Pending] = field(default_factory=list)  # applied, waiting for scores

    def rows(self) -> list[list[float]]:
        return [p.row for p in self.pending]

    @property
    def scored(self) -> int:
        return len(self.occurred_at)


@dataclass(slots=True)
class _Pending:
    """One applied event waiting for its score."""

    offset: int
    event: dict[str, Any]
    state: LoanState
    row: list[float]  # the loan's features right after this event (later ones mutate state)


class PartitionProcessor:
    """All state and logic of one input partition; see the module docstring.

    Example (with a trained bundle)::

        processor = PartitionProcessor(bundle, policy, partition=0, topic="loan.events")
        result = processor.process([(0, b"L1", opened_bytes), (1, b"L1", missed_bytes)])
        result.changes[-1]["new_strategy"]
    """

    def __init__(self, bundle: Any, policy: Any, partition: int, topic: str = "loan.events",
                 segmenter: Any = None) -> None:  # fmt: skip
        from models.segmentation import OnlineSegmenter

        self.bundle = bundle
        self.policy = policy
        self.partition = partition
        self.topic = topic
        self.states: dict[str, LoanState] = {}
        self.segmenter = segmenter or OnlineSegmenter.from_bundle(bundle)
        self.events_applied = 0
        self._serde = AvroSerde("LoanEvent")
        self._state_codec = LoanStateCodec()
        self._checkpoint_serde = AvroSerde("PartitionCheckpoint")
        self._undo: dict[str, LoanState | None] = {}  # committed image of each touched loan
        self._committed_segmenter = self.segmenter.to_json()
        self._committed_events_applied = 0
        # Loans per current segment / tier, kept up to date per decision (the gauges must not
        # cost a scan of a million loans every scrape).
        self.by_segment: Counter[str] = Counter()
        self.by_tier: Counter[str] = Counter()

    # -- the batch ------------------------------------------------------------------------------
    def process(self, batch: list[tuple[int, bytes | None, bytes | None]],
                decided_at_ms: int = 0) -> BatchResult:  # fmt: skip
        """:meth:`apply`, one ``predict_proba`` call, :meth:`decide`."""
        result = self.apply(batch)
        if result.pending:
            self.decide(result, self.bundle.predict_proba(result.rows()), decided_at_ms)
        return result

    def apply(self, batch: list[tuple[int, bytes | None, bytes | None]]) -> BatchResult:
        """Decode and apply every record; the result's ``rows()`` still need scores. (The
        Kafka loop scores the rows of all its partitions in one call: a row's score depends
        on that row only.)"""
        result = BatchResult()
        result.pending = [p for record in batch if (p := self._apply(record, result)) is not None]
        if batch:
            result.next_offset = batch[-1][0] + 1
        return result

    def _apply(self, record: tuple[int, bytes | None, bytes | None],
               result: BatchResult) -> _Pending | None:  # fmt: skip
        offset, key, value = record
        try:
            event = self._serde.decode(value)  # type: ignore[arg-type]
        except SchemaDecodeError as error:
            self._dead(result, offset, key, value, error.reason, error, UNKNOWN_TYPE)
            return None
        body_type = _short_type(event["body"][0])
        loan_id = event["loan_id"]
        if key != loan_id.encode():
            # A loan's state lives in the partition of its key: a record keyed otherwise is
            # on the wrong partition, and applying it would split the loan's history.
            self._dead(result, offset, key, value, "key_mismatch",
                       ValueError(f"record key {key!r} is not its loan_id {loan_id!r}"),
                       body_type)  # fmt: skip
            return None
        try:
            state = self._open_or_apply(loan_id, self.states.get(loan_id), event)
        except DuplicateEvent:
            result.outcomes[(body_type, "duplicate")] += 1
            return None
        except InvalidEvent as error:
            self._dead(result, offset, key, value, error.reason, error, body_type)
            return None
        except Exception as error:  # a state-machine bug must not become a crash loop
            self._dead(result, offset, key, value, "processing_error", error, body_type)
            return None
        self.events_applied += 1
        result.outcomes[(body_type, "scored")] += 1
        result.occurred_at.append(event["occurred_at"])
        return _Pending(offset, event, state, model_row(state.features()))

    def _open_or_apply(self, loan_id: str, state: LoanState | None,
                       event: dict[str, Any]) -> LoanState:  # fmt: skip
        if state is None:
            new_state = LoanState.open(event)  # raises unknown_loan for any other body type
            self._remember_committed(loan_id, None)
            self.states[loan_id] = new_state
            return new_state
        self._remember_committed(loan_id, state)
        state.apply(event)  # raises InvalidEvent before mutating (models.state contract)
        return state

    def _remember_committed(self, loan_id: str, state: LoanState | None) -> None:
        if loan_id not in self._undo:
            self._undo[loan_id] = None if state is None else state.copy()

    def _dead(self, result: BatchResult, offset: int, key: bytes | None, value: bytes | None,
              reason: str, error: Exception, event_type: str) -> None:  # fmt: skip
        result.dead_letters.append(DeadLetter(offset, key, value, reason,
                                              type(error).__name__, str(error), event_type))
        result.outcomes[(event_type, "dlq")] += 1

    # -- scoring and decisions ------------------------------------------------------------------
    def decide(self, result: BatchResult, scores: Sequence[float], decided_at_ms: int = 0
               ) -> None:  # fmt: skip
        """Segment, tier, policy and outputs for each applied event, in offset order."""
        pending = result.pending
        tier_of, decide = self.bundle.tier, self.policy.decide
        segmenter = self.segmenter
        model_version, policy_version = self.bundle.version, self.policy.version
        for p, raw_score in zip(pending, scores, strict=True):
            score = float(raw_score)
            state, event = p.state, p.event
            segment = segmenter.learn_predict(p.row)
            tier = tier_of(score)
            previous_strategy, previous_tier = state.strategy, state.risk_tier
            strategy = decide(tier, segment, score, previous_strategy)
            if tier != previous_tier:
                self._move(self.by_tier, previous_tier, tier)
            if segment != state.segment:
                self._move(self.by_segment, state.segment, segment)
            state.strategy, state.risk_tier = strategy, tier
            state.risk_score, state.segment = score, segment
            if strategy != previous_strategy:
                result.changes.append(self._change_record(
                    p, previous_strategy, strategy, score, tier, segment, previous_tier,
                    model_version, policy_version, decided_at_ms))  # fmt: skip
            if tier == "HIGH" and previous_tier != "HIGH":
                result.alerts.append({
                    "event_id": str(uuid.uuid5(_ALERT_NS, event["event_id"])),
                    "loan_id": event["loan_id"], "borrower_id": event["borrower_id"],
                    "previous_tier": previous_tier, "risk_tier": tier, "risk_score": score,
                    "segment": segment, "model_version": model_version,
                    "source_event_id": event["event_id"], "source_offset": p.offset,
                    "occurred_at": event["occurred_at"], "decided_at": decided_at_ms,
                })  # fmt: skip

    @staticmethod
    def _move(counts: Counter[str], old: str | None, new: str) -> None:
        if old is not None:
            counts[old] -= 1
        counts[new] += 1

    def _change_record(self, p: _Pending, previous: str | None, strategy: str, score: float,
                       tier: str, segment: str, previous_tier: str | None, model_version: str,
                       policy_version: str, decided_at_ms: int) -> dict[str, Any]:  # fmt: skip
        event = p.event
        why = f"tier {previous_tier or '-'}->{tier}, segment {segment}, score {score:.3f}"
        return {
            "event_id": str(uuid.uuid5(_CHANGE_NS, event["event_id"])),
            "loan_id": event["loan_id"], "borrower_id": event["borrower_id"],
            "previous_strategy": previous, "new_strategy": strategy, "risk_score": score,
            "risk_tier": tier, "segment": segment, "model_version": model_version,
            "policy_version": policy_version, "reason": why,
            "source_event_id": event["event_id"], "source_topic": self.topic,
            "source_partition": self.partition, "source_offset": p.offset,
            "occurred_at": event["occurred_at"], "decided_at": decided_at_ms,
        }  # fmt: skip

    # -- transactions and the changelog ---------------------------------------------------------
    @property
    def has_uncommitted(self) -> bool:
        return bool(self._undo) or self.events_applied != self._committed_events_applied

    def changelog_records(self, now_ms: int) -> list[tuple[bytes, bytes | None]]:
        """(key, value) for every loan changed since the last commit, then the partition's
        checkpoint (segmenter parameters as JSON) under ``__partition__``."""
        encode, states = self._state_codec.encode, self.states
        records: list[tuple[bytes, bytes | None]] = []
        for loan_id in self._undo:
            state = states.get(loan_id)
            records.append((loan_id.encode(), None if state is None else encode(state)))
        records.append((CHECKPOINT_KEY.encode(), self.checkpoint_value(now_ms)))
        return records

    def checkpoint_value(self, now_ms: int) -> bytes:
        return self._checkpoint_serde.encode({
            "partition": self.partition, "clusterer_json": self.segmenter.to_json(),
            "events_applied": self.events_applied, "updated_at": now_ms,
        })  # fmt: skip

    def commit(self) -> None:
        """The transaction that carried this partition's outputs committed."""
        self._undo.clear()
        self._committed_segmenter = self.segmenter.to_json()
        self._committed_events_applied = self.events_applied

    def rollback(self) -> None:
        """The transaction aborted: back to the state of the last commit."""
        from models.segmentation import OnlineSegmenter

        for loan_id, committed in self._undo.items():
            if committed is None:
                self.states.pop(loan_id, None)
            else:
                self.states[loan_id] = committed
        self._undo.clear()
        self.segmenter = OnlineSegmenter.from_json(self._committed_segmenter)
        self.events_applied = self._committed_events_applied
        self._recount()

    # -- restore --------------------------------------------------------------------------------
    def restore(self, key: bytes | None, value: bytes | None) -> bool:
        """Apply one changelog record (last write wins). True if it was a loan state."""
        from models.segmentation import OnlineSegmenter

        if key == CHECKPOINT_KEY.encode():
            if value is not None:
                checkpoint = self._checkpoint_serde.decode(value)
                self.segmenter = OnlineSegmenter.from_json(checkpoint["clusterer_json"])
                self.events_applied = checkpoint["events_applied"]
                self.commit()
            return False
        loan_id = key.decode() if key else ""
        if value is None:
            self.states.pop(loan_id, None)
            return False
        state = self._state_codec.decode(value)
        if state.loan_id != loan_id:
            raise ValueError(f"changelog key {loan_id!r} holds the state of loan {state.loan_id!r}")
        previous = self.states.get(loan_id)
        if previous is not None:  # the dict keeps its first key object: share that one
            state.loan_id = previous.loan_id
        self.states[state.loan_id] = state  # one id string per loan: key and state share it
        return True

    def finish_restore(self) -> None:
        self.commit()
        self._recount()

    # -- summaries ------------------------------------------------------------------------------
    def population(self) -> tuple[Counter[str], Counter[str]]:
        """Loans per current segment and per current tier."""
        return self.by_segment, self.by_tier

    def _recount(self) -> None:
        self.by_segment = Counter(s.segment for s in self.states.values() if s.segment)
        self.by_tier = Counter(s.risk_tier for s in self.states.values() if s.risk_tier)
