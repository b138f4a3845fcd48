"""Output records on the wire: v2 carries reasons, guardrails and the arm; a v1 reader still
decodes every v2 record (DESIGN.md §5, schema evolution by added fields with defaults)."""

from __future__ import annotations

from consumer.outputs import EarlyWarningAlert, GuardrailIntervention, Reason, StrategyChanged
from consumer.serializers import OutputSerializer
from schemas import AvroSerde
from schemas.topics import Topics

REASONS = (
    Reason("R03", "days_past_due", "60 or more days past due", 0.21),
    Reason("R07", "missed_payments", "Two or more missed installments", 0.08),
)


def change(**extra: object) -> StrategyChanged:
    base = dict(
        event_id="e1",
        loan_id="L1",
        borrower_id="B1",
        previous_strategy="SOFT_REMINDER",
        new_strategy="HOLD",
        risk_score=0.81,
        risk_tier="HIGH",
        segment="HIGH_RISK",
        model_version="m1",
        policy_version="p1",
        reason="tier MODERATE->HIGH",
        source_event_id="s1",
        source_topic="loan.events",
        source_partition=3,
        source_offset=42,
        occurred_at=1_700_000_000_000,
        decided_at=1_700_000_000_500,
    )
    base.update(extra)
    return StrategyChanged(**base)  # type: ignore[arg-type]


def serializer() -> OutputSerializer:
    return OutputSerializer(Topics())


def test_v2_change_round_trips_reasons_guardrails_and_arm() -> None:
    full = change(
        reasons=REASONS,
        policy_rule="table: HIGH x HIGH_RISK",
        guardrails=(GuardrailIntervention("compliance_hold", "LEGAL_NOTICE", "BANKRUPTCY"),),
        hold_reason="BANKRUPTCY",
        next_contact_not_before=1_700_000_600_000,
        experiment_id="exp-1",
        arm="challenger",
        propensity=0.2,
        expected_net_recovery=123.5,
    )
    decoded = AvroSerde("StrategyChanged").decode(serializer().encode_change(full))
    assert decoded["reasons"][0] == {
        "code": "R03",
        "feature": "days_past_due",
        "text": "60 or more days past due",
        "contribution": 0.21,
    }
    assert [r["code"] for r in decoded["reasons"]] == ["R03", "R07"]
    assert decoded["guardrails"] == [
        {"rule": "compliance_hold", "wanted_strategy": "LEGAL_NOTICE", "detail": "BANKRUPTCY"}
    ]
    assert decoded["arm"] == "challenger" and decoded["propensity"] == 0.2
    assert decoded["next_contact_not_before"] == 1_700_000_600_000


def test_a_v1_reader_decodes_a_v2_change_without_the_new_fields() -> None:
    data = serializer().encode_change(change(reasons=REASONS, arm="champion"))
    v1 = AvroSerde("StrategyChanged", reader_version=1).decode(data)
    assert "reasons" not in v1 and "arm" not in v1
    assert v1["new_strategy"] == "HOLD" and v1["source_offset"] == 42


def test_a_v1_reader_decodes_a_v2_alert() -> None:
    alert = EarlyWarningAlert(
        event_id="a1",
        loan_id="L1",
        borrower_id="B1",
        previous_tier="MODERATE",
        risk_tier="HIGH",
        risk_score=0.8,
        segment="HIGH_RISK",
        model_version="m1",
        source_event_id="s1",
        source_offset=7,
        occurred_at=0,
        decided_at=1,
        reasons=REASONS[:1],
    )
    data = serializer().encode_alert(alert)
    assert AvroSerde("EarlyWarningAlert").decode(data)["reasons"][0]["code"] == "R03"
    v1 = AvroSerde("EarlyWarningAlert", reader_version=1).decode(data)
    assert "reasons" not in v1 and v1["risk_tier"] == "HIGH"


def test_defaults_encode_empty_reasons_and_nulls() -> None:
    decoded = AvroSerde("StrategyChanged").decode(serializer().encode_change(change()))
    assert decoded["reasons"] == [] and decoded["guardrails"] == []
    assert decoded["arm"] is None and decoded["policy_rule"] is None
