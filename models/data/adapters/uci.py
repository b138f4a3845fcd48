r"""UCI "default of credit card clients" (Yeh & Lien 2009) -> events + outcomes.

>>> import io
>>> header = "ID," + ",".join(f"X{i}" for i in range(1, 24)) + ",Y\n"
>>> row = "1,20000,2,2,1,24,2,2,-1,-1,-2,-2,3913,3102,689,0,0,0,0,689,0,0,0,0,1\n"
>>> history = read_uci(io.StringIO(header + row))
>>> history.outcomes, len(history.events)
({'UCI-1': 1}, 8)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import IO, Any

import numpy as np

from models.data.adapters.common import (
    DAY_MS,
    AdapterError,
    History,
    _event,
    _int_or,
    _match_columns,
    _name,
    _numbers,
    _read_csv,
)
from schemas.events import LOAN_OPENED, PAYMENT_MISSED, PAYMENT_RECEIVED

UCI_COLUMNS = ("ID", *(f"X{i}" for i in range(1, 24)), "Y")
UCI_NAMED = {  # the same data as distributed on Kaggle, with descriptive column names
    "LIMIT_BAL": "X1",
    "SEX": "X2",
    "EDUCATION": "X3",
    "MARRIAGE": "X4",
    "AGE": "X5",
    "PAY_0": "X6",
    "PAY_2": "X7",
    "PAY_3": "X8",
    "PAY_4": "X9",
    "PAY_5": "X10",
    "PAY_6": "X11",
    **{f"BILL_AMT{i}": f"X{11 + i}" for i in range(1, 7)},
    **{f"PAY_AMT{i}": f"X{17 + i}" for i in range(1, 7)},
    "default.payment.next.month": "Y",
    "default payment next month": "Y",
}
UCI_FIRST_DAY = 12_874  # 2005-04-01, the first statement month
UCI_MONTHS = ("April", "May", "June", "July", "August", "September")
UCI_OUTCOME_DAY = UCI_FIRST_DAY + 30 * len(UCI_MONTHS)  # October: "default payment next month"


def read_uci(path: str | Path | IO[str]) -> History:
    """UCI credit-card default -> :class:`History` (outcome = ``Y``).

    Each client is a loan (``loan_amount`` = credit limit X1, ``loan_type`` "Credit Card") with
    six monthly statements, April -> September. Month m with repayment status s, bill b and
    amount paid p becomes:

    - s <= 0 (no consumption / paid duly / revolving): ``PaymentReceived`` on the due date,
      ``amount_due`` = the previous month's bill (what this month's payment settles; April
      uses its own bill), ``amount_paid`` = p, ``outstanding_after`` = b;
    - s >= 1 (s months of delay): a late partial ``PaymentReceived`` of p (when p > 0), then
      ``PaymentMissed`` with ``days_past_due`` = 30 s, ``outstanding`` = b.

    Negative bills (credit balances) are reported as 0 outstanding. The outcome (``Y``,
    default in the month after the last statement) is dated October 2005
    (``History.outcome_at``), the month it is about.
    """
    frame = _read_csv(path)
    frame = frame.rename(
        columns={c: UCI_NAMED.get(c, UCI_NAMED.get(c.upper(), c)) for c in frame.columns}
    )
    frame = _match_columns(frame, UCI_COLUMNS, UCI_COLUMNS, path)
    values = {c: _numbers(frame[c]) for c in UCI_COLUMNS if c != "ID"}
    ids = frame["ID"].astype(str).str.strip().to_numpy()
    for c in UCI_COLUMNS[1:]:
        bad = np.flatnonzero(np.isnan(values[c]))
        if bad.size and c in ("X1", "Y", *(f"X{i}" for i in range(6, 24))):
            raise AdapterError(
                f"{_name(path)}: row {bad[0] + 2}, column {c!r}: not a number "
                f"({frame[c].iloc[bad[0]]!r}); fix or drop the row"
            )
    events: list[dict[str, Any]] = []
    outcomes: dict[str, int] = {}
    outcome_at: dict[str, int] = {}
    for i in range(len(frame)):
        loan_id = f"UCI-{ids[i]}"
        v = {c: values[c][i] for c in values}
        sex = {1: "Male", 2: "Female"}.get(_int_or(v["X2"], 0), "")
        seq = 0
        open_ms = (UCI_FIRST_DAY - 30) * DAY_MS
        events.append(
            _event(
                loan_id,
                loan_id,
                seq,
                open_ms,
                LOAN_OPENED,
                {
                    "age": _int_or(v["X5"], -1),
                    "gender": sex,
                    "employment_type": "",
                    "monthly_income": math.nan,
                    "num_dependents": -1,
                    "loan_amount": float(v["X1"]),
                    "loan_tenure_months": -1,
                    "interest_rate": math.nan,
                    "loan_type": "Credit Card",
                    "collateral_value": 0.0,
                    "monthly_emi": math.nan,
                },
            )
        )
        previous_bill = max(0.0, float(v["X17"]))  # no March statement: April's stands in
        for m in range(6):  # April (X11/X17/X23) -> September (X6/X12/X18)
            status = int(v[f"X{11 - m}"])
            bill = max(0.0, float(v[f"X{17 - m}"]))
            paid = max(0.0, float(v[f"X{23 - m}"]))
            due = UCI_FIRST_DAY + 30 * m
            # This month's payment settles (part of) last month's statement.
            owed = previous_bill
            previous_bill = bill
            if status <= 0:
                seq += 1
                events.append(
                    _event(
                        loan_id,
                        loan_id,
                        seq,
                        due * DAY_MS,
                        PAYMENT_RECEIVED,
                        {
                            "installment_due_date": due,
                            "amount_due": owed,
                            "amount_paid": paid,
                            "outstanding_after": bill,
                        },
                    )
                )
            else:
                if paid > 0:
                    seq += 1
                    events.append(
                        _event(
                            loan_id,
                            loan_id,
                            seq,
                            (due + 1) * DAY_MS,
                            PAYMENT_RECEIVED,
                            {
                                "installment_due_date": due,
                                "amount_due": owed,
                                "amount_paid": paid,
                                "outstanding_after": bill,
                            },
                        )
                    )
                seq += 1
                events.append(
                    _event(
                        loan_id,
                        loan_id,
                        seq,
                        (due + 2) * DAY_MS,
                        PAYMENT_MISSED,
                        {
                            "installment_due_date": due,
                            "amount_due": owed,
                            "days_past_due": 30 * status,
                            "outstanding": bill,
                        },
                    )
                )
        outcomes[loan_id] = int(v["Y"])
        outcome_at[loan_id] = UCI_OUTCOME_DAY * DAY_MS
    return History(events, outcomes, "uci", len(frame), outcome_at=outcome_at)
