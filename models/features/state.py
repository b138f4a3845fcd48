"""The one feature state machine: a loan's running state, updated event by event.

Training replays history through :func:`replay`; the streaming scorer calls the very same
:meth:`LoanState.apply` and :meth:`LoanState.features` per event. There is no second
implementation of any feature (``docs/FEATURES.md`` documents each one).

Memory: a state *is* one ``array('d')`` (8 bytes per value instead of a 24-byte float object
per attribute; the ids and decision labels in ``__slots__``), and idempotency (ARCHITECTURE.md
§8) costs five of its doubles: the event-time watermark is ``last_event_at``, the ids applied at
exactly the watermark are kept as two 52-bit hashes, and every id ever applied is in a 156-bit
Bloom fingerprint, so a loan costs about 596 bytes with its ids and its entry in the scorer's
dict (``bench/state.py``, 1M loans: ~589 before the guardrails' ``last_payment_at`` double;
their ``guard`` slot is paid for by sharing the (tier, segment) pair, and LoanEvent v4's
``reported_income`` double by sharing the strategy label with them too).

>>> from schemas.events import make_event
>>> opened = make_event("e1", "L1", "B1", 0, "LoanOpened", dict(
...     age=40, gender="Female", employment_type="Salaried", monthly_income=5000.0,
...     num_dependents=1, loan_amount=12000.0, loan_tenure_months=12, interest_rate=9.5,
...     loan_type="Personal", collateral_value=0.0, monthly_emi=1050.0))
>>> state = LoanState.open(opened)
>>> state.apply(make_event("e2", "L1", "B1", 40 * 86_400_000, "PaymentMissed", dict(
...     installment_due_date=30, amount_due=1050.0, days_past_due=10, outstanding=12000.0)))
>>> f = dict(zip(FEATURE_NAMES, state.features()))
>>> f["num_missed"], f["days_past_due"], f["payment_history"]
(1.0, 10.0, 2.0)
"""

from __future__ import annotations

import functools
import hashlib
import math
import zoneinfo
from array import array
from collections.abc import Callable, Iterable
from typing import Any

from models.errors import ModelsError
from models.features.columns import FEATURE_NAMES, decode, encode
from models.features.guard_state import (
    JURISDICTION,
    LAST_CONVERSATION,
    GuardState,
    is_shared,
    opening_guard,
)
from schemas.events import (
    COLLECTION_ATTEMPT,
    LOAN_CLOSED,
    LOAN_OPENED,
    PAYMENT_MISSED,
    PAYMENT_RECEIVED,
)

DAY_MS = 86_400_000
_HASH_MASK = (1 << 52) - 1  # exact in a double
# The Bloom fingerprint of applied ids: FINGERPRINT_WORDS doubles of 52 bits each, probed at
# FINGERPRINT_PROBES positions taken from consecutive 13-bit chunks of the id's 52-bit hash.
FINGERPRINT_WORDS = 3
FINGERPRINT_BITS = 52 * FINGERPRINT_WORDS
FINGERPRINT_PROBES = 4
_PROBE_MASK = (1 << 13) - 1
# watermark_id_1's value when more than two ids share the watermark (or the state came from a
# v1 record, which did not know them): the fingerprint decides at the watermark too.
MANY_AT_WATERMARK = -1.0
_MAX_DAYS = 100 * 366  # dates and days-past-due beyond a century are corrupt input

