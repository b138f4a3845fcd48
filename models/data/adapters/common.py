"""What every adapter shares: the error type, the result type, CSV reading that survives real
exports, and deterministic event ids."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from models.errors import ModelsError

DAY_MS = 86_400_000


class AdapterError(ModelsError, ValueError):
    """A history file that cannot be read; the message names file, row, column and the fix."""


@dataclass
class History:
    """Events (per-loan event-time order) and outcomes (loan_id -> 1 default, 0 not).

    ``outcome_at``: when a loan's outcome happened (epoch ms), where the source says so
    (``LoanClosed``; UCI's October 2005); otherwise it is taken to be the loan's last event.
    ``open_loans``: loans with no outcome *yet* (an event log without their ``LoanClosed``):
    point-in-time training uses their early snapshots and censors the rest
    (:mod:`models.training.snapshots`)."""

    events: list[dict[str, Any]]
    outcomes: dict[str, int] = field(default_factory=dict)
    source: str = ""
    rows: int = 0
    outcome_at: dict[str, int] = field(default_factory=dict)
    open_loans: set[str] = field(default_factory=set)


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
        raise AdapterError(
            f"{_name(path)}: not a readable CSV ({detail}); export it as comma-separated UTF-8 text"
        ) from None
    except pd.errors.EmptyDataError:
        raise AdapterError(
            f"{_name(path)}: the file is empty; export the loan book with its header row"
        ) from None


_NOT_ALNUM = re.compile(r"[^a-z0-9]")  # compiled once: _canonical runs per row and cell


def _canonical(name: str) -> str:
    return _NOT_ALNUM.sub("", name.lower())


def _match_columns(
    frame: pd.DataFrame, expected: Iterable[str], required: Iterable[str], path: Any
) -> pd.DataFrame:
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
    h = _md5(f"{loan_id}\x00{index}".encode(), usedforsecurity=False).hexdigest()
    # RFC 4122 variant bits, as in a random (v4) UUID: "89ab"[int(h[16], 16) & 3], looked up.
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


_md5 = hashlib.md5
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def _int_or(value: float, default: int) -> int:
    return int(value) if value == value and abs(value) < 1e12 else default


def _amount_or_nan(value: float) -> float:
    return float(value) if value == value and value >= 0 else math.nan


def _event(
    loan_id: str, borrower: str, seq: int, at: int, body_type: str, body: dict[str, Any]
) -> dict[str, Any]:
    return {
        "event_id": event_id(loan_id, seq),
        "loan_id": loan_id,
        "borrower_id": borrower,
        "occurred_at": int(at),
        "body": (body_type, body),
    }
