"""Idempotency for any replay (ARCHITECTURE.md §8), against the real broker and the public CLI.

A book is copied to the input topic the way an outbox or CDC producer re-sends after a
restart -- same partition, key and bytes: 3 % of the records are sent again 1-20 records
later, then the whole topic once more. `serve` (exactly-once) must end every loan on the
strategy `loan-recovery score` gives for the clean book, emit each StrategyChanged once, and
count every re-sent record as a duplicate (none dead-lettered). Before the watermark and
fingerprint, a loan remembered its last 4 ids: 365 of 3,000 loans ended on another strategy.
"""

from __future__ import annotations

import csv
import random
from collections import Counter
from pathlib import Path

import pytest
from test_stream_eos import FAST_GROUP, PARTITIONS, Scorer, _cli, encoded, produce, read_all

from producer.admin import create_topics
from schemas import AvroSerde
from schemas.topics import Topics

pytestmark = pytest.mark.integration
LOANS = 500
RESENT = 0.03


def resent_like_an_outbox(records: list, rng: random.Random) -> tuple[list, int]:
    """``records``, with 3 % of them sent again 1-20 records later, then all once more;
    returns (the sequence, how many records are re-sends)."""
    late: dict[int, list] = {}
    for i, record in enumerate(records):
        if rng.random() < RESENT:
            late.setdefault(i + rng.randint(1, 20), []).append(record)
    mixed: list = []
    for i, record in enumerate(records):
        mixed.append(record)
        mixed += late.pop(i, [])
    for rest in late.values():  # re-sends due past the end
        mixed += rest
    return mixed + records, len(mixed)  # the 3 % and every record of the second pass


def test_a_resent_book_scores_like_the_clean_book(
    bootstrap_servers: str, trained_model: Path, tmp_path: Path, unique_name
) -> None:
    from models.data.adapters import read_history, write_jsonl
    from models.data.synthetic import generate_book

    _, events, _ = generate_book(LOANS, seed=12)
    log = tmp_path / "events.jsonl"
    with open(log, "w") as handle:
        write_jsonl(events, handle)
    events = list(read_history("events", log).events)  # exactly what `score` reads
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
    with open(tmp_path / "scores.csv") as handle:
        expected = {row["loan_id"]: row["strategy"] for row in csv.DictReader(handle)}
    with open(tmp_path / "changes.csv") as handle:
        expected_changes = Counter(
            (c["loan_id"], c["source_event_id"], c["new_strategy"]) for c in csv.DictReader(handle)
        )
    assert len(expected) == LOANS and expected_changes

    records, resent = resent_like_an_outbox(encoded(events), random.Random(12))
    assert resent > len(events) and resent - len(events) > 0.02 * len(events)
    app = unique_name("replay")
    topics = Topics(
        events=f"{app}.events",
        strategy_changes=f"{app}.changes",
        risk_alerts=f"{app}.alerts",
        dlq=f"{app}.dlq",
        app_id=app,
    )
    create_topics(bootstrap_servers, topics, partitions=PARTITIONS)
    produce(bootstrap_servers, topics.events, records)
    properties = tmp_path / "client.properties"
    properties.write_text(FAST_GROUP)
    scorer = Scorer(
        bootstrap_servers, trained_model, topics, "i0", properties, tmp_path / "s.log", {}
    )
    try:
        scorer.wait_for(
            lambda: scorer.total("loanrec_events_total") >= len(records), 240, "every record"
        )
        assert scorer.total("loanrec_events_total", outcome="scored") == len(events)
        assert scorer.total("loanrec_events_total", outcome="duplicate") == resent
        assert scorer.total("loanrec_events_total", outcome="dlq") == 0
        assert scorer.wait_exit() == 0, scorer.log_text()[-3000:]
    finally:
        scorer.stop()

    serde = AvroSerde("StrategyChanged")
    changes = [
        serde.decode(m.value())
        for m in read_all(
            bootstrap_servers, topics.strategy_changes, sum(expected_changes.values())
        )
    ]
    got = Counter((c["loan_id"], c["source_event_id"], c["new_strategy"]) for c in changes)
    doubled = {k: n for k, n in got.items() if n > 1}
    assert not doubled, (
        f"{len(doubled)} StrategyChanged records duplicated, e.g. {list(doubled)[:3]}"
    )
    assert got == expected_changes
    final: dict[str, str] = {}
    for c in sorted(changes, key=lambda c: c["source_offset"]):  # a loan is on one partition
        final[c["loan_id"]] = c["new_strategy"]
    differ = [loan for loan, strategy in expected.items() if final.get(loan, strategy) != strategy]
    assert not differ, f"{len(differ)} of {LOANS} loans end on another strategy, e.g. {differ[:3]}"
