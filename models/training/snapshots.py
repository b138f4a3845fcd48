"""Point-in-time training data: one labelled snapshot per loan per installment.

The stream scores a loan after every event, so the model must be trained on what the stream
knows at each of those moments, not on the loan's final state. :func:`snapshot_set` replays
a :class:`~models.data.adapters.History` through the one state machine
(:class:`models.features.state.LoanState`) and keeps the loan's ``features()`` row as it
stands at the end of each installment -- after the last event of that installment (events
with the same due date, e.g. a partial payment and then the miss of the rest, are one
installment, as the state machine counts them) and any collection attempt before the next
one. Nothing that happens later reaches a snapshot.

**Label.** A snapshot taken at time t is 1 when the loan is written off within H months
(``horizon_months``; a month = 365.25 / 12 days) of t, i.e. ``outcome_at - t <= H``:

- written-off loans (outcome 1): 1 when the write-off is at most H months after t, else 0
  (the loan was then observed for H months without a write-off);
- resolved loans (outcome 0: repaid, recovered, UCI's "no default"): 0 at every snapshot --
  the source's outcome is final, so no write-off can follow;
- loans still open at the end of the data (event logs whose outcomes come from
  ``LoanClosed``, where the loan has none): 0 when observed for at least H months after t
  (up to the log's last event), else **censored** -- dropped from training and evaluation,
  since nobody knows yet whether the loan will be written off in time. Their count is
  reported.

``outcome_at`` is the adapter's (``History.outcome_at``: the ``LoanClosed`` event; UCI's
October 2005, the month the label is about), otherwise the loan's last event.

**Weights.** Each loan's labelled snapshots share a total weight of 1, so a 24-month loan
counts as much as a 3-month one in the fit and in the calibration.

>>> from models.data.synthetic import generate_book
>>> from models.data.adapters import seed_frame_history
>>> frame, _, _ = generate_book(50, seed=1)
>>> snaps = snapshot_set(seed_frame_history(frame), horizon_months=12)
>>> len(snaps.loan_ids), bool((snaps.months_on_book >= 1).all())
(50, True)
>>> float(np.bincount(snaps.loan, weights=snaps.weight).max().round(9))
1.0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.data.adapters import History
from models.errors import ModelsError
from models.features.columns import FEATURE_INDEX
from models.features.state import LAST_DUE, InvalidEvent, LoanState
from schemas.events import COLLECTION_ATTEMPT, PAYMENT_MISSED, PAYMENT_RECEIVED

DAY_MS = 86_400_000
MONTH_MS = 365.25 / 12 * DAY_MS
DEFAULT_HORIZON_MONTHS = 12
_INSTALLMENT = (PAYMENT_RECEIVED, PAYMENT_MISSED)
_INSTALLMENTS = FEATURE_INDEX["installments"]


class SnapshotError(ModelsError, ValueError):
    """A history that yields no labelled snapshot."""


@dataclass
class Snapshots:
    """Labelled point-in-time rows. Row arrays share their first axis; ``loan`` indexes
    ``loan_ids`` / ``outcome`` / ``outcome_at`` / ``final_x``."""

    x: np.ndarray  # features() rows at the snapshot
    y: np.ndarray  # written off within the horizon of the snapshot
    loan: np.ndarray  # index of the row's loan
    at: np.ndarray  # occurred_at (ms) of the snapshot's last event
    months_on_book: np.ndarray  # installments that fell due up to the snapshot
    weight: np.ndarray  # 1 / (labelled snapshots of the loan)
    loan_ids: list[str]
    outcome: np.ndarray  # per loan: 1 written off (ever, in the data), 0 not, -1 still open
    outcome_at: np.ndarray  # per loan: ms of the outcome (open loans: the data's end)
    final_x: np.ndarray  # per loan: features() after its last event (what the stream ends on)
    horizon_months: int
    censored: int = 0  # snapshots dropped: loan still open, not observed for H months
    skipped: dict[str, int] = field(default_factory=dict)  # events the state machine refused

    def rows(self, loans: np.ndarray) -> np.ndarray:
        """Indices of the rows whose loan is in ``loans`` (loan indices)."""
        return np.flatnonzero(np.isin(self.loan, loans))


def _capture(state: LoanState) -> tuple[list[float], int]:
    return state.features(), state.last_event_at


def snapshot_set(history: History, horizon_months: int = DEFAULT_HORIZON_MONTHS) -> Snapshots:
    """Replay ``history`` and return its labelled snapshots (see the module docstring).

    Events the state machine refuses are skipped, exactly as the stream skips them."""
    if horizon_months < 1:
        raise SnapshotError(f"horizon_months={horizon_months}: must be at least 1")
    states: dict[str, LoanState] = {}
    pending: dict[str, tuple[list[float], int]] = {}  # the open installment's latest view
    taken: dict[str, list[tuple[list[float], int]]] = {}
    skipped: dict[str, int] = {}
    data_end = 0
    for event in history.events:
        loan = event["loan_id"]
        state = states.get(loan)
        body_type = event["body"][0]
        try:
            if state is None:
                states[loan] = LoanState.open(event)
                continue
            # A new installment starts: the previous one is complete (once this event is
            # accepted; a refused event changes nothing, as in the stream).
            starts = (
                body_type in _INSTALLMENT
                and loan in pending
                and event["body"][1].get("installment_due_date") != state[LAST_DUE]
            )
            state.apply(event)
        except InvalidEvent as error:
            skipped[error.reason] = skipped.get(error.reason, 0) + 1
            continue
        if starts:
            taken.setdefault(loan, []).append(pending.pop(loan))
        data_end = max(data_end, int(event["occurred_at"]))
        if body_type in _INSTALLMENT or (body_type == COLLECTION_ATTEMPT and loan in pending):
            pending[loan] = _capture(state)
    for loan, view in pending.items():
        taken.setdefault(loan, []).append(view)
    return _label(history, states, taken, horizon_months, data_end, skipped)


def _label(
    history: History,
    states: dict[str, LoanState],
    taken: dict[str, list[tuple[list[float], int]]],
    horizon_months: int,
    data_end: int,
    skipped: dict[str, int],
) -> Snapshots:
    horizon_ms = horizon_months * MONTH_MS
    outcome_at_of = history.outcome_at
    loan_ids = sorted(
        loan for loan in states if loan in history.outcomes or loan in history.open_loans
    )
    rows: list[list[float]] = []
    y: list[int] = []
    loan_index: list[int] = []
    at: list[int] = []
    weight: list[float] = []
    outcome = np.empty(len(loan_ids), dtype=np.int64)
    outcome_at = np.empty(len(loan_ids), dtype=np.float64)
    kept: list[str] = []
    censored = 0
    for loan in loan_ids:
        known = history.outcomes.get(loan)
        end = outcome_at_of.get(loan, states[loan].last_event_at if known is not None else data_end)
        labelled: list[tuple[list[float], int, int]] = []
        for features, t in taken.get(loan, []):
            if known == 1:
                labelled.append((features, t, int(end - t <= horizon_ms)))
            elif known == 0 or end - t >= horizon_ms:  # resolved, or observed H months
                labelled.append((features, t, 0))
            else:
                censored += 1
        if not labelled:
            continue
        k = len(kept)
        kept.append(loan)
        outcome[k] = -1 if known is None else known
        outcome_at[k] = end
        for features, t, label in labelled:
            rows.append(features)
            y.append(label)
            loan_index.append(k)
            at.append(t)
            weight.append(1.0 / len(labelled))
    if not kept:
        raise SnapshotError(
            "no loan has an installment and an outcome (or enough observed "
            "time); check the outcomes column or file"
        )
    x = np.array(rows, dtype=np.float64)
    return Snapshots(
        x=x,
        y=np.array(y, dtype=np.int64),
        loan=np.array(loan_index, dtype=np.int64),
        at=np.array(at, dtype=np.int64),
        months_on_book=x[:, _INSTALLMENTS].astype(np.int64),
        weight=np.array(weight),
        loan_ids=kept,
        outcome=outcome[: len(kept)],
        outcome_at=outcome_at[: len(kept)],
        final_x=np.array([states[loan].features() for loan in kept], dtype=np.float64),
        horizon_months=horizon_months,
        censored=censored,
        skipped=skipped,
    )


def cut_after_installments(events: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """The events a stream has seen once a loan's first ``k`` installments are complete:
    ``LoanOpened``, every installment event of the first ``k`` due dates and whatever
    (collection attempts) comes before the ``k + 1``-th installment's first event.

    ``events`` are one loan's, in event-time order.

    >>> from models.data.synthetic import generate_book
    >>> events = [e for e in generate_book(3, seed=0)[1] if e["loan_id"] == "L0-0"]
    >>> from models.features.state import replay
    >>> replay(cut_after_installments(events, 2))["L0-0"].feature_dict()["installments"]
    2.0
    """
    dues: list[Any] = []
    out: list[dict[str, Any]] = []
    for event in events:
        name, body = event["body"]
        if name in _INSTALLMENT:
            due = body.get("installment_due_date")
            if due not in dues:
                if len(dues) == k:
                    break
                dues.append(due)
        out.append(event)
    return out
