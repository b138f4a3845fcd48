"""Money outcomes (issue 14 point 1): event logs count payments after delinquency, including
after a write-off, and charge the policy's costs; the seed CSV's statuses become fractions."""

from __future__ import annotations

import numpy as np
import pytest

from models.data.adapters.common import DAY_MS, _event
from models.data.synthetic import generate_book
from models.serving.policy import Policy
from models.strategy.outcomes import (
    NONE,
    OutcomeError,
    event_outcomes,
    recovered_fraction,
    seed_outcomes,
)
from schemas.events import (
    COLLECTION_ATTEMPT,
    LOAN_CLOSED,
    LOAN_OPENED,
    PAYMENT_MISSED,
    PAYMENT_RECEIVED,
)

COSTS = Policy.load(None).costs


def _paid(loan: str, seq: int, day: int, amount: float) -> dict:
    body = {
        "installment_due_date": day,
        "amount_due": amount,
        "amount_paid": amount,
        "outstanding_after": 0.0,
    }
    return _event(loan, loan, seq, day * DAY_MS, PAYMENT_RECEIVED, body)


def _missed(loan: str, seq: int, day: int, outstanding: float) -> dict:
    body = {
        "installment_due_date": day,
        "amount_due": 100.0,
        "days_past_due": 30,
        "outstanding": outstanding,
    }
    return _event(loan, loan, seq, day * DAY_MS, PAYMENT_MISSED, body)


def _attempt(loan: str, seq: int, day: int, method: str) -> dict:
    body = {"method": method, "outcome": "OTHER", "legal_action": False}
    return _event(loan, loan, seq, day * DAY_MS, COLLECTION_ATTEMPT, body)


def test_payments_after_a_write_off_are_recoveries_with_the_collectors_fee() -> None:
    events = [
        _event("L1", "L1", 0, 0, LOAN_OPENED, {}),
        _paid("L1", 1, 30, 100.0),  # before delinquency: an installment, not a recovery
        _missed("L1", 2, 60, 2000.0),
        _attempt("L1", 3, 61, "CALLS"),
        _attempt("L1", 4, 62, "CALLS"),  # same month: one month of calls
        _paid("L1", 5, 70, 50.0),
        _attempt("L1", 6, 100, "DEBT_COLLECTORS"),
        _event("L1", "L1", 7, 120 * DAY_MS, LOAN_CLOSED, {"reason": "WRITTEN_OFF"}),
        _paid("L1", 8, 150, 400.0),  # after the write-off, on the collector
        _event("L2", "L2", 0, 0, LOAN_OPENED, {}),
        _paid("L2", 1, 30, 100.0),  # never delinquent: not in collections
    ]
    out = event_outcomes(events, COSTS)
    assert out.loan_id.tolist() == ["L1"]
    assert out.strategy.tolist() == ["DEBT_COLLECTOR"]
    assert out.balance[0] == 2000.0 and out.recovered[0] == 450.0
    assert out.written_off[0] and out.after_write_off[0] == 400.0
    call, agency = COSTS["CALL"], COSTS["DEBT_COLLECTOR"]
    expected = call.per_month + agency.per_month + agency.fee_rate * 400.0
    assert out.cost[0] == pytest.approx(expected)
    assert out.net[0] == pytest.approx(450.0 - expected)


def test_a_loan_never_contacted_costs_nothing() -> None:
    events = [_missed("L3", 1, 60, 900.0), _paid("L3", 2, 90, 300.0)]
    out = event_outcomes(events, COSTS)
    assert out.strategy.tolist() == [NONE] and out.cost.tolist() == [0.0]
    assert out.recovered_fraction[0] == pytest.approx(300.0 / 900.0)


def test_a_strategy_without_costs_is_refused() -> None:
    events = [_missed("L4", 1, 60, 900.0), _attempt("L4", 2, 61, "CALLS")]
    with pytest.raises(OutcomeError, match="no entry for CALL"):
        event_outcomes(events, {})


def test_seed_statuses_become_fractions_of_the_outstanding_amount() -> None:
    assert recovered_fraction("Fully Recovered") == 1.0
    assert recovered_fraction("written off") == 0.0
    assert recovered_fraction("Partially Recovered") == 0.5
    assert recovered_fraction("Partially Recovered", partial=0.3) == 0.3
    assert np.isnan(recovered_fraction("")) and np.isnan(recovered_fraction("Pending"))
    frame, _, _ = generate_book(400, seed=5)
    low = seed_outcomes(frame, COSTS, partial=0.2)
    high = seed_outcomes(frame, COSTS, partial=0.8)
    assert len(low) == len(frame)
    partial = (frame["Recovery_Status"] == "Partially Recovered").to_numpy()
    assert partial.any()
    balance = frame["Outstanding_Loan_Amount"].to_numpy(float)
    moved = high.recovered[partial] - low.recovered[partial]
    np.testing.assert_allclose(moved, 0.6 * balance[partial])
    written = (frame["Recovery_Status"] == "Written Off").to_numpy()
    assert (low.recovered[written] == 0).all() and low.written_off[written].all()
    with pytest.raises(OutcomeError, match="partial fraction"):
        seed_outcomes(frame, COSTS, partial=1.5)
