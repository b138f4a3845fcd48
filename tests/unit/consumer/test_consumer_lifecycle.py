"""The loan lifecycle in the processor (issue #12 item 5, issue #14 item 1): recoveries after a
write-off, closed loans leaving state after an event-time retention (tombstones, restore,
rollback, parity with the batch reference at any batch size), and a corrected LoanOpened."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.partition_store import CHECKPOINT_KEY, NO_CLOCK
from consumer.processor import PartitionProcessor
from consumer.reference import score_events
from models.features.state import LoanState
from models.features.state_codec import LoanStateCodec
from models.serving.contracts import EarlyWarningModel
from models.serving.policy import Policy
from schemas import AvroSerde
from schemas.events import make_event

DAY = 86_400_000
RETENTION_DAYS = 10
ENCODE = AvroSerde("LoanEvent").encode
PROFILE = dict(
    age=40,
    gender="Female",
    employment_type="Salaried",
    monthly_income=5000.0,
    num_dependents=1,
    loan_amount=12000.0,
    loan_tenure_months=12,
    interest_rate=9.5,
    loan_type="Personal",
    collateral_value=0.0,
    monthly_emi=1050.0,
)


def opened(loan: str, day: int, eid: str | None = None, **over: float) -> dict:
    body = {**PROFILE, **over}
    return make_event(eid or f"open-{loan}", loan, f"B-{loan}", day * DAY, "LoanOpened", body)


def missed(loan: str, n: int, day: int) -> dict:
    body = dict(installment_due_date=day - 5, amount_due=1050.0, days_past_due=5, outstanding=1e4)
    return make_event(f"miss-{loan}-{n}", loan, f"B-{loan}", day * DAY, "PaymentMissed", body)


def paid(loan: str, n: int, day: int, amount: float = 1050.0) -> dict:
    body = dict(
        installment_due_date=day, amount_due=1050.0, amount_paid=amount, outstanding_after=9e3
    )
    return make_event(f"pay-{loan}-{n}", loan, f"B-{loan}", day * DAY, "PaymentReceived", body)


def closed(loan: str, day: int, reason: str) -> dict:
    body = {"reason": reason}
    return make_event(f"close-{loan}", loan, f"B-{loan}", day * DAY, "LoanClosed", body)


def records(events: list[dict]) -> list[tuple[int, bytes, bytes]]:
    return [(i, e["loan_id"].encode(), ENCODE(e)) for i, e in enumerate(events)]


def processor(bundle: EarlyWarningModel, policy: Policy, native: bool = True) -> PartitionProcessor:
    return PartitionProcessor(
        bundle, policy, 0, native=native, closed_retention_ms=RETENTION_DAYS * DAY
    )


def lifecycle_book() -> list[dict]:
    """W: written off at day 100, a recovery at 105 (its retention now runs from there) and
    one at 131, after it left; R: repaid at day 100, a payment after it (dead letter), gone
    at 112 and opened again at 140; K: moves the partition's clock."""
    return [
        opened("W", 0),
        opened("R", 0),
        opened("K", 0),
        missed("W", 1, 40),
        paid("R", 1, 40),
        closed("W", 100, "WRITTEN_OFF"),
        closed("R", 100, "REPAID"),
        paid("R", 2, 103),  # after a repaid close: dead letter
        paid("W", 2, 105, amount=300.0),  # a recovery: kept, not scored
        paid("K", 1, 112),  # clock 112: R (last event 100) has left; W (105) stays
        missed("W", 3, 113),  # W is closed and not expired: dead letter loan_closed
        paid("R", 3, 114),  # R has left state: unknown_loan
        paid("K", 2, 130),  # clock 130: W (105) has left too
        paid("W", 4, 131, amount=50.0),  # too late a recovery: unknown_loan
        opened("R", 140, eid="open-R-again"),  # the id can be opened again: a new loan
        paid("R", 4, 150),
    ]


def run(proc: PartitionProcessor, recs: list, batch: int, commit: bool = True) -> dict:
    out: dict[str, list] = {"changes": [], "alerts": [], "dead": [], "outcomes": []}
    for start in range(0, len(recs), batch):
        result = proc.process(recs[start : start + batch])
        out["changes"] += [(c.loan_id, c.source_event_id, c.new_strategy) for c in result.changes]
        out["alerts"] += [(a.loan_id, a.source_event_id) for a in result.alerts]
        out["dead"] += [(d.offset, d.reason, d.message) for d in result.dead_letters]
        out["outcomes"] += sorted(result.outcomes.items())
        if commit:
            proc.store.changelog_records(0)  # the stream sweeps at every commit
            proc.store.commit()
    return out


