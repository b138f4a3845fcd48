"""The loan lookup without a broker: the JSON document, the committed view over an open
transaction, 404 / 421 / 503, the bearer token on the real HTTP server, owner discovery from a
group description, the partition's bounded decision history, and `explain`'s offline
document (docs/INTERNALS.md, "Loan lookup")."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import pytest
import requests

from consumer.config import ServeConfig
from consumer.health import HealthServer
from consumer.lookup import (
    LoanLookup,
    Owner,
    advertised_client_id,
    bearer_ok,
    http_address_of,
    loan_document,
    owner_of,
)
from consumer.metrics import ScorerMetrics
from consumer.partition_store import DECISION_HISTORY
from consumer.partitioning import partition_for
from consumer.processor import PartitionProcessor
from consumer.reference import explain_loan, score_events
from schemas import AvroSerde


@pytest.fixture(scope="module")
def events() -> list[dict]:
    from models.data.synthetic import generate_book

    return generate_book(80, seed=11)[1]


def encoded(events: list[dict]) -> list[tuple[int, bytes, bytes]]:
    encode = AvroSerde("LoanEvent").encode
    return [(i, e["loan_id"].encode(), encode(e)) for i, e in enumerate(events)]


def single_partition(bundle, policy, events: list[dict]) -> PartitionProcessor:
    """Every event on partition 0 of a one-partition topic, committed."""
    processor = PartitionProcessor(bundle, policy, 0)
    processor.process(encoded(events))
    processor.store.commit()
    return processor


def lookup_over(processor: PartitionProcessor, pending=(), find_owner=None) -> LoanLookup:
    owned = SimpleNamespace(processors={processor.partition: processor}, pending=set(pending))
    return LoanLookup(1, threading.Lock(), lambda: owned, find_owner or (lambda p: None))


def changed_loan(processor: PartitionProcessor) -> str:
    return processor.store.decisions[-1].loan_id


def test_bearer_token_check() -> None:
    assert bearer_ok(None, None) and bearer_ok("Bearer anything", "")
    assert bearer_ok("Bearer s3cret", "s3cret") and bearer_ok("bearer s3cret", "s3cret")
    for header in (None, "", "Bearer", "Bearer s3cre", "Bearer s3cretX", "Basic s3cret", "s3cret"):
        assert not bearer_ok(header, "s3cret"), header


def test_document_holds_state_decision_and_reasons(bundle, policy, events) -> None:
    processor = single_partition(bundle, policy, events)
    loan_id = changed_loan(processor)
    state = processor.store.states[loan_id]
    changes = [c for c in processor.store.decisions if c.loan_id == loan_id]
    document = loan_document(state, 0, changes, view="committed", complete=False)
    json.dumps(document, allow_nan=False)  # strict JSON: NaN features became null
    assert document["loan_id"] == loan_id and document["borrower_id"] == state.borrower_id
    assert (document["score"], document["tier"]) == (state.risk_score, state.risk_tier)
    assert (document["segment"], document["strategy"]) == (state.segment, state.strategy)
    last = changes[-1]
    assert 1 <= len(last.reasons) <= 3 and last.policy_rule
    assert document["reasons"] == [
        {"code": r.code, "feature": r.feature, "text": r.text, "contribution": r.contribution}
        for r in last.reasons
    ]
    assert document["decisions"][-1]["policy_rule"] == last.policy_rule
    assert document["decisions"][-1]["new_strategy"] == state.strategy
    assert document["history"] == {"complete": False, "decisions": len(changes)}
    assert document["state"]["closed"] == state.closed
    assert document["state"]["last_event_at"] == state.last_event_at
    features = document["state"]["features"]
    assert list(features) == list(state.feature_dict())
    assert all(v is None or v == state.feature_dict()[k] for k, v in features.items())


def test_lookup_answers_the_committed_state_not_the_open_transaction(
    bundle, policy, events
) -> None:
    first, rest = events[: len(events) // 2], events[len(events) // 2 :]
    processor = single_partition(bundle, policy, first)
    lookup = lookup_over(processor)
    touched = next(e["loan_id"] for e in rest if e["loan_id"] in processor.store.states)
    before = lookup.answer(touched)
    assert before[0] == 200
    processor.process(encoded(rest))  # open transaction: not committed
    status, body, _ = lookup.answer(touched)
    assert status == 200 and body == before[1]
    opened_now = next(e["loan_id"] for e in rest if e["body"][0].endswith("LoanOpened"))
    assert lookup.answer(opened_now)[0] == 404
    processor.store.commit()
    assert lookup.answer(opened_now)[0] == 200
    after = lookup.answer(touched)[1]
    assert after["state"] != before[1]["state"]
    assert after["state"]["last_event_at"] == processor.store.states[touched].last_event_at


def test_lookup_shows_the_money_recovered_after_a_write_off(bundle, policy) -> None:
    """W is written off, then pays 300 (a recovery): the lookup shows it once committed, and
    the committed 300 while a second recovery is in the open transaction."""
    from test_consumer_lifecycle import closed, missed, opened, paid

    book = [
        opened("W", 0),
        missed("W", 1, 40),
        closed("W", 100, "WRITTEN_OFF"),
        paid("W", 2, 105, amount=300.0),
        paid("W", 3, 106, amount=25.5),
        opened("K", 0),
    ]
    processor = single_partition(bundle, policy, book[:4] + book[5:])
    lookup = lookup_over(processor)
    status, body, _ = lookup.answer("W")
    assert status == 200 and body["state"]["closed"] and body["state"]["written_off"]
    assert body["state"]["recovered_after_write_off"] == 300.0
    open_loan = lookup.answer("K")[1]["state"]
    assert not open_loan["written_off"] and open_loan["recovered_after_write_off"] == 0.0
    processor.process([(9, b"W", AvroSerde("LoanEvent").encode(book[4]))])  # not committed
    assert lookup.answer("W")[1]["state"]["recovered_after_write_off"] == 300.0
    processor.store.commit()
    assert lookup.answer("W")[1]["state"]["recovered_after_write_off"] == 325.5


def test_lookup_404_400_503(bundle, policy, events) -> None:
    processor = single_partition(bundle, policy, events[:40])
    status, body, _ = lookup_over(processor).answer("L-never-opened")
    assert status == 404 and body["error"] == "unknown loan L-never-opened"
    assert lookup_over(processor).answer("")[0] == 400
    assert lookup_over(processor).answer("x" * 200)[0] == 400
    assert lookup_over(processor, pending={0}).answer(events[0]["loan_id"])[0] == 503


def test_lookup_421_names_the_owner_or_says_why_not(bundle, policy) -> None:
    owned = SimpleNamespace(processors={}, pending=set())
    owner = Owner("scorer-2@http://10.0.0.2:9108", "/10.0.0.2", "scorer-2", "http://10.0.0.2:9108")
    lookup = LoanLookup(6, threading.Lock(), lambda: owned, lambda p: owner)
    status, body, headers = lookup.answer("L00001")
    assert status == 421 and body["partition"] == partition_for("L00001", 6)
    assert body["owner"]["http"] == "http://10.0.0.2:9108"
    assert headers["Location"] == "http://10.0.0.2:9108/loans/L00001"

    def unreachable(partition: int) -> Owner | None:
        raise TimeoutError("describe_consumer_groups timed out")

    for finder, why in ((lambda p: None, "no member"), (unreachable, "TimeoutError")):
        status, body, headers = LoanLookup(6, threading.Lock(), lambda: owned, finder).answer(
            "L00001"
        )
        assert status == 421 and body["owner"] is None and why in body["owner_unknown"]
        assert headers == {}


def test_owner_of_reads_the_group_assignment() -> None:
    def member(client_id: str, partitions: list[int]) -> SimpleNamespace:
        tps = [SimpleNamespace(topic="loan.events", partition=p) for p in partitions]
        return SimpleNamespace(
            client_id=client_id,
            host="/127.0.0.1",
            group_instance_id=None,
            assignment=SimpleNamespace(topic_partitions=tps),
        )

    members = [member("a@http://h1:1", [0, 2]), member("b", [1]), member("c", [])]
    assert owner_of(members, "loan.events", 2).http == "http://h1:1"
    assert owner_of(members, "loan.events", 1) == Owner("b", "/127.0.0.1", None, None)
    assert owner_of(members, "other", 1) is None and owner_of(members, "loan.events", 3) is None
    assert http_address_of(advertised_client_id("x@y", "h:9")) == "http://h:9"


def test_consumer_client_id_advertises_the_http_address() -> None:
    config = ServeConfig(bootstrap_servers="b:9092", model_dir=None, instance_id="s1")  # type: ignore[arg-type]
    assert "client.id" not in config.consumer_config()
    config.http_address = "10.1.2.3:9108"
    assert config.consumer_config()["client.id"] == "s1@http://10.1.2.3:9108"
    assert config.metrics_host == "127.0.0.1"


def test_decision_history_commits_rolls_back_and_is_bounded(bundle, policy, events) -> None:
    processor = PartitionProcessor(bundle, policy, 0)
    out = processor.process(encoded(events))
    assert out.changes and not processor.store.decisions  # not committed yet
    processor.store.rollback()
    assert not processor.store.decisions
    out = processor.process(encoded(events))
    processor.store.commit()
    assert list(processor.store.decisions) == out.changes[-DECISION_HISTORY:]
    store = processor.store
    store.record_changes(out.changes * (DECISION_HISTORY // len(out.changes) + 2))
    store.commit()
    assert len(store.decisions) == DECISION_HISTORY


def test_http_loans_requires_the_token_metrics_stay_open(bundle, policy, events) -> None:
    processor = single_partition(bundle, policy, events[:40])
    server = HealthServer(ScorerMetrics(), "127.0.0.1", 0, token="s3cret")
    server.lookup = lookup_over(processor)
    base = f"http://127.0.0.1:{server.port}"
    loan_id = events[0]["loan_id"]
    try:
        denied = requests.get(f"{base}/loans/{loan_id}", timeout=5)
        assert denied.status_code == 401
        assert denied.headers["WWW-Authenticate"].startswith("Bearer")
        assert "loan_id" not in denied.json()
        wrong = requests.get(
            f"{base}/loans/{loan_id}", headers={"Authorization": "Bearer nope"}, timeout=5
        )
        assert wrong.status_code == 401
        ok = requests.get(
            f"{base}/loans/{loan_id}", headers={"Authorization": "Bearer s3cret"}, timeout=5
        )
        assert ok.status_code == 200 and ok.json()["loan_id"] == loan_id
        assert ok.headers["Content-Type"] == "application/json"
        headers = {"Authorization": "Bearer s3cret"}
        assert requests.get(f"{base}/loans/L-nope", headers=headers, timeout=5).status_code == 404
        assert requests.get(f"{base}/metrics", timeout=5).status_code == 200
        exposition = requests.get(f"{base}/metrics", timeout=5).text
        for status, count in (("200", 1), ("401", 2), ("404", 1), ("503", 0)):
            line = f'loanrec_lookup_requests_total{{status="{status}"}} {count:.1f}'
            assert line in exposition, (line, exposition)
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 503  # open, not alive
    finally:
        server.close()


def test_explain_matches_the_batch_reference(bundle, policy, events) -> None:
    reference = score_events(events, bundle, policy, partitions=3)
    loan_id = reference.changes[-1].loan_id
    document = explain_loan(events, bundle, policy, loan_id, partitions=3)
    assert document is not None
    state = reference.loans[loan_id]
    assert (document["score"], document["strategy"]) == (state.risk_score, state.strategy)
    assert document["partition"] == partition_for(loan_id, 3)
    expected = [c.source_event_id for c in reference.changes if c.loan_id == loan_id]
    assert [d["source_event_id"] for d in document["decisions"]] == expected
    assert document["history"]["complete"] and document["view"] == "offline"
    last = [c for c in reference.changes if c.loan_id == loan_id][-1]
    assert [r["code"] for r in document["reasons"]] == [r.code for r in last.reasons]
    assert document["reasons"] and document["reasons"] == document["decisions"][-1]["reasons"]
    assert explain_loan(events, bundle, policy, "L-nope", partitions=3) is None


def test_explain_command_prints_the_document(trained_model, tmp_path, bundle, policy, events):
    from typer.testing import CliRunner

    from loan_recovery.cli import app
    from models.data.adapters import write_jsonl

    log = tmp_path / "events.jsonl"
    with open(log, "w") as handle:
        write_jsonl(events, handle)
    loan_id = events[0]["loan_id"]
    args = ["explain", "--model", str(trained_model), "--source", "events", "--input", str(log)]
    result = CliRunner().invoke(app, [*args, "--loan", loan_id, "--partitions", "3"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == explain_loan(events, bundle, policy, loan_id, 3)
    unknown = CliRunner().invoke(app, [*args, "--loan", "L-nope"])
    assert unknown.exit_code == 2 and "unknown loan 'L-nope'" in unknown.output