# Layout of the numeric state array. Names double as LoanState Avro field names.
SLOTS: tuple[str, ...] = (
    # profile (categoricals as codes of models.features.columns.VOCABULARIES)
    "age",
    "gender",
    "employment_type",
    "monthly_income",
    "num_dependents",
    "loan_amount",
    "loan_tenure_months",
    "interest_rate",
    "loan_type",
    "collateral_value",
    "monthly_emi",
    # time
    "opened_at",
    "last_event_at",
    "last_due_date",
    # repayment behaviour
    "installments",
    "paid_on_time",
    "paid_late",
    "num_missed",
    "consecutive_missed",
    "days_past_due",
    "days_past_due_prev",
    "days_past_due_prev2",
    "max_days_past_due",
    "outstanding",
    "outstanding_before",
    "last_amount_due",
    "last_amount_paid",
    "total_due",
    "total_paid",
    "paid_in_full",
    "zero_payment",
    "sum_outstanding",
    # collections
    "collection_attempts",
    "last_collection_method",
    "legal_action",
    "closed",
    # idempotency (ARCHITECTURE.md §8): hashes of the ids applied at exactly last_event_at
    # (the loan's event-time watermark), then the Bloom fingerprint of every applied id
    "watermark_id_0",
    "watermark_id_1",
    *(f"applied_ids_{i}" for i in range(FINGERPRINT_WORDS)),
    # guardrails (models.serving.guardrails): the limitation period runs from the last payment
    "last_payment_at",
    # the latest income reported after origination (LoanEvent v4 CollectionAttempt.income_report;
    # NaN: none): the learned strategy policy's income_ratio (models.strategy.stream_features)
    "reported_income",
)
_I = {name: i for i, name in enumerate(SLOTS)}
(
    AGE,
    GENDER,
    EMPLOYMENT,
    INCOME,
    DEPENDENTS,
    AMOUNT,
    TENURE,
    RATE,
    LOAN_TYPE,
    COLLATERAL,
    EMI,
    OPENED_AT,
    LAST_EVENT_AT,
    LAST_DUE,
    INSTALLMENTS,
    ON_TIME,
    LATE,
    MISSED,
    CONSECUTIVE,
    DPD,
    DPD_PREV,
    DPD_PREV2,
    MAX_DPD,
    OUTSTANDING,
    OUT_BEFORE,
    LAST_DUE_AMT,
    LAST_PAID,
    TOTAL_DUE,
    TOTAL_PAID,
    PAID_FULL,
    ZERO_PAY,
    SUM_OUT,
    ATTEMPTS,
    METHOD,
    LEGAL,
    CLOSED,
) = range(36)
WATERMARK_ID0 = _I["watermark_id_0"]
WATERMARK_ID1 = _I["watermark_id_1"]
FINGERPRINT0 = _I["applied_ids_0"]
LAST_PAYMENT_AT = _I["last_payment_at"]
REPORTED_INCOME = _I["reported_income"]
UNKNOWN_PAYMENT = -1.0  # last_payment_at of a record older than LoanState v3
NO_INCOME_REPORT = -1.0  # reported_income of a record older than LoanState v4 (none)
# The ``closed`` value (no slot of its own: a double more would break the 600-byte budget):
# 0 open; CLOSED_OTHER closed as repaid, settled or other (and every closed state written
# before write-offs were told apart, whose reason is unknown); WRITTEN_OFF plus the amount
# recovered since the write-off (payments after LoanClosed(WRITTEN_OFF), issue #14).
CLOSED_OTHER = 1.0
WRITTEN_OFF = 2.0
_NAN = math.nan
SCORE = len(SLOTS)  # LoanState's last value: the risk score of its latest decision
_SIZE = SCORE + 1
_NO_SCORE = array("d", [_NAN])
_BLANK = array("d", [0.0]) * len(SLOTS) + _NO_SCORE
_BLANK[REPORTED_INCOME] = _NAN  # nothing reported (0.0 would read as an income of 0)


def _gc_untracker() -> Callable[[object], None]:
    """CPython's ``PyObject_GC_UnTrack``: takes an object out of the cyclic collector's view.

    A ``LoanState`` holds only floats, its id strings and label strings, so it can never be
    part of a reference cycle and reference counting frees it; but as a class with
    ``__slots__`` the collector tracks it, and a full collection walks every tracked object:
    220 ms with a million loans in memory, a stall of the whole stream each time.
    """
    try:
        import ctypes

        untrack = ctypes.pythonapi.PyObject_GC_UnTrack
    except (ImportError, AttributeError):  # not CPython: the collector keeps walking them
        return lambda _state: None
    untrack.argtypes, untrack.restype = [ctypes.py_object], None
    return untrack


_untrack = _gc_untracker()


class InvalidEvent(ModelsError, ValueError):
    """An event the state machine refuses. ``reason`` is a short snake_case label (DLQ header,
    metric label); the message says what was wrong."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class DuplicateEvent(InvalidEvent):
    """The event id was already applied to this loan (producer retry): ignore, don't DLQ."""

    def __init__(self, event_id: str) -> None:
        super().__init__("duplicate", f"event {event_id} was already applied")


