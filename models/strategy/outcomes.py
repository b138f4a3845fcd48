"""Money outcomes of real data: what each loan's collections recovered and what they cost
(issue 14 point 1). Two sources, one result type (:class:`Outcomes`, one row per loan):

**Event logs** (:func:`event_outcomes`). A loan enters collections at its first
``PaymentMissed``; its *balance* is that event's ``outstanding``. Everything paid from then on
(``PaymentReceived.amount_paid``) is recovered, **including payments after
``LoanClosed(WRITTEN_OFF)``**: a written-off debt is still owed and what comes in later is a
recovery (the usual post-charge-off recovery line of a loss book). The streaming state machine
(``models/features/state.py``, ``LoanState.apply``, and its compiled twin) applies exactly these
payments as recoveries (``LoanState.recovered_after_write_off`` equals ``after_write_off``
here, ``test_stream_recoveries_agree_with_the_offline_outcomes``) and dead-letters every other
event after a close; the stream also drops re-sent events, which this count assumes absent
(docs/STRATEGY.md, "Missing"). The strategy a loan is on is the method of its
latest ``CollectionAttempt`` (``CALLS`` -> ``CALL``, ``DEBT_COLLECTORS`` -> ``DEBT_COLLECTOR``;
``OTHER`` and loans never contacted are ``NONE``, cost 0). Cost: ``per_month`` of the policy's
``costs:`` for every distinct (strategy, 30-day month) with an attempt, plus ``fee_rate`` of
the strategy in force times each payment it recovered.

**The seed CSV** (:func:`seed_outcomes`; one ``Collection_Method`` and one
``Recovery_Status`` per loan). ``Fully Recovered`` = 1, ``Written Off`` = 0 and
``Partially Recovered`` = ``partial`` (default :data:`PARTIAL_FRACTION` = 0.5) of
``Outstanding_Loan_Amount``; blank or other statuses are unlabelled and dropped. Why 0.5: the
export says only "partially", so the midpoint of (0, 1) is the least-informed choice (the
expected fraction of a uniform unknown), and settlements in practice are quoted around half
the balance (the simulator's own settlement recovers 55%); a bank with real recovered amounts
passes its own (``--partial-fraction``). The seed carries no durations: each
``Collection_Attempts`` counts as one month on the method (at least one for a loan with a
method), plus the method's fee on what was recovered.

>>> from models.serving.policy import Policy
>>> costs = Policy.load(None).costs
>>> out = seed_outcomes_from_rows([
...     {"Loan_ID": "a", "Outstanding_Loan_Amount": 1000.0, "Recovery_Status": "Fully Recovered",
...      "Collection_Method": "Debt Collectors", "Collection_Attempts": 2},
...     {"Loan_ID": "b", "Outstanding_Loan_Amount": 1000.0,
...      "Recovery_Status": "Partially Recovered", "Collection_Method": "Calls",
...      "Collection_Attempts": 1}], costs)
>>> out.strategy.tolist(), out.recovered.tolist(), out.cost.tolist()
(['DEBT_COLLECTOR', 'CALL'], [1000.0, 500.0], [270.0, 15.0])
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from models.errors import ModelsError
from models.serving.costs import StrategyCost
from schemas.events import COLLECTION_ATTEMPT, LOAN_CLOSED, PAYMENT_MISSED, PAYMENT_RECEIVED

PARTIAL_FRACTION = 0.5
NONE = "NONE"  # no collection method: never contacted, or an unmapped method
MONTH_MS = 30 * 86_400_000
# CollectionAttempt.method (schema enum) -> policy strategy
METHOD_STRATEGY = {
    "CALLS": "CALL",
    "SETTLEMENT_OFFER": "SETTLEMENT_OFFER",
    "DEBT_COLLECTORS": "DEBT_COLLECTOR",
    "LEGAL_NOTICE": "LEGAL_NOTICE",
}
# the seed's Collection_Method, normalised -> policy strategy
SEED_METHOD_STRATEGY = {
    "calls": "CALL",
    "call": "CALL",
    "settlementoffer": "SETTLEMENT_OFFER",
    "debtcollectors": "DEBT_COLLECTOR",
    "debtcollector": "DEBT_COLLECTOR",
    "legalnotice": "LEGAL_NOTICE",
}
FULL = ("fullyrecovered", "recovered", "repaid")
WRITTEN_OFF = ("writtenoff", "writeoff", "chargedoff")
PARTIAL = ("partiallyrecovered",)


class OutcomeError(ModelsError, ValueError):
    """Data the outcome extractor cannot turn into money (a strategy without costs, a bad
    partial fraction)."""


@dataclass(frozen=True)
class Outcomes:
    """Per loan: the strategy (collection method) applied, the balance when collections began,
    recovered, cost and net = recovered - cost; ``written_off`` and, for event logs, how much
    of ``recovered`` came after the write-off."""

    loan_id: np.ndarray
    strategy: np.ndarray
    balance: np.ndarray
    recovered: np.ndarray
    cost: np.ndarray
    written_off: np.ndarray
    after_write_off: np.ndarray

    @property
    def net(self) -> np.ndarray:
        return self.recovered - self.cost

    @property
    def recovered_fraction(self) -> np.ndarray:
        return self.recovered / np.maximum(self.balance, 1.0)

    def __len__(self) -> int:
        return len(self.loan_id)


def _canonical(value: Any) -> str:
    return re.sub(r"[^a-z0-9]", "", str(value).lower())


def recovered_fraction(status: Any, partial: float = PARTIAL_FRACTION) -> float:
    """The seed's ``Recovery_Status`` as a fraction of the outstanding amount; NaN when blank
    or unknown (unlabelled, not guessed)."""
    key = _canonical(status)
    if key in FULL:
        return 1.0
    if key in WRITTEN_OFF:
        return 0.0
    if key in PARTIAL:
        return partial
    return float("nan")


def _cost_of(costs: Mapping[str, StrategyCost], strategy: str) -> StrategyCost:
    if strategy == NONE:
        return StrategyCost(0.0, 0.0)
    if strategy not in costs:
        raise OutcomeError(f"costs: no entry for {strategy}; add it to the policy's costs:")
    return costs[strategy]


def seed_outcomes_from_rows(
    rows: Iterable[Mapping[str, Any]],
    costs: Mapping[str, StrategyCost],
    partial: float = PARTIAL_FRACTION,
) -> Outcomes:
    """Seed-schema rows (canonical column names) -> :class:`Outcomes` of the labelled loans."""
    if not 0.0 <= partial <= 1.0 or partial != partial:
        raise OutcomeError(f"partial fraction {partial!r} must be in [0, 1]")
    cols: dict[str, list[Any]] = {k: [] for k in ("id", "s", "b", "r", "c", "w")}
    for i, row in enumerate(rows):
        fraction = recovered_fraction(row.get("Recovery_Status"), partial)
        balance = pd.to_numeric(row.get("Outstanding_Loan_Amount"), errors="coerce")
        if fraction != fraction or balance != balance:
            continue
        strategy = SEED_METHOD_STRATEGY.get(_canonical(row.get("Collection_Method") or ""), NONE)
        attempts = pd.to_numeric(row.get("Collection_Attempts"), errors="coerce")
        months = 0 if strategy == NONE else max(1, int(attempts) if attempts == attempts else 0)
        cost = _cost_of(costs, strategy)
        recovered = fraction * max(float(balance), 0.0)
        cols["id"].append(str(row.get("Loan_ID") or f"row-{i + 2}"))
        cols["s"].append(strategy)
        cols["b"].append(max(float(balance), 0.0))
        cols["r"].append(recovered)
        cols["c"].append(months * cost.per_month + cost.fee_rate * recovered)
        cols["w"].append(fraction == 0.0)
    return Outcomes(
        np.array(cols["id"], dtype=object),
        np.array(cols["s"], dtype=object),
        np.array(cols["b"], dtype=float),
        np.array(cols["r"], dtype=float),
        np.array(cols["c"], dtype=float),
        np.array(cols["w"], dtype=bool),
        np.zeros(len(cols["id"])),
    )


def seed_outcomes(
    frame: pd.DataFrame, costs: Mapping[str, StrategyCost], partial: float = PARTIAL_FRACTION
) -> Outcomes:
    """A seed-schema DataFrame (canonical column names) -> :class:`Outcomes`."""
    return seed_outcomes_from_rows(frame.to_dict("records"), costs, partial)


def event_outcomes(
    events: Iterable[Mapping[str, Any]], costs: Mapping[str, StrategyCost]
) -> Outcomes:
    """Adapter-shaped events (``{"loan_id", "occurred_at", "body": (type, fields)}``) ->
    :class:`Outcomes` of every loan that entered collections (had a ``PaymentMissed``)."""
    by_loan: dict[str, list[Mapping[str, Any]]] = {}
    for event in events:
        by_loan.setdefault(str(event["loan_id"]), []).append(event)
    rows = []
    for loan_id in sorted(by_loan):
        stream = sorted(by_loan[loan_id], key=lambda e: e["occurred_at"])
        balance = None
        strategy, recovered, fees, after, written_off = NONE, 0.0, 0.0, 0.0, False
        months: set[tuple[str, int]] = set()
        for event in stream:
            kind, body = event["body"]
            if kind == PAYMENT_MISSED and balance is None:
                balance = float(body["outstanding"])
            elif kind == COLLECTION_ATTEMPT and balance is not None:
                strategy = METHOD_STRATEGY.get(str(body["method"]), NONE)
                if strategy != NONE:
                    _cost_of(costs, strategy)
                    months.add((strategy, int(event["occurred_at"]) // MONTH_MS))
            elif kind == PAYMENT_RECEIVED and balance is not None:
                paid = float(body["amount_paid"])
                recovered += paid
                fees += _cost_of(costs, strategy).fee_rate * paid
                after += paid if written_off else 0.0
            elif kind == LOAN_CLOSED and body.get("reason") == "WRITTEN_OFF":
                written_off = True
        if balance is None:
            continue  # never delinquent: not in collections
        cost = fees + sum(_cost_of(costs, s).per_month for s, _ in months)
        rows.append((loan_id, strategy, balance, recovered, cost, written_off, after))
    columns = list(zip(*rows, strict=True)) if rows else [()] * 7
    return Outcomes(
        np.array(columns[0], dtype=object),
        np.array(columns[1], dtype=object),
        np.array(columns[2], dtype=float),
        np.array(columns[3], dtype=float),
        np.array(columns[4], dtype=float),
        np.array(columns[5], dtype=bool),
        np.array(columns[6], dtype=float),
    )


def book_outcomes(
    source: str,
    path: Any,
    events: Iterable[Mapping[str, Any]],
    costs: Mapping[str, StrategyCost],
    partial: float = PARTIAL_FRACTION,
) -> Outcomes | None:
    """The outcomes of a book read by ``read_history(source, path)`` (``events`` its events):
    the seed CSV's statuses, or an event log's payments; None for sources without collection
    outcomes (UCI has no methods)."""
    if source == "seed":
        from models.data.adapters.common import _match_columns, _read_csv
        from models.data.adapters.seed import SEED_COLUMNS, SEED_REQUIRED

        frame = _match_columns(_read_csv(path), SEED_COLUMNS, SEED_REQUIRED, path)
        return seed_outcomes(frame, costs, partial)
    if source == "events":
        return event_outcomes(events, costs)
    return None
