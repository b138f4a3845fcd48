"""Seed-schema CSV (the collections export, one row per loan) -> events + outcomes.

>>> events = seed_row_events({"Loan_ID": "L1", "Loan_Amount": 1000.0, "Monthly_EMI": 100.0,
...     "Outstanding_Loan_Amount": 800.0, "Num_Missed_Payments": 1, "Days_Past_Due": 20,
...     "Collection_Attempts": 1, "Collection_Method": "Calls", "Legal_Action_Taken": "No",
...     "Interest_Rate": float("nan"), "Age": 40.0, "Monthly_Income": 3000.0,
...     "Num_Dependents": 0.0, "Loan_Tenure": 12.0, "Collateral_Value": 0.0})
>>> [e["body"][0].rsplit(".", 1)[1] for e in events]
['LoanOpened', 'PaymentReceived', 'PaymentReceived', 'PaymentMissed', 'CollectionAttempt']
"""

from __future__ import annotations

import gc
import math
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from models.data.adapters.common import (
    DAY_MS,
    AdapterError,
    History,
    _amount_or_nan,
    _canonical,
    _event,
    _int_or,
    _match_columns,
    _name,
    _numbers,
    _read_csv,
)
from models.features.columns import COLLECTION_METHODS
from schemas.events import (
    COLLECTION_ATTEMPT,
    LOAN_OPENED,
    PAYMENT_MISSED,
    PAYMENT_RECEIVED,
)

AS_OF_DAY = 19_875  # 2024-06-01: seed exports carry no dates; histories end here
SEED_COLUMNS = (
    "Borrower_ID",
    "Age",
    "Gender",
    "Employment_Type",
    "Monthly_Income",
    "Num_Dependents",
    "Loan_ID",
    "Loan_Amount",
    "Loan_Tenure",
    "Interest_Rate",
    "Loan_Type",
    "Collateral_Value",
    "Outstanding_Loan_Amount",
    "Monthly_EMI",
    "Payment_History",
    "Num_Missed_Payments",
    "Days_Past_Due",
    "Recovery_Status",
    "Collection_Attempts",
    "Collection_Method",
    "Legal_Action_Taken",
)
SEED_REQUIRED = (
    "Loan_ID",
    "Loan_Amount",
    "Outstanding_Loan_Amount",
    "Num_Missed_Payments",
    "Days_Past_Due",
    "Recovery_Status",
)
SEED_NUMERIC = (
    "Age",
    "Monthly_Income",
    "Num_Dependents",
    "Loan_Amount",
    "Loan_Tenure",
    "Interest_Rate",
    "Collateral_Value",
    "Outstanding_Loan_Amount",
    "Monthly_EMI",
    "Num_Missed_Payments",
    "Days_Past_Due",
    "Collection_Attempts",
)
# Recovery_Status (normalised) -> outcome; anything else is unlabelled rather than guessed.
RECOVERY_OUTCOMES = {
    "writtenoff": 1,
    "writeoff": 1,
    "chargedoff": 1,
    "defaulted": 1,
    "default": 1,
    "fullyrecovered": 0,
    "partiallyrecovered": 0,
    "recovered": 0,
    "settled": 0,
    "repaid": 0,
}
MAX_COUNT = 360  # missed installments / collection attempts per row: 30 years of monthly events
MAX_DAYS_PAST_DUE = 36_500
MAX_PAID_INSTALLMENTS = 24  # bounds the events per row; the rest of a long history is implied


def read_seed(path: str | Path | IO[str]) -> History:
    """A seed-schema export -> :class:`History` (outcome = ``Recovery_Status == Written Off``;
    Fully / Partially Recovered are 0; blank or unknown statuses leave the loan unlabelled).

    Blank or unparsable numbers are 0 for the behavioural counts (missed payments, days past
    due, attempts) and missing (NaN, imputed by the model) for profile values."""
    frame = _match_columns(_read_csv(path), SEED_COLUMNS, SEED_REQUIRED, path)
    return seed_frame_history(frame, path)


