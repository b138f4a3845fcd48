"""Recovery and cost by strategy (collection method) x segment, with 95% intervals: what the
report's strategy-outcomes section shows (issue 14 point 8).

Each cell is the mean over its loans of the recovered fraction of the balance, the cost and the
net recovery, with a **normal-approximation 95% interval** (mean +- 1.96 s / sqrt(n), s the
sample standard deviation): the cells hold tens to thousands of loans, where the mean of a
bounded fraction is close to normal; a cell of one loan has no interval (NaN). The figures are
**observational**: who got which method was decided by people, not at random, so a
difference between methods mixes their effect with who was sent to them
(:mod:`models.strategy.observational`).

>>> import numpy as np
>>> from models.strategy.outcomes import Outcomes
>>> out = Outcomes(np.array(["a", "b", "c"], dtype=object), np.array(["CALL"] * 3, dtype=object),
...     np.full(3, 100.0), np.array([100.0, 50.0, 0.0]), np.full(3, 15.0), np.zeros(3, bool),
...     np.zeros(3))
>>> cell = strategy_segment_table(out, {"a": "LOW_RISK", "b": "LOW_RISK", "c": "LOW_RISK"})[0]
>>> cell["strategy"], cell["segment"], cell["loans"], round(cell["recovered_fraction"], 3)
('CALL', 'LOW_RISK', 3, 0.5)
>>> [round(v, 3) for v in cell["recovered_fraction_ci"]]
[-0.066, 1.066]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from models.strategy.outcomes import Outcomes

Z95 = 1.959963984540054
OBSERVATIONAL_NOTE = (
    "Observational estimate: collection methods were chosen by the collections team, not at "
    "random, so differences between methods mix their effect with who was sent to them. "
    "Intervals are 95% normal-approximation intervals of the mean (mean ± 1.96 s/√n)."
)


def mean_interval(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, low, high) of the normal-approximation 95% interval; NaN bounds for n < 2."""
    n = len(values)
    mean = float(values.mean()) if n else float("nan")
    if n < 2:
        return mean, float("nan"), float("nan")
    half = Z95 * float(values.std(ddof=1)) / float(np.sqrt(n))
    return mean, mean - half, mean + half


def strategy_segment_table(
    outcomes: Outcomes, segment_by_loan: Mapping[str, str]
) -> list[dict[str, Any]]:
    """One dict per (strategy, segment) with loans, recovered fraction, cost and net per loan,
    each with its ``*_ci`` interval, sorted by strategy then segment. Loans without a segment
    (not in the scored book) are counted under ``UNSCORED``."""
    segments = np.array(
        [segment_by_loan.get(str(loan), "UNSCORED") for loan in outcomes.loan_id], dtype=object
    )
    measures = {
        "recovered_fraction": outcomes.recovered_fraction,
        "recovered": outcomes.recovered,
        "cost": outcomes.cost,
        "net": outcomes.net,
    }
    table = []
    for strategy in sorted(set(outcomes.strategy.tolist())):
        for segment in sorted(set(segments[outcomes.strategy == strategy].tolist())):
            mask = (outcomes.strategy == strategy) & (segments == segment)
            cell: dict[str, Any] = {
                "strategy": strategy,
                "segment": segment,
                "loans": int(mask.sum()),
            }
            for name, values in measures.items():
                mean, low, high = mean_interval(values[mask])
                cell[name] = mean
                cell[f"{name}_ci"] = [low, high]
            table.append(cell)
    return table
