"""Small synthetic books for the producer tests, offline (tests/unit/producer) and on the
broker (tests/integration): one loan's history and a book of them, in per-loan event-time order.
``tests/`` is on ``sys.path`` through its conftest, so both import this module by name."""

from __future__ import annotations

import uuid

from schemas.events import make_event

T0 = 1_700_000_000_000
DAY_MS = 86_400_000


def loan_history(loan: int, start_ms: int = T0) -> list[dict]:
    """One loan's life in event-time order, using every body type."""
    lid, bid = f"L{loan:05d}", f"B{loan:05d}"

    def ev(day: int, kind: str, body: dict) -> dict:
        return make_event(str(uuid.uuid4()), lid, bid, start_ms + day * DAY_MS, kind, body)

    return [
        ev(
            0,
            "LoanOpened",
            {
                "age": 30 + loan % 40,
                "gender": "Female",
                "employment_type": "Salaried",
                "monthly_income": 4200.0,
                "num_dependents": 2,
                "loan_amount": 20000.0 + loan,
                "loan_tenure_months": 36,
                "interest_rate": 9.5,
                "loan_type": "Auto",
                "collateral_value": 5000.0,
                "monthly_emi": 640.0,
            },
        ),
        ev(
            30,
            "PaymentReceived",
            {
                "installment_due_date": 19700,
                "amount_due": 640.0,
                "amount_paid": 640.0,
                "outstanding_after": 19500.0,
            },
        ),
        ev(
            61,
            "PaymentMissed",
            {
                "installment_due_date": 19730,
                "amount_due": 640.0,
                "days_past_due": 1,
                "outstanding": 19500.0,
            },
        ),
        ev(
            75,
            "CollectionAttempt",
            {"method": "CALLS", "outcome": "PROMISE_TO_PAY", "legal_action": False},
        ),
        ev(90, "LoanClosed", {"reason": "SETTLED"}),
    ]


def book(n_loans: int) -> list[dict]:
    """Loans interleaved by event time, like a real replay."""
    events = [e for i in range(n_loans) for e in loan_history(i, T0 + i * 1000)]
    return sorted(events, key=lambda e: e["occurred_at"])
