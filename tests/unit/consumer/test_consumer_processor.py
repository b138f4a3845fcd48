"""The pure partition processor (no broker): determinism over batch sizes, dead letters with
reasons, duplicates, rollback after an abort, restore from its own changelog records, and the
batch reference `score` built on it."""

from __future__ import annotations

import csv
import uuid
from pathlib import Path

import numpy as np
import pytest

from consumer.config import ConfigError, ServeConfig
from consumer.partition_store import CHECKPOINT_KEY
from consumer.processor import PartitionProcessor
from consumer.reference import LOAN_COLUMNS, score_events, write_loans_csv
from consumer.serializers import OutputSerializer
from schemas import AvroSerde
from schemas.serde import MAGIC
from schemas.topics import Topics

DAY = 86_400_000


@pytest.fixture(scope="module")
def events() -> list[dict]:
    from models.data.synthetic import generate_book

    return generate_book(60, seed=5)[1]


def records(events: list[dict], first_offset: int = 0) -> list[tuple[int, bytes, bytes]]:
    encode = AvroSerde("LoanEvent").encode
    return [(first_offset + i, e["loan_id"].encode(), encode(e)) for i, e in enumerate(events)]


def run(processor: PartitionProcessor, recs: list, batch: int) -> tuple[list, list, list]:
    changes, alerts, dead = [], [], []
    for start in range(0, len(recs), batch):
        out = processor.process(recs[start : start + batch], decided_at_ms=0)
        changes += out.changes
        alerts += out.alerts
        dead += out.dead_letters
    return changes, alerts, dead


def snapshot(processor: PartitionProcessor) -> dict:
    # repr: NaN (a never-paid loan's last_payment_at, a guard's unset times) equals itself
    return {k: repr(s.to_record()) for k, s in processor.store.states.items()}


def test_decisions_do_not_depend_on_batch_size(bundle, policy, events) -> None:
    recs = records(events)
    small, large = PartitionProcessor(bundle, policy, 0), PartitionProcessor(bundle, policy, 0)
    by_seven = run(small, recs, 7)
    at_once = run(large, recs, len(recs))
    assert by_seven == at_once
    assert snapshot(small) == snapshot(large)
    assert small.store.segmenter.to_json() == large.store.segmenter.to_json()
    changes = at_once[0]
    assert {c.loan_id for c in changes} == {e["loan_id"] for e in events}  # first decision
    assert all(c.previous_strategy != c.new_strategy for c in changes)
    first = changes[0]
    assert first.event_id == str(
        uuid.uuid5(uuid.UUID("6f1c3a52-8d1e-4c55-9a8e-0d5b2f7c1e01"), first.source_event_id)
    )
    assert first.model_version == bundle.version and first.policy_version == policy.version
    serializer = OutputSerializer(Topics())
    serializer.encode_change(first)  # outputs are valid records
    for alert in at_once[1]:
        serializer.encode_alert(alert)
        assert alert.risk_tier == "HIGH" and alert.previous_tier != "HIGH"


