"""The direct method on the seed CSV format learns which method recovers more for whom, and
refuses a method with too few loans."""

from __future__ import annotations

import numpy as np
import pytest

from models.data.synthetic import generate_book
from models.serving.policy import Policy
from models.strategy.observational import DirectMethodModel
from models.strategy.outcomes import seed_outcomes
from models.strategy.treatment import TreatmentError

COSTS = Policy.load(None).costs
METHODS = ("Calls", "Settlement Offer", "Debt Collectors", "Legal Notice")


def _book(n: int, seed: int):
    """A seed-format book where methods were assigned at random and the outcome depends on the
    method x profile: calls recover early arrears, legal notices loans with collateral above 50k."""
    frame, _, _ = generate_book(n, seed=seed)
    rng = np.random.default_rng(seed)
    frame["Collection_Method"] = rng.choice(METHODS, len(frame))
    frame["Collection_Attempts"] = 1
    early = frame["Days_Past_Due"].to_numpy() < 30
    secured = frame["Collateral_Value"].to_numpy() > 50_000
    method = frame["Collection_Method"].to_numpy()
    recovered = np.where(method == "Calls", early, np.where(method == "Legal Notice", secured, 0))
    frame["Recovery_Status"] = np.where(recovered, "Fully Recovered", "Written Off")
    return frame, early, secured


def test_direct_method_prefers_the_method_that_recovers_for_each_profile() -> None:
    frame, _, _ = _book(3000, seed=8)
    model = DirectMethodModel(n_estimators=30).learn(frame, seed_outcomes(frame, COSTS))
    assert sorted(model.arms) == ["CALL", "DEBT_COLLECTOR", "LEGAL_NOTICE", "SETTLEMENT_OFFER"]
    test, early, secured = _book(800, seed=9)
    best = model.predict(test).to_numpy().argmax(axis=1)
    arms = np.array(sorted(model.arms))[best]
    assert (arms[early & ~secured] == "CALL").mean() > 0.95
    assert (arms[~early & secured] == "LEGAL_NOTICE").mean() > 0.95
    values = model.values(test)
    # Collectors and settlements never recover here: their value is minus their monthly cost.
    assert values["SETTLEMENT_OFFER"] < values["DEBT_COLLECTOR"] < 0 < values["CALL"]


def test_a_method_with_too_few_loans_is_refused() -> None:
    frame, _, _ = _book(300, seed=10)
    frame.loc[frame.index[5:], "Collection_Method"] = "Calls"
    with pytest.raises(TreatmentError, match="loans got"):
        DirectMethodModel(n_estimators=5).learn(frame, seed_outcomes(frame, COSTS))
