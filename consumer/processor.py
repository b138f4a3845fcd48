"""The pure heart of the scorer: one input partition's loans, its online segmenter, and the
decisions its events cause. No Kafka here, so `loan-recovery serve` (``consumer.app``) and
`loan-recovery score` (the batch reference) run exactly the same code.

``PartitionProcessor.process(batch)`` takes ``(offset, key, value_bytes)`` tuples of one
partition in offset order and, for each record:

1. decodes it (``SchemaDecodeError`` -> dead letter with the serde's reason);
2. skips a duplicate ``event_id`` (counted, not dead-lettered);
3. opens the loan (``LoanOpened``) or applies the event to its state with the one feature
   state machine, ``models.features.state``; unknown loans and ``InvalidEvent`` -> dead letter;
4. remembers the loan's feature row right after this event.

Then it scores every row of the batch in ONE vectorised ``predict_proba`` call and, in offset
order, updates the partition's online segmenter, applies the policy, and emits a
``StrategyChanged`` when the loan's strategy changes and an ``EarlyWarningAlert`` when its tier
rises to HIGH. Output ids are uuid5 of the source event id, so a replay yields identical
records. Every result is a pure function of the partition's input sequence and the state
committed before it (DESIGN.md §5, Determinism).

Steps 1-4 run in the compiled ``models.features._event_kernel`` when it is built: it reads the Avro
bytes in place and writes each feature row straight into the batch's matrix, and gives every
record it is not certain about (anything that is not a plain valid event) back to the Python
reference code above, at its place in the sequence. Both paths give the same states and rows,
bit for bit (``tests/test_models_event_kernel.py``).

Transactions: loans touched since the last :meth:`commit` keep their committed image in an
undo log, and the segmenter its committed JSON; :meth:`rollback` restores both after an
aborted Kafka transaction.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

import numpy as np

from models.features.columns import FEATURE_NAMES
from models.features.state import DuplicateEvent, InvalidEvent, LoanState
from models.features.state_codec import LoanStateCodec
from models.native import load_kernel
from schemas import AvroSerde, SchemaDecodeError
from schemas.events import short_type
from schemas.serde import HEADER_SIZE, MAGIC

# None without a C compiler (or with LOAN_RECOVERY_PURE_PYTHON=1): the reference does it all.
_event_kernel = load_kernel("features._event_kernel")

_short_type = cache(short_type)  # a handful of body types, named once per event
_WIDTH = len(FEATURE_NAMES)

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
    # A sum of magnitudes below the limit bounds every value (float sums of non-negative
    # values never round below a term), so the common case is one cheap check.
    if sum(map(abs, row)) < _FEATURE_LIMIT:
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


class BatchResult:
    """What one partition batch did. The applied events are kept column-wise, in offset order
    (``states[i]``, ``offsets[i]``, ``values[i]``, ``occurred[i]``, feature row
    ``features[i]``), so the whole batch is scored from one matrix without a Python object per
    event; :meth:`PartitionProcessor.decide` then fills ``changes`` and ``alerts``."""

    __slots__ = (
        "alerts",
        "changes",
        "counts",
        "dead_letters",
        "features",
        "n",
        "next_offset",
        "occurred",
        "offsets",
        "outcomes",
        "states",
        "values",
    )

    def __init__(self, capacity: int) -> None:
        self.changes: list[dict[str, Any]] = []  # StrategyChanged records
        self.alerts: list[dict[str, Any]] = []  # EarlyWarningAlert records
        self.dead_letters: list[DeadLetter] = []
        self.outcomes: Counter[tuple[str, str]] = Counter()  # (event type, outcome)
        self.next_offset: int | None = None
        self.n = 0  # applied events so far
        self.features = np.empty((capacity, _WIDTH))  # row i: loan's features after event i
        self.occurred = np.empty(capacity, dtype=np.int64)  # occurred_at, for latency
        self.states: list[LoanState] = []
        self.offsets: list[int] = []
        self.values: list[bytes] = []  # the events' Avro bytes (ids for output records)
        self.counts = np.zeros(
            len(_event_kernel.BODY_KINDS) if _event_kernel else 0, dtype=np.int64
        )  # kernel-applied events per body type

    def rows(self) -> np.ndarray:
        """The feature rows waiting for scores (n x features)."""
        return self.features[: self.n]

    @property
    def occurred_at(self) -> np.ndarray:
        return self.occurred[: self.n]

    @property
    def scored(self) -> int:
        return self.n


class PartitionProcessor:
    """All state and logic of one input partition; see the module docstring.

    Example (with a trained bundle)::

        processor = PartitionProcessor(bundle, policy, partition=0, topic="loan.events")
        result = processor.process([(0, b"L1", opened_bytes), (1, b"L1", missed_bytes)])
        result.changes[-1]["new_strategy"]
    """

    def __init__(
        self,
        bundle: Any,
        policy: Any,
        partition: int,
        topic: str = "loan.events",
        segmenter: Any = None,
        native: bool = True,
    ) -> None:
        from models.serving.segmenter import OnlineSegmenter

        self.bundle = bundle
        self.policy = policy
        self.partition = partition
        self.topic = topic
        self.states: dict[str, LoanState] = {}
        self.segmenter = segmenter or OnlineSegmenter.from_bundle(bundle)
        self.events_applied = 0
        self._serde = AvroSerde("LoanEvent")
        # The kernel reads the one writer layout it was written for; other writers (a future
        # schema version) go through fastavro's schema resolution in the reference path.
        self._kernel_header = MAGIC + self._serde.registry.get("LoanEvent", 1).fingerprint
        self._kernel = (
            _event_kernel.EventKernel(self._kernel_header) if _event_kernel and native else None
        )
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
    def process(
        self, batch: list[tuple[int, bytes | None, bytes | None]], decided_at_ms: int = 0
    ) -> BatchResult:
        """:meth:`apply`, one ``predict_proba`` call, :meth:`decide`."""
        result = self.apply(batch)
        if result.n:
            self.decide(result, self.bundle.predict_proba(result.rows()), decided_at_ms)
        return result

    def apply(self, batch: list[tuple[int, bytes | None, bytes | None]]) -> BatchResult:
        """Decode and apply every record; the result's ``rows()`` still need scores. (The
        Kafka loop scores the rows of all its partitions in one call: a row's score depends
        on that row only.)"""
        result = BatchResult(len(batch))
        if self._kernel is None:
            for record in batch:
                self._apply_reference(result, record, result.n)
        else:
            result.n = self._kernel.apply_batch(
                batch,
                self.states,
                self._undo,
                result.features,
                result.occurred,
                result.states,
                result.offsets,
                result.values,
                result.counts,
                result.n,
                partial(self._apply_reference, result),
            )
            self._count_kernel_outcomes(result)
        if batch:
            result.next_offset = batch[-1][0] + 1
        return result

    def _count_kernel_outcomes(self, result: BatchResult) -> None:
        kernel_applied = 0
        for kind, count in zip(_event_kernel.BODY_KINDS, result.counts.tolist(), strict=True):
            if count:
                result.outcomes[(kind, "scored")] += count
                kernel_applied += count
        self.events_applied += kernel_applied  # (the reference counts its own)

    def _apply_reference(
        self, result: BatchResult, record: tuple[int, bytes | None, bytes | None], n: int
    ) -> int:
        """The reference path for one record at row ``n``; returns the next free row."""
        offset, key, value = record
        try:
            event = self._serde.decode(value)  # type: ignore[arg-type]
        except SchemaDecodeError as error:
            self._dead(result, offset, key, value, error.reason, error, UNKNOWN_TYPE)
            return n
        body_type = _short_type(event["body"][0])
        loan_id = event["loan_id"]
        if key != loan_id.encode():
            # A loan's state lives in the partition of its key: a record keyed otherwise is
            # on the wrong partition, and applying it would split the loan's history.
            self._dead(
                result,
                offset,
                key,
                value,
                "key_mismatch",
                ValueError(f"record key {key!r} is not its loan_id {loan_id!r}"),
                body_type,
            )
            return n
        try:
            state = self._open_or_apply(loan_id, self.states.get(loan_id), event)
        except DuplicateEvent:
            result.outcomes[(body_type, "duplicate")] += 1
            return n
        except InvalidEvent as error:
            self._dead(result, offset, key, value, error.reason, error, body_type)
            return n
        except Exception as error:  # a state-machine bug must not become a crash loop
            self._dead(result, offset, key, value, "processing_error", error, body_type)
            return n
        self.events_applied += 1
        result.outcomes[(body_type, "scored")] += 1
        result.features[n] = model_row(state.features())
        result.occurred[n] = event["occurred_at"]
        result.states.append(state)
        result.offsets.append(offset)
        result.values.append(value)  # type: ignore[arg-type]
        result.n = n + 1
        return n + 1

    def _open_or_apply(
        self, loan_id: str, state: LoanState | None, event: dict[str, Any]
    ) -> LoanState:
        if state is None:
            new_state = LoanState.open(event)  # raises unknown_loan for any other body type
            self._remember_committed(loan_id, None)
            self.states[loan_id] = new_state
            return new_state
        self._remember_committed(loan_id, state)
        state.apply(event)  # raises InvalidEvent before mutating (models.features.state contract)
        return state

    def _remember_committed(self, loan_id: str, state: LoanState | None) -> None:
        if loan_id not in self._undo:
            self._undo[loan_id] = None if state is None else state.copy()

    def _dead(
        self,
        result: BatchResult,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        reason: str,
        error: Exception,
        event_type: str,
    ) -> None:
        result.dead_letters.append(
            DeadLetter(offset, key, value, reason, type(error).__name__, str(error), event_type)
        )
        result.outcomes[(event_type, "dlq")] += 1

    # -- scoring and decisions ------------------------------------------------------------------
    def decide(self, result: BatchResult, scores: Sequence[float], decided_at_ms: int = 0) -> None:
        """Segment, tier, policy and outputs for each applied event, in offset order."""
        tier_of, decide = self.bundle.tier, self.policy.decide
        learn_predict = self.segmenter.learn_predict
        rows = result.rows()
        floats = scores.tolist() if isinstance(scores, np.ndarray) else [float(s) for s in scores]
        for i, (state, score) in enumerate(zip(result.states, floats, strict=True)):
            segment = learn_predict(rows[i])
            tier = tier_of(score)
            previous_strategy, previous_tier = state.strategy, state.risk_tier
            strategy = decide(tier, segment, score, previous_strategy)
            if tier != previous_tier:
                self._move(self.by_tier, previous_tier, tier)
            if segment != state.segment:
                self._move(self.by_segment, state.segment, segment)
            state.strategy, state.risk_tier = strategy, tier
            state.risk_score, state.segment = score, segment
            changed = strategy != previous_strategy
            alert = tier == "HIGH" and previous_tier != "HIGH"
            if changed or alert:
                self._outputs(
                    result,
                    i,
                    score,
                    segment,
                    tier,
                    previous_tier,
                    previous_strategy,
                    decided_at_ms,
                    changed,
                    alert,
                )

    def _outputs(
        self,
        result: BatchResult,
        i: int,
        score: float,
        segment: str,
        tier: str,
        previous_tier: str | None,
        previous_strategy: str | None,
        decided_at_ms: int,
        changed: bool,
        alert: bool,
    ) -> None:
        """The StrategyChanged and/or EarlyWarningAlert that applied event ``i`` causes."""
        state, offset = result.states[i], result.offsets[i]
        event_id, borrower_id = self._event_ids(result.values[i])
        occurred_at = int(result.occurred[i])
        model_version = self.bundle.version
        if changed:
            result.changes.append(
                self._change_record(
                    event_id,
                    state.loan_id,
                    borrower_id,
                    offset,
                    occurred_at,
                    previous_strategy,
                    state.strategy,
                    score,
                    tier,
                    segment,
                    previous_tier,
                    model_version,
                    self.policy.version,
                    decided_at_ms,
                )
            )
        if alert:
            result.alerts.append(
                {
                    "event_id": str(uuid.uuid5(_ALERT_NS, event_id)),
                    "loan_id": state.loan_id,
                    "borrower_id": borrower_id,
                    "previous_tier": previous_tier,
                    "risk_tier": tier,
                    "risk_score": score,
                    "segment": segment,
                    "model_version": model_version,
                    "source_event_id": event_id,
                    "source_offset": offset,
                    "occurred_at": occurred_at,
                    "decided_at": decided_at_ms,
                }
            )

    def _event_ids(self, value: bytes) -> tuple[str, str]:
        """(event_id, borrower_id) of an applied event's record."""
        if self._kernel is not None and value[:HEADER_SIZE] == self._kernel_header:
            return _event_kernel.event_ids(value)
        event = self._serde.decode(value)
        return event["event_id"], event["borrower_id"]

    @staticmethod
    def _move(counts: Counter[str], old: str | None, new: str) -> None:
        if old is not None:
            counts[old] -= 1
        counts[new] += 1

    def _change_record(
        self,
        event_id: str,
        loan_id: str,
        borrower_id: str,
        offset: int,
        occurred_at: int,
        previous: str | None,
        strategy: str,
        score: float,
        tier: str,
        segment: str,
        previous_tier: str | None,
        model_version: str,
        policy_version: str,
        decided_at_ms: int,
    ) -> dict[str, Any]:
        why = f"tier {previous_tier or '-'}->{tier}, segment {segment}, score {score:.3f}"
        return {
            "event_id": str(uuid.uuid5(_CHANGE_NS, event_id)),
            "loan_id": loan_id,
            "borrower_id": borrower_id,
            "previous_strategy": previous,
            "new_strategy": strategy,
            "risk_score": score,
            "risk_tier": tier,
            "segment": segment,
            "model_version": model_version,
            "policy_version": policy_version,
            "reason": why,
            "source_event_id": event_id,
            "source_topic": self.topic,
            "source_partition": self.partition,
            "source_offset": offset,
            "occurred_at": occurred_at,
            "decided_at": decided_at_ms,
        }

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
        return self._checkpoint_serde.encode(
            {
                "partition": self.partition,
                "clusterer_json": self.segmenter.to_json(),
                "events_applied": self.events_applied,
                "updated_at": now_ms,
            }
        )

    def commit(self) -> None:
        """The transaction that carried this partition's outputs committed."""
        self._undo.clear()
        self._committed_segmenter = self.segmenter.to_json()
        self._committed_events_applied = self.events_applied

    def rollback(self) -> None:
        """The transaction aborted: back to the state of the last commit."""
        from models.serving.segmenter import OnlineSegmenter

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
        from models.serving.segmenter import OnlineSegmenter

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
