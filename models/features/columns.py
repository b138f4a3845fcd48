"""The model's feature vector: names, documentation and the categorical vocabularies.

Every feature is computed in exactly one place, :meth:`models.features.state.LoanState.features`;
this module only names and documents them (``docs/FEATURES.md`` is generated from ``FEATURE_DOCS``)
and holds the fixed vocabularies that turn categorical strings into integer codes, so that serving
needs no pandas: ``features()`` already returns plain floats.

>>> from models.features.columns import FEATURE_NAMES, encode
>>> FEATURE_NAMES[0]
'age'
>>> encode("loan_type", "credit card"), encode("loan_type", "Spaceship")
(4.0, 5.0)
"""

from __future__ import annotations

import math
import re

import numpy as np

# -- categorical vocabularies: code = position; the last entry takes every unseen value ----------

VOCABULARIES: dict[str, tuple[str, ...]] = {
    "gender": ("Male", "Female", "Other"),
    "employment_type": ("Salaried", "Self-Employed", "Business Owner", "Unemployed", "Other"),
    "loan_type": ("Home", "Auto", "Personal", "Business", "Credit Card", "Other"),
    "last_collection_method": (
        "NONE",
        "CALLS",
        "SETTLEMENT_OFFER",
        "DEBT_COLLECTORS",
        "LEGAL_NOTICE",
        "OTHER",
    ),
    "payment_history": ("On-Time", "Delayed", "Missed"),
}
# Seed-schema spellings of collection methods -> the Avro enum symbols.
COLLECTION_METHODS = {
    "Calls": "CALLS",
    "Settlement Offer": "SETTLEMENT_OFFER",
    "Debt Collectors": "DEBT_COLLECTORS",
    "Legal Notice": "LEGAL_NOTICE",
}
CATEGORICAL = ("gender", "employment_type", "loan_type", "last_collection_method")


def _norm(value: str) -> str:
    # Exports spell categories every which way ("Self employed", "SELF-EMPLOYED", "self_employed").
    return re.sub(r"[^a-z0-9]", "", value.lower())


_LOOKUP: dict[str, dict[str, float]] = {
    name: {_norm(label): float(code) for code, label in enumerate(labels)}
    for name, labels in VOCABULARIES.items()
}
_LOOKUP["gender"].update({"m": 0.0, "f": 1.0})
# Raw spelling -> code; bounded so that a stream of ever-new junk strings cannot grow memory.
_CACHE: dict[tuple[str, str], float] = {}
_CACHE_MAX = 4096


def encode(vocabulary: str, value: str | None) -> float:
    """Integer code (as float) of ``value`` in ``vocabulary``; ``nan`` when missing (the model
    pipeline imputes it), the vocabulary's last code ("Other") when unseen."""
    if value is None:
        return math.nan
    key = (vocabulary, value)
    code = _CACHE.get(key)
    if code is None:
        normalized = _norm(value)
        if not normalized or normalized == "nan":
            code = math.nan
        else:
            table = _LOOKUP[vocabulary]
            code = table.get(normalized, float(len(VOCABULARIES[vocabulary]) - 1))
        if len(_CACHE) < _CACHE_MAX:
            _CACHE[key] = code
    return code


def decode(vocabulary: str, code: float) -> str:
    """The canonical label of a code ("" for missing)."""
    if code != code:  # nan
        return ""
    return VOCABULARIES[vocabulary][int(code)]


# -- the feature vector ------------------------------------------------------------------------

