"""The loan lifecycle on a real broker (issue #12 item 5, issue #14 item 1): `serve` with a
short closed-loan retention turns closed loans into changelog tombstones once the partition's
event time passes their last event + the retention, a restart's restore does not bring them
back (the loans-in-state gauge counts only the live ones), a payment after a write-off is
applied as a recovery (no dead letter, no decision; its money counted in
`loanrec_recovered_after_write_off_total`), a corrected LoanOpened opens a loan
whose first one was rejected, and every output equals `loan-recovery score` with the same
retention. Small book, 20-day retention: well under a minute."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Message
from test_stream_eos import (
    FAST_GROUP,
    PARTITIONS,
    ROOT,
    Scorer,
    change_keys,
    encoded,
    produce,
    read_all,
    reference_keys,
)

from consumer.partition_store import CHECKPOINT_KEY
from models.features.state_codec import LoanStateCodec
from producer.admin import create_topics
from schemas.events import make_event
from schemas.topics import Topics

pytestmark = pytest.mark.integration
DAY = 86_400_000
RETENTION_DAYS = 20
LOANS = 80
CLOSED_LOANS = 24  # every third written off, with a recovery 5 days after
FIXED = "FIX-1"  # its first LoanOpened has a negative loan amount


def lifecycle_book() -> tuple[list[dict], set[str], dict[str, float]]:
    """A synthetic book in which CLOSED_LOANS loans close on the same day (their later events
    cut), a third of them WRITTEN_OFF with a recovery 5 days later, plus FIXED.

    `score` and `produce` replay a log loan by loan (``read_history``), and the partition's
    clock is the largest event time seen, so a loan's events can only use the retention when no
    loan before it on the partition ran past its close + retention (ARCHITECTURE.md §8): the
    closed loans are renamed ``A-...`` so they come first on their partitions, and close
    together. The open loans after them move every clock years on, and the closed ones leave.
    Returns (events, closed loan ids, recovered amount per written-off loan)."""
    from models.data.synthetic import generate_book

    _, events, _ = generate_book(LOANS, seed=13)
    start = min(e["occurred_at"] for e in events)
    close_at = start + 400 * DAY
    opened_at = {e["loan_id"]: e["occurred_at"] for e in events if e["body"][0].endswith("Opened")}
    early = sorted(loan for loan, at in opened_at.items() if at < close_at - 30 * DAY)
    renamed = {loan: f"A-{loan}" for loan in early[:CLOSED_LOANS]}
    kept = []
    for e in events:
        if e["loan_id"] in renamed:
            if e["occurred_at"] >= close_at:
                continue
            e = {**e, "loan_id": renamed[e["loan_id"]]}
        kept.append(e)
    recovered: dict[str, float] = {}
    for i, loan in enumerate(sorted(renamed.values())):
        at = close_at + i * 60_000
        reason = "WRITTEN_OFF" if i % 3 == 0 else "REPAID"
        kept.append(
            make_event(f"close-{loan}", loan, f"B-{loan}", at, "LoanClosed", {"reason": reason})
        )
        if reason == "WRITTEN_OFF":
            recovered[loan] = 100.0 + i
            body = dict(
                installment_due_date=at // DAY,
                amount_due=0.0,
                amount_paid=recovered[loan],
                outstanding_after=0.0,
            )
            kept.append(
                make_event(
                    f"recovery-{loan}", loan, f"B-{loan}", at + 5 * DAY, "PaymentReceived", body
                )
            )
    opening = next(e for e in kept if e["body"][0].endswith("LoanOpened"))
    profile = dict(opening["body"][1])
    at = start + 10 * DAY
    bad = {**profile, "loan_amount": -5.0}
    kept.append(make_event("fix-bad", FIXED, "B-FIX", at, "LoanOpened", bad))
    kept.append(make_event("fix-good", FIXED, "B-FIX", at + 1, "LoanOpened", profile))
    kept.sort(key=lambda e: (e["loan_id"], e["occurred_at"]))  # as read_history gives them
    return kept, set(renamed.values()), recovered


@pytest.fixture
def topics(bootstrap_servers: str, unique_name) -> Topics:
    app = unique_name("life")
    t = Topics(
        events=f"{app}.events",
        strategy_changes=f"{app}.changes",
        risk_alerts=f"{app}.alerts",
        dlq=f"{app}.dlq",
        app_id=app,
    )
    create_topics(bootstrap_servers, t, partitions=PARTITIONS)
    return t


@pytest.fixture
def started() -> Iterator[list[Scorer]]:
    scorers: list[Scorer] = []
    yield scorers
    for scorer in scorers:
        scorer.stop()


def _reason(message: Message) -> str:
    return dict(message.headers())["error.reason"].decode()


def test_closed_loans_expire_recoveries_apply_and_stream_equals_batch(
    bootstrap_servers: str,
    trained_model: Path,
    topics: Topics,
    started: list[Scorer],
    tmp_path: Path,
) -> None:
    from models.data.adapters import read_history, write_jsonl

    events, closed, recovered = lifecycle_book()
    log = tmp_path / "events.jsonl"
    with open(log, "w") as handle:
        write_jsonl(events, handle)
    events = read_history("events", log).events  # exactly what `score` reads
    retention = ["--closed-retention-days", str(RETENTION_DAYS)]
    # The batch reference runs while the stream does (two processes, one answer).
    reference = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loan_recovery.cli",
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
            "--topic",
            topics.events,
            *retention,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    properties = tmp_path / "client.properties"
    properties.write_text(FAST_GROUP)
    flags = {"--closed-retention-days": str(RETENTION_DAYS), "--exit-when-idle": "3"}

    def scorer(n: int) -> Scorer:
        started.append(
            Scorer(
                bootstrap_servers,
                trained_model,
                topics,
                "i0",
                properties,
                tmp_path / f"scorer-{n}.log",
                flags,
            )
        )
        return started[-1]

    produce(bootstrap_servers, topics.events, encoded(events))
    first = scorer(1)
    # Sampled while the scorer runs (it idle-exits 3 s after the input; the reference, a
    # process of its own, may still be scoring then): the open loans and FIXED stay in state,
    # and the recovered money is counted when its transaction commits (exactly the book's).
    want_seen = (LOANS - CLOSED_LOANS + 1, len(recovered), sum(recovered.values()))
    seen: list[tuple[float, float, float]] = []
    samples: dict = {}
    while first.process.poll() is None and seen[-1:] != [want_seen]:
        if first.samples():  # the HTTP server is up (and not yet gone)
            samples = first.samples() or samples
            in_state = first.total("loanrec_loans_in_state")
            recoveries = first.total("loanrec_events_total", outcome="recovery")
            money = first.total("loanrec_recovered_after_write_off_total")
            seen.append((in_state, recoveries, money))
        time.sleep(0.2)
    events_seen = {k: v for k, v in samples.items() if k[0] == "loanrec_events_total"}
    assert seen and seen[-1] == want_seen, (seen[-3:], events_seen)
    assert reference.wait(300) == 0, reference.stderr.read().decode()[-3000:]
    with open(tmp_path / "scores.csv") as handle:
        want_loans = {row["loan_id"] for row in csv.DictReader(handle)}
    with open(tmp_path / "changes.csv") as handle:
        want_changes = list(csv.DictReader(handle))
    # The reference holds the open loans and FIXED; every closed loan has left (their close
    # is years before the book's end), and FIXED was opened by its corrected LoanOpened.
    assert FIXED in want_loans and not want_loans & closed
    assert len(want_loans) == want_seen[0]
    assert first.wait_exit(60) == 0
    got, _ = change_keys(bootstrap_servers, topics, len(want_changes))
    assert got == reference_keys(want_changes)  # stream = batch, none missing or doubled
    assert any(c["loan_id"] == FIXED for c in want_changes)
    # Dead letters: only the rejected opening; the recoveries are not among them.
    dead = read_all(bootstrap_servers, topics.dlq, 1, 10)
    assert [(m.key(), _reason(m)) for m in dead] == [(FIXED.encode(), "invalid_amount")]
    # The changelog: each closed loan's last record is a tombstone (a recovery and the sweep
    # often share a transaction, so the recovered state itself is checked by the unit tests).
    last: dict[bytes, bytes | None] = {}
    for m in read_all(bootstrap_servers, topics.changelog, 1, 15):
        if m.key() != CHECKPOINT_KEY.encode():
            last[m.key()] = m.value()
    assert {k.decode() for k, v in last.items() if v is None} == closed
    assert all(LoanStateCodec().decode(v).loan_id not in closed for v in last.values() if v)
    # A late event for a loan that left, then a restart: the restore brings none of the
    # tombstoned loans back, and the late event is for no loan in state.
    late = next(iter(sorted(recovered)))
    body = dict(installment_due_date=0, amount_due=0.0, amount_paid=1.0, outstanding_after=0.0)
    late_event = make_event("late-1", late, "B", events[-1]["occurred_at"], "PaymentReceived", body)
    produce(bootstrap_servers, topics.events, encoded([late_event]))
    second = scorer(2)
    second.wait_for(
        lambda: second.total("loanrec_events_total", outcome="dlq") == 1,
        60,
        "the late event to be dead-lettered",
    )
    second.wait_for(
        lambda: second.total("loanrec_loans_in_state") == len(want_loans),
        10,
        "the gauge after the restore",
    )
    assert second.wait_exit(60) == 0
    dead = read_all(bootstrap_servers, topics.dlq, 2, 10)
    assert sorted((m.key(), _reason(m)) for m in dead) == sorted(
        [(FIXED.encode(), "invalid_amount"), (late.encode(), "unknown_loan")]
    )