def test_recovery_after_write_off_is_state_only_and_other_events_are_dead_letters(
    bundle: EarlyWarningModel, policy: Policy
) -> None:
    proc = processor(bundle, policy)
    recs = records(lifecycle_book()[:9])
    head = proc.process(recs[:7])
    changelog_before = dict(proc.store.changelog_records(0))
    proc.store.commit()
    tail = proc.process(recs[7:])
    # R's payment after REPAID is a dead letter; W's payment after WRITTEN_OFF is a recovery:
    # applied (counted), never scored, so no decision, no StrategyChanged, no alert.
    assert [(d.offset, d.reason) for d in tail.dead_letters] == [(7, "loan_closed")]
    assert "after LoanClosed" in tail.dead_letters[0].message
    assert tail.outcomes[("PaymentReceived", "recovery")] == 1 and tail.n == 0
    assert tail.changes == [] and tail.alerts == []
    w = proc.store.states["W"]
    assert w.closed and w.written_off and w.recovered_after_write_off == 300.0
    assert w.strategy == changelog_state(changelog_before[b"W"]).strategy  # decision as at close
    assert head.outcomes[("LoanClosed", "scored")] == 2
    # The recovery is in the changelog: a restore keeps it.
    changelog = dict(proc.store.changelog_records(0))
    assert changelog_state(changelog[b"W"]).recovered_after_write_off == 300.0


@pytest.mark.parametrize("native", [True, False])
def test_recovered_money_is_final_at_commit_and_a_rollback_drops_it(
    bundle: EarlyWarningModel, policy: Policy, native: bool
) -> None:
    """What ``loanrec_recovered_after_write_off_total`` counts: ``commit()`` returns the money
    the unit recovered, so an aborted unit and its redo count W's 300 once."""
    proc = processor(bundle, policy, native)
    recs = records(lifecycle_book()[:9])
    proc.process(recs[:7])
    assert proc.store.commit() == 0.0  # the write-off itself recovers nothing
    proc.process(recs[7:])
    proc.store.rollback()  # the transaction aborted
    assert proc.store.commit() == 0.0 and proc.store.states["W"].recovered_after_write_off == 0
    proc.process(recs[7:])  # its redo
    assert proc.store.commit() == 300.0 and proc.store.commit() == 0.0


def changelog_state(value: bytes) -> LoanState:
    return LoanStateCodec().decode(value)


def test_closed_loans_leave_after_the_retention_with_tombstones_and_stay_gone_on_restore(
    bundle: EarlyWarningModel, policy: Policy
) -> None:
    proc = processor(bundle, policy)
    book = records(lifecycle_book())
    changelog: dict[bytes, bytes | None] = {}
    tombstones: list[bytes] = []
    dead: list[tuple[int, str]] = []
    for start in range(0, len(book), 3):  # a commit every three records
        result = proc.process(book[start : start + 3])
        dead += [(d.offset, d.reason) for d in result.dead_letters]
        for key, value in proc.store.changelog_records(0):
            changelog[key] = value
            if value is None:
                tombstones.append(key)
        proc.store.commit()
        if start == 9:  # clock 112 (K's payment): R left, W (recovered at 105) stays
            assert "R" not in proc.store.states and "W" in proc.store.states
    assert dead == [
        (7, "loan_closed"),
        (10, "loan_closed"),
        (11, "unknown_loan"),
        (13, "unknown_loan"),
    ]
    assert b"R" in tombstones and b"W" in tombstones
    assert set(proc.store.states) == {"K", "R"}  # R again: opened at day 140, a new loan
    assert proc.store.states["R"].closed is False
    assert proc.store.clock == 150 * DAY
    # Restore from the compacted changelog: the tombstoned loans do not come back, the clock
    # does (the checkpoint carries it), and a late event for W is still unknown.
    back = processor(bundle, policy)
    for key, value in changelog.items():
        back.store.restore(key, value)
    back.store.finish_restore()
    assert set(back.store.states) == {"K", "R"} and back.store.clock == 150 * DAY
    late = back.process(records([paid("W", 9, 151, amount=10.0)]))
    assert [d.reason for d in late.dead_letters] == ["unknown_loan"]


