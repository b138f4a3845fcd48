"""The treatment model: expected net recovery over the next ``horizon`` months for every strategy,
given the loan's state and the system's own past treatments (issue 14 point 3).

Method: a **T-learner** of random forests — one ``RandomForestRegressor`` per strategy, each
fitted on the decisions that took it — predicting net recovery *as a fraction of the balance*
(``net / balance``; multiplied back on prediction).

Why, and the evidence:

- The decision needs the level of each arm's value (argmax of expected net), not only the
  contrast to a control, so each arm's outcome surface is the object of interest; T-learners
  estimate exactly those. With a randomised logging policy every arm has hundreds to
  thousands of decisions across the state space (the simulated acceptance log: at least 1/6 of
  a tier's loans per allowed arm; the rarest, LEGAL_NOTICE, about 700 of 16k), which is the
  regime where Künzel et al. (2019, PNAS, "Metalearners for estimating heterogeneous treatment
  effects") find T-learners competitive;
  an S-learner forest, where the strategy is one column among eleven, is known to shrink
  treatment effects towards zero when they are heterogeneous (the same paper, §4), and the
  effects here are arm-specific interactions (settlement x income shock, legal x collateral).
  A DR-learner (econml) targets contrasts and would need a reference arm per tier.
- Forests: nonlinear, scale-free, robust to the heavy tail of money outcomes with
  ``min_samples_leaf`` (leaf means of >= 25 decisions), and persisted by skops without pickle.
- The ratio target makes loans of different sizes comparable (recoveries scale with the
  balance), which lowers the variance a leaf averages; the balance stays a feature, so fixed
  per-month costs are still learned.
- ``bench/strategy.py`` measures the result end to end against the simulator's truth.

The **propensity model** (a ``RandomForestClassifier`` of the logged strategy on the state) is
fitted only when the log has no propensities; evaluation then says its IPS / DR figures rest on
estimated propensities.

>>> from models.serving.policy import Policy
>>> from models.strategy.simulator import Book
>>> from models.strategy.decision_log import DecisionLog
>>> book = Book.generate(1500, seed=4, policy=Policy.load(None))
>>> out = book.run(book.random_choice())
>>> log = DecisionLog(book.x[:, 0].astype(str), book.x, out.choice.strategy,
...                   out.choice.propensity, out.net, out.recovered, out.cost, 12)
>>> model = TreatmentModel(n_estimators=10).learn(log)
>>> model.predict(book.x[:3]).shape
(3, 6)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

from models.errors import ModelsError
from models.strategy.decision_log import DecisionLog
from models.strategy.simulator import FEATURES, STRATEGIES

BALANCE = FEATURES.index("balance")
MIN_DECISIONS_PER_ARM = 30


def arm_forest(n_estimators: int, min_samples_leaf: int, seed: int) -> RandomForestRegressor:
    """The regression forest of one arm (one strategy's outcomes), for this T-learner and the
    seed CSV's direct method alike."""
    return RandomForestRegressor(
        n_estimators=n_estimators,
        min_samples_leaf=min_samples_leaf,
        max_features=0.6,
        random_state=seed,
        n_jobs=1,
    )


class TreatmentError(ModelsError, ValueError):
    """A log the treatment model cannot learn from (an arm with too few decisions)."""


class TreatmentModel:
    """One forest per strategy: ``learn`` on a decision log, ``predict`` expected net per arm."""

    def __init__(
        self,
        n_estimators: int = 100,
        min_samples_leaf: int = 25,
        seed: int = 0,
        arms: dict[str, RandomForestRegressor] | None = None,
        propensity: RandomForestClassifier | None = None,
        horizon: int = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.seed = seed
        self.arms: dict[str, RandomForestRegressor] = dict(arms or {})
        self.propensity = propensity
        self.horizon = horizon

    def learn(self, log: DecisionLog) -> TreatmentModel:
        """Fit every arm's forest (and the propensity model when the log has none)."""
        balance = np.maximum(log.x[:, BALANCE], 1.0)
        target = log.net / balance
        for k, name in enumerate(STRATEGIES):
            rows = log.strategy == k
            if rows.sum() < MIN_DECISIONS_PER_ARM:
                raise TreatmentError(
                    f"{log.source or 'log'}: only {int(rows.sum())} decisions took {name}; "
                    f"the treatment model needs >= {MIN_DECISIONS_PER_ARM} per strategy "
                    "(log under `--logging-policy random`)"
                )
            forest = arm_forest(self.n_estimators, self.min_samples_leaf, self.seed + k)
            self.arms[name] = forest.fit(log.x[rows], target[rows])
        if log.propensity is None:
            self.propensity = RandomForestClassifier(
                n_estimators=self.n_estimators,
                min_samples_leaf=self.min_samples_leaf,
                random_state=self.seed,
                n_jobs=1,
            ).fit(log.x, log.strategy)
        self.horizon = log.horizon
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Expected net recovery (rows x :data:`STRATEGIES`) over the horizon."""
        x = np.atleast_2d(np.asarray(x, dtype=float))
        balance = np.maximum(x[:, BALANCE], 1.0)
        return np.column_stack([self.arms[s].predict(x) * balance for s in STRATEGIES])

    def score(self, log: DecisionLog) -> dict[str, dict[str, float]]:
        """Per strategy on a log the model never saw: decisions, R^2 of the predicted net
        recovery of the logged strategy, and mean predicted vs mean realised net (calibration
        of the level the policy's argmax compares)."""
        predicted = self.predict(log.x)[np.arange(len(log)), log.strategy]
        report: dict[str, dict[str, float]] = {}
        for k, name in enumerate(STRATEGIES):
            rows = log.strategy == k
            if not rows.any():
                continue
            realised, guess = log.net[rows], predicted[rows]
            spread = ((realised - realised.mean()) ** 2).sum()
            r2 = 1 - ((realised - guess) ** 2).sum() / spread if spread > 0 else float("nan")
            report[name] = {
                "decisions": float(rows.sum()),
                "r2": float(r2),
                "mean_predicted": float(guess.mean()),
                "mean_realised": float(realised.mean()),
            }
        return report

    def predict_propensity(self, x: np.ndarray, strategy: np.ndarray) -> np.ndarray:
        """Estimated P(logged strategy | state), floored at 1e-3 (needs the propensity model)."""
        if self.propensity is None:
            raise TreatmentError("no propensity model: the training log had propensities")
        proba = self.propensity.predict_proba(np.atleast_2d(x))
        columns = {int(c): i for i, c in enumerate(self.propensity.classes_)}
        picked = np.array(
            [
                proba[i, columns[int(a)]] if int(a) in columns else 0.0
                for i, a in enumerate(strategy)
            ]
        )
        return np.maximum(picked, 1e-3)

    def to_state(self) -> dict[str, Any]:
        """The estimators as one skops-serialisable mapping (:mod:`models.strategy.bundle`)."""
        return {"arms": self.arms, "propensity": self.propensity}