def test_every_kind_of_bad_input_is_a_dead_letter_with_its_reason(bundle, policy, events) -> None:
    serde = AvroSerde("LoanEvent")
    opened = events[0]
    loan = opened["loan_id"]
    day0 = opened["occurred_at"] // DAY
    good = serde.encode(opened)

    def event(body_type: str, body: dict, loan_id: str = loan) -> bytes:
        return serde.encode(
            {
                **opened,
                "loan_id": loan_id,
                "event_id": str(uuid.uuid4()),
                "occurred_at": opened["occurred_at"] + DAY,
                "body": (f"loanrec.events.{body_type}", body),
            }
        )

    payment = {
        "installment_due_date": day0 + 30,
        "amount_due": 10.0,
        "amount_paid": 10.0,
        "outstanding_after": 5.0,
    }
    batch = [
        (0, loan.encode(), good),
        (1, loan.encode(), b"not avro at all"),
        (2, loan.encode(), MAGIC + b"\x01" * 8 + good[10:]),
        (3, loan.encode(), good[:14]),
        (4, loan.encode(), event("PaymentReceived", {**payment, "amount_paid": -1.0})),
        (5, loan.encode(), event("PaymentReceived", {**payment, "installment_due_date": 1})),
        (6, b"GHOST", event("PaymentReceived", payment, loan_id="GHOST")),
        (7, loan.encode(), good),  # duplicate of offset 0
        (8, None, None),
        (9, loan.encode(), event("PaymentReceived", payment)),
        (10, b"another-loan", event("PaymentReceived", payment)),
        (11, None, event("PaymentReceived", payment)),
    ]
    out = PartitionProcessor(bundle, policy, 3).process(batch)
    reasons = {d.offset: d.reason for d in out.dead_letters}
    assert reasons == {
        1: "bad_header",
        2: "unknown_fingerprint",
        3: "undecodable",
        4: "invalid_amount",
        5: "impossible_date",
        6: "unknown_loan",
        8: "bad_header",
        10: "key_mismatch",
        11: "key_mismatch",
    }
    assert all(d.message and d.error_class for d in out.dead_letters)
    assert [(d.key, d.value) for d in out.dead_letters] == [
        (k, v) for o, k, v in batch if o in reasons
    ]
    assert out.outcomes[("LoanOpened", "duplicate")] == 1
    assert out.scored == 2 and out.next_offset == 12
    assert out.outcomes[("PaymentReceived", "dlq")] == 5
    assert out.outcomes[("unknown", "dlq")] == 4


def test_rollback_returns_to_the_last_commit(bundle, policy, events) -> None:
    recs = records(events)
    half = len(recs) // 2
    processor = PartitionProcessor(bundle, policy, 0)
    run(processor, recs[:half], 100)
    processor.store.commit()
    committed, committed_segmenter = snapshot(processor), processor.store.segmenter.to_json()
    first_try = run(processor, recs[half:], 100)
    processor.store.rollback()
    assert snapshot(processor) == committed
    assert processor.store.segmenter.to_json() == committed_segmenter
    assert run(processor, recs[half:], 33) == first_try


def test_restore_from_changelog_records_continues_identically(bundle, policy, events) -> None:
    recs = records(events)
    half = len(recs) // 2
    original = PartitionProcessor(bundle, policy, 2)
    run(original, recs[:half], 250)
    changelog = original.store.changelog_records(now_ms=1)
    original.store.commit()
    assert changelog[-1][0] == CHECKPOINT_KEY.encode()
    assert len(changelog) == len(original.store.states) + 1

    restored = PartitionProcessor(bundle, policy, 2)
    loans = sum(restored.store.restore(key, value) for key, value in changelog)
    restored.store.finish_restore()
    assert loans == len(original.store.states)
    assert snapshot(restored) == snapshot(original)
    assert run(restored, recs[half:], 250) == run(original, recs[half:], 250)


