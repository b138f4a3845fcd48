"""`loan-recovery serve` with the guardrails acting, against the real broker.

A small synthetic book with compliance holds set and released mid-stream, call attempts,
conversations and borrower time zones (``models.data.synthetic.with_guardrail_events``) is
produced to a real broker and scored by the real `serve` subprocess. Its StrategyChanged
records must equal the batch reference `loan-recovery score` writes -- strategies, hold reasons,
guardrail interventions and ``next_contact_not_before`` -- and, read back from Kafka, obey the
hold rule (ARCHITECTURE.md §7, 12 CFR 1006.6(b)(2) and (c)): while a loan's hold is active each
of its changes is HOLD, and the RELEASE gives it a contact strategy again.

Kept small (300 loans, ~5,000 events) so it adds well under a minute to the integration run;
the helpers are `test_stream_eos`'s.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
from test_stream_eos import (
    FAST_GROUP,
    PARTITIONS,
    Scorer,
    _cli,
    assert_same_changes,
    change_keys,
    encoded,
    produce,
    reference_keys,
)

from producer.admin import create_topics
from schemas.topics import Topics

pytestmark = pytest.mark.integration
BOOK_LOANS = 300
HOLD_RATE = 0.4  # ~120 holds, ~70 of them released later: every path is exercised


def _guardrails_column(record: dict) -> str:
    """A Kafka record's interventions as `score`'s ``guardrails`` CSV column writes them."""
    return ";".join(f"{g['rule']}>{g['wanted_strategy']}" for g in record["guardrails"])


def _hold_timeline(events: list[dict]) -> tuple[dict[str, bool], dict[str, set[str]]]:
    """Per event id: whether its loan has an active hold right after it; per loan: the ids
    of its RELEASE events that leave no hold active."""
    active: dict[str, set[str]] = {}
    after: dict[str, bool] = {}
    releases: dict[str, set[str]] = {}
    for event in events:
        body_type, body = event["body"]
        holds = active.setdefault(event["loan_id"], set())
        hold = body.get("hold") if body_type.endswith("CollectionAttempt") else None
        if hold is not None:
            if hold["action"] == "SET":
                holds.add(hold["reason"])
            else:
                holds.discard(hold["reason"])
                if not holds:
                    releases.setdefault(event["loan_id"], set()).add(event["event_id"])
        after[event["event_id"]] = bool(holds)
    return after, releases


def test_holds_set_and_released_mid_stream_match_the_batch_reference(
    bootstrap_servers: str, trained_model: Path, unique_name, tmp_path: Path
) -> None:
    from models.data.adapters import read_history, write_jsonl
    from models.data.synthetic import generate_book, with_guardrail_events

    _, book, _ = generate_book(BOOK_LOANS, seed=5)
    log = tmp_path / "events.jsonl"
    with open(log, "w") as handle:
        write_jsonl(with_guardrail_events(book, seed=5, hold_rate=HOLD_RATE), handle)
    events = read_history("events", log).events  # exactly what `score` reads
    app = unique_name("guard")
    topics = Topics(
        events=f"{app}.events",
        strategy_changes=f"{app}.changes",
        risk_alerts=f"{app}.alerts",
        dlq=f"{app}.dlq",
        app_id=app,
    )
    create_topics(bootstrap_servers, topics, partitions=PARTITIONS)
    produce(bootstrap_servers, topics.events, encoded(events))
    properties = tmp_path / "client.properties"
    properties.write_text(FAST_GROUP)
    scorer = Scorer(
        bootstrap_servers, trained_model, topics, "g0", properties, tmp_path / "scorer.log", {}
    )
    try:
        # The batch reference runs while the stream scores (independent processes).
        _cli(
            "score",
            "--model",
            str(trained_model),
            "--source",
            "events",
            "--input",
            str(log),
            "--out",
            str(tmp_path / "scores.csv"),
            "--changes",
            str(tmp_path / "changes.csv"),
            "--partitions",
            str(PARTITIONS),
        )
        with open(tmp_path / "changes.csv") as handle:
            reference = list(csv.DictReader(handle))
        scorer.wait_for(
            lambda: scorer.total("loanrec_events_total") >= len(events), 120, "every event"
        )
        assert scorer.total("loanrec_events_total", outcome="scored") == len(events)
        held = scorer.total("loanrec_guardrail_interventions_total", rule="compliance_hold")
        assert scorer.wait_exit() == 0, scorer.log_text()[-3000:]
    finally:
        scorer.stop()

    got, records = change_keys(bootstrap_servers, topics, len(reference))
    assert_same_changes(got, reference_keys(reference))
    # Stream = batch on what the guardrails decided, not only the strategy.
    want = {(c["loan_id"], c["source_event_id"]): c for c in reference}
    for record in records:
        expected = want[(record["loan_id"], record["source_event_id"])]
        assert (record["hold_reason"] or "") == expected["hold_reason"], record
        assert _guardrails_column(record) == expected["guardrails"], record
        nncb = record["next_contact_not_before"]
        assert ("" if nncb is None else str(nncb)) == expected["next_contact_not_before"]
    # The counter counts every decision the hold changed, emitted or not (an event of a loan
    # already on HOLD emits nothing), so at least one per emitted HOLD.
    emitted_holds = sum(1 for r in records if r["new_strategy"] == "HOLD")
    assert emitted_holds > 0 and held >= emitted_holds

    # The hold rule, on what Kafka holds: HOLD exactly while a hold is active.
    hold_after, releases = _hold_timeline(events)
    assert len(releases) >= 20, "the book releases holds mid-stream"
    by_event = {r["source_event_id"]: r for r in records}
    for record in records:
        on_hold = hold_after[record["source_event_id"]]
        assert (record["new_strategy"] == "HOLD") == on_hold, record
        if on_hold:
            assert record["hold_reason"] and record["next_contact_not_before"] is None
            assert [g["rule"] for g in record["guardrails"]] == ["compliance_hold"]
        else:
            assert record["next_contact_not_before"] >= record["occurred_at"], record
    # Every loan was HOLD before its release; the release itself brings a contact strategy.
    released = Counter()
    for loan_id, release_ids in releases.items():
        for event_id in release_ids:
            change = by_event.get(event_id)
            assert change is not None, f"{loan_id}: no StrategyChanged at its hold release"
            assert change["previous_strategy"] == "HOLD" and change["new_strategy"] != "HOLD"
            released[change["new_strategy"]] += 1
    assert sum(released.values()) == sum(len(ids) for ids in releases.values())