FEATURE_DOCS: tuple[tuple[str, str, str], ...] = (
    # (name, definition, unit)
    ("age", "Borrower age at origination (LoanOpened.age).", "years"),
    (
        "gender",
        "Gender code: Male=0, Female=1, Other/unseen=2; missing = NaN (imputed).",
        "category code",
    ),
    (
        "employment_type",
        "Employment code: Salaried=0, Self-Employed=1, Business Owner=2, "
        "Unemployed=3, Other/unseen=4.",
        "category code",
    ),
    ("monthly_income", "Borrower monthly income at origination.", "currency / month"),
    ("num_dependents", "Number of dependents at origination.", "persons"),
    ("loan_amount", "Principal at origination (UCI: the credit limit).", "currency"),
    ("loan_tenure_months", "Contractual tenure.", "months"),
    ("interest_rate", "Annual interest rate.", "percent"),
    (
        "loan_type",
        "Loan type code: Home=0, Auto=1, Personal=2, Business=3, Credit Card=4, Other/unseen=5.",
        "category code",
    ),
    ("collateral_value", "Collateral value at origination, 0 when unsecured.", "currency"),
    ("monthly_emi", "Equated monthly installment at origination.", "currency / month"),
    ("collateral_coverage", "collateral_value / loan_amount (0 when loan_amount is 0).", "ratio"),
    ("emi_to_income", "monthly_emi / monthly_income (NaN when income is 0 or missing).", "ratio"),
    (
        "installments",
        "Installments that fell due so far: PaymentReceived + PaymentMissed events "
        "(a partial payment followed by a miss for the same due date counts once).",
        "count",
    ),
    (
        "paid_on_time",
        "PaymentReceived events on or before their installment's due date (full or partial).",
        "count",
    ),
    ("paid_late", "PaymentReceived events after their installment's due date.", "count"),
    ("num_missed", "PaymentMissed events so far.", "count"),
    ("consecutive_missed", "PaymentMissed events since the last PaymentReceived.", "count"),
    ("missed_ratio", "num_missed / installments (0 before the first installment).", "ratio"),
    (
        "days_past_due",
        "Days past due of the oldest unpaid installment now: the last "
        "PaymentMissed's value, reset to 0 by a PaymentReceived.",
        "days",
    ),
    (
        "days_past_due_prev",
        "days_past_due at the end of the previous installment (due date).",
        "days",
    ),
    ("days_past_due_prev2", "days_past_due at the end of the installment before that.", "days"),
    ("max_days_past_due", "Largest days_past_due ever seen.", "days"),
    (
        "payment_history",
        "Repayment status: On-Time=0 (never late or missed), Delayed=1 (late or "
        "missed before but current now), Missed=2 (currently past due).",
        "ordinal code",
    ),
    (
        "outstanding",
        "Outstanding balance after the last payment event (UCI: the last bill).",
        "currency",
    ),
    ("outstanding_ratio", "outstanding / loan_amount (UCI: credit utilisation).", "ratio"),
    (
        "outstanding_change",
        "outstanding minus the outstanding before the last installment event (0 at the first).",
        "currency",
    ),
    ("last_amount_due", "amount_due of the last installment event.", "currency"),
    ("last_amount_paid", "Sum of amount_paid for the last installment due date.", "currency"),
    ("last_paid_ratio", "last_amount_paid / last_amount_due (1 when nothing was due).", "ratio"),
    ("total_paid", "Sum of amount_paid over all PaymentReceived events.", "currency"),
    ("mean_amount_due", "Mean amount_due over installments.", "currency"),
    ("mean_amount_paid", "total_paid / installments.", "currency"),
    ("paid_to_due_ratio", "total_paid / sum of amount_due (1 when nothing was due).", "ratio"),
    ("paid_in_full", "PaymentReceived events with amount_paid >= amount_due.", "count"),
    (
        "zero_payment",
        "Installments with nothing paid: PaymentReceived of 0, or PaymentMissed "
        "with no payment for the same due date.",
        "count",
    ),
    (
        "mean_outstanding_ratio",
        "Mean over installments of the outstanding balance after the "
        "installment, divided by loan_amount (UCI: mean credit utilisation).",
        "ratio",
    ),
    ("collection_attempts", "CollectionAttempt events so far.", "count"),
    (
        "last_collection_method",
        "Method of the last CollectionAttempt: NONE=0, CALLS=1, "
        "SETTLEMENT_OFFER=2, DEBT_COLLECTORS=3, LEGAL_NOTICE=4, OTHER=5.",
        "category code",
    ),
    ("legal_action", "1 once any CollectionAttempt had legal_action = true, else 0.", "flag"),
)
FEATURE_NAMES: tuple[str, ...] = tuple(name for name, _, _ in FEATURE_DOCS)
FEATURE_INDEX: dict[str, int] = {name: i for i, name in enumerate(FEATURE_NAMES)}
CATEGORICAL_FEATURES: tuple[str, ...] = CATEGORICAL
NUMERIC_FEATURES: tuple[str, ...] = tuple(n for n in FEATURE_NAMES if n not in CATEGORICAL)

# The behavioural + financial-profile view the segmentation clusters on (standardized).
SEGMENT_FEATURES: tuple[str, ...] = (
    "days_past_due",
    "max_days_past_due",
    "missed_ratio",
    "consecutive_missed",
    "paid_to_due_ratio",
    "outstanding_ratio",
    "emi_to_income",
    "collection_attempts",
)


def features_markdown() -> str:
    """``docs/FEATURES.md``: one table row per feature."""
    lines = [
        "# Features",
        "",
        "Computed by `models.features.state.LoanState.features()` — the one implementation, "
        "used by "
        "training (replaying history) and by the streaming scorer. Order = "
        "`models.features.columns.FEATURE_NAMES`. Categoricals are integer codes; missing "
        "values are NaN "
        "and imputed inside the model pipeline. Ratios with a zero denominator are defined in "
        "the table (never inf).",
        "",
        "| # | name | definition | unit |",
        "|---|---|---|---|",
    ]
    lines += [f"| {i} | `{n}` | {d} | {u} |" for i, (n, d, u) in enumerate(FEATURE_DOCS)]
    lines += [
        "",
        "Segmentation (K-Means / DBSCAN / agglomerative, and the online K-Means) uses "
        "the standardized subset: " + ", ".join(f"`{n}`" for n in SEGMENT_FEATURES) + ".",
    ]
    return "\n".join(lines) + "\n"


def segment_matrix(features: np.ndarray) -> np.ndarray:
    """The ``SEGMENT_FEATURES`` columns of a ``features()`` matrix."""
    return features[:, [FEATURE_INDEX[n] for n in SEGMENT_FEATURES]]
