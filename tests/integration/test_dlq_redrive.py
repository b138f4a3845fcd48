"""`loan-recovery dlq redrive` after a fix: events dead-lettered as `unknown_loan` (their
LoanOpened was late) are scored once it arrived, exactly like the batch reference scores what
the input topic then holds; a second redrive sends nothing (DESIGN.md §8)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from test_stream_crash import config, new_topics
from test_stream_eos import (
    PARTITIONS,
    assert_same_changes,
    change_keys,
    encoded,
    produce,
    read_all,
)

from consumer.app import ScorerApp
from consumer.reference import score_events
from schemas import AvroSerde

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def redrive_cli(bootstrap: str, topics, *extra: str) -> dict:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "loan_recovery.cli",
            "dlq",
            "redrive",
            "--bootstrap-servers",
            bootstrap,
            "--app-id",
            topics.app_id,
            "--input-topic",
            topics.events,
            "--dlq-topic",
            topics.dlq,
            "--json",
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_redriven_dead_letters_score_like_the_batch_reference_once(
    bootstrap_servers: str, trained_model: Path, unique_name
) -> None:
    from models.data.synthetic import generate_book
    from models.serving.bundle import ModelBundle
    from models.serving.policy import Policy

    bundle, policy = ModelBundle.load(trained_model), Policy.load(None)
    topics = new_topics(bootstrap_servers, unique_name("redrive"))
    book = generate_book(80, seed=23)[1]
    late = sorted({e["loan_id"] for e in book})[:8]
    held = [e for e in book if e["loan_id"] in late and e["body"][0].endswith("LoanOpened")]
    first = [e for e in book if e not in held]
    produce(bootstrap_servers, topics.events, encoded(first))
    ScorerApp(config(bootstrap_servers, trained_model, topics, "redrive"), bundle, policy).run()
    orphans = sum(1 for e in first if e["loan_id"] in late)
    dead = read_all(bootstrap_servers, topics.dlq, orphans, 30)
    assert len(dead) == orphans
    assert {dict(m.headers())["error.reason"] for m in dead} == {b"unknown_loan"}

    produce(bootstrap_servers, topics.events, encoded(held))  # the fix: the loans open
    summary = redrive_cli(bootstrap_servers, topics, "--reason", "unknown_loan")
    assert summary["redriven"] == orphans and summary["by_reason"] == {"unknown_loan": orphans}
    ScorerApp(config(bootstrap_servers, trained_model, topics, "redrive"), bundle, policy).run()

    # The reference: what the input topic now holds, partition by partition, batch-scored.
    serde = AvroSerde("LoanEvent")
    by_partition: dict[int, list] = {}
    for m in read_all(bootstrap_servers, topics.events, len(first) + len(held) + orphans, 20):
        by_partition.setdefault(m.partition(), []).append((m.offset(), serde.decode(m.value())))
    now_in_input = [e for p in sorted(by_partition) for _, e in sorted(by_partition[p])]
    assert len(now_in_input) == len(first) + len(held) + orphans
    reference = score_events(now_in_input, bundle, policy, PARTITIONS, topics.events)
    # Only the originals are dead letters there; their redriven copies were applied.
    assert sum(d.reason == "unknown_loan" for d in reference.dead_letters) == orphans
    want = Counter((c.loan_id, c.source_event_id, c.new_strategy) for c in reference.changes)
    got, records = change_keys(bootstrap_servers, topics, sum(want.values()))
    assert_same_changes(got, want)
    assert {r["loan_id"] for r in records} >= set(late)  # the late loans were decided

    again = redrive_cli(bootstrap_servers, topics, "--reason", "unknown_loan")
    assert again["redriven"] == 0 and again["read"] == 0
