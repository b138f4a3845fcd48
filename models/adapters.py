r"""History files -> one stream of ``LoanEvent`` dicts + outcomes (DESIGN.md §4).

Three sources, one output: a :class:`History` whose ``events`` are in per-loan event-time
order (replay them through :func:`models.state.replay`) and whose ``outcomes`` map loan_id to
1 (default / written off) or 0. Training, the producer and the batch scorer all read files
through here, so they all see exactly the same events.

- ``seed``: the collections export, one row per loan (:data:`SEED_COLUMNS`). Each row becomes
  ``LoanOpened`` + payment / missed-payment (+ collection-attempt) events whose replay
  reproduces the row's own values (see :func:`seed_row_events` for the exact rules).
- ``uci``: "default of credit card clients" (``ID, X1..X23, Y``): profile + six monthly
  statements April -> September.
- ``events``: JSON lines or an Avro container file of ``LoanEvent`` + an outcomes CSV
  (``loan_id,outcome``) found next to it (``outcomes.csv`` or ``outcomes.csv.gz``) or given
  explicitly.

Errors are :class:`AdapterError` with one line naming the file, row, column and the fix.

>>> import io
>>> header = "Loan_ID,Loan_Amount,Outstanding_Loan_Amount,Num_Missed_Payments,Days_Past_Due"
>>> csv = header + ',Recovery_Status\nL1,"10,000",4000,2,45,Written Off\n'
>>> history = read_history("seed", io.StringIO(csv))
>>> from models.state import replay
>>> state = replay(history.events)["L1"]
>>> state.feature_dict()["num_missed"], state.feature_dict()["days_past_due"], history.outcomes
(2.0, 45.0, {'L1': 1})
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from models.features import COLLECTION_METHODS
from schemas.events import (
    COLLECTION_ATTEMPT,
    LOAN_OPENED,
    PAYMENT_MISSED,
    PAYMENT_RECEIVED,
)

DAY_MS = 86_400_000
AS_OF_DAY = 19_875  # 2024-06-01: seed exports carry no dates; histories end here
SOURCES = ("seed", "uci", "events")

SEED_COLUMNS = (
    "Borrower_ID", "Age", "Gender", "Employment_Type", "Monthly_Income", "Num_Dependents",
    "Loan_ID", "Loan_Amount", "Loan_Tenure", "Interest_Rate", "Loan_Type", "Collateral_Value",
    "Outstanding_Loan_Amount", "Monthly_EMI", "Payment_History", "Num_Missed_Payments",
    "Days_Past_Due", "Recovery_Status", "Collection_Attempts", "Collection_Method",
    "Legal_Action_Taken",
)  # fmt: skip
SEED_REQUIRED = (
    "Loan_ID", "Loan_Amount", "Outstanding_Loan_Amount", "Num_Missed_Payments",
    "Days_Past_Due", "Recovery_Status",
)  # fmt: skip
SEED_NUMERIC = (
    "Age", "Monthly_Income", "Num_Dependents", "Loan_Amount", "Loan_Tenure", "Interest_Rate",
    "Collateral_Value", "Outstanding_Loan_Amount", "Monthly_EMI", "Num_Missed_Payments",
    "Days_Past_Due", "Collection_Attempts",
)  # fmt: skip
# Recovery_Status (normalised) -> outcome; anything else is unlabelled rather than guessed.
RECOVERY_OUTCOMES = {
    "writtenoff": 1, "writeoff": 1, "chargedoff": 1, "defaulted": 1, "default": 1,
    "fullyrecovered": 0, "partiallyrecovered": 0, "recovered": 0, "settled": 0, "repaid": 0,
}  # fmt: skip
MAX_COUNT = 360  # missed installments / collection attempts per row: 30 years of monthly events
MAX_DAYS_PAST_DUE = 36_500
MAX_PAID_INSTALLMENTS = 24  # bounds the events per row; the rest of a long history is implied


class AdapterError(ValueError):
    """A history file that cannot be read; the message names file, row, column and the fix."""


@dataclass
class History:
    """Events (per-loan event-time order) and outcomes (loan_id -> 1 default, 0 not)."""

    events: list[dict[str, Any]]
    outcomes: dict[str, int] = field(default_factory=dict)
    source: str = ""
    rows: int = 0


def read_history(
    source: str, path: str | Path | IO[str], outcomes: str | Path | None = None
) -> History:
    """Read ``path`` as ``source`` ("seed", "uci" or "events").

    ``outcomes`` (events source only) overrides where the outcomes CSV is looked for.
    """
    if source == "seed":
        return read_seed(path)
    if source == "uci":
        return read_uci(path)
    if source == "events":
        return read_events(path, outcomes)
    raise AdapterError(f"unknown source {source!r}: use one of {', '.join(SOURCES)}")


def _name(path: Any) -> str:
    return str(path) if isinstance(path, (str, Path)) else getattr(path, "name", "<stream>")


def _read_csv(path: str | Path | IO[str]) -> pd.DataFrame:
    try:
        # Everything as text first: exports mix "12,345.00", "n/a" and blanks in number columns.
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError:
        raise AdapterError(f"{_name(path)}: no such file") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        detail = str(error).strip().splitlines()[-1]
        raise AdapterError(f"{_name(path)}: not a readable CSV ({detail}); export it as "
                           "comma-separated UTF-8 text") from None  # fmt: skip
    except pd.errors.EmptyDataError:
        raise AdapterError(f"{_name(path)}: the file is empty; export the loan book with its "
                           "header row") from None  # fmt: skip


def _canonical(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _match_columns(frame: pd.DataFrame, expected: Iterable[str], required: Iterable[str],
                   path: Any) -> pd.DataFrame:  # fmt: skip
    """Rename columns to their canonical spelling (case, spaces and underscores do not matter),
    drop extra columns, add missing optional ones as blanks, fail on a missing required one."""
    by_key = {_canonical(c): c for c in frame.columns}
    renamed = {by_key[_canonical(e)]: e for e in expected if _canonical(e) in by_key}
    for column in required:
        if column not in renamed.values():
            raise AdapterError(
                f"{_name(path)}: required column {column!r} is missing (columns found: "
                f"{', '.join(map(str, frame.columns[:30]))}); add it to the export"
            )
    frame = frame[list(renamed)].rename(columns=renamed)
    for column in expected:
        if column not in frame.columns:
            frame[column] = ""
    return frame


_NUMBER_JUNK = re.compile(r"[,\s_'$€£₹%]")


def _numbers(column: pd.Series) -> np.ndarray:
    """Text -> float; thousands separators, currency signs and blanks handled, junk -> NaN."""
    cleaned = column.astype(str).str.replace(_NUMBER_JUNK, "", regex=True)
    cleaned = cleaned.str.replace(r"^\((.*)\)$", r"-\1", regex=True)  # accounting negatives
    return pd.to_numeric(cleaned, errors="coerce").to_numpy(dtype=float)


def event_id(loan_id: str, index: int) -> str:
    """Deterministic UUID-formatted id of a loan's ``index``-th history event, so replaying a
    file twice yields the same ids (and the stream drops the repeats)."""
    h = hashlib.md5(f"{loan_id}\x00{index}".encode(), usedforsecurity=False).hexdigest()
    variant = "89ab"[int(h[16], 16) & 3]  # RFC 4122 variant bits, as in a random (v4) UUID
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:32]}"


# -- seed-schema CSV ---------------------------------------------------------------------------


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
    num = {c: frame[c].to_numpy(float) if pd.api.types.is_numeric_dtype(frame[c])
           else _numbers(frame[c]) for c in SEED_NUMERIC}  # fmt: skip
    text = {c: frame[c].astype(str).str.strip().to_numpy()
            for c in ("Borrower_ID", "Gender", "Employment_Type", "Loan_Type",
                      "Payment_History", "Recovery_Status", "Collection_Method",
                      "Legal_Action_Taken", "Loan_ID")}  # fmt: skip
    events: list[dict[str, Any]] = []
    outcomes: dict[str, int] = {}
    seen: dict[str, int] = {}
    for i in range(n):
        row_no = i + 2  # 1-based, after the header: what a spreadsheet shows
        loan_id = text["Loan_ID"][i]
        if not loan_id or loan_id.lower() == "nan":
            loan_id = f"row-{row_no}"
        if loan_id in seen:
            raise AdapterError(f"{_name(path)}: row {row_no}, column 'Loan_ID': {loan_id!r} "
                               f"repeats row {seen[loan_id]}; give every loan one row")  # fmt: skip
        seen[loan_id] = row_no
        row = {c: num[c][i] for c in SEED_NUMERIC}
        row.update({c: text[c][i] for c in text})
        row["Loan_ID"] = loan_id
        events.extend(seed_row_events(row))
        outcome = RECOVERY_OUTCOMES.get(_canonical(row["Recovery_Status"]))
        if outcome is not None:  # blank or unknown status: events yes, training label no
            outcomes[loan_id] = outcome
    return History(events, outcomes, "seed", n)


def _int_or(value: float, default: int) -> int:
    return int(value) if value == value and abs(value) < 1e12 else default


def _amount_or_nan(value: float) -> float:
    return float(value) if value == value and value >= 0 else math.nan


def seed_row_events(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The event history of one seed row; replaying it reproduces the row's values.

    Rules (a row is *consistent* when it follows them; inconsistent rows keep the numbers):

    - ``Num_Missed_Payments`` = m ``PaymentMissed`` events, ``Days_Past_Due`` = d.
    - d > 0 means the loan is in arrears now: the last ``t = min(m, max(1, round(d/30)))``
      misses are consecutive at the end, the last one with ``days_past_due = d`` -> payment
      history "Missed". (d > 0 with m = 0 is inconsistent: one miss is added.)
    - d = 0: earlier misses were cured by later payments -> "Delayed"; with m = 0 a "Delayed"
      row gets one late payment, an "On-Time" row none.
    - Paid installments: what an annuity at ``Interest_Rate`` with ``Monthly_EMI`` needs to
      fall from ``Loan_Amount`` to ``Outstanding_Loan_Amount`` (linear without a rate),
      capped at :data:`MAX_PAID_INSTALLMENTS`, at least what the rules above need (and at
      least one installment event in all). Outstanding falls
      linearly from ``Loan_Amount`` to ``Outstanding_Loan_Amount``, reached exactly at the
      last installment.
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
    paid = _installments_paid(amount, final_out, emi, row["Interest_Rate"])
    paid = min(MAX_PAID_INSTALLMENTS, paid)
    # Cured misses need a payment after them; a late-payment row needs its late payment; and
    # the outstanding amount needs at least one installment event to carry it.
    paid = max(paid, 1 if early else 0, int(late_payment), 1 if early + trailing == 0 else 0)
    n_inst = early + paid + trailing
    # Installment k (0-based) falls due 30 days apart; the history ends at AS_OF_DAY.
    open_day = AS_OF_DAY - 30 * n_inst - 1
    start = amount if amount == amount else (final_out if final_out == final_out else 0.0)
    end = final_out if final_out == final_out else start
    due_amount = emi if emi == emi else 0.0

    def outstanding(k: int) -> float:
        return end if k == n_inst - 1 else start + (end - start) * (k + 1) / n_inst

    seq = 0
    events: list[dict[str, Any]] = [_event(loan_id, borrower, seq, open_day * DAY_MS, LOAN_OPENED, {
        "age": _int_or(row["Age"], -1), "gender": row.get("Gender") or "",
        "employment_type": row.get("Employment_Type") or "",
        "monthly_income": _amount_or_nan(row["Monthly_Income"]),
        "num_dependents": _int_or(row["Num_Dependents"], -1), "loan_amount": amount,
        "loan_tenure_months": _int_or(row["Loan_Tenure"], -1),
        "interest_rate": _amount_or_nan(row["Interest_Rate"]),
        "loan_type": row.get("Loan_Type") or "",
        "collateral_value": _amount_or_nan(row["Collateral_Value"]), "monthly_emi": emi,
    })]  # fmt: skip
    for k in range(n_inst):
        seq += 1
        due = open_day + 30 * (k + 1)
        if k < early:  # cured misses, each 30 days past due when reported
            events.append(_event(loan_id, borrower, seq, (due + 30) * DAY_MS - 1, PAYMENT_MISSED, {
                "installment_due_date": due, "amount_due": due_amount, "days_past_due": 30,
                "outstanding": outstanding(k)}))  # fmt: skip
        elif k < early + paid:
            is_late = late_payment and k == early + paid - 1
            at = (due + (5 if is_late else 0)) * DAY_MS + 43_200_000  # noon
            events.append(_event(loan_id, borrower, seq, at, PAYMENT_RECEIVED, {
                "installment_due_date": due, "amount_due": due_amount,
                "amount_paid": due_amount, "outstanding_after": outstanding(k)}))  # fmt: skip
        else:  # trailing misses: the loan is past due now
            j = k - (early + paid)
            days = max(1, dpd - 30 * (trailing - 1 - j))
            events.append(_event(loan_id, borrower, seq, (due + days) * DAY_MS, PAYMENT_MISSED, {
                "installment_due_date": due, "amount_due": due_amount, "days_past_due": days,
                "outstanding": outstanding(k)}))  # fmt: skip
    last_at = events[-1]["occurred_at"]
    method = COLLECTION_METHODS.get(_title(row.get("Collection_Method") or ""), "OTHER")
    for j in range(attempts):
        seq += 1
        events.append(_event(loan_id, borrower, seq, last_at + (j + 1) * DAY_MS,
                             COLLECTION_ATTEMPT, {"method": method, "outcome": "OTHER",
                                                  "legal_action": legal and j == attempts - 1}))
    return events


def _installments_paid(amount: float, outstanding: float, emi: float, rate: float) -> int:
    """Installments an annuity loan needs to fall from ``amount`` to ``outstanding``: from
    B_n = L q^n - EMI (q^n - 1) / i with q = 1 + i; linear when the rate is unknown."""
    if not (emi > 0 and amount == amount and outstanding == outstanding):
        return 0
    i = rate / 1200.0 if rate == rate and rate > 0 else 0.0
    if i > 0 and emi > amount * i:
        ratio = (emi / i - outstanding) / (emi / i - amount)
        return max(0, round(math.log(ratio) / math.log1p(i))) if ratio > 0 else 0
    return max(0, round((amount - outstanding) / emi))


def _title(value: str) -> str:
    for name in COLLECTION_METHODS:
        if _canonical(name) == _canonical(value):
            return name
    return value


def _event(loan_id: str, borrower: str, seq: int, at: int, body_type: str,
           body: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    return {"event_id": event_id(loan_id, seq), "loan_id": loan_id, "borrower_id": borrower,
            "occurred_at": int(at), "body": (body_type, body)}  # fmt: skip


# -- UCI credit-card default -------------------------------------------------------------------

UCI_COLUMNS = ("ID", *(f"X{i}" for i in range(1, 24)), "Y")
UCI_NAMED = {  # the same data as distributed on Kaggle, with descriptive column names
    "LIMIT_BAL": "X1", "SEX": "X2", "EDUCATION": "X3", "MARRIAGE": "X4", "AGE": "X5",
    "PAY_0": "X6", "PAY_2": "X7", "PAY_3": "X8", "PAY_4": "X9", "PAY_5": "X10", "PAY_6": "X11",
    **{f"BILL_AMT{i}": f"X{11 + i}" for i in range(1, 7)},
    **{f"PAY_AMT{i}": f"X{17 + i}" for i in range(1, 7)},
    "default.payment.next.month": "Y", "default payment next month": "Y",
}
UCI_FIRST_DAY = 12_874  # 2005-04-01, the first statement month
UCI_MONTHS = ("April", "May", "June", "July", "August", "September")


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

    Negative bills (credit balances) are reported as 0 outstanding.
    """
    frame = _read_csv(path)
    frame = frame.rename(columns={c: UCI_NAMED.get(c, UCI_NAMED.get(c.upper(), c))
                                  for c in frame.columns})  # fmt: skip
    frame = _match_columns(frame, UCI_COLUMNS, UCI_COLUMNS, path)
    values = {c: _numbers(frame[c]) for c in UCI_COLUMNS if c != "ID"}
    ids = frame["ID"].astype(str).str.strip().to_numpy()
    for c in UCI_COLUMNS[1:]:
        bad = np.flatnonzero(np.isnan(values[c]))
        if bad.size and c in ("X1", "Y", *(f"X{i}" for i in range(6, 24))):
            raise AdapterError(f"{_name(path)}: row {bad[0] + 2}, column {c!r}: not a number "
                               f"({frame[c].iloc[bad[0]]!r}); fix or drop the row")  # fmt: skip
    events: list[dict[str, Any]] = []
    outcomes: dict[str, int] = {}
    for i in range(len(frame)):
        loan_id = f"UCI-{ids[i]}"
        v = {c: values[c][i] for c in values}
        sex = {1: "Male", 2: "Female"}.get(_int_or(v["X2"], 0), "")
        seq = 0
        open_ms = (UCI_FIRST_DAY - 30) * DAY_MS
        events.append(_event(loan_id, loan_id, seq, open_ms, LOAN_OPENED, {
            "age": _int_or(v["X5"], -1), "gender": sex, "employment_type": "",
            "monthly_income": math.nan, "num_dependents": -1, "loan_amount": float(v["X1"]),
            "loan_tenure_months": -1, "interest_rate": math.nan, "loan_type": "Credit Card",
            "collateral_value": 0.0, "monthly_emi": math.nan,
        }))  # fmt: skip
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
                events.append(_event(loan_id, loan_id, seq, due * DAY_MS, PAYMENT_RECEIVED, {
                    "installment_due_date": due, "amount_due": owed, "amount_paid": paid,
                    "outstanding_after": bill}))  # fmt: skip
            else:
                if paid > 0:
                    seq += 1
                    events.append(_event(loan_id, loan_id, seq, (due + 1) * DAY_MS,
                                         PAYMENT_RECEIVED, {
                        "installment_due_date": due, "amount_due": owed, "amount_paid": paid,
                        "outstanding_after": bill}))  # fmt: skip
                seq += 1
                events.append(_event(loan_id, loan_id, seq, (due + 2) * DAY_MS, PAYMENT_MISSED, {
                    "installment_due_date": due, "amount_due": owed,
                    "days_past_due": 30 * status, "outstanding": bill}))  # fmt: skip
        outcomes[loan_id] = int(v["Y"])
    return History(events, outcomes, "uci", len(frame))


