"""models.serving.costs: the policy file's costs section (issue 14 point 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from models.serving.costs import CostsError
from models.serving.policy import DEFAULT_POLICY, Policy
from models.strategy.rules import allowed_strategies


def test_the_shipped_policy_prices_every_strategy() -> None:
    policy = Policy.load(None)
    assert set(policy.costs) == set(policy.priorities)
    collector = policy.costs["DEBT_COLLECTOR"]
    assert collector.fee_rate == 0.25 and collector.net(1000.0) == 1000.0 * 0.75 - 10
    assert policy.costs["LEGAL_NOTICE"].per_month > policy.costs["AUTOMATED_REMINDER"].per_month


def test_a_policy_without_costs_still_loads_with_no_costs(tmp_path: Path) -> None:
    data = yaml.safe_load(DEFAULT_POLICY.read_text())
    del data["costs"]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    assert Policy.load(path).costs == {}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c["CALL"].update(per_month=-5), "costs.CALL.per_month: -5 must be"),
        (lambda c: c["CALL"].update(fee_rate=1.5), "costs.CALL.fee_rate: 1.5 must be"),
        (lambda c: c["CALL"].update(fee_rate="x"), "costs.CALL.fee_rate: 'x'"),
        (lambda c: c.pop("LEGAL_NOTICE"), "costs.LEGAL_NOTICE: missing"),
        (lambda c: c.update(PRAY={"per_month": 1, "fee_rate": 0}), "unknown strategy ['PRAY']"),
    ],
)
def test_a_bad_costs_section_names_the_file_and_key(tmp_path: Path, mutate, message) -> None:
    data = yaml.safe_load(DEFAULT_POLICY.read_text())
    mutate(data["costs"])
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CostsError) as error:
        Policy.load(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_tier_bounds_follow_the_table() -> None:
    allowed = allowed_strategies(Policy.load(None))
    assert allowed["HIGH"][-1] == "LEGAL_NOTICE"
    assert "LEGAL_NOTICE" not in allowed["MODERATE"] and "DEBT_COLLECTOR" not in allowed["MODERATE"]
    assert set(allowed["LOW"]) == {"AUTOMATED_REMINDER", "CALL"}


def test_the_strategy_modules_docstring_examples_run() -> None:
    import doctest
    import importlib

    for name in (
        "serving.costs",
        "strategy.rules",
        "strategy.arms",
        "strategy.simulator",
        "strategy.decision_log",
        "strategy.learned",
        "strategy.evaluation",
        "strategy.treatment",
        "strategy.bundle",
        "strategy.outcomes",
        "strategy.outcome_table",
        "strategy.observational",
    ):
        module = importlib.import_module(f"models.{name}")
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, f"models.{name}: {result.failed} docstring example(s) failed"
        assert result.attempted > 0, f"models.{name} has no runnable example"
