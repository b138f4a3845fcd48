"""The seed adapter's point-in-time promise (issue #13): a seed row is the loan's final state,
but the history rebuilt from it (``seed_row_events``) lets an installment's event carry only
what was known at that installment -- the opening terms and the installments before it --
so the training snapshots of an early installment cannot encode the outcome."""

from __future__ import annotations

import gc
import math

import numpy as np
import pandas as pd
import pytest

from models.data.adapters import SEED_COLUMNS, seed_frame_history, seed_row_events
from models.data.adapters.common import AdapterError
from models.features.columns import FEATURE_INDEX
from models.features.state import replay
from models.training.snapshots import cut_after_installments, snapshot_set

AMOUNT, RATE, TENURE = 12_000.0, 12.0, 24
_I = RATE / 1200.0
EMI = round(AMOUNT * _I / (1.0 - (1.0 + _I) ** -TENURE), 2)


def _balance(payments: int) -> float:
    """The annuity balance after ``payments`` installments, closed form."""
    growth = (1.0 + _I) ** payments
    return AMOUNT * growth - EMI * (growth - 1.0) / _I


def _row(**changes: object) -> dict[str, object]:
    """In arrears at 45 days (the last 2 of 3 misses), 10 installments paid, written off."""
    row: dict[str, object] = {
        "Borrower_ID": "B1",
        "Age": 40,
        "Gender": "Female",
        "Employment_Type": "Salaried",
        "Monthly_Income": 4000.0,
        "Num_Dependents": 1,
        "Loan_ID": "L1",
        "Loan_Amount": AMOUNT,
        "Loan_Tenure": TENURE,
        "Interest_Rate": RATE,
        "Loan_Type": "Personal",
        "Collateral_Value": 0.0,
        "Outstanding_Loan_Amount": round(_balance(10), 2),
        "Monthly_EMI": EMI,
        "Payment_History": "Missed",
        "Num_Missed_Payments": 3,
        "Days_Past_Due": 45,
        "Recovery_Status": "Written Off",
        "Collection_Attempts": 2,
        "Collection_Method": "Calls",
        "Legal_Action_Taken": "No",
    }
    row.update(changes)
    return row


def _snapshots(row: dict[str, object]):
    return snapshot_set(seed_frame_history(pd.DataFrame([row], columns=list(SEED_COLUMNS))))


def test_early_snapshots_do_not_depend_on_the_final_balance_or_the_outcome() -> None:
    """Same opening terms and counts, different end state: a written-off loan left at the
    schedule's balance, a recovered one 60 below it, one 60 above (all 10 installments paid,
    so the histories have the same length). Every snapshot but the last must be identical
    -- the old linear fall toward the final balance differed at every installment."""
    base = _snapshots(_row())
    for changes in (
        {"Outstanding_Loan_Amount": round(_balance(10) - 60, 2), "Recovery_Status": "Settled"},
        {"Outstanding_Loan_Amount": round(_balance(10) + 60, 2)},
    ):
        other = _snapshots(_row(**changes))
        assert len(other.x) == len(base.x) == 13  # 1 cured miss + 10 paid + 2 trailing
        np.testing.assert_array_equal(other.x[:-1], base.x[:-1])
        out = FEATURE_INDEX["outstanding"]
        assert other.x[-1, out] == changes["Outstanding_Loan_Amount"] != base.x[-1, out]


def test_the_balance_follows_the_schedule_and_the_last_installment_is_the_rows() -> None:
    row = _row()
    events = seed_row_events(row)
    n = sum(e["body"][0].endswith(("PaymentReceived", "PaymentMissed")) for e in events)
    for k in range(1, n + 1):
        x = replay(cut_after_installments(events, k))["L1"].feature_dict()
        paid = x["installments"] - x["num_missed"]
        expected = row["Outstanding_Loan_Amount"] if k == n else round(_balance(int(paid)), 2)
        assert math.isclose(x["outstanding"], expected, abs_tol=0.011), (k, x["outstanding"])
    # Without a rate the schedule is linear in the EMI.
    linear = _row(Interest_Rate=float("nan"), Outstanding_Loan_Amount=AMOUNT - 10 * 500.0)
    linear["Monthly_EMI"] = 500.0
    events = seed_row_events(linear)
    x = replay(cut_after_installments(events, 5))["L1"].feature_dict()
    assert x["outstanding"] == AMOUNT - 500.0 * (x["installments"] - x["num_missed"])