# -- native event logs -------------------------------------------------------------------------


def read_events(path: str | Path | IO[str], outcomes: str | Path | None = None) -> History:
    """JSON lines or an Avro container file of ``LoanEvent`` + an outcomes CSV.

    The outcomes CSV (``loan_id,outcome``; outcome 1 = default / written off) is ``outcomes``
    when given, else ``outcomes.csv`` / ``outcomes.csv.gz`` next to the event log; without one
    the outcomes come from ``LoanClosed`` events (WRITTEN_OFF = 1, other reasons = 0).
    """
    if not isinstance(path, (str, Path)):
        raise AdapterError("the events source needs a file path")
    path = Path(path)
    if not path.exists():
        raise AdapterError(f"{path}: no such file")
    with open(path, "rb") as raw:
        magic = raw.read(4)
    events = list(_read_avro(path) if magic == b"Obj\x01" else _read_jsonl(path))
    events.sort(key=lambda e: (e["loan_id"], e["occurred_at"]))  # stable: file order on ties
    if outcomes is None:
        for name in ("outcomes.csv", "outcomes.csv.gz"):
            if (path.parent / name).exists():
                outcomes = path.parent / name
                break
    found = _read_outcomes(Path(outcomes)) if outcomes is not None else _closed_outcomes(events)
    return History(events, found, "events", len(events))


