"""models.serving.policy: the shipped default, tier x segment decisions, hysteresis, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from models.serving.policy import DEFAULT_POLICY, Policy, PolicyError


def test_default_policy_maps_every_tier_and_segment() -> None:
    policy = Policy.load(None)
    assert policy.version.startswith("1.0.0+")
    assert policy.decide("HIGH", "HIGH_RISK", 0.95, None) == "LEGAL_NOTICE"
    assert policy.decide("MODERATE", "HIGH_RISK", 0.6, None) == "SETTLEMENT_OFFER"
    assert policy.decide("LOW", "LOW_RISK", 0.1, None) == "AUTOMATED_REMINDER"
    used = {s for row in policy.matrix.values() for s in row.values()}
    assert {
        "LEGAL_NOTICE",
        "DEBT_COLLECTOR",
        "SETTLEMENT_OFFER",
        "CALL",
        "AUTOMATED_REMINDER",
    } <= used
    assert policy.is_escalation("CALL", "LEGAL_NOTICE")
    assert not policy.is_escalation("LEGAL_NOTICE", "CALL")


def test_hysteresis_keeps_the_strategy_near_a_threshold_only() -> None:
    policy = Policy.load(None)
    # The score wobbles around 0.75: LEGAL_NOTICE is kept while within the 0.03 margin.
    assert policy.decide("MODERATE", "HIGH_RISK", 0.74, "LEGAL_NOTICE") == "LEGAL_NOTICE"
    assert policy.decide("MODERATE", "HIGH_RISK", 0.70, "LEGAL_NOTICE") == "SETTLEMENT_OFFER"
    assert policy.decide("LOW", "HIGH_RISK", 0.49, "SETTLEMENT_OFFER") == "SETTLEMENT_OFFER"
    # Near a threshold but the current strategy is not a neighbour's: no stickiness.
    assert policy.decide("HIGH", "HIGH_RISK", 0.76, "AUTOMATED_REMINDER") == "LEGAL_NOTICE"
    # A segment change far from any threshold changes the strategy at once.
    assert policy.decide("HIGH", "LOW_RISK", 0.9, "LEGAL_NOTICE") == "SETTLEMENT_OFFER"


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("matrix"), "matrix: missing"),
        (lambda d: d["thresholds"].update(high=0.4), "moderate (0.5) must be below high (0.4)"),
        (lambda d: d["thresholds"].update(high=1.5), "thresholds.high"),
        (lambda d: d.update(hysteresis=0.2), "hysteresis"),
        (
            lambda d: d["matrix"]["HIGH"].update(HIGH_RISK="PRAY"),
            "matrix.HIGH.HIGH_RISK: unknown strategy 'PRAY'",
        ),
        (lambda d: d["matrix"]["LOW"].pop("OTHERS"), "matrix.LOW.OTHERS: missing"),
        (lambda d: d["strategies"].pop("CALL"), "CALL"),
        (lambda d: d["strategies"]["CALL"].update(priority="high"), "strategies.CALL.priority"),
    ],
)
def test_invalid_policies_name_the_key(tmp_path: Path, mutate, message: str) -> None:
    data = yaml.safe_load(DEFAULT_POLICY.read_text())
    mutate(data)
    with pytest.raises(PolicyError) as caught:
        Policy.load(_write(tmp_path, data))
    assert message in str(caught.value) and str(tmp_path) in str(caught.value)


def test_yaml_syntax_errors_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="not valid YAML at line"):
        Policy.load(_write(tmp_path, "version: 1\nmatrix: [\n"))
    with pytest.raises(PolicyError, match="cannot read"):
        Policy.load(tmp_path / "nope.yaml")


def test_version_changes_with_the_content(tmp_path: Path) -> None:
    data = yaml.safe_load(DEFAULT_POLICY.read_text())
    data["hysteresis"] = 0.01
    assert Policy.load(_write(tmp_path, data)).version != Policy.load(None).version
