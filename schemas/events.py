"""Names of the ``LoanEvent`` body types, as they appear in decoded ``(name, body)`` tuples."""

from __future__ import annotations

from typing import Any

NAMESPACE = "loanrec.events"
LOAN_OPENED = f"{NAMESPACE}.LoanOpened"
PAYMENT_RECEIVED = f"{NAMESPACE}.PaymentReceived"
PAYMENT_MISSED = f"{NAMESPACE}.PaymentMissed"
COLLECTION_ATTEMPT = f"{NAMESPACE}.CollectionAttempt"
LOAN_CLOSED = f"{NAMESPACE}.LoanClosed"
BODY_TYPES = (LOAN_OPENED, PAYMENT_RECEIVED, PAYMENT_MISSED, COLLECTION_ATTEMPT, LOAN_CLOSED)


def short_type(full_name: str) -> str:
    """``loanrec.events.PaymentMissed`` -> ``PaymentMissed`` (for metrics and logs)."""
    return full_name.rsplit(".", 1)[-1]


def make_event(
    event_id: str,
    loan_id: str,
    borrower_id: str,
    occurred_at_ms: int,
    body_type: str,
    body: dict[str, Any],
) -> dict[str, Any]:
    """A ``LoanEvent`` record ready for :meth:`AvroSerde.encode`."""
    full = body_type if "." in body_type else f"{NAMESPACE}.{body_type}"
    return {
        "event_id": event_id,
        "loan_id": loan_id,
        "borrower_id": borrower_id,
        "occurred_at": occurred_at_ms,
        "body": (full, body),
    }