def _read_avro(path: Path) -> Iterator[dict[str, Any]]:
    from fastavro import reader

    with open(path, "rb") as handle:
        try:
            for n, event in enumerate(reader(handle, return_record_name=True), 1):
                if not isinstance(event, dict) or not isinstance(event.get("body"), tuple):
                    raise AdapterError(f"{path}: record {n} is not a LoanEvent; the container "
                                       "must use the LoanEvent schema")  # fmt: skip
                yield _plain(event)
        except AdapterError:
            raise
        except Exception as error:  # fastavro raises many types for corrupt blocks
            raise AdapterError(f"{path}: not a readable Avro container of LoanEvent "
                               f"({error}); re-export it") from None  # fmt: skip


def _plain(event: dict[str, Any]) -> dict[str, Any]:
    """Undo fastavro's logical-type conversions (a writer schema with timestamp-millis / date /
    uuid yields datetime / date / UUID objects): events are plain ints and strings."""
    import datetime as dt

    at = event["occurred_at"]
    if isinstance(at, dt.datetime):
        event["occurred_at"] = int(at.timestamp() * 1000)
    if not isinstance(event["event_id"], str):
        event["event_id"] = str(event["event_id"])
    _, body = event["body"]
    due = body.get("installment_due_date")
    if isinstance(due, dt.date):
        body["installment_due_date"] = (due - dt.date(1970, 1, 1)).days
    return event


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
                body = event["body"]
                # JSON has no tuples: accept ["type", {...}] or {"type": ..., "data"/"fields": ...}
                if isinstance(body, dict):
                    body = (body["type"], body.get("data", body.get("fields")))
                name, fields = body
                if "." not in name:
                    name = f"loanrec.events.{name}"
                event["body"] = (name, fields)
                for key in ("event_id", "loan_id", "borrower_id", "occurred_at"):
                    if key not in event:
                        raise KeyError(key)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise AdapterError(
                    f"{path}: line {line_no}: not a LoanEvent ({type(error).__name__}: {error}); "
                    "each line must be a JSON object with event_id, loan_id, borrower_id, "
                    "occurred_at and body [type, fields]"
                ) from None
            yield event


