"""Off-policy evaluation: a candidate policy's net recovery per loan from logged data (issue 14
point 6): inverse propensity scoring (IPS), self-normalised IPS (SNIPS) and doubly robust (DR),
with the direct method (DM, the treatment model's own prediction) alongside; each with a
bootstrap 95% percentile interval that resamples *loans* (a loan's decisions stay together).

Definitions (per decision i with logged strategy a_i, propensity p_i, outcome r_i, candidate
choice pi_i, value model q; Open Bandit Pipeline's ``InverseProbabilityWeighting``,
``SelfNormalizedInverseProbabilityWeighting``, ``DoublyRobust`` for a deterministic candidate):
w_i = 1[a_i = pi_i] / p_i; IPS = sum w r / L; SNIPS = (sum w r / sum w) * D / L;
DM = sum q(x_i, pi_i) / L; DR = sum [q(x_i, pi_i) + w_i (r_i - q(x_i, a_i))] / L, with L loans
and D decisions. Each decision's outcome is its episode's net recovery, so with one decision
per loan (the simulator's episodes) these are per-loan policy values.

>>> import numpy as np
>>> r = np.array([10.0, 0.0, 20.0, 5.0]); a = np.array([0, 1, 0, 1])
>>> q = np.zeros((4, 2)); pi = np.array([0, 0, 0, 0]); p = np.full(4, 0.5)
>>> out = estimate(np.arange(4), a, r, p, q, pi, bootstrap=50)
>>> out["ips"]["value"], out["snips"]["value"], out["dr"]["value"]
(15.0, 15.0, 15.0)
"""

from __future__ import annotations

import numpy as np

BOOTSTRAP = 500


def estimate(
    loan_id: np.ndarray,
    logged: np.ndarray,
    outcome: np.ndarray,
    propensity: np.ndarray | None,
    values: np.ndarray,
    candidate: np.ndarray,
    bootstrap: int = BOOTSTRAP,
    seed: int = 0,
) -> dict[str, dict[str, float] | str]:
    """Estimates of the candidate's value per loan: ``{name: {value, low, high}}``, plus a
    ``note`` when propensities are missing (then only DM is returned)."""
    rows = np.arange(len(outcome))
    _, loan = np.unique(loan_id, return_inverse=True)
    loans = int(loan.max()) + 1
    per_loan = {"dm": np.bincount(loan, values[rows, candidate], minlength=loans)}
    result: dict[str, dict[str, float] | str] = {}
    if propensity is None:
        result["note"] = (
            "the log has no propensities: IPS, SNIPS and DR are not possible; the direct "
            "method (the treatment model's prediction) is the only estimate, and it is only as "
            "good as that model"
        )
    else:
        w = (logged == candidate) / propensity
        per_loan["ips"] = np.bincount(loan, w * outcome, minlength=loans)
        per_loan["w"] = np.bincount(loan, w, minlength=loans)
        per_loan["n"] = np.bincount(loan, minlength=loans).astype(float)
        residual = outcome - values[rows, logged]
        per_loan["dr"] = per_loan["dm"] + np.bincount(loan, w * residual, minlength=loans)

    def stats(sample: np.ndarray) -> dict[str, float]:
        n = len(sample)
        out = {"dm": per_loan["dm"][sample].sum() / n}
        if propensity is not None:
            ips = per_loan["ips"][sample].sum()
            weight = per_loan["w"][sample].sum()
            out["ips"] = ips / n
            out["snips"] = ips / weight * per_loan["n"][sample].sum() / n if weight else np.nan
            out["dr"] = per_loan["dr"][sample].sum() / n
        return out

    point = stats(np.arange(loans))
    rng = np.random.default_rng(seed)
    draws = [stats(rng.integers(0, loans, loans)) for _ in range(bootstrap)]
    for name, value in point.items():
        low, high = np.nanpercentile([d[name] for d in draws], [2.5, 97.5])
        result[name] = {"value": float(value), "low": float(low), "high": float(high)}
    return result


def compare_arms(
    loan_id: np.ndarray,
    arm: np.ndarray,
    outcome: np.ndarray,
    bootstrap: int = BOOTSTRAP,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Realised net recovery per loan of each experiment arm (an arm is a random share of
    loans, so its mean is an unbiased estimate of its policy's value), with a bootstrap 95%
    interval over the arm's loans, and each arm's difference to the first arm listed in the
    log (the champion when the file lists it first).

    >>> out = compare_arms(np.arange(4), np.array(["a", "b", "a", "b"]), np.array([1.0, 3, 1, 5]))
    >>> out["a"]["value"], out["b"]["value"], out["b"]["minus_first"]
    (1.0, 4.0, 3.0)
    """
    rng = np.random.default_rng(seed)
    names = list(dict.fromkeys(arm.tolist()))
    _, loan = np.unique(loan_id, return_inverse=True)
    per_loan = np.bincount(loan, outcome)
    loan_arm = np.empty(len(per_loan), dtype=object)
    loan_arm[loan] = arm
    draws: dict[str, np.ndarray] = {}
    result: dict[str, dict[str, float]] = {}
    for name in names:
        values = per_loan[loan_arm == name]
        draws[name] = np.array(
            [values[rng.integers(0, len(values), len(values))].mean() for _ in range(bootstrap)]
        )
        low, high = np.percentile(draws[name], [2.5, 97.5])
        result[name] = {
            "loans": float(len(values)),
            "value": float(values.mean()),
            "low": float(low),
            "high": float(high),
        }
    first = names[0]
    for name in names[1:]:
        low, high = np.percentile(draws[name] - draws[first], [2.5, 97.5])
        result[name]["minus_first"] = result[name]["value"] - result[first]["value"]
        result[name]["minus_first_low"] = float(low)
        result[name]["minus_first_high"] = float(high)
    return result
