"""The treatment model's decision features from what the stream has (issue 14): the one mapping
from a stream feature row (``LoanState.features()``, and bit for bit its compiled twin
``models.features._event_kernel``, in ``models.features.columns.FEATURE_NAMES`` order) plus the
early-warning score of the same event to :data:`models.strategy.simulator.FEATURES`.

The simulator's state is expressed as such a row (:func:`stream_rows`), so the training log
and the stream go through this one function (``tests/unit/models/test_strategy_stream.py``
checks the round trip). Per decision feature:

==================  ==========================================================================
balance             ``outstanding`` (the last payment event's balance)
emi                 ``monthly_emi``
monthly_income      ``monthly_income`` (at origination; a later report is income_ratio's)
income_ratio        ``reported_income / monthly_income``: the latest income reported after
                    origination (LoanEvent v4 ``CollectionAttempt.income_report``, kept in
                    ``LoanState.reported_income``; not a model feature row column, so the
                    processor passes it beside the rows) over the origination income; with no
                    report (or no origination income) :data:`UNOBSERVED_INCOME_RATIO` (1.0,
                    "no known income shock"), the conservative value: it never offers a plan or
                    a settlement for a shock nobody saw
collateral_ratio    ``collateral_value / outstanding`` (0 when nothing is outstanding)
months_delinquent   ``ceil(days_past_due / 30)``: 1-30 days past due is the first month
on_time_share       ``paid_on_time / (paid_on_time + paid_late)``: the share of payments made
                    on time (the simulator's "paid on time before delinquency"); with no
                    payment yet :data:`NO_HISTORY_ON_TIME` = 2/3, the simulated book's mean
                    (Beta(4, 2)), so an unknown history is an average one
risk_score          the early-warning score of the same event
prior_attempts      ``collection_attempts``
prior_method        ``last_collection_method`` recoded to 0 (none) or 1 + index in
                    ``STRATEGIES``: CALLS -> CALL, SETTLEMENT_OFFER, DEBT_COLLECTORS ->
                    DEBT_COLLECTOR, LEGAL_NOTICE; OTHER (letters, SMS, e-mail) ->
                    AUTOMATED_REMINDER, the only non-call contact the strategies have
==================  ==========================================================================

>>> from models.features.columns import FEATURE_INDEX, FEATURE_NAMES
>>> row = np.zeros((1, len(FEATURE_NAMES)))
>>> row[0, FEATURE_INDEX["outstanding"]], row[0, FEATURE_INDEX["days_past_due"]] = 4000.0, 31.0
>>> row[0, FEATURE_INDEX["last_collection_method"]] = 1.0   # CALLS
>>> x = decision_features(row, np.array([0.4]))
>>> f = dict(zip(FEATURES, x[0].tolist()))
>>> f["months_delinquent"], f["prior_method"], f["on_time_share"]   # 31 days; CALL; no payment
(2.0, 2.0, 0.6666666666666666)
"""

from __future__ import annotations

import numpy as np

from models.features.columns import FEATURE_INDEX, FEATURE_NAMES, VOCABULARIES
from models.strategy.simulator import FEATURES, STRATEGIES, Book

UNOBSERVED_INCOME_RATIO = 1.0
NO_HISTORY_ON_TIME = 2.0 / 3.0
_METHOD_TO_STRATEGY = {
    "NONE": None,
    "CALLS": "CALL",
    "SETTLEMENT_OFFER": "SETTLEMENT_OFFER",
    "DEBT_COLLECTORS": "DEBT_COLLECTOR",
    "LEGAL_NOTICE": "LEGAL_NOTICE",
    "OTHER": "AUTOMATED_REMINDER",
}
# stream method code -> simulator prior_method code (0 none, else 1 + index in STRATEGIES)
PRIOR_METHOD_CODES = np.array(
    [
        0.0 if _METHOD_TO_STRATEGY[m] is None else 1.0 + STRATEGIES.index(_METHOD_TO_STRATEGY[m])
        for m in VOCABULARIES["last_collection_method"]
    ]
)
_COLUMNS = {
    name: FEATURE_INDEX[name]
    for name in (
        "outstanding",
        "monthly_emi",
        "monthly_income",
        "collateral_value",
        "days_past_due",
        "paid_on_time",
        "paid_late",
        "collection_attempts",
        "last_collection_method",
    )
}