def _read_outcomes(path: Path) -> dict[str, int]:
    frame = _read_csv(path)
    frame = _match_columns(frame, ("loan_id", "outcome"), ("loan_id", "outcome"), path)
    values = _numbers(frame["outcome"])
    bad = np.flatnonzero(~np.isin(values, (0.0, 1.0)))
    if bad.size:
        raise AdapterError(f"{path}: row {bad[0] + 2}, column 'outcome': "
                           f"{frame['outcome'].iloc[bad[0]]!r} is not 0 or 1")  # fmt: skip
    return dict(zip(frame["loan_id"].astype(str), values.astype(int).tolist(), strict=True))


def _closed_outcomes(events: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for event in events:
        name, body = event["body"]
        if name.endswith("LoanClosed"):
            out[event["loan_id"]] = int(body.get("reason") == "WRITTEN_OFF")
    return out


def write_jsonl(events: Iterable[dict[str, Any]], handle: IO[str]) -> int:
    """Write events as JSON lines (``body`` as ``[type, fields]``); returns the count."""
    n = 0
    dumps = json.dumps
    for event in events:
        handle.write(dumps(event, allow_nan=True, separators=(",", ":")))
        handle.write("\n")
        n += 1
    return n


def write_avro(events: Iterable[dict[str, Any]], path: Path, codec: str = "deflate") -> int:
    """Write events as an Avro object container file (LoanEvent schema); returns the count."""
    from fastavro import writer

    from schemas.registry import default_registry

    events = events if isinstance(events, list) else list(events)
    with open(path, "wb") as handle:
        writer(handle, default_registry().latest("LoanEvent").parsed, events, codec=codec)
    return len(events)


class EventLogWriter:
    """Incremental event-log writer: Avro object container for ``*.avro``, else JSON lines.

    >>> import tempfile, pathlib
    >>> from models.synthetic import generate_book
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "log.avro"
    >>> with EventLogWriter(path) as log:
    ...     log.write(generate_book(10, seed=0)[1])
    >>> read_events(path).events == generate_book(10, seed=0)[1]
    True
    """

    def __init__(self, path: Path, codec: str = "deflate") -> None:
        self.path = Path(path)
        self.count = 0
        self._avro = self.path.suffix == ".avro"
        self._handle: IO[Any] = open(self.path, "wb" if self._avro else "w",  # noqa: SIM115
                                     encoding=None if self._avro else "utf-8")  # fmt: skip
        if self._avro:
            from fastavro.write import Writer

            from schemas.registry import default_registry

            schema = default_registry().latest("LoanEvent").parsed
            self._writer = Writer(self._handle, schema, codec=codec)

    def write(self, events: Iterable[dict[str, Any]]) -> None:
        if self._avro:
            for event in events:
                self._writer.write(event)
                self.count += 1
        else:
            self.count += write_jsonl(events, self._handle)

    def close(self) -> None:
        if self._avro:
            self._writer.flush()
        self._handle.close()

    def __enter__(self) -> EventLogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_outcomes(outcomes: dict[str, int], path: Path) -> None:
    """``loan_id,outcome`` CSV (gzip-compressed when the name ends in ``.gz``)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("loan_id", "outcome"))
        writer.writerows(outcomes.items())


__all__ = [
    "AdapterError", "EventLogWriter", "History", "read_events", "read_history", "read_seed",
    "read_uci", "seed_frame_history", "seed_row_events", "write_avro", "write_jsonl",
    "write_outcomes",
]  # fmt: skip
