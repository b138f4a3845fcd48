"""models.strategy.arms: stable hash assignment, minimal movement on share changes, epsilon
exploration per episode and its propensities, the experiment section's validation, and the arm
comparison in ``evaluate``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from models.features.state import LoanState
from models.serving.policy import DEFAULT_POLICY, Policy
from models.strategy.arms import (
    Experiment,
    ExperimentError,
    episode_key,
    episode_keys,
    experiment_choice,
)
from models.strategy.evaluation import compare_arms, estimate
from models.strategy.simulator import STRATEGIES, Book, Choice
from models.strategy.stream_features import stream_rows
from schemas.events import make_event

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
        book.loan_ids,
        episode_keys(stream_rows(book)),
        book.allowed,
        experiment,
        {"table": table, "learned": learned},
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


# -- exploration per episode ------------------------------------------------------------------

DAY = 86_400_000


def _binomial_ok(hits: int, n: int, p: float) -> bool:
    """``hits`` of ``n`` within 4 standard deviations of ``n p`` (a false alarm ~6e-5)."""
    return abs(hits - n * p) <= 4 * (n * p * (1 - p)) ** 0.5


def test_the_episode_key_is_constant_within_a_spell_and_new_at_each_one() -> None:
    """One loan through the real state machine: the key of each event's feature row names the
    performing stretch or the delinquency spell it belongs to (a partial payment cures, as
    ``days_past_due`` says)."""
    opened = make_event("e0", "L1", "B1", 0, "LoanOpened", dict(
        age=40, gender="Female", employment_type="Salaried", monthly_income=5000.0,
        num_dependents=1, loan_amount=12000.0, loan_tenure_months=12, interest_rate=9.5,
        loan_type="Personal", collateral_value=0.0, monthly_emi=1050.0))  # fmt: skip
    state = LoanState.open(opened)
    keys = [episode_key(*_counters(state))]
    paid = dict(amount_due=1050.0, amount_paid=1050.0, outstanding_after=11000.0)
    partial = dict(amount_due=1050.0, amount_paid=300.0, outstanding_after=10700.0)
    call = dict(method="CALLS", outcome="NO_ANSWER", legal_action=False)
    bodies = [
        (30, "PaymentReceived", dict(installment_due_date=30, **paid)),
        (65, "PaymentMissed", dict(installment_due_date=60, amount_due=1050.0,
                                   days_past_due=5, outstanding=11000.0)),
        (66, "CollectionAttempt", call),
        (95, "PaymentMissed", dict(installment_due_date=90, amount_due=1050.0,
                                   days_past_due=35, outstanding=11000.0)),
        (100, "PaymentReceived", dict(installment_due_date=120, **partial)),
        (155, "PaymentMissed", dict(installment_due_date=150, amount_due=1050.0,
                                    days_past_due=5, outstanding=10700.0)),
        (156, "CollectionAttempt", call),
        (160, "PaymentReceived", dict(installment_due_date=150, **paid)),
    ]  # fmt: skip
    for n, (day, body_type, body) in enumerate(bodies, 1):
        state.apply(make_event(f"e{n}", "L1", "B1", day * DAY, body_type, body))
        keys.append(episode_key(*_counters(state)))
    assert keys == ["p0", "p0", "d0", "d0", "d0", "p2", "d2", "d2", "p3"]
    experiment = _experiment(0.0, epsilon=0.5)
    arm = experiment.arms[1]
    draws = [(experiment.explores(arm, "L1", k), experiment.explored("L1", k, STRATEGIES))
             for k in keys]  # fmt: skip
    assert len({draws[i] for i in (2, 3, 4)}) == 1 and len({draws[i] for i in (6, 7)}) == 1


def _counters(state: LoanState) -> tuple[float, float]:
    row = state.feature_dict()
    return row["num_missed"], row["consecutive_missed"]


def test_episodes_explore_epsilon_of_the_time_independently_and_uniformly() -> None:
    """Over 20,000 loans: the share of exploring episodes is epsilon, two episodes of a loan
    explore independently (both: epsilon squared), the explored strategy is uniform among the
    allowed, and it holds when the allowed set shrinks around it; when the set grows from 2
    to 4 it holds half the time, the most a rule uniform on both sets can."""
    epsilon, n = 0.3, len(LOANS)
    experiment = _experiment(0.0, epsilon=epsilon)
    arm = experiment.arms[1]
    first = np.array([experiment.explores(arm, loan, "d0") for loan in LOANS])
    second = np.array([experiment.explores(arm, loan, "d3") for loan in LOANS])
    assert _binomial_ok(int(first.sum()), n, epsilon)
    assert _binomial_ok(int(second.sum()), n, epsilon)
    assert _binomial_ok(int((first & second).sum()), n, epsilon**2)
    wide, narrow = STRATEGIES[:4], STRATEGIES[:2]
    picks = [experiment.explored(loan, "d0", wide) for loan in LOANS]
    counts = {s: picks.count(s) for s in wide}
    assert all(_binomial_ok(c, n, 1 / 4) for c in counts.values()), counts
    narrowed = [experiment.explored(loan, "d0", narrow) for loan in LOANS]
    assert all(b == a for a, b in zip(picks, narrowed, strict=True) if a in narrow)
    held = sum(a == b for a, b in zip(picks, narrowed, strict=True))
    assert _binomial_ok(held, n, 2 / 4)
    other = [experiment.explored(loan, "d3", wide) for loan in LOANS]
    same = sum(a == b for a, b in zip(picks, other, strict=True))
    assert _binomial_ok(same, n, 1 / 4)  # a new episode draws afresh


def test_ips_with_the_logged_propensities_recovers_other_policies_values() -> None:
    """An experiment log (table arm, epsilon 0.3, the per-episode draw) of 20,000 simulated
    loans: IPS with its propensities estimates the value of a policy the log rarely follows
    (always the gentlest allowed strategy) and of the uniform random policy, each within 4
    standard errors of its exact value (the oracle's expected net recovery); propensities
    that ignore the arm's own pick (1 / k, as if the log were uniform) miss by far more."""
    epsilon = 0.3
    book = Book.generate(20000, seed=11, policy=Policy.load(None))
    table = book.table_choice().strategy
    experiment = Experiment.from_dict(
        {"id": "ips", "arms": [{"name": "t", "policy": "table", "share": 1.0,
                                "epsilon": epsilon}]}, "p.yaml")  # fmt: skip
    episodes = episode_keys(stream_rows(book))
    logged, propensity, _ = experiment_choice(
        book.loan_ids, episodes, book.allowed, experiment, {"table": table}
    )
    net = book.run(Choice(logged, propensity)).net
    truth = book.oracle_values()
    rows = np.arange(len(net))
    k = book.allowed.sum(axis=1)
    gentlest = np.argmax(book.allowed, axis=1)
    assert (table != gentlest).mean() > 0.5  # a policy the log's exploit branch mostly is not
    values = {
        "gentlest": (logged == gentlest) / propensity * net,
        "uniform": np.where(book.allowed[rows, logged], 1 / k, 0.0) / propensity * net,
    }
    exact = {
        "gentlest": truth[rows, gentlest].mean(),
        "uniform": (np.where(book.allowed, truth, 0.0).sum(axis=1) / k).mean(),
    }
    for name, terms in values.items():
        se = terms.std() / len(terms) ** 0.5
        assert abs(terms.mean() - exact[name]) < 4 * se, (name, terms.mean(), exact[name], se)
    naive = (logged == gentlest) * k * net
    assert abs(naive.mean() - exact["gentlest"]) > 10 * naive.std() / len(naive) ** 0.5
    # the evaluation module's IPS is the same estimate, and its interval covers the truth
    out = estimate(rows, logged, net, propensity, truth, gentlest, bootstrap=100)
    assert out["ips"]["value"] == pytest.approx(values["gentlest"].mean())
    assert out["ips"]["low"] < exact["gentlest"] < out["ips"]["high"]
