"""Seeded synthetic loan books: seed-schema rows, their event histories and outcomes, and an
endless live event stream. Tests and the demo use it; nothing in the project downloads data.

Generating process (all draws from ``numpy.random.default_rng(seed)``, so a seed fixes the book):

1. **Profile.** age ~ U{21..65}; gender Male/Female (52/48 %); employment Salaried 55 %,
   Self-Employed 20 %, Business Owner 15 %, Unemployed 10 %; monthly income ~ lognormal
   (median 4,000, x0.6 for the unemployed); dependents ~ Poisson(1.2) capped at 5; loan type
   Home/Auto/Personal/Business/Credit Card; tenure from {12, 24, 36, 60} months (Home: 120 or
   240); affordability s = EMI share of income ~ U(0.08, 0.55); loan amount = the present
   value of s x income over the tenure at a base rate U(6, 14) %; final annual rate = base
   + 4 sigmoid(r); EMI by the annuity formula at the final rate; collateral 0.8-1.5 x amount
   for Home/Auto, 0.5 x amount for half the Business loans, else 0.
2. **Latent risk.** ``r = z + 2.7 (s - 0.3) + 0.8 [unemployed] + 0.1 dependents
   - 0.5 min(collateral/amount, 1.5)``, z ~ N(0, 1). It is never
   exported; it only drives what follows, so the model must recover it from behaviour.
3. **Behaviour over the months on book** (U{3..24}, at most the tenure): each installment is
   missed with p = sigmoid(-2.6 + 1.3 r), so missed ~ Binomial(months, p). A loan with misses
   is in arrears now with p = sigmoid(-0.8 + 1.2 r): its last k = U{1..min(missed, 6)} misses
   are consecutive, days past due = 30 k - U{0..14}; otherwise it was cured (payment history
   "Delayed"). A loan without misses is "Delayed" (one late payment) with p = 0.1, else
   "On-Time". Outstanding = the annuity balance after the installments actually paid.
4. **Collections.** Loans with misses get Poisson(0.8 x missed) attempts (+1 when in
   arrears); the method escalates with days past due (Calls -> Settlement Offer ->
   Debt Collectors -> Legal Notice beyond 90 days, legal action taken with p = 0.7 then).
5. **Outcome.** Written off with p = sigmoid(-2.2 + 1.4 r + 0.6 [in arrears]); otherwise Fully
   Recovered, or Partially Recovered (p = 0.5) when there were misses. About 20 % default.

The event history of each row comes from :func:`models.data.adapters.seed_row_events`, so the
events replay to exactly the row's values. A row is the loan's *final* state (the outcome is
drawn last, from r and the arrears at the end); the history rebuilt from it gives an early
installment only the opening terms and the installments so far -- the balance follows the
annuity schedule of the payments made, the cured misses sit at random positions seeded by the
loan id (the misses of step 3 are independent per installment, so every placement is equally
likely) -- so the outcome reaches a point-in-time snapshot only through the profile and the
behaviour up to it. :func:`iter_live_events` simulates the same
process month by month, forever, for the live producer.

>>> book, events, outcomes = generate_book(200, seed=1)
>>> len(book), len(outcomes), sorted(set(outcomes.values()))
(200, 200, [0, 1])
>>> generate_book(200, seed=1)[1][:5] == events[:5]
True
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from models.data.adapters import DAY_MS, SEED_COLUMNS, event_id, seed_frame_history

EMPLOYMENT = ("Salaried", "Self-Employed", "Business Owner", "Unemployed")
EMPLOYMENT_P = (0.55, 0.20, 0.15, 0.10)
LOAN_TYPES = ("Home", "Auto", "Personal", "Business", "Credit Card")
LOAN_TYPE_P = (0.2, 0.2, 0.3, 0.15, 0.15)
TENURES = np.array([12, 24, 36, 60, 120, 240])


def _sigmoid(x: np.ndarray | float) -> Any:
    return 1.0 / (1.0 + np.exp(-x))


def _profiles(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Step 1 and 2 of the generating process, vectorised."""
    age = rng.integers(21, 66, n)
    gender = np.where(rng.random(n) < 0.52, "Male", "Female")
    emp_i = rng.choice(len(EMPLOYMENT), n, p=EMPLOYMENT_P)
    income = np.exp(rng.normal(math.log(4000), 0.5, n)) * np.where(emp_i == 3, 0.6, 1.0)
    income = np.round(income, 2)
    dependents = np.minimum(rng.poisson(1.2, n), 5)
    type_i = rng.choice(len(LOAN_TYPES), n, p=LOAN_TYPE_P)
    tenure = np.where(type_i == 0, rng.choice([120, 240], n), TENURES[rng.integers(0, 4, n)])
    z = rng.normal(size=n)
    base_rate = rng.uniform(6, 14, n)
    # The borrower's affordability (EMI share of income) is drawn first; the amount is what
    # that EMI repays over the tenure at the base rate.
    share = rng.uniform(0.08, 0.55, n)
    i0 = base_rate / 1200.0
    amount = np.round(share * income * (1.0 - (1.0 + i0) ** (-tenure)) / i0, -2)
    amount = np.maximum(amount, 500.0)
    collateral = np.where(
        type_i <= 1,
        amount * rng.uniform(0.8, 1.5, n),
        np.where((type_i == 3) & (rng.random(n) < 0.5), amount * 0.5, 0.0),
    )
    collateral = np.round(collateral, 2)
    risk = (
        z
        + 0.9 * (share - 0.3) * 3
        + 0.8 * (emp_i == 3)
        + 0.1 * dependents
        - 0.5 * np.minimum(collateral / amount, 1.5)
    )
    rate = np.round(base_rate + 4 * _sigmoid(risk), 2)
    i = rate / 1200.0
    emi = np.round(amount * i / (1.0 - (1.0 + i) ** (-tenure)), 2)
    return {
        "age": age,
        "gender": gender,
        "emp_i": emp_i,
        "income": income,
        "dependents": dependents,
        "type_i": type_i,
        "amount": amount,
        "tenure": tenure,
        "collateral": collateral,
        "rate": rate,
        "emi": emi,
        "risk": risk,
    }


