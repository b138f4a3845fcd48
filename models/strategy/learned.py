"""The learned policy: the allowed strategy with the largest expected net recovery (issue 14
point 4), bounded by the tier rules (:mod:`models.strategy.rules`), with hysteresis on value.

Hysteresis: a loan keeps its current strategy while that strategy is allowed and its expected
net recovery is within ``margin`` (currency units over the horizon) of the best one, so two
near-equal strategies do not flap as the state moves a little; the shipped margin (25) is
about a month of a call's cost, below which a switch cannot pay for the disruption.

>>> import numpy as np
>>> from models.serving.policy import Policy
>>> class Fixed:  # a stand-in treatment model: values per strategy, the same for every loan
...     def predict(self, x):
...         return np.tile([10.0, 30.0, 0.0, 0.0, 0.0, 500.0], (len(x), 1))
>>> learned = LearnedPolicy(Fixed(), Policy.load(None), margin=25.0)
>>> x = np.zeros((1, 10)); x[0, 7] = 0.1     # risk_score 0.1: tier LOW (no legal notice)
>>> learned.predict_one(x[0], current=None), learned.predict_one(x[0], current="AUTOMATED_REMINDER")
('CALL', 'AUTOMATED_REMINDER')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from models.serving.policy import TIERS, Policy
from models.strategy.rules import allowed_strategies
from models.strategy.simulator import FEATURES, STRATEGIES

RISK = FEATURES.index("risk_score")
_INDEX = {s: k for k, s in enumerate(STRATEGIES)}
_NOT_ALLOWED = float("-inf")
DEFAULT_MARGIN = 25.0


class ValueModel(Protocol):
    def predict(self, x: np.ndarray) -> np.ndarray: ...


class LearnedPolicy:
    """argmax of a value model's expected net recovery among the tier's allowed strategies."""

    def __init__(self, model: ValueModel, policy: Policy, margin: float = DEFAULT_MARGIN) -> None:
        self.model = model
        self.policy = policy
        self.margin = margin
        allowed = allowed_strategies(policy)
        self._mask = {t: np.isin(STRATEGIES, allowed[t]) for t in TIERS}

    def allowed(self, x: np.ndarray) -> np.ndarray:
        """Rows x strategies: may the policy pick it for this loan?"""
        return np.array([self._mask[self.policy.tier(float(s))] for s in x[:, RISK]])

    def values(self, x: np.ndarray) -> np.ndarray:
        """Expected net recovery per strategy, -inf where not allowed."""
        x = np.atleast_2d(np.asarray(x, dtype=float))
        return np.where(self.allowed(x), self.model.predict(x), -np.inf)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The chosen strategy index (into :data:`STRATEGIES`) per row, no current strategy."""
        return np.argmax(self.values(x), axis=1).astype(np.int64)

    def predict_one(self, x: np.ndarray, current: str | None) -> str:
        """One loan's strategy given the one it is on (hysteresis on value)."""
        values = self.values(np.asarray(x, dtype=float).reshape(1, -1))[0]
        return STRATEGIES[keep_or_best(values.tolist(), current, self.margin)[0]]


def keep_or_best(values: Sequence[float], current: str | None, margin: float) -> tuple[int, bool]:
    """The hysteresis rule, shared by this policy and the stream's
    (:mod:`models.strategy.stream`): ``values`` per strategy (-inf = not allowed) -> (index of
    the chosen strategy, whether it is ``current`` kept within ``margin`` of the best). Plain
    Python over six values: per event in the stream, where numpy's per-call cost (~10 us)
    was most of the decision (bench.processor --strategy)."""
    best = max(range(len(values)), key=values.__getitem__)  # the first maximum, as argmax
    k = _INDEX.get(current) if current is not None else None
    if k is not None and values[k] > _NOT_ALLOWED and values[k] >= values[best] - margin:
        return k, k != best
    return best, False