# decision_features writes the columns by position: this is the order it writes
_ORDER = (
    "balance",
    "emi",
    "monthly_income",
    "income_ratio",
    "collateral_ratio",
    "months_delinquent",
    "on_time_share",
    "risk_score",
    "prior_attempts",
    "prior_method",
)
if FEATURES != _ORDER:  # a new simulator feature needs its stream definition here first
    raise ImportError(f"stream_features maps {_ORDER}, the simulator has {FEATURES}")


def decision_features(
    rows: np.ndarray, scores: np.ndarray, reported_income: np.ndarray | None = None
) -> np.ndarray:
    """``rows`` (n x FEATURE_NAMES), the events' early-warning ``scores`` (n) and the loans'
    latest ``reported_income`` after each event (n, NaN: none; None: nothing reported for any)
    -> the treatment model's input (n x :data:`FEATURES`); every value finite."""
    rows = np.atleast_2d(rows)
    c = {name: rows[:, i] for name, i in _COLUMNS.items()}
    n = len(rows)
    balance = np.nan_to_num(c["outstanding"], nan=0.0)
    collateral = np.nan_to_num(c["collateral_value"], nan=0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        collateral_ratio = np.where(balance > 0, collateral / balance, 0.0)
        payments = c["paid_on_time"] + c["paid_late"]
        on_time = np.where(payments > 0, c["paid_on_time"] / payments, NO_HISTORY_ON_TIME)
    dpd = np.nan_to_num(c["days_past_due"], nan=0.0)
    method = np.nan_to_num(c["last_collection_method"], nan=0.0).astype(np.int64)
    method = np.clip(method, 0, len(PRIOR_METHOD_CODES) - 1)
    out = np.empty((n, len(FEATURES)))
    out[:, 0] = balance
    out[:, 1] = np.nan_to_num(c["monthly_emi"], nan=0.0)
    out[:, 2] = np.nan_to_num(c["monthly_income"], nan=0.0)
    out[:, 3] = UNOBSERVED_INCOME_RATIO
    if reported_income is not None:
        origination = c["monthly_income"]
        known = (reported_income == reported_income) & (origination > 0)  # (NaN compares False)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[:, 3] = np.where(known, reported_income / origination, UNOBSERVED_INCOME_RATIO)
    out[:, 4] = collateral_ratio
    out[:, 5] = np.ceil(np.maximum(dpd, 0.0) / 30.0)
    out[:, 6] = on_time
    out[:, 7] = scores
    out[:, 8] = np.nan_to_num(c["collection_attempts"], nan=0.0)
    out[:, 9] = PRIOR_METHOD_CODES[method]
    # a corrupt huge value must not reach the float32 trees as inf
    np.clip(out, -1e30, 1e30, out=out)
    return out


def stream_rows(book: Book) -> np.ndarray:
    """A simulated book's loan states as the stream's feature rows (``LoanState.features()``
    layout): the columns :func:`decision_features` reads and the episode's two counters, NaN
    elsewhere.
    ``decision_features(stream_rows(book), risk_score)`` gives back ``x`` except
    ``income_ratio`` (1.0); with ``book.income_reports()`` as the reported incomes it gives
    back the true ratio of the loans whose lender was told (this module's table). Days past due are
    mid-month (``30 (m - 1) + 15``) and the on-time share is one payment's worth of counts, so
    the mapping inverts them exactly. A simulated loan is in its first delinquency spell, one
    miss per month delinquent (``num_missed = consecutive_missed = months_delinquent``): its
    episode key (``models.strategy.arms.episode_key``) is ``d0``, as the stream would key it."""
    c = book.col
    rows = np.full((len(book.z), len(FEATURE_NAMES)), np.nan)
    method = np.zeros(len(book.z))
    for code, sim_code in enumerate(PRIOR_METHOD_CODES.tolist()):
        if sim_code:  # the stream code that maps to this simulator code (OTHER last wins)
            method[c["prior_method"] == sim_code] = code
    for name, values in (
        ("outstanding", c["balance"]),
        ("monthly_emi", c["emi"]),
        ("monthly_income", c["monthly_income"]),
        ("collateral_value", c["collateral_ratio"] * c["balance"]),
        ("days_past_due", 30.0 * (c["months_delinquent"] - 1) + 15.0),
        ("num_missed", c["months_delinquent"]),
        ("consecutive_missed", c["months_delinquent"]),
        ("paid_on_time", c["on_time_share"]),
        ("paid_late", 1.0 - c["on_time_share"]),
        ("collection_attempts", c["prior_attempts"]),
        ("last_collection_method", method),
    ):
        rows[:, FEATURE_INDEX[name]] = values
    return rows
