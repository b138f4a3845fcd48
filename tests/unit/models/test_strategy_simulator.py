"""models.strategy.simulator and decision_log: the generating process, common random numbers,
the randomised logging policy and the log's validation (issue 14 point 7)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.serving.policy import Policy
from models.strategy.decision_log import DecisionLog, DecisionLogError, write_log
from models.strategy.simulator import FEATURES, STRATEGIES, Book, Choice, SimulatorError

POLICY = Policy.load(None)
S = {name: i for i, name in enumerate(STRATEGIES)}


@pytest.fixture(scope="module")
def book() -> Book:
    return Book.generate(3000, seed=5, policy=POLICY)


def test_common_random_numbers_two_policies_meet_the_same_borrowers_and_shocks(book) -> None:
    other = Book.generate(3000, seed=5, policy=POLICY)
    assert np.array_equal(book.x, other.x) and np.array_equal(book.uniforms, other.uniforms)
    table, rand = book.run(book.table_choice()), book.run(book.random_choice())
    same = table.choice.strategy == rand.choice.strategy
    assert 0 < same.sum() < len(same)
    assert np.array_equal(table.net[same], rand.net[same])
    assert not np.array_equal(table.net[~same], rand.net[~same])
    assert not np.array_equal(Book.generate(3000, seed=6, policy=POLICY).x, book.x)


def test_the_random_logging_policy_is_uniform_among_the_allowed(book) -> None:
    choice = book.random_choice()
    assert book.allowed[np.arange(len(book.z)), choice.strategy].all()
    assert np.allclose(choice.propensity, 1 / book.allowed.sum(axis=1))
    low = book.tier == "LOW"
    share_call = (choice.strategy[low] == S["CALL"]).mean()
    assert 0.45 < share_call < 0.55  # two strategies allowed in LOW
    assert not (choice.strategy[low] == S["LEGAL_NOTICE"]).any()


def test_effects_are_heterogeneous_as_documented(book) -> None:
    values = book.oracle_values()
    col = book.col
    shocked_big = (col["income_ratio"] < 0.75) & (col["balance"] > 8000)
    steady_small = (col["income_ratio"] > 0.8) & (col["balance"] < 4000)
    lift = values[:, S["SETTLEMENT_OFFER"]] - values[:, S["CALL"]]
    assert lift[shocked_big].mean() > 0 > lift[steady_small].mean()
    secured = col["collateral_ratio"] > 1.0
    legal = values[:, S["LEGAL_NOTICE"]] - values[:, S["DEBT_COLLECTOR"]]
    assert legal[secured].mean() > 0 > legal[col["collateral_ratio"] == 0].mean()
    forgetful = (col["on_time_share"] > 0.8) & (col["income_ratio"] > 0.8)
    reminder = values[:, S["AUTOMATED_REMINDER"]] - values[:, S["CALL"]]
    assert reminder[forgetful].mean() > reminder[~forgetful].mean() + 200


def test_costs_come_from_the_policy_file(book) -> None:
    n = len(book.z)
    for name in ("CALL", "DEBT_COLLECTOR"):
        out = book.run(Choice(np.full(n, S[name]), np.ones(n)))
        cost = POLICY.costs[name]
        expected = cost.per_month * out.months_open + cost.fee_rate * out.recovered
        assert np.allclose(out.cost, expected)
        assert (out.months_open >= 1).all() and (out.months_open <= book.horizon).all()
    no_costs = replace(POLICY, costs={})
    with pytest.raises(SimulatorError, match="costs: missing"):
        Book.generate(10, seed=0, policy=no_costs)


def test_the_log_round_trips_and_bad_cells_are_named(book, tmp_path: Path) -> None:
    out = book.run(book.random_choice())
    write_log(tmp_path, book, out, "random")
    log = DecisionLog.read(tmp_path)
    assert np.array_equal(log.x, book.x) and np.array_equal(log.net, out.net)
    assert np.array_equal(log.strategy, out.choice.strategy) and log.horizon == book.horizon
    frame = pd.read_csv(tmp_path / "decisions.csv")
    bad = frame.astype({"balance": object})
    bad.loc[3, "balance"] = "lots"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DecisionLogError, match=r"bad.csv: row 5, column balance: 'lots'"):
        DecisionLog.read(tmp_path / "bad.csv")
    bad = frame.copy()
    bad.loc[0, "strategy"] = "PRAY"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DecisionLogError, match=r"row 2, column strategy: unknown strategy 'PRAY'"):
        DecisionLog.read(tmp_path / "bad.csv")
    frame.drop(columns=[FEATURES[4]]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DecisionLogError, match=r"missing column.*collateral_ratio"):
        DecisionLog.read(tmp_path / "bad.csv")
    frame.drop(columns=["propensity"]).to_csv(tmp_path / "nop.csv", index=False)
    assert DecisionLog.read(tmp_path / "nop.csv").propensity is None


def test_the_oracle_values_are_the_expectation_of_simulated_paths() -> None:
    small = Book.generate(200, seed=8, policy=POLICY)
    exact = small.oracle_values()
    rng = np.random.default_rng(0)
    simulated = np.zeros_like(exact)
    replicates = 300
    for _ in range(replicates):
        uniforms = rng.random(small.uniforms.shape)
        for k in range(len(STRATEGIES)):
            choice = Choice(np.full(200, k), np.ones(200))
            simulated[:, k] += small._simulate(choice, uniforms).net / replicates
    assert np.allclose(simulated.mean(axis=0), exact.mean(axis=0), rtol=0.02)
    assert min(np.corrcoef(simulated[:, k], exact[:, k])[0, 1] for k in range(6)) > 0.98