def test_score_reference_writes_one_row_per_loan(bundle, policy, events, tmp_path) -> None:
    result = score_events(events, bundle, policy, partitions=6)
    write_loans_csv(result, tmp_path / "scores.csv")
    with open(tmp_path / "scores.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == LOAN_COLUMNS
    assert len(rows) == len({e["loan_id"] for e in events})
    for row in rows:
        state = result.loans[row["loan_id"]]
        assert float(row["risk_score"]) == state.risk_score  # repr precision round-trips
        assert row["strategy"] == state.strategy and row["risk_tier"] == state.risk_tier
    # Every loan's last change is its final strategy.
    last = {c.loan_id: c.new_strategy for c in result.changes}
    assert last == {r["loan_id"]: r["strategy"] for r in rows}


def test_properties_pass_through_but_cannot_break_the_guarantees() -> None:
    # (Reading the properties file: tests/unit/schemas/test_client_config.py.)
    props = {"security.protocol": "SASL_SSL", "sasl.mechanisms": "PLAIN"}
    cfg = ServeConfig("b:9092", Path("m"), kafka_properties=props, instance_id="x")
    assert cfg.producer_config()["security.protocol"] == "SASL_SSL"
    assert cfg.producer_config()["transactional.id"] == "loan-recovery-x"
    with pytest.raises(ConfigError, match=r"enable\.auto\.commit"):
        ServeConfig("b:9092", Path("m"), kafka_properties={"enable.auto.commit": "true"})


def test_alert_when_the_tier_rises_to_high(bundle, policy, events) -> None:
    import yaml

    from models.serving.policy import DEFAULT_POLICY, Policy

    # A policy with a lower HIGH threshold (the policy owns the tiers), so this small book
    # reaches it.
    document = yaml.safe_load(DEFAULT_POLICY.read_text())
    document["thresholds"] = {"high": 0.2, "moderate": 0.1}
    policy = Policy.from_dict(document)
    strict = bundle
    processor = PartitionProcessor(strict, policy, 1)
    _, alerts, _ = run(processor, records(events), 500)
    assert alerts, "no loan reached the HIGH tier"
    for alert in alerts:
        assert alert.risk_tier == "HIGH" and alert.risk_score > 0.2
        assert alert.previous_tier != "HIGH"
        OutputSerializer(Topics()).encode_alert(alert)
    assert len({a.event_id for a in alerts}) == len(alerts)
    again = run(PartitionProcessor(strict, policy, 1), records(events), 77)[1]
    assert again == alerts  # same alerts, same ids, whatever the batching


def test_extreme_but_schema_valid_values_do_not_break_the_batch(bundle, policy, events) -> None:
    serde = AvroSerde("LoanEvent")
    opened = events[0]
    extreme = {
        **opened,
        "loan_id": "L-EXTREME",
        "event_id": str(uuid.uuid4()),
        "body": (
            opened["body"][0],
            {
                **opened["body"][1],
                "monthly_income": 1e-300,
                "loan_amount": 1e-300,
                "monthly_emi": 1e300,
                "collateral_value": 1e300,
            },
        ),
    }
    batch = [(0, b"L-EXTREME", serde.encode(extreme)), *records(events[:20], first_offset=1)]
    out = PartitionProcessor(bundle, policy, 0).process(batch)
    assert not out.dead_letters and out.scored == 21  # scored, with the absurd ratios imputed
    assert {c.loan_id for c in out.changes} >= {"L-EXTREME", events[0]["loan_id"]}


@pytest.mark.parametrize(
    "name", ["", "e1", "ünïcødé-id", "fcb9beb7-a90d-4daf-b1fd-6e0b89ab0cac", "x" * 300]
)
def test_output_ids_are_exactly_uuid5(name: str) -> None:
    from consumer.processor import uuid5_str

    for namespace in (uuid.NAMESPACE_DNS, uuid.UUID("6f1c3a52-8d1e-4c55-9a8e-0d5b2f7c1e01")):
        assert uuid5_str(namespace, name) == str(uuid.uuid5(namespace, name))


class _ScriptedModel:
    """The trained bundle's segmenter start, but scores read from a script: the processor's
    tier and hysteresis are then functions of known numbers only."""

    def __init__(self, bundle, scores: list[float]) -> None:
        self.version = bundle.version
        self.segmenter_init = bundle.segmenter_init
        self._scores = iter(scores)

    def predict_proba(self, rows) -> np.ndarray:
        return np.array([next(self._scores) for _ in range(len(rows))])


def test_the_policy_owns_the_tier_thresholds(bundle, policy, events) -> None:
    """A policy with ``high: 0.80`` (the bundle says 0.75): the served tier and the hysteresis
    band both follow the policy, so scores alternating 0.76 / 0.74 stay MODERATE and the
    strategy changes once (the first decision), not on every event."""
    import yaml

    from models.serving.policy import DEFAULT_POLICY, Policy

    document = yaml.safe_load(DEFAULT_POLICY.read_text())
    document["thresholds"]["high"] = 0.80
    strict = Policy.from_dict(document)
    assert bundle.thresholds["high"] == 0.75 != strict.high
    loan = events[0]["loan_id"]
    one_loan = [e for e in events if e["loan_id"] == loan][:8]
    scripted = _ScriptedModel(bundle, [0.76, 0.74] * len(one_loan))
    processor = PartitionProcessor(scripted, strict, 0)
    changes, alerts, _ = run(processor, records(one_loan), 1)
    state = processor.store.states[loan]
    assert state.risk_tier == "MODERATE"
    assert len(changes) == 1 and changes[0].risk_tier == "MODERATE"
    assert alerts == []  # no EarlyWarningAlert: 0.76 is not HIGH under this policy


def test_every_emitted_record_carries_its_reasons_and_policy_rule(bundle, policy, events) -> None:
    """Each StrategyChanged and EarlyWarningAlert has 1-3 catalogued reasons, largest first,
    equal to the bundle's decomposition of the loan's row right after the source event
    (rebuilt here by replaying the loan's events up to it), and each change names its rule."""
    import yaml

    from consumer.processor import model_row
    from models.features.state import replay
    from models.serving.policy import DEFAULT_POLICY, Policy
    from models.serving.reasons import CATALOGUE, top_reasons

    document = yaml.safe_load(DEFAULT_POLICY.read_text())
    document["thresholds"] = {"high": 0.2, "moderate": 0.1}  # so this small book alerts too
    low = Policy.from_dict(document)
    changes, alerts, _ = run(PartitionProcessor(bundle, low, 0), records(events), 50)
    assert changes and alerts
    catalogue = {(e.code, e.feature, e.text) for e in CATALOGUE}
    model_features = set(bundle.metadata["model_features"])
    for record in [*changes, *alerts]:
        assert 1 <= len(record.reasons) <= 3
        values = [r.contribution for r in record.reasons]
        assert values == sorted(values, reverse=True)
        assert len(values) == 1 or all(v > 0 for v in values)
        assert all((r.code, r.feature, r.text) in catalogue for r in record.reasons)
        assert {r.feature for r in record.reasons} <= model_features
    for change in changes:
        assert change.policy_rule == f"table: {change.risk_tier} x {change.segment}"
    index = {e["event_id"]: i for i, e in enumerate(events)}
    for record in [*changes[::7], *alerts[::3]]:
        upto = [e for e in events[: index[record.source_event_id] + 1]]
        state = replay(e for e in upto if e["loan_id"] == record.loan_id)[record.loan_id]
        row = np.array([model_row(state.features())])
        explanation = bundle.explain(row)
        assert explanation.scores[0] == record.risk_score
        assert abs(explanation.bias + explanation.contributions[0].sum() - record.risk_score) < 1e-9
        (expected,) = top_reasons(
            explanation.inputs, explanation.contributions, explanation.raw, row
        )
        assert [(r.code, r.contribution) for r in record.reasons] == [
            (e.code, v) for e, v in expected
        ]
    serializer = OutputSerializer(Topics())
    decoded = AvroSerde("StrategyChanged").decode(serializer.encode_change(changes[0]))
    assert [r["code"] for r in decoded["reasons"]] == [r.code for r in changes[0].reasons]
    assert decoded["policy_rule"] == changes[0].policy_rule


def test_a_model_without_a_decomposition_emits_records_without_reasons(
    bundle, policy, events
) -> None:
    """The processor asks only models that have ``explain`` (a scripted fake has none), and
    the one it holds now: a reload replaces ``processor.bundle``."""
    one_loan = [e for e in events if e["loan_id"] == events[0]["loan_id"]][:4]
    processor = PartitionProcessor(bundle, policy, 0)
    processor.bundle = _ScriptedModel(bundle, [0.9, 0.2, 0.9, 0.2])  # as a SIGHUP reload does
    changes, _, _ = run(processor, records(one_loan), 10)
    assert changes and all(c.reasons == () for c in changes)
    assert all(c.policy_rule and c.policy_rule.startswith("table: ") for c in changes)


def test_guardrail_decisions_say_which_rule_and_are_counted(bundle, policy, events) -> None:
    """A hold set mid-stream turns the loan's strategy to HOLD with its reason and the policy's
    wish; the release hands it back with a next contact; the metric counts interventions."""
    from consumer.metrics import ScorerMetrics

    loan = events[0]["loan_id"]
    history = [e for e in events if e["loan_id"] == loan]
    at = history[1]["occurred_at"]

    def hold(n: int, action: str, when: int) -> dict:
        body = {
            "method": "OTHER",
            "outcome": "OTHER",
            "legal_action": False,
            "channel": None,
            "conversation": False,
            "hold": {"action": action, "reason": "CEASE_COMMUNICATION"},
        }
        return {**history[1], "event_id": f"hold-{n}", "occurred_at": when,
                "body": ("loanrec.events.CollectionAttempt", body)}  # fmt: skip

    stream = [history[0], history[1], hold(1, "SET", at + 1), hold(2, "RELEASE", at + 2)]
    processor = PartitionProcessor(bundle, policy, 0)
    out = processor.process(records(stream))
    assert not out.dead_letters, out.dead_letters
    assert len(out.changes) >= 2, (out.outcomes, out.changes)
    held, released = out.changes[-2], out.changes[-1]
    assert held.new_strategy == "HOLD" and held.hold_reason == "CEASE_COMMUNICATION"
    assert held.next_contact_not_before is None
    assert [(g.rule, g.wanted_strategy) for g in held.guardrails] == [
        ("compliance_hold", held.previous_strategy)
    ]
    assert released.previous_strategy == "HOLD" and released.new_strategy != "HOLD"
    assert released.hold_reason is None and released.next_contact_not_before >= at + 2
    assert out.interventions["compliance_hold"] == 1
    metrics = ScorerMetrics()
    metrics.record_batch(out, now_ms=at)
    text = metrics.exposition().decode()
    assert 'loanrec_guardrail_interventions_total{rule="compliance_hold"} 1.0' in text
    assert 'loanrec_guardrail_interventions_total{rule="time_barred"} 0.0' in text
    decoded = AvroSerde("StrategyChanged").decode(OutputSerializer(Topics()).encode_change(held))
    assert decoded["hold_reason"] == "CEASE_COMMUNICATION"
    assert decoded["guardrails"][0]["rule"] == "compliance_hold"


def _relapse(opened: dict) -> list[dict]:
    """A loan whose wanted strategy drops while it is still past due (95 days, then 5 on the
    next installment), which the escalation ladder holds back. The synthetic book's histories
    no longer do this by chance: their cured misses are spread over the history, each cured by
    the next payment, instead of stacked at its start (issue #13)."""
    day0 = opened["occurred_at"] // DAY

    def missed(k: int, dpd: int) -> dict:
        due = day0 + 30 * k
        return {
            **opened,
            "loan_id": "RELAPSE",
            "borrower_id": "B-RELAPSE",
            "event_id": f"relapse-{k}",
            "occurred_at": (day0 + 30 + 95 + k) * DAY,
            "body": (
                "loanrec.events.PaymentMissed",
                {
                    "installment_due_date": due,
                    "amount_due": 500.0,
                    "days_past_due": dpd,
                    "outstanding": 9000.0,
                },
            ),
        }

    opening = {**opened, "loan_id": "RELAPSE", "borrower_id": "B-RELAPSE", "event_id": "relapse-0"}
    return [opening, missed(1, 95), missed(2, 5)]


def test_guardrail_decisions_do_not_depend_on_batch_size(bundle, policy, events) -> None:
    """The processor applies a batch before deciding: each decision must still see the loan's
    holds, calls and payments as of its own event (the per-event guardrail facts)."""
    from models.data.synthetic import with_guardrail_events

    guarded = with_guardrail_events(events, seed=3, hold_rate=0.6, call_rate=0.9)
    guarded += _relapse(events[0])
    guarded.sort(key=lambda e: e["occurred_at"])
    recs = records(guarded)
    one, many = PartitionProcessor(bundle, policy, 0), PartitionProcessor(bundle, policy, 0)
    by_one, at_once = run(one, recs, 1), run(many, recs, len(recs))
    assert by_one == at_once
    changes = at_once[0]
    assert any(c.new_strategy == "HOLD" for c in changes)
    counted = PartitionProcessor(bundle, policy, 0).process(recs).interventions
    assert counted["compliance_hold"] > 0 and counted["escalation_ladder"] > 0, counted
    assert snapshot(one) == snapshot(many)
