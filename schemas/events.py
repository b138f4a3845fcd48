"""Names of the ``LoanEvent`` body types, as they appear in decoded ``(name, body)`` tuples."""

from __future__ import annotations

from functools import cache
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


def with_defaults(event: dict[str, Any]) -> dict[str, Any]:
    """``event`` with every body field it lacks set to the latest ``LoanEvent`` schema's
    default: what decoding its bytes gives back (a v1-shaped dict written by the v2 writer
    reads back with ``time_zone``, ``channel``, ... at their defaults).

    >>> e = make_event("e1", "L1", "B1", 0, "PaymentMissed", {"installment_due_date": 1,
    ...                "amount_due": 2.0, "days_past_due": 3, "outstanding": 4.0})
    >>> with_defaults(e) == e  # PaymentMissed gained no field
    True
    """
    full, body = event["body"]
    defaults = _body_defaults().get(full, {})
    missing = {k: v for k, v in defaults.items() if k not in body}
    return {**event, "body": (full, {**body, **missing})} if missing else event


@cache
def _body_defaults() -> dict[str, dict[str, Any]]:
    from schemas.registry import default_registry  # the registry imports this module's names

    raw = default_registry().latest("LoanEvent").raw
    body = next(f for f in raw["fields"] if f["name"] == "body")
    return {
        f"{NAMESPACE}.{record['name']}": {
            f["name"]: f["default"] for f in record["fields"] if "default" in f
        }
        for record in body["type"]
        if isinstance(record, dict)
    }