def test_cured_misses_are_spread_at_random_by_loan_id_not_put_first() -> None:
    """Two cured misses among 12 installments (10 paid, the last one paid): at a uniformly
    random 2 of the first 11, so installment 1 is a miss for 2/11 of the loans (it was for
    all of them), the same loan id always gets the same history, and the 30+ days past
    due rule no longer fires at every cured loan's first installment."""
    row = _row(Days_Past_Due=0, Num_Missed_Payments=2, Payment_History="Delayed")
    first_missed, placements = 0, set()
    for j in range(2000):
        events = seed_row_events({**row, "Loan_ID": f"L{j}"})
        kinds = [e["body"][0].rsplit(".", 1)[1] for e in events[1:13]]
        assert kinds.count("PaymentMissed") == 2 and kinds[-1] == "PaymentReceived"
        first_missed += kinds[0] == "PaymentMissed"
        placements.add(tuple(k for k, kind in enumerate(kinds) if kind == "PaymentMissed"))
    assert 0.13 < first_missed / 2000 < 0.24  # 2/11 = 0.18
    assert len(placements) == 55  # every one of C(11, 2) placements occurs
    assert repr(seed_row_events(row)) == repr(seed_row_events(dict(row)))


def test_a_capped_history_continues_the_schedule_of_its_implied_payments() -> None:
    """A 240-month loan 100 installments in shows only its last 24 (MAX_PAID_INSTALLMENTS):
    the balance carries on from the schedule after the 76 implied payments, so the last
    installment's row value is the schedule's next step, not a jump."""
    long_emi = round(AMOUNT * _I / (1.0 - (1.0 + _I) ** -240), 2)
    growth = (1.0 + _I) ** 100
    final = round(AMOUNT * growth - long_emi * (growth - 1.0) / _I, 2)
    row = _row(
        Loan_Tenure=240,
        Monthly_EMI=long_emi,
        Outstanding_Loan_Amount=final,
        Num_Missed_Payments=0,
        Days_Past_Due=0,
        Payment_History="On-Time",
    )
    events = seed_row_events(row)
    balances = [e["body"][1]["outstanding_after"] for e in events[1:25]]
    assert len(balances) == 24 and balances[-1] == final
    for n, balance in enumerate(balances[:-1], start=77):
        growth = (1.0 + _I) ** n
        assert math.isclose(balance, AMOUNT * growth - long_emi * (growth - 1.0) / _I, abs_tol=0.01)
    assert 0 < balances[-2] - final < long_emi  # one step, not the rest of the loan


def test_the_collector_is_back_as_it_was_after_a_book_even_a_refused_one() -> None:
    """seed_frame_history pauses the cyclic collector while it builds events (speed): it must
    leave it on when it was on -- also when the book is refused -- and off when it was off."""
    frame = pd.DataFrame(
        [{c: "" for c in SEED_COLUMNS} | {"Loan_ID": "L1", "Loan_Amount": "1000"}] * 2
    )
    assert gc.isenabled()
    assert len(seed_frame_history(frame.iloc[:1]).events) > 0
    assert gc.isenabled()
    with pytest.raises(AdapterError, match="repeats row 2"):
        seed_frame_history(frame)  # the same Loan_ID twice
    assert gc.isenabled()
    gc.disable()
    try:
        seed_frame_history(frame.iloc[:1])
        assert not gc.isenabled()
    finally:
        gc.enable()
