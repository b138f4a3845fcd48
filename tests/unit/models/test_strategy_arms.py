"""models.strategy.arms: stable hash assignment, minimal movement on share changes, epsilon
propensities, the experiment section's validation, and the arm comparison in ``evaluate``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from models.serving.policy import DEFAULT_POLICY, Policy
from models.strategy.arms import Experiment, ExperimentError, experiment_choice
from models.strategy.evaluation import compare_arms
from models.strategy.simulator import Book

LOANS = [f"L{i:05d}" for i in range(20000)]


def _experiment(champion: float, epsilon: float = 0.0, exp_id: str = "e1") -> Experiment:
    return Experiment.from_dict(
        {
            "id": exp_id,
            "arms": [
                {"name": "champion", "policy": "table", "share": champion},
                {"name": "challenger", "policy": "learned", "share": 1 - champion,
                 "epsilon": epsilon},
            ],
        },
        "p.yaml",
    )  # fmt: skip


def test_assignment_is_stable_proportional_and_moves_only_what_it_must() -> None:
    before = np.array([_experiment(0.8).assign(loan).name for loan in LOANS])
    after = np.array([_experiment(0.7).assign(loan).name for loan in LOANS])
    assert abs((before == "challenger").mean() - 0.2) < 0.01
    moved = before != after
    assert abs(moved.mean() - 0.1) < 0.01
    assert (before[moved] == "champion").all() and (after[moved] == "challenger").all()
    other = np.array([_experiment(0.8, exp_id="e2").assign(loan).name for loan in LOANS])
    both = ((before == "challenger") & (other == "challenger")).mean()
    assert abs(both - 0.04) < 0.01  # independent across experiments


def test_epsilon_exploration_logs_the_right_propensities() -> None:
    book = Book.generate(4000, seed=3, policy=Policy.load(None))
    table = book.table_choice().strategy
    learned = (table + 1) % 6  # a stand-in pick; allowed or not, exploration stays inside
    learned = np.where(book.allowed[np.arange(4000), learned], learned, table)
    experiment = _experiment(0.5, epsilon=0.3)
    strategy, propensity, arms = experiment_choice(
        book.loan_ids, book.allowed, experiment, {"table": table, "learned": learned}
    )
    champion = arms == "champion"
    assert np.array_equal(strategy[champion], table[champion]) and (propensity[champion] == 1).all()
    k = book.allowed.sum(axis=1)
    challenger = ~champion
    kept = strategy == learned
    expected = np.where(kept, 0.7 + 0.3 / k, 0.3 / k)
    assert np.allclose(propensity[challenger], expected[challenger])
    assert 0.15 < (~kept[challenger]).mean() < 0.30  # 0.3 x (1 - 1/k) explore elsewhere
    assert book.allowed[np.arange(4000), strategy].all()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda e: e["arms"][0].update(share=0.5), "shares add up to 0.7"),
        (lambda e: e["arms"][1].update(policy="magic"), "arms[1].policy: 'magic'"),
        (lambda e: e["arms"][1].update(epsilon=2), "arms[1].epsilon: 2"),
        (lambda e: e.update(id=""), "non-empty id"),
    ],
)
def test_a_bad_experiment_section_names_the_key(tmp_path: Path, mutate, message) -> None:
    data = yaml.safe_load(DEFAULT_POLICY.read_text())
    data["experiment"] = {
        "id": "x",
        "arms": [
            {"name": "champion", "policy": "table", "share": 0.8},
            {"name": "challenger", "policy": "learned", "share": 0.2},
        ],
    }
    mutate(data["experiment"])
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ExperimentError) as error:
        Experiment.load(path)
    assert str(path) in str(error.value) and message in str(error.value)
    assert Experiment.load(DEFAULT_POLICY) is None


def test_arm_comparison_finds_a_real_difference_and_not_a_fake_one() -> None:
    rng = np.random.default_rng(1)
    arm = np.where(rng.random(6000) < 0.5, "champion", "challenger")
    net = rng.normal(1000, 300, 6000) + np.where(arm == "challenger", 100, 0)
    out = compare_arms(np.arange(6000), arm, net, bootstrap=200)
    first = next(iter(out))
    other = "challenger" if first == "champion" else "champion"
    sign = 1 if other == "challenger" else -1
    assert out[other]["minus_first_low"] * sign > 0  # the interval excludes zero
    same = compare_arms(np.arange(6000), arm, rng.normal(1000, 300, 6000), bootstrap=200)
    assert same[other]["minus_first_low"] < 0 < same[other]["minus_first_high"]