def seed_frame_history(frame: pd.DataFrame, path: Any = "<frame>") -> History:
    """Events and outcomes of a seed-schema DataFrame (canonical column names)."""
    n = len(frame)
    num = {
        c: frame[c].to_numpy(float)
        if pd.api.types.is_numeric_dtype(frame[c])
        else _numbers(frame[c])
        for c in SEED_NUMERIC
    }
    text = {
        c: frame[c].astype(str).str.strip().to_numpy()
        for c in (
            "Borrower_ID",
            "Gender",
            "Employment_Type",
            "Loan_Type",
            "Payment_History",
            "Recovery_Status",
            "Collection_Method",
            "Legal_Action_Taken",
            "Loan_ID",
        )
    }
    events: list[dict[str, Any]] = []
    outcomes: dict[str, int] = {}
    seen: dict[str, int] = {}
    # Rows as Python values, built column-wise (floats, not numpy scalars: seed_row_events
    # reads every number through float()/int(), so the events are the same).
    numbers = list(zip(*(num[c].tolist() for c in SEED_NUMERIC), strict=True))
    texts = list(zip(*(text[c].tolist() for c in text), strict=True))
    text_columns = tuple(text)
    loan_ids = text["Loan_ID"]
    with _collector_paused():
        for i in range(n):
            row_no = i + 2  # 1-based, after the header: what a spreadsheet shows
            loan_id = loan_ids[i]
            if not loan_id or loan_id.lower() == "nan":
                loan_id = f"row-{row_no}"
            if loan_id in seen:
                raise AdapterError(
                    f"{_name(path)}: row {row_no}, column 'Loan_ID': {loan_id!r} "
                    f"repeats row {seen[loan_id]}; give every loan one row"
                )
            seen[loan_id] = row_no
            row = dict(zip(SEED_NUMERIC, numbers[i], strict=True))
            row.update(zip(text_columns, texts[i], strict=True))
            row["Loan_ID"] = loan_id
            events.extend(seed_row_events(row))
            outcome = RECOVERY_OUTCOMES.get(_canonical(row["Recovery_Status"]))
            if outcome is not None:  # blank or unknown status: events yes, training label no
                outcomes[loan_id] = outcome
    return History(events, outcomes, "seed", n)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a book's events are built (back on after, as
    it was). Each event is three new containers (~15 per loan), so the collector ran again
    and again over the growing, acyclic list of events: seed_frame_history of a 30,000-loan
    book took 6.3-8.8 s of CPU with it on, 5.0-5.2 s with it off (one process, interleaved).
    Nothing built here is a cycle, so nothing is left for it to find."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def seed_row_events(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The event history of one seed row; replaying it reproduces the row's values.

    A seed row is the loan's *final* state, but the stream (and the point-in-time training
    snapshots, :mod:`models.training.snapshots`) sees each installment as it happens, so an
    installment's event may carry only what was known then: the opening terms and the
    installments before it. Nothing before the last installment is derived from the final
    ``Outstanding_Loan_Amount`` (except how many installments were paid) or from
    ``Recovery_Status`` (never read here).

    Rules (a row is *consistent* when it follows them; inconsistent rows keep the numbers):

    - ``Num_Missed_Payments`` = m ``PaymentMissed`` events, ``Days_Past_Due`` = d.
    - d > 0 means the loan is in arrears now: the last ``t = min(m, max(1, round(d/30)))``
      misses are consecutive at the end, the last one with ``days_past_due = d`` -> payment
      history "Missed". (d > 0 with m = 0 is inconsistent: one miss is added.)
    - d = 0: earlier misses were cured by later payments -> "Delayed"; with m = 0 a "Delayed"
      row gets one late payment (the last one), an "On-Time" row none.
    - Paid installments p: what an annuity at ``Interest_Rate`` with ``Monthly_EMI`` needs to
      fall from ``Loan_Amount`` to ``Outstanding_Loan_Amount`` (linear without a rate),
      capped at :data:`MAX_PAID_INSTALLMENTS`, at least what the rules above need (and at
      least one installment event in all).
    - Cured misses (the m - t not at the end), each reported 30 days past due: at a uniformly
      random set of the first e + p - 1 installments before the trailing ones (e = m - t;
      the last of them is a payment, which cures them), drawn from a generator seeded by
      ``Loan_ID`` alone (:func:`_cured_slots`), so the same row always gets the same
      history. Uniform, because the synthetic book misses each installment independently
      (:mod:`models.data.synthetic`), so given the counts every placement is about equally
      likely (all but the cure before the trailing misses). (They used to come first:
      every loan with a cured miss was then 30+ days past due at its first installment.)
    - Outstanding follows the contract from ``Loan_Amount``: after n payments of
      ``Monthly_EMI`` it is the annuity balance ``L q^n - EMI (q^n - 1) / i`` (q = 1 + i,
      i = ``Interest_Rate`` / 1200; linear ``L - n EMI`` without a positive rate or when the
      EMI does not cover the interest, as for p), floored at 0; a miss leaves it unchanged.
      A history capped at :data:`MAX_PAID_INSTALLMENTS` shows the last installments of a
      longer one, so n counts the implied earlier payments too. The *last* installment
      carries ``Outstanding_Loan_Amount`` exactly (for a consistent row that is the
      schedule's value up to rounding; otherwise the row's number wins over the schedule).
      It used to fall linearly from ``Loan_Amount`` to the final value, so every snapshot's
      balance encoded the end state.
    - Counts above :data:`MAX_COUNT` and days past due above :data:`MAX_DAYS_PAST_DUE` are
      corrupt cells and are capped.
    - ``Collection_Attempts`` = a ``CollectionAttempt`` events at the end, method
      ``Collection_Method``, the last one carrying ``Legal_Action_Taken`` (legal action with
      a = 0 is inconsistent: one attempt is added).
    """
    loan_id, borrower = row["Loan_ID"], row.get("Borrower_ID") or ""
    if not borrower or borrower.lower() == "nan":
        borrower = loan_id
    amount = _amount_or_nan(row["Loan_Amount"])
    final_out = _amount_or_nan(row["Outstanding_Loan_Amount"])
    emi = _amount_or_nan(row["Monthly_EMI"])
    rate = _amount_or_nan(row["Interest_Rate"])
    # Caps keep one corrupt cell from turning into millions of events.
    missed = min(MAX_COUNT, max(0, _int_or(row["Num_Missed_Payments"], 0)))
    dpd = min(MAX_DAYS_PAST_DUE, max(0, _int_or(row["Days_Past_Due"], 0)))
    history = _canonical(row.get("Payment_History") or "")
    attempts = min(MAX_COUNT, max(0, _int_or(row["Collection_Attempts"], 0)))
    legal = _canonical(row.get("Legal_Action_Taken") or "") in ("yes", "y", "true", "1")
    if dpd > 0 and missed == 0:
        missed = 1
    if legal and attempts == 0:
        attempts = 1
    trailing = min(missed, max(1, round(dpd / 30))) if dpd > 0 else 0
    early = missed - trailing
    late_payment = dpd == 0 and missed == 0 and history == "delayed"
    all_paid = _installments_paid(amount, final_out, emi, rate)
    paid = min(MAX_PAID_INSTALLMENTS, all_paid)
    # Cured misses need a payment after them; a late-payment row needs its late payment; and
    # the outstanding amount needs at least one installment event to carry it.
    paid = max(paid, 1 if early else 0, int(late_payment), 1 if early + trailing == 0 else 0)
    before = early + paid  # installments before the trailing misses
    n_inst = before + trailing
    cured = _cured_slots(loan_id, early, before - 1)
    # Installment k (0-based) falls due 30 days apart; the history ends at AS_OF_DAY.
    open_day = AS_OF_DAY - 30 * n_inst - 1
    start = amount if amount == amount else (final_out if final_out == final_out else 0.0)
    end = final_out if final_out == final_out else start
    due_amount = emi if emi == emi else 0.0
    balance_after = _schedule(start, amount, emi, rate)
    payments = max(0, all_paid - MAX_PAID_INSTALLMENTS)  # implied, before the cap

    def outstanding(k: int) -> float:
        # Known at installment k: the schedule so far; the row's own number at the last one.
        return end if k == n_inst - 1 else round(balance_after(payments), 2)

    seq = 0
    events: list[dict[str, Any]] = [
        _event(
            loan_id,
            borrower,
            seq,
            open_day * DAY_MS,
            LOAN_OPENED,
            {
                "age": _int_or(row["Age"], -1),
                "gender": row.get("Gender") or "",
                "employment_type": row.get("Employment_Type") or "",
                "monthly_income": _amount_or_nan(row["Monthly_Income"]),
                "num_dependents": _int_or(row["Num_Dependents"], -1),
                "loan_amount": amount,
                "loan_tenure_months": _int_or(row["Loan_Tenure"], -1),
                "interest_rate": rate,
                "loan_type": row.get("Loan_Type") or "",
                "collateral_value": _amount_or_nan(row["Collateral_Value"]),
                "monthly_emi": emi,
            },
        )
    ]
    for k in range(n_inst):
        seq += 1
        due = open_day + 30 * (k + 1)
        if k in cured:  # a cured miss, 30 days past due when reported
            events.append(
                _event(
                    loan_id,
                    borrower,
                    seq,
                    (due + 30) * DAY_MS - 1,
                    PAYMENT_MISSED,
                    {
                        "installment_due_date": due,
                        "amount_due": due_amount,
                        "days_past_due": 30,
                        "outstanding": outstanding(k),
                    },
                )
            )
        elif k < before:
            is_late = late_payment and k == before - 1
            at = (due + (5 if is_late else 0)) * DAY_MS + 43_200_000  # noon
            payments += 1
            events.append(
                _event(
                    loan_id,
                    borrower,
                    seq,
                    at,
                    PAYMENT_RECEIVED,
                    {
                        "installment_due_date": due,
                        "amount_due": due_amount,
                        "amount_paid": due_amount,
                        "outstanding_after": outstanding(k),
                    },
                )
            )
        else:  # trailing misses: the loan is past due now
            j = k - before
            days = max(1, dpd - 30 * (trailing - 1 - j))
            events.append(
                _event(
                    loan_id,
                    borrower,
                    seq,
                    (due + days) * DAY_MS,
                    PAYMENT_MISSED,
                    {
                        "installment_due_date": due,
                        "amount_due": due_amount,
                        "days_past_due": days,
                        "outstanding": outstanding(k),
                    },
                )
            )
    last_at = events[-1]["occurred_at"]
    method = COLLECTION_METHODS.get(_title(row.get("Collection_Method") or ""), "OTHER")
    for j in range(attempts):
        seq += 1
        events.append(
            _event(
                loan_id,
                borrower,
                seq,
                last_at + (j + 1) * DAY_MS,
                COLLECTION_ATTEMPT,
                {"method": method, "outcome": "OTHER", "legal_action": legal and j == attempts - 1},
            )
        )
    return events


def _cured_slots(loan_id: str, count: int, slots: int) -> frozenset[int]:
    """``count`` of the installments ``0 .. slots - 1``, uniformly at random from a generator
    seeded by the loan id only (CRC-32: stable across processes, unlike ``hash``)."""
    if count <= 0:
        return frozenset()
    # default_rng(seed) is Generator(PCG64(seed)); built directly, without its dispatch.
    rng = np.random.Generator(np.random.PCG64(zlib.crc32(loan_id.encode("utf-8"))))
    return frozenset(rng.choice(slots, size=count, replace=False).tolist())


def _schedule(start: float, amount: float, emi: float, rate: float) -> Callable[[int], float]:
    """The balance after n paid installments, from the opening terms only: the annuity at
    ``rate`` when the EMI covers the interest on ``amount``, else linear (the same choice as
    :func:`_installments_paid`, so a consistent row's schedule ends at its outstanding);
    without an EMI or a loan amount the schedule is unknown and the balance stays at
    ``start`` until the last installment carries the row's value."""
    if not (emi > 0 and amount == amount):
        return lambda n: start
    i = _annuity_rate(amount, emi, rate)
    if i > 0:
        q = 1.0 + i
        # Paid off after this many payments; beyond it q**n could overflow for nothing.
        payoff = -math.log1p(-amount * i / emi) / math.log1p(i)

        def annuity(n: int) -> float:
            if n >= payoff:
                return 0.0
            qn = q**n
            balance = amount * qn - emi * (qn - 1) / i
            return balance if balance > 0.0 else 0.0  # max(0.0, balance), NaN and -0.0 alike

        return annuity
    return lambda n: max(0.0, amount - n * emi)


def _annuity_rate(amount: float, emi: float, rate: float) -> float:
    """The monthly rate i of the annuity schedule, or 0 for a linear one: without a positive
    rate, or when the EMI does not cover the interest on ``amount``."""
    i = rate / 1200.0 if rate == rate and rate > 0 else 0.0
    return i if i > 0 and emi > amount * i else 0.0


def _installments_paid(amount: float, outstanding: float, emi: float, rate: float) -> int:
    """Installments an annuity loan needs to fall from ``amount`` to ``outstanding``: from
    B_n = L q^n - EMI (q^n - 1) / i with q = 1 + i; linear when the rate is unknown."""
    if not (emi > 0 and amount == amount and outstanding == outstanding):
        return 0
    i = _annuity_rate(amount, emi, rate)
    if i > 0:
        ratio = (emi / i - outstanding) / (emi / i - amount)
        return max(0, round(math.log(ratio) / math.log1p(i))) if ratio > 0 else 0
    return max(0, round((amount - outstanding) / emi))


def _title(value: str) -> str:
    """The collection method ``value`` names (case, spaces and punctuation aside), or
    ``value``."""
    return _TITLES.get(_canonical(value), value)


_TITLES: dict[str, str] = {}
for _name_ in COLLECTION_METHODS:  # the first name of a canonical spelling wins, as it did
    _TITLES.setdefault(_canonical(_name_), _name_)
del _name_