def event_id_hash(event_id: str) -> float:
    """Stable 52-bit hash of an event id as a float (Python's ``hash`` is salted per process,
    and the hashes travel through the changelog)."""
    digest = hashlib.blake2b(event_id.encode(), digest_size=8).digest()
    return float(int.from_bytes(digest, "little") & _HASH_MASK or 1)  # 0 marks an empty slot


def _amount(body: dict[str, Any], key: str) -> float:
    value = body[key]
    if value is None or not value >= 0.0 or value == math.inf:  # catches nan too
        raise InvalidEvent("invalid_amount", f"{key}={value!r}: amounts must be finite and >= 0")
    return float(value)


def _optional_amount(body: dict[str, Any], key: str) -> float:
    # NaN = the source did not have the value: the model pipeline imputes it.
    value = body[key]
    if value is None or value != value:
        return _NAN
    if value < 0 or value == math.inf:
        raise InvalidEvent("invalid_amount", f"{key}={value!r}: amounts must be finite and >= 0")
    return float(value)


def _optional_count(value: Any) -> float:
    # Avro ints cannot be NaN: adapters send -1 for a value the source did not have.
    if value is None or value < 0:
        return _NAN
    return float(value)


@functools.cache
def _known_time_zone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _time_zone(body: dict[str, Any]) -> str | None:
    """LoanOpened's optional IANA time zone; an unknown name is refused rather than silently
    read as UTC (the contact window, 12 CFR 1006.6(b)(1), is the borrower's local time)."""
    name = body.get("time_zone")
    if name is None:
        return None
    if not isinstance(name, str) or not _known_time_zone(name):
        raise InvalidEvent("invalid_time_zone", f"time_zone={name!r} is not an IANA time zone name")
    return name


def _jurisdiction(body: dict[str, Any]) -> str | None:
    """LoanOpened's optional jurisdiction (LoanEvent v3); a malformed code is refused rather
    than silently given the default limitation period (12 CFR 1006.26(b))."""
    code = body.get("jurisdiction")
    if code is None:
        return None
    if not isinstance(code, str) or not JURISDICTION.fullmatch(code):
        raise InvalidEvent(
            "invalid_jurisdiction",
            f"jurisdiction={code!r} is not an ISO 3166 code like US or US-CA (upper case)",
        )
    return code


_Labels = tuple[str | None, str | None, str | None]
_NO_LABELS: _Labels = (None, None, None)
_LABELS: dict[_Labels, _Labels] = {}
_MAX_LABELS = 4096  # beyond (never, with a real policy): triples are simply not shared


def _labels(strategy: str | None, tier: str | None, segment: str | None) -> _Labels:
    """The shared ``(strategy, tier, segment)`` triple."""
    key = (strategy, tier, segment)
    triple = _LABELS.get(key)
    if triple is None:
        triple = key
        if len(_LABELS) < _MAX_LABELS:
            _LABELS[key] = key
    return triple


