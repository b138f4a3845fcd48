"""The reason-code catalogue: what an emitted decision says drove its risk score.

Every model input (``model_features`` of a bundle, whichever flags trained it) has catalogue
entries: a stable code, the feature, and plain text for an analyst or a borrower letter
(docs/MODELS.md prints the table, ``test_models_reasons`` keeps it complete). A few features
have value bands, as adverse-action reasons usually do (a "60 or more days past due" reason says
more than "days past due"): an entry with ``at_least`` applies from that value up, the band-free
entry to lower values and to a missing value (which the model imputed).

A record's reasons are its top 3 inputs by served contribution (``models.serving.contributions``),
the ones that raise the risk (contribution > 0); at least one always: when nothing raised it, the
largest. Ties -- all served contributions are 0 where the calibration is flat -- are broken by
the raw forest contributions (same signs and order as the served ones wherever the map rises),
then by input position, so the choice is deterministic. :func:`top_reasons` defines that choice
on the full contribution matrices; the processor gets the same choice cheaper from
``explain_top`` (only the raws ranked, in the compiled ``top_positions``) and
:func:`reason_codes` (``tests/unit/models/test_models_reasons.py`` holds the two together).

>>> reason_code("days_past_due", 75.0).text, reason_code("days_past_due", float("nan")).code
('60 or more days past due', 'R04')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.features.columns import FEATURE_INDEX, FEATURE_NAMES

MAX_REASONS = 3


@dataclass(frozen=True, slots=True)
class ReasonCode:
    """One catalogue entry; ``at_least``: the band's lower bound (None: the band-free entry)."""

    code: str
    feature: str
    text: str
    at_least: float | None = None


CATALOGUE: tuple[ReasonCode, ...] = (
    ReasonCode("R01", "days_past_due", "1 to 29 days past due", 1),
    ReasonCode("R02", "days_past_due", "30 to 59 days past due", 30),
    ReasonCode("R03", "days_past_due", "60 or more days past due", 60),
    ReasonCode("R04", "days_past_due", "No installment past due now"),
    ReasonCode("R05", "max_days_past_due", "Never more than 29 days past due"),
    ReasonCode("R06", "max_days_past_due", "Was 30 to 89 days past due at worst", 30),
    ReasonCode("R07", "max_days_past_due", "Was 90 or more days past due at worst", 90),
    ReasonCode("R08", "days_past_due_prev", "Past due at the previous installment", 1),
    ReasonCode("R09", "days_past_due_prev", "Not past due at the previous installment"),
    ReasonCode("R10", "days_past_due_prev2", "Days past due two installments ago"),
    ReasonCode("R11", "num_missed", "Number of missed payments"),
    ReasonCode("R12", "consecutive_missed", "Missed payments since the last payment"),
    ReasonCode("R13", "missed_ratio", "Share of installments missed"),
    ReasonCode("R14", "payment_history", "Currently behind on payments", 2),
    ReasonCode("R15", "payment_history", "Late or missed payments in the past", 1),
    ReasonCode("R16", "payment_history", "Paid on time so far"),
    ReasonCode("R17", "zero_payment", "Installments with nothing paid"),
    ReasonCode("R18", "paid_late", "Payments made after their due date"),
    ReasonCode("R19", "paid_on_time", "Number of payments made on time"),
    ReasonCode("R20", "paid_in_full", "Number of installments paid in full"),
    ReasonCode("R21", "installments", "Number of installments due so far"),
    ReasonCode("R22", "last_paid_ratio", "Share of the last installment paid"),
    ReasonCode("R23", "last_amount_paid", "Amount paid on the last installment"),
    ReasonCode("R24", "last_amount_due", "Amount due on the last installment"),
    ReasonCode("R25", "paid_to_due_ratio", "Share of all amounts due that was paid"),
    ReasonCode("R26", "total_paid", "Total paid so far"),
    ReasonCode("R27", "mean_amount_paid", "Average payment per installment"),
    ReasonCode("R28", "mean_amount_due", "Average amount due per installment"),
    ReasonCode("R29", "outstanding", "Outstanding balance"),
    ReasonCode("R30", "outstanding_ratio", "Outstanding balance relative to the loan amount"),
    ReasonCode("R31", "outstanding_change", "Change of the balance at the last installment"),
    ReasonCode("R32", "mean_outstanding_ratio", "Average balance relative to the loan amount"),
    ReasonCode("R33", "emi_to_income", "Installment relative to income"),
    ReasonCode("R34", "monthly_income", "Monthly income"),
    ReasonCode("R35", "employment_type", "Type of employment"),
    ReasonCode("R36", "num_dependents", "Number of dependents"),
    ReasonCode("R37", "loan_amount", "Loan amount"),
    ReasonCode("R38", "loan_tenure_months", "Loan tenure"),
    ReasonCode("R39", "interest_rate", "Interest rate"),
    ReasonCode("R40", "loan_type", "Type of loan"),
    ReasonCode("R41", "collateral_value", "Collateral value"),
    ReasonCode("R42", "collateral_coverage", "Collateral coverage of the loan"),
    ReasonCode("R43", "monthly_emi", "Monthly installment amount"),
    # Inputs only of models trained with --use-age / the treatments (off by default, #13).
    ReasonCode("R44", "age", "Borrower age"),
    ReasonCode("R45", "collection_attempts", "Number of collection attempts"),
    ReasonCode("R46", "last_collection_method", "Last collection method"),
    ReasonCode("R47", "legal_action", "Legal action taken"),
)