@pytest.mark.parametrize("batch", [1, 4, 100])
def test_expiry_is_the_same_at_any_batch_size_and_sweep_timing(
    bundle: EarlyWarningModel, policy: Policy, batch: int
) -> None:
    """The rule is a function of the partition's sequence: a closed loan past its retention is
    absent whether or not the sweep has removed it yet, so the stream (sweep per commit) and the
    batch reference (sweep per batch) decide alike."""
    recs = records(lifecycle_book())
    swept = run(processor(bundle, policy), recs, batch)
    unswept_proc = processor(bundle, policy)
    unswept = run(unswept_proc, recs, batch, commit=False)  # no sweep until the end
    assert {k: v for k, v in swept.items() if k != "outcomes"} == {
        k: v for k, v in unswept.items() if k != "outcomes"
    }
    assert sum(n for (_, o), n in unswept["outcomes"] if o == "recovery") == 1
    assert set(unswept_proc.store.states) == {"K", "R"}  # W and R went when next addressed
    # Up to K's payment at day 130 nothing addressed W again: it is logically gone (expired)
    # but still held until a sweep removes it.
    held = processor(bundle, policy)
    held.process(recs[:13])
    assert held.store.expired(held.store.states["W"], held.store.clock)
    assert held.store.sweep() == 1 and "W" not in held.store.states
    reference = score_events(
        lifecycle_book(), bundle, policy, partitions=1, closed_retention_ms=RETENTION_DAYS * DAY
    )
    assert set(reference.loans) == {"K", "R"}
    assert [(c.loan_id, c.source_event_id, c.new_strategy) for c in reference.changes] == swept[
        "changes"
    ]
    assert [(d.offset, d.reason, d.message) for d in reference.dead_letters] == swept["dead"]


def test_an_aborted_sweep_is_undone_and_done_again(
    bundle: EarlyWarningModel, policy: Policy
) -> None:
    proc = processor(bundle, policy)
    recs = records(lifecycle_book())
    proc.process(recs[:9])
    proc.store.changelog_records(0)
    proc.store.commit()
    proc.process(recs[9:10])  # clock 112: R is due
    records_out = dict(proc.store.changelog_records(0))
    assert records_out[b"R"] is None and "R" not in proc.store.states
    proc.store.rollback()  # the transaction aborted
    assert "R" in proc.store.states and proc.store.clock == 105 * DAY
    proc.process(recs[9:10])  # redone after the abort
    assert dict(proc.store.changelog_records(0))[b"R"] is None
    assert "R" not in proc.store.states


def test_a_v1_checkpoint_restores_without_a_clock(
    bundle: EarlyWarningModel, policy: Policy
) -> None:
    proc = processor(bundle, policy)
    v1 = AvroSerde("PartitionCheckpoint", reader_version=1)
    value = v1.encode(
        {
            "partition": 0,
            "clusterer_json": proc.store.segmenter.to_json(),
            "events_applied": 7,
            "updated_at": 0,
        }
    )
    proc.store.restore(CHECKPOINT_KEY.encode(), value)
    assert proc.store.events_applied == 7 and proc.store.clock == NO_CLOCK
    proc.process(records([opened("A", 3)]))
    checkpoint = dict(proc.store.changelog_records(0))[CHECKPOINT_KEY.encode()]
    assert AvroSerde("PartitionCheckpoint").decode(checkpoint)["event_time"] == 3 * DAY


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("same_id", [True, False])
def test_a_corrected_loan_opened_opens_a_loan_whose_first_was_rejected(
    bundle: EarlyWarningModel, policy: Policy, native: bool, same_id: bool
) -> None:
    """Issue #12: a LoanOpened with one invalid field used to hide the loan (every later
    event unknown_loan) only until a corrected LoanOpened arrives: nothing of the rejected one
    is kept, so the correction opens the loan, under a new event id or the same one."""
    proc = processor(bundle, policy, native=native)
    bad = opened("C", 0, loan_amount=-5.0)
    fixed = opened("C", 0, eid=None if same_id else "open-C-fixed")
    first = proc.process(records([bad, paid("C", 1, 30)]))
    assert [d.reason for d in first.dead_letters] == ["invalid_amount", "unknown_loan"]
    assert "C" not in proc.store.states
    second = proc.process(records([fixed, paid("C", 1, 30)]))
    assert second.dead_letters == [] and second.n == 2
    assert proc.store.states["C"].feature_dict()["loan_amount"] == 12000.0
    assert {c.loan_id for c in second.changes} == {"C"}  # its first decision


def test_the_retention_is_configured_and_a_negative_one_refused(tmp_path: Path) -> None:
    from consumer.config import ConfigError, ServeConfig

    assert ServeConfig("localhost:9092", tmp_path).closed_retention_days == 180.0
    for bad in (-1.0, float("nan")):
        with pytest.raises(ConfigError, match="--closed-retention-days"):
            ServeConfig("localhost:9092", tmp_path, closed_retention_days=bad)