class LoanState(array):
    """One loan's running state. Build with :meth:`open`, update with :meth:`apply`.

    Memory is the product's scaling limit (a million loans per scorer), so a state is ONE
    object: an ``array('d')`` of the ``SLOTS`` values followed by the decision's risk score
    (NaN: not scored yet), with the ids and decision labels in ``__slots__``. As separate
    objects (a slots class holding an array and a float) a loan cost ~70 bytes more. The
    borrower id is kept UTF-8 encoded (it is only read when an output record is written).
    States compare and hash by identity, like any object, not as arrays.
    """

    # The strategy, tier and segment of the last decision share one slot: an interned
    # (strategy, tier, segment) triple (a few hundred exist at most). The pair (tier, segment)
    # paid for the guard slot; adding the strategy pays for the reported_income double (LoanEvent
    # v4): 8 bytes per loan each, within bench/state.py's 600 bytes.
    __slots__ = ("_borrower", "_labels", "guard", "loan_id")
    __hash__ = object.__hash__
    __eq__ = object.__eq__
    __ne__ = object.__ne__

    def __new__(cls, loan_id: str, borrower_id: str, values: array | None = None) -> LoanState:
        """``values``: the ``SLOTS`` values, optionally followed by the risk score."""
        state = super().__new__(cls, "d", _BLANK if values is None else values)
        if len(state) != _SIZE:
            if len(state) != len(SLOTS):
                raise ValueError(f"a LoanState has {len(SLOTS)} values, not {len(state)}")
            state = super().__new__(cls, "d", array("d", state) + _NO_SCORE)  # exact size
        state.loan_id = loan_id
        state._borrower = borrower_id.encode()
        # Decisions of the streaming scorer, carried through the changelog with the state.
        state._labels = _NO_LABELS
        # Guardrail facts, only for loans that have any (models.features.guard_state).
        state.guard: GuardState | None = None
        _untrack(state)  # long-lived and acyclic (see _gc_untracker)
        return state

    @property
    def strategy(self) -> str | None:
        return self._labels[0]

    @strategy.setter
    def strategy(self, strategy: str | None) -> None:
        labels = self._labels
        self._labels = _labels(strategy, labels[1], labels[2])

    @property
    def risk_tier(self) -> str | None:
        return self._labels[1]

    @risk_tier.setter
    def risk_tier(self, tier: str | None) -> None:
        labels = self._labels
        self._labels = _labels(labels[0], tier, labels[2])

    @property
    def segment(self) -> str | None:
        return self._labels[2]

    @segment.setter
    def segment(self, segment: str | None) -> None:
        labels = self._labels
        self._labels = _labels(labels[0], labels[1], segment)

    def set_labels(self, strategy: str | None, tier: str | None, segment: str | None) -> None:
        """All three decision labels at once (one shared-triple lookup instead of three)."""
        self._labels = _labels(strategy, tier, segment)

    @property
    def borrower_id(self) -> str:
        return self._borrower.decode()

    @property
    def risk_score(self) -> float | None:
        score = self[SCORE]
        return None if score != score else score

    @risk_score.setter
    def risk_score(self, value: float | None) -> None:
        self[SCORE] = _NAN if value is None else value

    # -- building ------------------------------------------------------------------------------

    @classmethod
    def open(cls, event: dict[str, Any]) -> LoanState:
        """A new state from a ``LoanOpened`` event; any other event type is ``unknown_loan``."""
        body_type, body = event["body"]
        if body_type != LOAN_OPENED:
            raise InvalidEvent(
                "unknown_loan",
                f"{body_type.rsplit('.', 1)[-1]} for loan {event['loan_id']} "
                "which was never opened, or was closed and left state after its retention "
                "(LoanOpened must come first)",
            )
        time_zone, jurisdiction = _time_zone(body), _jurisdiction(body)
        v = cls(event["loan_id"], event["borrower_id"])
        if time_zone is not None or jurisdiction is not None:
            v.guard = opening_guard(time_zone, jurisdiction)
        age = body["age"]
        v[AGE] = float(age) if age is not None and 0 < age < 150 else _NAN
        v[GENDER] = encode("gender", body["gender"])
        v[EMPLOYMENT] = encode("employment_type", body["employment_type"])
        v[INCOME] = _optional_amount(body, "monthly_income")
        v[DEPENDENTS] = _optional_count(body["num_dependents"])
        v[AMOUNT] = _optional_amount(body, "loan_amount")
        tenure = body["loan_tenure_months"]
        v[TENURE] = float(tenure) if tenure is not None and tenure > 0 else _NAN
        v[RATE] = _optional_amount(body, "interest_rate")
        v[LOAN_TYPE] = encode("loan_type", body["loan_type"])
        v[COLLATERAL] = _optional_amount(body, "collateral_value")
        v[EMI] = _optional_amount(body, "monthly_emi")
        v[OPENED_AT] = v[LAST_EVENT_AT] = float(event["occurred_at"])
        v[LAST_DUE] = v[LAST_PAYMENT_AT] = v[REPORTED_INCOME] = _NAN
        v[OUTSTANDING] = v[OUT_BEFORE] = v[AMOUNT] if v[AMOUNT] == v[AMOUNT] else 0.0
        h = event_id_hash(event["event_id"])
        v[WATERMARK_ID0] = h
        v._remember(h)
        return v

    # -- updating ------------------------------------------------------------------------------

    def is_duplicate(self, event_id: str) -> bool:
        """Was this event id (probably) applied to the loan? Exact for the ids applied at the
        watermark; for older ones the fingerprint answers, with false positives (§8)."""
        h = event_id_hash(event_id)
        v = self
        return v[WATERMARK_ID0] == h or v[WATERMARK_ID1] == h or self._fingerprint_has(h)

    def _fingerprint_has(self, h: float) -> bool:
        v, bits = self, int(h)
        for _ in range(FINGERPRINT_PROBES):
            p = (bits & _PROBE_MASK) % FINGERPRINT_BITS
            if not int(v[FINGERPRINT0 + p // 52]) >> (p % 52) & 1:
                return False
            bits >>= 13
        return True

    def _remember(self, h: float) -> None:
        """Add ``h`` to the fingerprint (the watermark ids are the caller's)."""
        v, bits = self, int(h)
        for _ in range(FINGERPRINT_PROBES):
            p = (bits & _PROBE_MASK) % FINGERPRINT_BITS
            word = FINGERPRINT0 + p // 52
            v[word] = float(int(v[word]) | 1 << (p % 52))
            bits >>= 13

    def apply(self, event: dict[str, Any]) -> None:
        """Update the state with one event of this loan.

        Idempotent and in event-time order (ARCHITECTURE.md §8): an event older than the
        loan's watermark (``last_event_at``) or at it is a :class:`DuplicateEvent` when its id
        was applied, and one older that was not is refused as ``out_of_order``. Raises
        :class:`InvalidEvent` for values the loan cannot have (negative amounts, impossible
        dates, events before the opening or after the closing, a second ``LoanOpened``). A
        refused event leaves the state unchanged. After ``LoanClosed(WRITTEN_OFF)`` a
        ``PaymentReceived`` is a recovery: added to :attr:`recovered_after_write_off` (and
        ``last_payment_at``), nothing else changes, the loan stays closed; every other event
        after a close is ``loan_closed``.
        """
        v = self
        h = event_id_hash(event["event_id"])
        at = event["occurred_at"]
        watermark = v[LAST_EVENT_AT]
        if at < watermark:  # a replay or a late event: the fingerprint tells them apart
            if self._fingerprint_has(h):
                raise DuplicateEvent(event["event_id"])
        elif at == watermark:  # the exact hashes, unless more ids than they hold share it
            if v[WATERMARK_ID0] == h or v[WATERMARK_ID1] == h:
                raise DuplicateEvent(event["event_id"])
            if v[WATERMARK_ID1] == MANY_AT_WATERMARK and self._fingerprint_has(h):
                raise DuplicateEvent(event["event_id"])
        body_type, body = event["body"]
        at = event["occurred_at"]
        closed = v[CLOSED]
        if closed and (closed < WRITTEN_OFF or body_type != PAYMENT_RECEIVED):
            # Only a payment after a write-off (a recovery) is still applied to a closed loan.
            how = "LoanClosed(WRITTEN_OFF)" if closed >= WRITTEN_OFF else "LoanClosed"
            raise InvalidEvent(
                "loan_closed",
                f"{body_type.rsplit('.', 1)[-1]} on loan {self.loan_id} after {how}: a closed "
                "loan takes only payments after a write-off (recoveries)",
            )
        if at < v[OPENED_AT]:
            raise InvalidEvent(
                "before_opening", f"occurred_at {at} is before the loan opened ({v[OPENED_AT]:.0f})"
            )
        if at < watermark:
            raise InvalidEvent(
                "out_of_order",
                f"occurred_at {at} is before the loan's latest applied event ({watermark:.0f})",
            )
        if closed:  # a recovery: counted, never an installment (the loan stays closed)
            paid = _amount(body, "amount_paid")
            _amount(body, "amount_due")
            _amount(body, "outstanding_after")
            v[CLOSED] += paid
            if paid > 0.0:  # a payment all the same: the limitation period runs from it
                v[LAST_PAYMENT_AT] = float(at)
        elif body_type == PAYMENT_RECEIVED:
            due = self._due_date(body, at)
            amount_due = _amount(body, "amount_due")
            paid = _amount(body, "amount_paid")
            outstanding = _amount(body, "outstanding_after")
            self._installment(due, amount_due, outstanding)
            v[LAST_PAID] += paid
            v[TOTAL_PAID] += paid
            if paid >= amount_due:
                v[PAID_FULL] += 1.0
            elif paid == 0.0:
                v[ZERO_PAY] += 1.0
            if at // DAY_MS > due:
                v[LATE] += 1.0
            else:
                v[ON_TIME] += 1.0
            v[CONSECUTIVE] = 0.0
            v[DPD] = 0.0
            v[OUTSTANDING] = outstanding
            if paid > 0.0:
                v[LAST_PAYMENT_AT] = float(at)
        elif body_type == PAYMENT_MISSED:
            due = self._due_date(body, at)
            amount_due = _amount(body, "amount_due")
            dpd = body["days_past_due"]
            if dpd is None or not 0 <= dpd <= _MAX_DAYS:
                raise InvalidEvent("invalid_days_past_due", f"days_past_due={dpd!r}")
            outstanding = _amount(body, "outstanding")
            self._installment(due, amount_due, outstanding)
            if v[LAST_PAID] == 0.0:  # nothing paid towards this installment
                v[ZERO_PAY] += 1.0
            v[MISSED] += 1.0
            v[CONSECUTIVE] += 1.0
            v[DPD] = float(dpd)
            if dpd > v[MAX_DPD]:
                v[MAX_DPD] = float(dpd)
            v[OUTSTANDING] = outstanding
        elif body_type == COLLECTION_ATTEMPT:
            report = body.get("income_report")
            if report is not None:  # LoanEvent v4; checked first: a refused event changes nothing
                report = report[1] if isinstance(report, tuple) else report
                v[REPORTED_INCOME] = _amount(report, "monthly_income")
            hold = body.get("hold")
            if hold is not None:  # a compliance hold (LoanEvent v2), not a contact
                hold = hold[1] if isinstance(hold, tuple) else hold
                self.ensure_guard().set_hold(hold["reason"], hold["action"] == "SET")
            else:
                channel = body.get("channel")
                call = channel == "CALL" or (channel is None and body["method"] == "CALLS")
                self.track(at, call, bool(body.get("conversation")))
                v[ATTEMPTS] += 1.0
                v[METHOD] = encode("last_collection_method", body["method"])
                if body.get("legal_action"):
                    v[LEGAL] = 1.0
        elif body_type == LOAN_CLOSED:
            v[CLOSED] = WRITTEN_OFF if body.get("reason") == "WRITTEN_OFF" else CLOSED_OTHER
        elif body_type == LOAN_OPENED:
            raise InvalidEvent("already_opened", f"loan {self.loan_id} was already opened")
        else:
            raise InvalidEvent("unknown_event_type", f"unknown event body {body_type!r}")
        if at > watermark:
            v[LAST_EVENT_AT] = float(at)
            v[WATERMARK_ID0] = h
            v[WATERMARK_ID1] = 0.0
        elif v[WATERMARK_ID1] == 0.0:
            v[WATERMARK_ID1] = h
        else:
            v[WATERMARK_ID1] = MANY_AT_WATERMARK
        self._remember(h)

    def track(self, at: int, call: bool, conversation: bool) -> None:
        """A contact attempt's guardrail bookkeeping (the compiled kernel calls this very
        method, so both paths keep the same guard): a call attempt counts towards 7-in-7, a
        conversation starts the cool-off (12 CFR 1006.14(b)(2))."""
        if call or conversation:
            guard = self.ensure_guard()
            if call:
                guard.note_call(at)
            if conversation:
                guard[LAST_CONVERSATION] = float(at)

    def ensure_guard(self) -> GuardState:
        """The loan's guard (``models.features.guard_state``), allocated on first need and
        unshared before its first write (a shared opening guard is copied)."""
        guard = self.guard
        if guard is None:
            guard = self.guard = GuardState()
        elif is_shared(guard):
            guard = self.guard = guard.copy()
        return guard

    @property
    def reported_income(self) -> float | None:
        """The monthly income last reported after origination (None: never reported)."""
        income = self[REPORTED_INCOME]
        return None if income != income else income

    @property
    def last_payment_at(self) -> int | None:
        """Time of the latest positive payment (None: never paid, or unknown)."""
        paid = self[LAST_PAYMENT_AT]
        return None if paid != paid else int(paid)

    def _due_date(self, body: dict[str, Any], at: int) -> int:
        due = body["installment_due_date"]
        opened_day = self[OPENED_AT] // DAY_MS
        if due is None or not opened_day <= due <= opened_day + _MAX_DAYS:
            raise InvalidEvent(
                "impossible_date",
                f"installment_due_date={due!r} is before the loan opened or "
                "more than a century after it",
            )
        return due

    def _installment(self, due: int, amount_due: float, outstanding: float) -> None:
        # Events with the same due date as the previous one belong to the same installment
        # (e.g. a partial payment and then the miss of the rest).
        v = self
        if due != v[LAST_DUE]:
            v[SUM_OUT] += outstanding
            v[INSTALLMENTS] += 1.0
            v[DPD_PREV2] = v[DPD_PREV]
            v[DPD_PREV] = v[DPD]
            v[OUT_BEFORE] = v[OUTSTANDING] if v[INSTALLMENTS] > 1 else _NAN
            v[LAST_DUE] = float(due)
            v[LAST_PAID] = 0.0
            v[TOTAL_DUE] += amount_due
            v[LAST_DUE_AMT] = amount_due
        else:
            v[SUM_OUT] += outstanding - v[OUTSTANDING]
            if amount_due != v[LAST_DUE_AMT]:
                v[TOTAL_DUE] += amount_due - v[LAST_DUE_AMT]
                v[LAST_DUE_AMT] = amount_due

    # -- reading -------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return bool(self[CLOSED])

    @property
    def written_off(self) -> bool:
        """Closed by ``LoanClosed(WRITTEN_OFF)`` (False for a state written before the reason
        was kept: its payments stay dead letters)."""
        return self[CLOSED] >= WRITTEN_OFF

    @property
    def recovered_after_write_off(self) -> float:
        """The ``amount_paid`` of every payment applied after the write-off (0.0 if none or
        not written off): what ``models.strategy.outcomes`` counts as ``after``."""
        closed = self[CLOSED]
        return closed - WRITTEN_OFF if closed >= WRITTEN_OFF else 0.0

    @property
    def last_event_at(self) -> int:
        return int(self[LAST_EVENT_AT])

    def features(self) -> list[float]:
        """The model's feature vector, in the order of ``models.features.columns.FEATURE_NAMES``."""
        v = self
        amount, income, n = v[AMOUNT], v[INCOME], v[INSTALLMENTS]
        dpd, outstanding, total_due = v[DPD], v[OUTSTANDING], v[TOTAL_DUE]
        if dpd > 0:
            history = 2.0
        elif v[MISSED] > 0 or v[LATE] > 0:
            history = 1.0
        else:
            history = 0.0
        before = v[OUT_BEFORE]
        return [
            v[AGE],
            v[GENDER],
            v[EMPLOYMENT],
            income,
            v[DEPENDENTS],
            amount,
            v[TENURE],
            v[RATE],
            v[LOAN_TYPE],
            v[COLLATERAL],
            v[EMI],
            v[COLLATERAL] / amount if amount > 0 else 0.0,
            v[EMI] / income if income > 0 else _NAN,
            n,
            v[ON_TIME],
            v[LATE],
            v[MISSED],
            v[CONSECUTIVE],
            v[MISSED] / n if n > 0 else 0.0,
            dpd,
            v[DPD_PREV],
            v[DPD_PREV2],
            v[MAX_DPD],
            history,
            outstanding,
            outstanding / amount if amount > 0 else 0.0,
            outstanding - before if before == before else 0.0,  # nan check: first installment
            v[LAST_DUE_AMT],
            v[LAST_PAID],
            v[LAST_PAID] / v[LAST_DUE_AMT] if v[LAST_DUE_AMT] > 0 else 1.0,
            v[TOTAL_PAID],
            total_due / n if n > 0 else 0.0,
            v[TOTAL_PAID] / n if n > 0 else 0.0,
            v[TOTAL_PAID] / total_due if total_due > 0 else 1.0,
            v[PAID_FULL],
            v[ZERO_PAY],
            v[SUM_OUT] / n / amount if n > 0 and amount > 0 else 0.0,
            v[ATTEMPTS],
            v[METHOD],
            v[LEGAL],
        ]

    def feature_dict(self) -> dict[str, float]:
        """``features()`` keyed by name (for the online segmenter, reports and tests)."""
        return dict(zip(FEATURE_NAMES, self.features(), strict=True))

    # -- persistence ---------------------------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        """The ``LoanState`` Avro record (``schemas/avro/LoanState/v4.avsc``)."""
        record: dict[str, Any] = dict(zip(SLOTS, self, strict=False))  # (the score is last)
        record["loan_id"] = self.loan_id
        record["borrower_id"] = self.borrower_id
        record["strategy"] = self.strategy
        record["risk_tier"] = self.risk_tier
        record["risk_score"] = self.risk_score
        record["segment"] = self.segment
        record["guard"] = None if self.guard is None else self.guard.to_record()
        return record

    def copy(self) -> LoanState:
        """An independent copy (the scorer's undo log keeps one per loan per transaction)."""
        state = array.__new__(LoanState, "d", self)  # values and score; ids shared, not copied
        state.loan_id, state._borrower, state._labels = self.loan_id, self._borrower, self._labels
        state.guard = None if self.guard is None else self.guard.copy()
        return state

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> LoanState:
        """Inverse of :meth:`to_record`; also reads a v1 record (``LoanState/v1.avsc``)."""
        if "recent_pos" in record:
            return cls._from_v1(record)
        score = record.get("risk_score")
        if record.setdefault("last_payment_at", UNKNOWN_PAYMENT) == UNKNOWN_PAYMENT:
            record["last_payment_at"] = _NAN  # before v3: read as never paid (conservative)
        if record.setdefault("reported_income", NO_INCOME_REPORT) == NO_INCOME_REPORT:
            record["reported_income"] = _NAN  # before v4: nothing reported
        values = [float(record[name]) for name in SLOTS] + [_NAN if score is None else score]
        state = cls(record["loan_id"], record["borrower_id"], array("d", values))
        state.set_labels(record.get("strategy"), record.get("risk_tier"), record.get("segment"))
        state.guard = GuardState.from_record(record.get("guard"))
        return state

    @classmethod
    def _from_v1(cls, record: dict[str, Any]) -> LoanState:
        """A v1 state knew only its last four ids (a ring, without their times): they go into
        the fingerprint, and ``MANY_AT_WATERMARK`` makes it answer at the watermark too, so a
        replay of any of them after the upgrade is still a duplicate."""
        v1_ids = [record.pop(f"recent_id_{i}") for i in range(4)]
        del record["recent_pos"]
        record |= {name: 0.0 for name in SLOTS[WATERMARK_ID0:LAST_PAYMENT_AT]}
        record["watermark_id_1"] = MANY_AT_WATERMARK
        state = cls.from_record(record)
        for h in v1_ids:
            if h:
                state._remember(h)
        return state

    def labels(self) -> dict[str, str]:
        """Canonical labels of the categorical profile (for reports and logs)."""
        v = self
        return {
            "gender": decode("gender", v[GENDER]),
            "employment_type": decode("employment_type", v[EMPLOYMENT]),
            "loan_type": decode("loan_type", v[LOAN_TYPE]),
            "last_collection_method": decode("last_collection_method", v[METHOD]),
        }

    def __repr__(self) -> str:
        return f"LoanState({self.loan_id!r}, installments={self[INSTALLMENTS]:.0f})"


def replay(
    events: Iterable[dict[str, Any]],
    *,
    errors: list[tuple[dict[str, Any], InvalidEvent]] | None = None,
) -> dict[str, LoanState]:
    """Apply ``events`` (in per-loan event-time order) and return the final state per loan.

    Invalid or duplicate events are skipped, exactly as the stream skips them; pass a list as
    ``errors`` to collect ``(event, error)`` pairs.
    """
    states: dict[str, LoanState] = {}
    for event in events:
        state = states.get(event["loan_id"])
        try:
            if state is None:
                states[event["loan_id"]] = LoanState.open(event)
            else:
                state.apply(event)
        except InvalidEvent as error:
            if errors is not None:
                errors.append((event, error))
    return states