def _index() -> dict[str, tuple[ReasonCode, tuple[ReasonCode, ...]]]:
    """feature -> (band-free entry, banded entries from the highest bound down)."""
    out: dict[str, tuple[ReasonCode, tuple[ReasonCode, ...]]] = {}
    for feature in dict.fromkeys(entry.feature for entry in CATALOGUE):
        entries = [e for e in CATALOGUE if e.feature == feature]
        (default,) = [e for e in entries if e.at_least is None]
        bands = sorted((e for e in entries if e.at_least is not None), key=lambda e: -e.at_least)
        out[feature] = (default, tuple(bands))
    return out


_BY_FEATURE = _index()


def reason_code(feature: str, value: float) -> ReasonCode:
    """The entry for ``feature`` at ``value`` (the raw feature, NaN = missing)."""
    default, bands = _BY_FEATURE[feature]
    if not math.isnan(value):
        for band in bands:
            if value >= band.at_least:  # type: ignore[operator]
                return band
    return default


# (code, feature, text) of each catalogue entry: what a record's reason is made of, by index.
REASON_FIELDS: tuple[tuple[str, str, str], ...] = tuple(
    (entry.code, entry.feature, entry.text) for entry in CATALOGUE
)


def _code_tables() -> tuple[np.ndarray, tuple[tuple[int, float, int], ...]]:
    """Per ``features()`` position, the index of its band-free entry (-1: not catalogued);
    and every band as (position, from value, index), lowest bound first per feature."""
    free = np.full(len(FEATURE_NAMES), -1, dtype=np.intp)
    bands = []
    for index, entry in enumerate(CATALOGUE):
        position = FEATURE_INDEX[entry.feature]
        if entry.at_least is None:
            free[position] = index
        else:
            bands.append((position, float(entry.at_least), index))
    return free, tuple(sorted(bands))


_FREE, _BANDS = _code_tables()


def reason_codes(columns: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The catalogue index (into :data:`CATALOGUE`, :data:`REASON_FIELDS`) of each chosen
    input at its row's value: :func:`reason_code` for a whole batch in a few array operations
    (a band applies from its bound up, a NaN takes the band-free entry). ``columns``: n x k
    positions in the ``features()`` ``rows``."""
    levels = np.take_along_axis(rows, columns, axis=1)
    codes = _FREE[columns]
    if (codes < 0).any():
        raise KeyError(f"not in the catalogue: {FEATURE_NAMES[int(columns[codes < 0][0])]}")
    for position, at_least, index in _BANDS:  # lowest first: the highest band that applies wins
        codes[(columns == position) & (levels >= at_least)] = index
    return codes


def top_reasons(
    inputs: Sequence[int], served: np.ndarray, raw: np.ndarray, rows: np.ndarray
) -> list[list[tuple[ReasonCode, float]]]:
    """Each row's reasons, largest served contribution first: the up to :data:`MAX_REASONS`
    inputs with a positive one, else the single largest. ``inputs``: positions in the
    ``features()`` ``rows``; ``served`` / ``raw``: the rows' contributions (n x inputs). One
    sort for all rows: only emitted records are explained, but a batch has hundreds."""
    n, m = served.shape
    # lexsort's last key is the primary one: served, then raw, then position (all descending).
    positions = np.broadcast_to(np.arange(m), (n, m))
    top = np.lexsort((positions, -raw, -served), axis=-1)[:, :MAX_REASONS]
    columns = np.asarray(inputs, dtype=np.intp)[top]  # the chosen inputs' positions in rows
    values = np.take_along_axis(served, top, axis=1).tolist()
    levels = np.take_along_axis(rows, columns, axis=1).tolist()
    out = []
    for row_values, row_levels, row_columns in zip(values, levels, columns.tolist(), strict=True):
        chosen = [
            (reason_code(FEATURE_NAMES[c], level), v)
            for v, level, c in zip(row_values, row_levels, row_columns, strict=True)
            if v > 0.0
        ]
        out.append(
            chosen or [(reason_code(FEATURE_NAMES[row_columns[0]], row_levels[0]), row_values[0])]
        )
    return out


def catalogue_markdown() -> str:
    """The catalogue as the table docs/MODELS.md prints (``test_models_reasons`` compares)."""
    lines = ["| code | feature | from value | text |", "|---|---|---|---|"]
    for entry in CATALOGUE:
        band = "" if entry.at_least is None else f"{entry.at_least:g}"
        lines.append(f"| {entry.code} | `{entry.feature}` | {band} | {entry.text} |")
    return "\n".join(lines) + "\n"
