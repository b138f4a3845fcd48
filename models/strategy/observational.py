"""The direct method on the seed CSV: a treatment model of net recovery per collection method
learned from one ``Collection_Method`` and one ``Recovery_Status`` per loan (issue 14,
acceptance line on the seed format).

**Direct method, no propensities.** The seed export records which method each loan got, not
the chance it had of getting the others, so inverse-propensity and doubly robust estimates
are not available; this model only regresses the outcome on the loan's profile, per method.
Its per-method values are *observational*: the methods were chosen by people who saw things
the export does not (in the synthetic seed book the method escalates with days past due,
``models/data/synthetic.py`` step 4), so a method's value mixes its effect with who was sent
to it. Adjusting for the profile columns removes only the confounding those columns carry.

The estimator is the colleague's T-learner (:mod:`models.strategy.treatment`): one
``RandomForestRegressor`` per arm on net recovery *as a fraction of the balance* (here the
outstanding amount, at least one installment: seed rows can be almost repaid), the same leaf
size and the same minimum decisions per arm, for the same reasons its docstring gives. It
cannot be reused as is: its features are the simulator's state vector and its arms the
policy's six strategies, while the seed has its own columns and four methods (plus ``NONE``,
never contacted). ``Collection_Attempts`` and ``Legal_Action_Taken`` are left out of the
features: they are part of the treatment, not the state before it.

>>> from models.data.synthetic import generate_book
>>> from models.serving.policy import Policy
>>> from models.strategy.outcomes import seed_outcomes
>>> frame, _, _ = generate_book(2000, seed=3)
>>> model = DirectMethodModel(n_estimators=5).learn(frame, seed_outcomes(frame,
...     Policy.load(None).costs))
>>> model.predict(frame.head(2)).shape[0], sorted(model.arms)[0]
(2, 'CALL')
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestRegressor

from models.strategy.outcomes import Outcomes
from models.strategy.treatment import MIN_DECISIONS_PER_ARM, TreatmentError, arm_forest

FEATURES = (
    "Outstanding_Loan_Amount",
    "Loan_Amount",
    "Monthly_EMI",
    "Monthly_Income",
    "Collateral_Value",
    "Interest_Rate",
    "Loan_Tenure",
    "Age",
    "Num_Dependents",
    "Num_Missed_Payments",
    "Days_Past_Due",
)


def seed_features(frame: pd.DataFrame) -> np.ndarray:
    """The pre-treatment profile columns of a seed-schema frame as floats (NaN when blank)."""
    return np.column_stack(
        [pd.to_numeric(frame[c], errors="coerce").to_numpy(float) for c in FEATURES]
    )


def _scale(x: np.ndarray) -> np.ndarray:
    """The target's denominator: the outstanding amount, at least one installment (and 1), so
    an almost repaid loan's fixed costs do not turn into a huge ratio that a larger loan in the
    same leaf would multiply back."""
    return np.maximum.reduce([x[:, 0], x[:, 2], np.ones(len(x))])


class DirectMethodModel:
    """One forest per collection method: expected net recovery given the loan's profile."""

    def __init__(self, n_estimators: int = 100, min_samples_leaf: int = 25, seed: int = 0):
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.seed = seed
        self.arms: dict[str, RandomForestRegressor] = {}
        self.medians = np.zeros(len(FEATURES))

    def learn(self, frame: pd.DataFrame, outcomes: Outcomes) -> DirectMethodModel:
        """Fit on the labelled loans of ``frame`` (rows matched by ``Loan_ID``); arms with
        fewer than ``MIN_DECISIONS_PER_ARM`` loans are refused rather than guessed."""
        ids = frame["Loan_ID"].astype(str).to_numpy()
        index = {loan: i for i, loan in enumerate(ids)}
        rows = np.array([index[str(loan)] for loan in outcomes.loan_id], dtype=int)
        x = seed_features(frame)[rows]
        self.medians = np.nan_to_num(np.nanmedian(x, axis=0))
        x = self._impute(x)
        target = outcomes.net / _scale(x)
        for k, arm in enumerate(sorted(set(outcomes.strategy.tolist()))):
            mask = outcomes.strategy == arm
            if mask.sum() < MIN_DECISIONS_PER_ARM:
                raise TreatmentError(
                    f"seed: only {int(mask.sum())} loans got {arm}; the direct method needs "
                    f">= {MIN_DECISIONS_PER_ARM} per method"
                )
            forest = arm_forest(self.n_estimators, self.min_samples_leaf, self.seed + k)
            self.arms[arm] = forest.fit(x[mask], target[mask])
        return self

    def _impute(self, x: np.ndarray) -> np.ndarray:
        return np.where(np.isnan(x), self.medians, x)

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Expected net recovery per loan (rows) and method (columns, sorted by name)."""
        x = self._impute(seed_features(frame))
        scale = _scale(x)
        return pd.DataFrame(
            {arm: self.arms[arm].predict(x) * scale for arm in sorted(self.arms)},
            index=frame["Loan_ID"].astype(str).to_numpy(),
        )

    def values(self, frame: pd.DataFrame) -> dict[str, float]:
        """The direct-method value of each method: mean predicted net per loan of ``frame``
        had every loan got it (observational, see the module docstring)."""
        return {arm: float(v) for arm, v in self.predict(frame).mean().items()}