def generate_frame(n_loans: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """The seed-schema book (column order :data:`models.data.adapters.SEED_COLUMNS`) and the latent
    risk of each row (for tests and the report; never part of the export)."""
    rng = np.random.default_rng(seed)
    n = n_loans
    p = _profiles(rng, n)
    risk = p["risk"]
    months = np.minimum(rng.integers(3, 25, n), p["tenure"])
    missed = rng.binomial(months, _sigmoid(-2.6 + 1.3 * risk))
    in_arrears = (missed > 0) & (rng.random(n) < _sigmoid(-0.8 + 1.2 * risk))
    trailing = np.where(in_arrears, 1 + np.floor(rng.random(n) * np.minimum(missed, 6)), 0)
    dpd = np.where(in_arrears, 30 * trailing - rng.integers(0, 15, n), 0).astype(int)
    late = (missed == 0) & (rng.random(n) < 0.1)
    history = np.where(in_arrears, "Missed", np.where((missed > 0) | late, "Delayed", "On-Time"))
    paid = months - missed
    i = p["rate"] / 1200.0
    growth = (1.0 + i) ** paid
    outstanding = np.round(np.maximum(p["amount"] * growth - p["emi"] * (growth - 1) / i, 0), 2)
    attempts = np.where(missed > 0, rng.poisson(0.8 * missed) + in_arrears, 0)
    method = np.select(
        [dpd > 90, dpd > 60, dpd > 30],
        ["Legal Notice", "Debt Collectors", "Settlement Offer"],
        "Calls",
    )
    method = np.where(attempts > 0, method, "")
    legal = np.where((method == "Legal Notice") & (rng.random(n) < 0.7), "Yes", "No")
    default = rng.random(n) < _sigmoid(-2.2 + 1.4 * risk + 0.6 * in_arrears)
    partial = (missed > 0) & (rng.random(n) < 0.5)
    status = np.where(
        default, "Written Off", np.where(partial, "Partially Recovered", "Fully Recovered")
    )
    width = len(str(max(n - 1, 1)))
    ids = np.arange(n)
    frame = pd.DataFrame(
        {
            "Borrower_ID": [f"B{seed}-{k:0{width}d}" for k in ids],
            "Age": p["age"],
            "Gender": p["gender"],
            "Employment_Type": np.array(EMPLOYMENT)[p["emp_i"]],
            "Monthly_Income": p["income"],
            "Num_Dependents": p["dependents"],
            "Loan_ID": [f"L{seed}-{k:0{width}d}" for k in ids],
            "Loan_Amount": p["amount"],
            "Loan_Tenure": p["tenure"],
            "Interest_Rate": p["rate"],
            "Loan_Type": np.array(LOAN_TYPES)[p["type_i"]],
            "Collateral_Value": p["collateral"],
            "Outstanding_Loan_Amount": outstanding,
            "Monthly_EMI": p["emi"],
            "Payment_History": history,
            "Num_Missed_Payments": missed,
            "Days_Past_Due": dpd,
            "Recovery_Status": status,
            "Collection_Attempts": attempts,
            "Collection_Method": method,
            "Legal_Action_Taken": legal,
        },
        columns=list(SEED_COLUMNS),
    )
    return frame, risk


def generate_book(
    n_loans: int, seed: int = 0
) -> tuple[pd.DataFrame, list[dict[str, Any]], dict[str, int]]:
    """A synthetic book: (seed-schema DataFrame, its events in per-loan order, outcomes)."""
    frame, _ = generate_frame(n_loans, seed)
    history = seed_frame_history(frame)
    return frame, history.events, history.outcomes


# -- the live stream ---------------------------------------------------------------------------

_METHODS = ("CALLS", "SETTLEMENT_OFFER", "DEBT_COLLECTORS", "LEGAL_NOTICE")


def iter_live_events(
    n_loans: int, seed: int = 0, *, start_ms: int | None = None, max_events: int | None = None
) -> Iterator[dict[str, Any]]:
    """An endless, event-time-ordered stream over a book of ``n_loans`` live loans.

    Each loan opens, then every 30 days pays (on time, or late with p = 0.05) or misses its
    installment (p = sigmoid(-2.6 + 1.3 r), the same latent risk r as :func:`generate_book`);
    consecutive misses bring collection attempts of escalating method; a loan is written off
    after 6 consecutive misses (or with p = sigmoid(-3 + r) at each miss from the third on),
    else closes repaid at the end of its tenure or after U{6..36} months. Each closed loan is
    replaced by a new one, so the book keeps ``n_loans`` open loans. Deterministic for a given
    ``seed`` and ``start_ms`` (default: the current time, rounded down to the minute).
    """
    rng = np.random.default_rng(seed)
    if start_ms is None:
        start_ms = int(time.time() // 60 * 60_000)
    counter = itertools.count()
    heap: list[tuple[int, int, dict[str, Any]]] = []
    profiles: dict[str, np.ndarray] = {}
    next_profile = [0]
    loan_no = itertools.count()

    def new_loan(at: int) -> None:
        if next_profile[0] >= len(profiles.get("risk", ())):
            profiles.update(_profiles(rng, max(256, n_loans)))
            next_profile[0] = 0
        k = next_profile[0]
        next_profile[0] += 1
        loan_id = f"LIVE{seed}-{next(loan_no):08d}"
        amount = float(profiles["amount"][k])
        loan = {
            "loan_id": loan_id,
            "borrower_id": "B" + loan_id,
            "seq": 0,
            "k": k,
            "at": at,
            "open_day": at // DAY_MS,
            "month": 0,
            "risk": float(profiles["risk"][k]),
            "emi": float(profiles["emi"][k]),
            "rate": float(profiles["rate"][k]) / 1200.0,
            "outstanding": amount,
            "consecutive": 0,
            "attempts": 0,
            "life": int(min(profiles["tenure"][k], rng.integers(6, 37))),
        }
        heapq.heappush(heap, (at, next(counter), loan))

    for j in range(n_loans):  # stagger the openings over the first month
        new_loan(start_ms + int(j * 30 * DAY_MS / max(n_loans, 1)))
    emitted = 0
    # One heap of loan steps and pending events, by time: a step's events are all at or after
    # the step, so popping in order yields the stream in event-time order.
    while heap and (max_events is None or emitted < max_events):
        at, _, item = heapq.heappop(heap)
        if "body" in item:
            yield item
            emitted += 1
            continue
        for event in _advance(item, at, rng, profiles):
            heapq.heappush(heap, (event["occurred_at"], next(counter), event))
        if item.get("closed"):
            new_loan(item["closed_at"] + DAY_MS)
        else:
            heapq.heappush(heap, (item["at"], next(counter), item))


def _advance(
    loan: dict[str, Any], at: int, rng: np.random.Generator, profiles: dict[str, np.ndarray]
) -> list[dict[str, Any]]:
    """Events of one loan at its next step; schedules the step after (``loan["at"]``)."""

    def event(at_ms: int, body_type: str, body: dict[str, Any]) -> dict[str, Any]:
        loan["seq"] += 1
        return {
            "event_id": event_id(loan["loan_id"], loan["seq"]),
            "loan_id": loan["loan_id"],
            "borrower_id": loan["borrower_id"],
            "occurred_at": int(at_ms),
            "body": ("loanrec.events." + body_type, body),
        }

    if loan["month"] == 0 and loan["seq"] == 0:
        k = loan["k"]
        loan["seq"] = -1  # the opening event gets sequence number 0
        opened = event(
            at,
            "LoanOpened",
            {
                "age": int(profiles["age"][k]),
                "gender": str(profiles["gender"][k]),
                "employment_type": EMPLOYMENT[int(profiles["emp_i"][k])],
                "monthly_income": float(profiles["income"][k]),
                "num_dependents": int(profiles["dependents"][k]),
                "loan_amount": float(profiles["amount"][k]),
                "loan_tenure_months": int(profiles["tenure"][k]),
                "interest_rate": float(profiles["rate"][k]),
                "loan_type": LOAN_TYPES[int(profiles["type_i"][k])],
                "collateral_value": float(profiles["collateral"][k]),
                "monthly_emi": loan["emi"],
            },
        )
        loan["month"] = 1
        loan["at"] = (loan["open_day"] + 30) * DAY_MS + 43_200_000
        return [opened]
    out: list[dict[str, Any]] = []
    due = loan["open_day"] + 30 * loan["month"]
    risk = loan["risk"]
    if rng.random() < _sigmoid(-2.6 + 1.3 * risk):
        loan["consecutive"] += 1
        c = loan["consecutive"]
        dpd = 30 * (c - 1) + int(rng.integers(1, 6))
        out.append(
            event(
                (due + dpd - 30 * (c - 1)) * DAY_MS,
                "PaymentMissed",
                {
                    "installment_due_date": due,
                    "amount_due": loan["emi"],
                    "days_past_due": dpd,
                    "outstanding": round(loan["outstanding"], 2),
                },
            )
        )
        if rng.random() < min(0.9, 0.4 * c):
            method = _METHODS[min(c - 1, 3)]
            out.append(
                event(
                    out[-1]["occurred_at"] + DAY_MS,
                    "CollectionAttempt",
                    {
                        "method": method,
                        "outcome": "NO_CONTACT" if rng.random() < 0.5 else "REFUSED",
                        "legal_action": method == "LEGAL_NOTICE" and bool(rng.random() < 0.7),
                    },
                )
            )
        if c >= 6 or (c >= 3 and rng.random() < _sigmoid(-3 + risk)):
            out.append(
                event(out[-1]["occurred_at"] + DAY_MS, "LoanClosed", {"reason": "WRITTEN_OFF"})
            )
            loan["closed"], loan["closed_at"] = True, out[-1]["occurred_at"]
    else:
        late = rng.random() < 0.05
        # A payment also clears the arrears: the missed installments are paid with it.
        installments = 1 + loan["consecutive"]
        balance = loan["outstanding"]
        for _ in range(installments):
            balance = max(0.0, balance * (1 + loan["rate"]) - loan["emi"])
        loan["outstanding"] = balance
        loan["consecutive"] = 0
        out.append(
            event(
                (due + (5 if late else 0)) * DAY_MS + 43_200_000,
                "PaymentReceived",
                {
                    "installment_due_date": due,
                    "amount_due": loan["emi"] * installments,
                    "amount_paid": loan["emi"] * installments,
                    "outstanding_after": round(balance, 2),
                },
            )
        )
        if loan["month"] >= loan["life"] or balance <= 0:
            out.append(event(out[-1]["occurred_at"] + DAY_MS, "LoanClosed", {"reason": "REPAID"}))
            loan["closed"], loan["closed_at"] = True, out[-1]["occurred_at"]
    loan["month"] += 1
    loan["at"] = max(out[-1]["occurred_at"] + 1, (loan["open_day"] + 30 * loan["month"]) * DAY_MS)
    return out


# -- guardrail events (off by default: existing books and figures do not move) ---------------

TIME_ZONES = ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles")
# A borrower with a time zone also gets a jurisdiction (LoanEvent v3) in it, so the book
# exercises per-jurisdiction limitation periods (3, 10, 6 and 4 years in the shipped table).
JURISDICTIONS = ("US-NY", "US-IL", "US-CO", "US-CA")
HOLD_REASONS = ("CEASE_COMMUNICATION", "ATTORNEY_REPRESENTED", "BANKRUPTCY", "DISPUTE", "DECEASED")
_HOUR_MS = 3_600_000


def with_guardrail_events(
    events: list[dict[str, Any]],
    seed: int = 0,
    *,
    hold_rate: float = 0.1,
    call_rate: float = 0.5,
    zone_rate: float = 0.5,
) -> list[dict[str, Any]]:
    """``events`` (a book's, in per-loan event-time order) with what the guardrails act on
    (LoanEvent v2, v3): a borrower time zone and jurisdiction on a share ``zone_rate`` of
    openings; after each missed payment, with p = ``call_rate``, 1-3 call attempts an hour
    apart (a conversation with p = 0.3 each); on a share ``hold_rate`` of loans a compliance
    hold set after one of its events and, with p = 0.6, released after a later one. Returned
    grouped per loan, each loan in event-time order; deterministic for a given ``seed``."""
    rng = np.random.default_rng(seed)
    by_loan: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_loan.setdefault(event["loan_id"], []).append(event)
    out: list[dict[str, Any]] = []
    for history in by_loan.values():
        merged = history + _loan_guardrail_events(history, rng, hold_rate, call_rate, zone_rate)
        merged.sort(key=lambda e: e["occurred_at"])  # stable: a tie keeps the book's order
        out += merged
    return out


def _attempt(channel: str, conversation: bool, hold: dict[str, str] | None = None) -> dict:
    return {
        "method": "CALLS" if channel == "CALL" else "OTHER",
        "outcome": "OTHER",
        "legal_action": False,
        "channel": channel if hold is None else None,
        "conversation": conversation,
        "hold": hold,
    }


def _loan_guardrail_events(
    history: list[dict[str, Any]],
    rng: np.random.Generator,
    hold_rate: float,
    call_rate: float,
    zone_rate: float,
) -> list[dict[str, Any]]:
    """One loan's added events (its opening may gain a time zone, in place in ``history``)."""
    extra: list[dict[str, Any]] = []

    def add(ref: dict[str, Any], after_ms: int, body: dict[str, Any]) -> None:
        extra.append(
            {
                "event_id": event_id(ref["loan_id"], 1_000_000 + len(extra)),
                "loan_id": ref["loan_id"],
                "borrower_id": ref["borrower_id"],
                "occurred_at": ref["occurred_at"] + after_ms,
                "body": ("loanrec.events.CollectionAttempt", body),
            }
        )

    body_type, body = history[0]["body"]
    if body_type.endswith("LoanOpened") and rng.random() < zone_rate:
        k = int(rng.integers(len(TIME_ZONES)))
        where = {"time_zone": TIME_ZONES[k], "jurisdiction": JURISDICTIONS[k]}
        history[0] = {**history[0], "body": (body_type, {**body, **where})}
    closing = next(
        (i for i, e in enumerate(history) if e["body"][0].endswith("LoanClosed")), len(history)
    )
    for event in history[1:closing]:
        if event["body"][0].endswith("PaymentMissed") and rng.random() < call_rate:
            for k in range(int(rng.integers(1, 4))):
                add(event, (k + 1) * _HOUR_MS, _attempt("CALL", bool(rng.random() < 0.3)))
    if closing > 2 and rng.random() < hold_rate:
        i = int(rng.integers(1, closing - 1))
        reason = HOLD_REASONS[int(rng.integers(len(HOLD_REASONS)))]
        add(
            history[i],
            4 * _HOUR_MS + 1,
            _attempt("OTHER", False, {"action": "SET", "reason": reason}),
        )
        if rng.random() < 0.6:
            j = int(rng.integers(i + 1, closing))
            release = {"action": "RELEASE", "reason": reason}
            add(history[j], 5 * _HOUR_MS + 1, _attempt("OTHER", False, release))
    return extra


def with_live_guardrail_events(
    events: Iterator[dict[str, Any]],
    seed: int = 0,
    *,
    hold_rate: float = 0.1,
    call_rate: float = 0.5,
    zone_rate: float = 0.5,
) -> Iterator[dict[str, Any]]:
    """:func:`with_guardrail_events` for an endless, event-time-ordered stream (the live
    ``iter_live_events``), still in event-time order: a time zone and jurisdiction on a share
    ``zone_rate`` of openings; after each missed payment, with p = ``call_rate``, 1-3 call
    attempts an hour apart (a conversation with p = 0.3 each); a share ``hold_rate`` of loans
    is picked at opening for a hold, set 4 h after one of its later events (p = 0.25 at each)
    and, for 60 % of them, released 5 h after a later event (p = 0.3 at each). Added events
    wait in a heap until the stream passes their time; those of a loan that closes first are
    dropped (the scorer would dead-letter them). Memory: a few numbers per open loan."""
    rng = np.random.default_rng(seed)
    pending: list[tuple[int, int, dict[str, Any]]] = []
    order = itertools.count()
    # open loan id -> [added events so far, hold plan, hold reason]; the plan goes
    # "pick" (gets a hold) -> "release" (set, to be released) or "done" (set for good, or
    # released); None: no hold for this loan.
    loans: dict[str, list[Any]] = {}

    def add(ref: dict[str, Any], after_ms: int, body: dict[str, Any]) -> None:
        loan = loans[ref["loan_id"]]
        loan[0] += 1
        event = {
            "event_id": event_id(ref["loan_id"], 1_000_000 + loan[0]),
            "loan_id": ref["loan_id"],
            "borrower_id": ref["borrower_id"],
            "occurred_at": ref["occurred_at"] + after_ms,
            "body": ("loanrec.events.CollectionAttempt", body),
        }
        heapq.heappush(pending, (event["occurred_at"], next(order), event))

    for event in events:
        while pending and pending[0][0] <= event["occurred_at"]:
            added = heapq.heappop(pending)[2]
            if added["loan_id"] in loans:
                yield added
        body_type, body = event["body"]
        loan_id = event["loan_id"]
        if body_type.endswith("LoanOpened"):
            loans[loan_id] = [0, "pick" if rng.random() < hold_rate else None, None]
            if rng.random() < zone_rate:
                k = int(rng.integers(len(TIME_ZONES)))
                where = {"time_zone": TIME_ZONES[k], "jurisdiction": JURISDICTIONS[k]}
                event = {**event, "body": (body_type, {**body, **where})}
            yield event
            continue
        yield event
        loan = loans.get(loan_id)
        if body_type.endswith("LoanClosed"):
            loans.pop(loan_id, None)
            continue
        if loan is None:  # opened before this wrapper started
            continue
        if body_type.endswith("PaymentMissed") and rng.random() < call_rate:
            for k in range(int(rng.integers(1, 4))):
                add(event, (k + 1) * _HOUR_MS, _attempt("CALL", bool(rng.random() < 0.3)))
        if loan[1] == "pick" and rng.random() < 0.25:
            loan[2] = HOLD_REASONS[int(rng.integers(len(HOLD_REASONS)))]
            loan[1] = "release" if rng.random() < 0.6 else "done"
            hold = {"action": "SET", "reason": loan[2]}
            add(event, 4 * _HOUR_MS + 1, _attempt("OTHER", False, hold))
        elif loan[1] == "release" and rng.random() < 0.3:
            loan[1] = "done"  # one hold per loan, as in the batch generator
            release = {"action": "RELEASE", "reason": loan[2]}
            add(event, 5 * _HOUR_MS + 1, _attempt("OTHER", False, release))
    while pending:  # a finite stream (max_events) ended: what is due after it, in order
        added = heapq.heappop(pending)[2]
        if added["loan_id"] in loans:
            yield added
