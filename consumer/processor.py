"""The pure heart of the scorer: one input partition's loans, its online segmenter, and the
decisions its events cause. No Kafka here, so `loan-recovery serve` (``consumer.app``) and
`loan-recovery score` (the batch reference) run exactly the same code.

``PartitionProcessor.process(batch)`` takes ``(offset, key, value_bytes)`` tuples of one
partition in offset order and, for each record:

1. decodes it (``SchemaDecodeError`` -> dead letter with the serde's reason);
2. skips a duplicate ``event_id`` (counted, not dead-lettered);
3. refuses a loan id that breaks ``models.features.loan_id``'s rule (dead letter
   ``invalid_loan_id``: it could collide with an internal changelog key, ARCHITECTURE.md §8);
   then opens the loan (``LoanOpened``) or applies the event to its state with the one feature
   state machine, ``models.features.state``; unknown loans and ``InvalidEvent`` -> dead letter;
   a payment after ``LoanClosed(WRITTEN_OFF)`` is a recovery: applied to the state, counted
   (outcome ``recovery``), never scored, so a closed loan gets no new decision; a closed loan
   past the retention (``PartitionStore.expired``) is absent, as if never opened;
4. remembers the loan's feature row right after this event.

Then it scores every row of the batch in ONE vectorised ``predict_proba`` call and, in offset
order, updates the partition's online segmenter, applies the policy, and emits a
``StrategyChanged`` when the loan's strategy changes and an ``EarlyWarningAlert`` when its tier
rises to HIGH -- each with its 1-3 reasons (``models.serving.reasons``, from one ``explain`` call
for the batch's emitted rows only) and a change with the ``policy_rule`` that chose it. Output
ids are uuid5 of the source event id, so a replay yields identical records. A policy that
decides from the whole feature row (the learned policy, experiment arms: a
``PlanningPolicy``, ``models.strategy.stream``) is asked once per batch for a plan, so its
model runs once per batch; its choice goes through the same guardrails. Every result is a
pure function of the partition's input sequence and the state committed before it
(ARCHITECTURE.md §5, Determinism).

Steps 1-4 run in the compiled ``models.features._event_kernel`` when it is built: it reads the Avro
bytes in place and writes each feature row straight into the batch's matrix, and gives every
record it is not certain about (anything that is not a plain valid event) back to the Python
reference code above, at its place in the sequence. Both paths give the same states and rows,
bit for bit (``tests/unit/models/test_models_event_kernel.py``).

The partition's state -- loans, segmenter, the undo log of the open transaction, changelog
records and restore -- is its :class:`~consumer.partition_store.PartitionStore`
(``processor.store``); the processor only decodes, applies and decides.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections import Counter
from collections.abc import Sequence
from functools import cache, partial
from typing import Any, NamedTuple

import numpy as np

from consumer.outputs import (
    UNKNOWN_TYPE,
    DeadLetter,
    EarlyWarningAlert,
    GuardrailIntervention,
    Reason,
    StrategyChanged,
)
from consumer.partition_store import CHECKPOINT_KEY as CHECKPOINT_KEY
from consumer.partition_store import DAY_MS, DEFAULT_CLOSED_RETENTION_DAYS, PartitionStore
from models.features.columns import FEATURE_NAMES
from models.features.guard_state import GuardState
from models.features.loan_id import REASON as INVALID_LOAN_ID
from models.features.loan_id import describe_invalid, is_valid_loan_id
from models.features.state import (
    DPD,
    LAST_PAYMENT_AT,
    REPORTED_INCOME,
    DuplicateEvent,
    InvalidEvent,
    LoanState,
)
from models.native import load_kernel
from models.serving.contracts import (
    DecisionPlan,
    EarlyWarningModel,
    ExperimentFields,
    ExplainingModel,
    PlanningPolicy,
    Segmenter,
    StrategyPolicy,
)
from models.serving.guardrails import Facts, GuardrailConfig, Guardrails
from models.serving.reasons import MAX_REASONS, REASON_FIELDS, reason_codes
from models.serving.segmenter import OnlineSegmenter
from schemas import AvroSerde, SchemaDecodeError
from schemas.events import short_type
from schemas.serde import HEADER_SIZE, MAGIC

# None without a C compiler (or with LOAN_RECOVERY_PURE_PYTHON=1): the reference does it all.
_event_kernel = load_kernel("features._event_kernel")

_short_type = cache(short_type)  # a handful of body types, named once per event
_WIDTH = len(FEATURE_NAMES)

# Beyond float32 (what the trees compare in) a value is corrupt input, not a measurement.
_FEATURE_LIMIT = 1e38
_CHANGE_NS = uuid.UUID("6f1c3a52-8d1e-4c55-9a8e-0d5b2f7c1e01")
_ALERT_NS = uuid.UUID("2b7e9c14-3f6a-4d0b-8e21-5c9d7a4f3b02")
Record = tuple[int, bytes | None, bytes | None]  # (offset, key, value) of one input record


def uuid5_str(namespace: uuid.UUID, name: str) -> str:
    """``str(uuid.uuid5(namespace, name))`` without building a ``UUID`` object (RFC 4122 §4.3:
    SHA-1 of namespace + name, version 5, RFC variant). Every output record's id is one; the
    ``UUID`` constructor cost more than the record itself.

    >>> ns = uuid.UUID("6f1c3a52-8d1e-4c55-9a8e-0d5b2f7c1e01")
    >>> uuid5_str(ns, "event-1") == str(uuid.uuid5(ns, "event-1"))
    True
    """
    digest = bytearray(hashlib.sha1(namespace.bytes + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


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


# The LoanEvent writer versions whose layouts ``models.features._event_kernel`` reads, in order.
EVENT_KERNEL_VERSIONS = (1, 2, 3, 4)


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
        "facts",
        "features",
        "guards",
        "interventions",
        "n",
        "next_offset",
        "occurred",
        "offsets",
        "outcomes",
        "states",
        "values",
    )

    def __init__(self, capacity: int) -> None:
        self.changes: list[StrategyChanged] = []
        self.alerts: list[EarlyWarningAlert] = []
        self.dead_letters: list[DeadLetter] = []
        self.outcomes: Counter[tuple[str, str]] = Counter()  # (event type, outcome)
        self.interventions: Counter[str] = Counter()  # guardrail rule -> decisions it changed
        self.next_offset: int | None = None
        self.n = 0  # applied events so far
        self.features = np.empty((capacity, _WIDTH))  # row i: loan's features after event i
        self.occurred = np.empty(capacity, dtype=np.int64)  # occurred_at, for latency
        # Guardrail facts after event i: last payment, days past due, and the reported income
        # (for a learned policy's income_ratio); a copy of the guard.
        self.facts = np.empty((capacity, 3))
        self.guards: list[GuardState | None] = []
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


class _Source(NamedTuple):
    """The input event an output is about (made only for events that produce one; a tuple,
    which is cheaper to build than a frozen dataclass)."""

    event_id: str
    borrower_id: str
    offset: int
    occurred_at: int


class _Decision(NamedTuple):
    """What was decided for a loan at an emitting event (its state moves on within the batch
    before the record is built, once the batch's reasons are known)."""

    loan_id: str
    strategy: str
    tier: str
    segment: str
    score: float


class _Guarded(NamedTuple):
    """What the guardrails changed at an emitting event and the earliest contact they allow."""

    interventions: tuple[GuardrailIntervention, ...]
    hold_reason: str | None
    next_contact_not_before: int | None


_NOT_GUARDED = _Guarded((), None, None)


class PartitionProcessor:
    """Decode -> apply -> decide for one input partition; see the module docstring.

    Example (with a trained bundle)::

        processor = PartitionProcessor(bundle, policy, partition=0, topic="loan.events")
        result = processor.process([(0, b"L1", opened_bytes), (1, b"L1", missed_bytes)])
        result.changes[-1].new_strategy
    """

    def __init__(
        self,
        bundle: EarlyWarningModel,
        policy: StrategyPolicy,
        partition: int,
        topic: str = "loan.events",
        segmenter: Segmenter | None = None,
        native: bool = True,
        closed_retention_ms: float = DEFAULT_CLOSED_RETENTION_DAYS * DAY_MS,
    ) -> None:
        self.partition = partition
        self.topic = topic
        self.store = PartitionStore(
            partition, segmenter or OnlineSegmenter.from_bundle(bundle), closed_retention_ms
        )
        self.use_models(bundle, policy)
        self._serde = AvroSerde("LoanEvent")
        # The kernel reads the writer layouts it was written for (v1 to v4); other writers (a
        # future schema version) go through fastavro's schema resolution in the reference path.
        registry = self._serde.registry
        headers = tuple(
            MAGIC + registry.get("LoanEvent", v).fingerprint for v in EVENT_KERNEL_VERSIONS
        )
        self._kernel_headers = frozenset(headers)
        self._kernel = _event_kernel.EventKernel(headers) if _event_kernel and native else None

    def use_models(self, bundle: EarlyWarningModel, policy: StrategyPolicy) -> None:
        """Decide with ``bundle`` and ``policy`` from the next batch on (at start, and when a
        SIGHUP reloads them). The segmenter keeps learning from where it is: its centroids are
        the partition's state, not the bundle's."""
        self.bundle = bundle
        self.policy = policy
        # Every policy's choice passes through the one guardrail layer (ARCHITECTURE.md §7);
        # the guardrails hold only configuration (each loan's clocks are in its state).
        self.guardrails = policy.guardrails or Guardrails(GuardrailConfig(), policy.priorities)

    # The capabilities are checked once per model, not per batch: an isinstance check against
    # a runtime-checkable Protocol walks its members (0.9 % of the loop at 30,000 events/s on
    # Python 3.11, py-spy).
    @property
    def bundle(self) -> EarlyWarningModel:
        return self._bundle

    @bundle.setter
    def bundle(self, bundle: EarlyWarningModel) -> None:
        self._bundle = bundle
        self._explaining = bundle if isinstance(bundle, ExplainingModel) else None

    @property
    def policy(self) -> StrategyPolicy:
        return self._policy

    @policy.setter
    def policy(self, policy: StrategyPolicy) -> None:
        self._policy = policy
        self._planning = policy if isinstance(policy, PlanningPolicy) else None

    # -- the batch ------------------------------------------------------------------------------
    def process(self, batch: list[Record], decided_at_ms: int = 0) -> BatchResult:
        """:meth:`apply`, one ``predict_proba`` call, :meth:`decide`."""
        result = self.apply(batch)
        if result.n:
            self.decide(result, self.bundle.predict_proba(result.rows()), decided_at_ms)
        return result

    def apply(self, batch: list[Record]) -> BatchResult:
        """Decode and apply every record; the result's ``rows()`` still need scores. (The
        Kafka loop scores the rows of all its partitions in one call, :func:`decide_together`:
        a row's score depends on that row only.)"""
        result = BatchResult(len(batch))
        store = self.store
        if self._kernel is None:
            for record in batch:
                self._apply_reference(result, record, result.n)
        else:
            result.n = self._kernel.apply_batch(
                batch,
                store.states,
                store.undo,
                result.features,
                result.occurred,
                result.facts,
                result.guards,
                result.states,
                result.offsets,
                result.values,
                result.counts,
                result.n,
                partial(self._apply_reference, result),
            )
            self._count_kernel_outcomes(result)
        if result.n:  # once per batch: the hot path pays one max and, rarely, a scan
            store.advance_clock(float(result.occurred[: result.n].max()))
            if result.outcomes.get(("LoanClosed", "scored")):
                store.index_closed_states(result.states)
        if batch:
            result.next_offset = batch[-1][0] + 1
        return result

    def _count_kernel_outcomes(self, result: BatchResult) -> None:
        kernel_applied = 0
        for kind, count in zip(_event_kernel.BODY_KINDS, result.counts.tolist(), strict=True):
            if count:
                result.outcomes[(kind, "scored")] += count
                kernel_applied += count
        self.store.events_applied += kernel_applied  # (the reference counts its own)

    def _apply_reference(self, result: BatchResult, record: Record, n: int) -> int:
        """The reference path for one record at row ``n``; returns the next free row."""
        offset, key, value = record
        try:
            event = self._serde.decode(value)  # type: ignore[arg-type]
        except SchemaDecodeError as error:
            self._dead(result, record, error.reason, error, UNKNOWN_TYPE)
            return n
        body_type = _short_type(event["body"][0])
        loan_id = event["loan_id"]
        if not is_valid_loan_id(loan_id):  # before any state: it could name an internal key
            error = ValueError(describe_invalid(loan_id))
            self._dead(result, record, INVALID_LOAN_ID, error, body_type)
            return n
        if key != loan_id.encode():
            # A loan's state lives in the partition of its key: a record keyed otherwise is
            # on the wrong partition, and applying it would split the loan's history.
            self._dead(
                result,
                record,
                "key_mismatch",
                ValueError(f"record key {key!r} is not its loan_id {loan_id!r}"),
                body_type,
            )
            return n
        try:
            state = self._open_or_apply(loan_id, event, result, n)
        except DuplicateEvent:
            result.outcomes[(body_type, "duplicate")] += 1
            return n
        except InvalidEvent as error:
            self._dead(result, record, error.reason, error, body_type)
            return n
        except Exception as error:  # a state-machine bug must not become a crash loop
            self._dead(result, record, "processing_error", error, body_type)
            return n
        self.store.events_applied += 1
        if state is None:  # a recovery after a write-off: state only, no decision
            result.outcomes[(body_type, "recovery")] += 1
            self.store.advance_clock(float(event["occurred_at"]))
            return n
        result.outcomes[(body_type, "scored")] += 1
        result.features[n] = model_row(state.features())
        result.occurred[n] = event["occurred_at"]
        self._snapshot(result, state, n)
        result.states.append(state)
        result.offsets.append(offset)
        result.values.append(value)  # type: ignore[arg-type]
        result.n = n + 1
        return n + 1

    @staticmethod
    def _snapshot(result: BatchResult, state: LoanState, n: int) -> None:
        """The loan's guardrail facts right after event ``n``: decisions come after the whole
        batch is applied, when the state already holds its later events."""
        result.facts[n, 0] = state[LAST_PAYMENT_AT]
        result.facts[n, 1] = state[DPD]
        result.facts[n, 2] = state[REPORTED_INCOME]
        result.guards.append(None if state.guard is None else state.guard.copy())

    def _open_or_apply(
        self, loan_id: str, event: dict[str, Any], result: BatchResult, n: int
    ) -> LoanState | None:
        """The loan's state after ``event`` (the applied event at row ``n`` of ``result``), or
        None when it was a recovery after a write-off (applied, not to be scored)."""
        store = self.store
        state = store.states.get(loan_id)
        # Only the reference sees closed loans (the kernel hands them back), and the rows
        # before n hold the clock's advance within this batch.
        if (
            state is not None
            and state.closed
            and store.expired(state, self._event_time(result, n, event["occurred_at"]))
        ):
            store.remove(loan_id)  # it left the partition: what follows sees no such loan
            state = None
        if state is None:
            new_state = LoanState.open(event)  # raises unknown_loan for any other body type
            store.remember(loan_id, None)
            store.states[loan_id] = new_state
            return new_state
        store.remember(loan_id, state)
        closed = state.closed
        state.apply(event)  # raises InvalidEvent before mutating (models.features.state contract)
        if not closed:
            return state
        # A recovery (state.apply refuses anything else after a close): counted at commit.
        store.record_recovery(float(event["body"][1]["amount_paid"]))
        return None

    @staticmethod
    def _event_time(result: BatchResult, n: int, occurred_at: int) -> float:
        """The partition clock's value with ``occurred_at`` counted, in the middle of a batch
        (``store.clock`` moves on once per batch, and with every recovery)."""
        if n:
            return max(float(occurred_at), float(result.occurred[:n].max()))
        return float(occurred_at)

    @staticmethod
    def _dead(
        result: BatchResult, record: Record, reason: str, error: Exception, event_type: str
    ) -> None:
        offset, key, value = record
        result.dead_letters.append(
            DeadLetter(offset, key, value, reason, type(error).__name__, str(error), event_type)
        )
        result.outcomes[(event_type, "dlq")] += 1

    # -- scoring and decisions ------------------------------------------------------------------
    def decide(self, result: BatchResult, scores: Sequence[float], decided_at_ms: int = 0) -> None:
        """Segment, tier, policy and outputs for each applied event, in offset order."""
        store = self.store
        tier_of, decide = self.policy.tier, self.policy.decide
        learn_predict = store.segmenter.learn_predict
        by_tier, by_segment = store.by_tier, store.by_segment
        rule = self.policy.rule
        choose, record = self.guardrails.choose_at, self.guardrails.record
        next_contact = self.guardrails.next_contact_not_before
        rows, occurred = result.rows(), result.occurred_at.tolist()
        facts, guards = result.facts[: result.n].tolist(), result.guards
        # Emitted records wait here until their reasons (one explain call for all) are known;
        # what the guardrails said is taken now, as of the event.
        changes: list[tuple[int, _Decision, _Source, str | None, str | None, str, _Guarded]] = []
        alerts: list[tuple[int, _Decision, _Source, str | None]] = []
        floats = scores.tolist() if isinstance(scores, np.ndarray) else [float(s) for s in scores]
        plan = self._plan(result, rows, floats)
        for i, (state, score) in enumerate(zip(result.states, floats, strict=True)):
            segment = learn_predict(rows[i])
            tier = tier_of(score)
            previous_strategy, previous_tier = state.strategy, state.risk_tier
            if plan is None:
                wanted = decide(tier, segment, score, previous_strategy)
            else:
                wanted = plan.decide(i, tier, segment, score, previous_strategy)
            paid_at, dpd, _ = facts[i]
            fact = Facts(guards[i], paid_at, dpd)
            strategy, interventions, hold_reason = choose(state, wanted, occurred[i], fact)
            if plan is not None and strategy != previous_strategy:  # (before record: pure)
                plan.settle(i, strategy, partial(self._guarded, state, occurred[i], fact))
            if interventions:
                result.interventions.update(iv.rule for iv in interventions)
            record(state, strategy, occurred[i])
            if tier != previous_tier:
                self._move(by_tier, previous_tier, tier)
            if segment != state.segment:
                self._move(by_segment, state.segment, segment)
            state.set_labels(strategy, tier, segment)  # one shared-triple lookup, not three
            state.risk_score = score
            changed = strategy != previous_strategy
            alert = tier == "HIGH" and previous_tier != "HIGH"
            if changed or alert:
                source = self._source(result, i)
                decision = _Decision(state.loan_id, strategy, tier, segment, score)
                if changed:
                    policy_rule = (
                        rule(tier, segment, score, previous_strategy)
                        if plan is None
                        else plan.rule(i)
                    )
                    guarded = _Guarded(
                        tuple(
                            GuardrailIntervention(iv.rule, iv.wanted_strategy, iv.detail)
                            for iv in interventions
                        ),
                        hold_reason,
                        next_contact(guards[i], strategy, source.occurred_at),
                    )
                    changes.append(
                        (
                            i,
                            decision,
                            source,
                            previous_strategy,
                            previous_tier,
                            policy_rule,
                            guarded,
                        )
                    )
                if alert:
                    alerts.append((i, decision, source, previous_tier))
        if changes or alerts:
            reasons = self._reasons(rows, sorted({c[0] for c in changes} | {a[0] for a in alerts}))
            arms = plan.fields() if plan is not None else {}
            result.changes.extend(
                self._strategy_changed(
                    d,
                    src,
                    old,
                    old_tier,
                    decided_at_ms,
                    why,
                    reasons.get(i, ()),
                    guarded,
                    arms.get(i),
                )
                for i, d, src, old, old_tier, why, guarded in changes
            )
            result.alerts.extend(
                self._alert(d, src, old_tier, decided_at_ms, reasons.get(i, ()))
                for i, d, src, old_tier in alerts
            )
        if result.changes:
            store.record_changes(result.changes)

    def _plan(
        self, result: BatchResult, rows: np.ndarray, scores: list[float]
    ) -> DecisionPlan | None:
        """A learned policy's or an experiment's plan for the batch (None: the table policy
        decides per event, as before). An exploring arm's draw hashes the loan's episode,
        read from the event's own feature row: replay-stable, whatever the batching."""
        policy = self._planning
        if policy is None:
            return None
        return policy.plan(rows, scores, result.states, result.facts[: result.n, 2])

    def _guarded(self, state: LoanState, at: int, facts: Facts, wanted: str) -> str:
        """What the guardrails make of ``wanted`` at this event (no state is changed)."""
        return self.guardrails.choose_at(state, wanted, at, facts)[0]

    def _reasons(self, rows: np.ndarray, wanted: list[int]) -> dict[int, tuple[Reason, ...]]:
        """The reasons of the emitted rows ``wanted`` (ARCHITECTURE.md §7), from one
        ``explain`` call for all of them, so the per-event path pays nothing for them. A model
        without a path decomposition (or ``explain`` giving None) gives no reasons."""
        bundle = self._explaining  # looked up now: a reload (SIGHUP) replaces it
        if bundle is None:
            return {}
        emitted = rows[wanted]
        top = bundle.explain_top(emitted, MAX_REASONS)
        if top is None:
            return {}
        # Only the top cells leave the model (no n x inputs matrices, no per-row lookups):
        # 23.8 -> 13.6 us CPU per explained row (docs/MODELS.md, "Cost").
        codes, fields = reason_codes(top.columns, emitted).tolist(), REASON_FIELDS
        out = {}
        for i, row_codes, values in zip(wanted, codes, top.values.tolist(), strict=True):
            pairs = zip(row_codes, values, strict=True)
            chosen = tuple([Reason(*fields[c], v) for c, v in pairs if v > 0.0])
            out[i] = chosen or (Reason(*fields[row_codes[0]], values[0]),)
        return out

    def _source(self, result: BatchResult, i: int) -> _Source:
        """The ids of applied event ``i``, read back from its bytes (only for events with an
        output, so the kernel need not keep them for every event)."""
        value = result.values[i]
        if self._kernel is not None and value[:HEADER_SIZE] in self._kernel_headers:
            event_id, borrower_id = _event_kernel.event_ids(value)
        else:
            event = self._serde.decode(value)
            event_id, borrower_id = event["event_id"], event["borrower_id"]
        return _Source(event_id, borrower_id, result.offsets[i], int(result.occurred[i]))

    def _strategy_changed(
        self,
        decision: _Decision,
        source: _Source,
        previous_strategy: str | None,
        previous_tier: str | None,
        decided_at_ms: int,
        policy_rule: str | None,
        reasons: tuple[Reason, ...],
        guarded: _Guarded | None = None,
        experiment: ExperimentFields | None = None,
    ) -> StrategyChanged:
        """The loan's strategy changed: ``decision`` is the decision just made; ``guarded``
        what the guardrails changed and allow next, as of the event."""
        tier, segment, score = decision.tier, decision.segment, decision.score
        guarded = guarded or _NOT_GUARDED
        return StrategyChanged(
            event_id=uuid5_str(_CHANGE_NS, source.event_id),
            loan_id=decision.loan_id,
            borrower_id=source.borrower_id,
            previous_strategy=previous_strategy,
            new_strategy=decision.strategy,
            risk_score=score,
            risk_tier=tier,
            segment=segment,
            model_version=self.bundle.version,
            policy_version=self.policy.version,
            reason=f"tier {previous_tier or '-'}->{tier}, segment {segment}, score {score:.3f}",
            source_event_id=source.event_id,
            source_topic=self.topic,
            source_partition=self.partition,
            source_offset=source.offset,
            occurred_at=source.occurred_at,
            decided_at=decided_at_ms,
            reasons=reasons,
            policy_rule=policy_rule,
            guardrails=guarded.interventions,
            hold_reason=guarded.hold_reason,
            next_contact_not_before=guarded.next_contact_not_before,
            **(experiment._asdict() if experiment is not None else {}),
        )

    def _alert(
        self,
        decision: _Decision,
        source: _Source,
        previous_tier: str | None,
        decided_at_ms: int,
        reasons: tuple[Reason, ...],
    ) -> EarlyWarningAlert:
        """The loan's tier rose to HIGH: ``decision`` is the decision just made."""
        return EarlyWarningAlert(
            event_id=uuid5_str(_ALERT_NS, source.event_id),
            loan_id=decision.loan_id,
            borrower_id=source.borrower_id,
            previous_tier=previous_tier,
            risk_tier=decision.tier,
            risk_score=decision.score,
            segment=decision.segment,
            model_version=self.bundle.version,
            source_event_id=source.event_id,
            source_offset=source.offset,
            occurred_at=source.occurred_at,
            decided_at=decided_at_ms,
            reasons=reasons,
        )

    @staticmethod
    def _move(counts: Counter[str], old: str | None, new: str) -> None:
        if old is not None:
            counts[old] -= 1
        counts[new] += 1


def decide_together(
    bundle: EarlyWarningModel,
    applied: Sequence[tuple[PartitionProcessor, BatchResult]],
    decided_at_ms: int,
) -> None:
    """Score the rows of several partitions' applied batches in ONE ``predict_proba`` call,
    then let each processor decide its own, in order. Each row's score depends on that row
    only, so this changes no result, only the per-call overhead (DESIGN.md §5)."""
    matrices = [result.rows() for _, result in applied if result.n]
    rows = matrices[0] if len(matrices) == 1 else np.concatenate(matrices or [[]])
    scores = bundle.predict_proba(rows) if len(rows) else ()
    start = 0
    for processor, result in applied:
        n = result.n
        if n:
            processor.decide(result, scores[start : start + n], decided_at_ms)
            start += n
