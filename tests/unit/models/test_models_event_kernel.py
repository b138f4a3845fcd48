"""The compiled event kernel (``models.features._event_kernel``) against the Python reference
``PartitionProcessor``: the same input -- valid, duplicate, corrupt and adversarial records,
in the same batches -- must give the same states, feature rows, dead letters, outcomes,
outputs and changelog, bit for bit."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.processor import PartitionProcessor, model_row
from schemas import AvroSerde
from schemas.events import make_event

DAY = 86_400_000
ENCODE = AvroSerde("LoanEvent").encode


def test_the_kernel_is_built() -> None:
    """CI has a C compiler: a scorer silently on the (4x slower) reference path is a bug."""
    from models.features import _event_kernel

    assert _event_kernel.EventKernel is not None


def pair(
    bundle, policy, retention_ms: float = 180 * DAY
) -> tuple[PartitionProcessor, PartitionProcessor]:
    native = PartitionProcessor(bundle, policy, 0, native=True, closed_retention_ms=retention_ms)
    reference = PartitionProcessor(
        bundle, policy, 0, native=False, closed_retention_ms=retention_ms
    )
    assert native._kernel is not None and reference._kernel is None
    return native, reference


def run_both(
    bundle,
    policy,
    records: list[tuple[int, bytes | None, bytes | None]],
    batch: int,
    retention_ms: float = 180 * DAY,
) -> int:
    """Process ``records`` through both paths, comparing everything after every batch
    (changelog records too: they include the sweep's tombstones); returns how many records the
    kernel applied itself."""
    native, reference = pair(bundle, policy, retention_ms)
    kernel_applied = 0
    for start in range(0, len(records), batch):
        chunk = records[start : start + batch]
        a, b = native.process(chunk), reference.process(chunk)
        kernel_applied += int(a.counts.sum())
        assert a.n == b.n
        assert a.rows().tobytes() == b.rows().tobytes()
        assert a.occurred_at.tolist() == b.occurred_at.tolist()
        assert a.facts[: a.n].tobytes() == b.facts[: b.n].tobytes()  # reported income too
        assert a.offsets == b.offsets and a.values == b.values
        assert [s.loan_id for s in a.states] == [s.loan_id for s in b.states]
        assert a.outcomes == b.outcomes
        assert dead(a) == dead(b)
        assert a.changes == b.changes and a.alerts == b.alerts
        assert native.store.changelog_records(1) == reference.store.changelog_records(1)
        assert native.store.events_applied == reference.store.events_applied
        native.store.commit()
        reference.store.commit()
    assert native.store.states.keys() == reference.store.states.keys()
    for loan_id, state in native.store.states.items():
        other = reference.store.states[loan_id]
        assert state.tobytes() == other.tobytes(), loan_id
        assert (
            state.loan_id,
            state.borrower_id,
            state.strategy,
            state.risk_tier,
            state.segment,
        ) == (other.loan_id, other.borrower_id, other.strategy, other.risk_tier, other.segment)
        assert (state.guard is None) == (other.guard is None), loan_id
        if state.guard is not None:
            assert state.guard.tobytes() == other.guard.tobytes(), loan_id
            assert state.guard.time_zone == other.guard.time_zone
    assert native.store.segmenter.to_json() == reference.store.segmenter.to_json()
    return kernel_applied


def dead(result) -> list[tuple]:
    return [(d.offset, d.reason, d.message, d.event_type) for d in result.dead_letters]


def book_records(
    loans: int, seed: int, guardrails: bool = False, writer_version: int | None = None
) -> list[tuple[int, bytes, bytes]]:
    """A synthetic book's records; ``writer_version``: encoded by that LoanEvent version (an
    upstream producer not yet upgraded; fields it lacks are left out), default the newest."""
    from models.data.synthetic import generate_book, with_guardrail_events

    events = generate_book(loans, seed=seed)[1]
    if guardrails:  # LoanEvent v2: time zones, call attempts, conversations, holds
        events = with_guardrail_events(events, seed=seed, hold_rate=0.5)
    events.sort(key=lambda e: e["occurred_at"])
    encode = (
        ENCODE
        if writer_version is None
        else AvroSerde("LoanEvent", writer_version=writer_version).encode
    )
    return [(i, e["loan_id"].encode(), encode(e)) for i, e in enumerate(events)]


@pytest.mark.parametrize("batch", [1, 7, 500])
def test_valid_stream_is_identical(bundle, policy, batch: int) -> None:
    records = book_records(40, seed=21)
    assert len(records) > 500
    kernel_applied = run_both(bundle, policy, records, batch)
    assert kernel_applied == len(records)  # a plain valid stream never needs the reference


@pytest.mark.parametrize("version", [1, 2, 3])
def test_older_writer_versions_go_through_the_kernel_identically(bundle, policy, version) -> None:
    """v1, v2 and v3 records are read by the kernel with v4's defaults for the fields they
    lack, exactly as the reference reads them through fastavro's schema resolution (before,
    every v1/v2 record fell back: ~4x the CPU per event)."""
    records = book_records(40, seed=23, writer_version=version)
    older = AvroSerde("LoanEvent", writer_version=version).writer.fingerprint
    assert older != AvroSerde("LoanEvent").writer.fingerprint
    assert all(value[2:10] == older for _, _, value in records)
    assert run_both(bundle, policy, records, 64) == len(records)
    guarded = book_records(40, seed=24, guardrails=True, writer_version=version)
    applied = run_both(bundle, policy, guarded, 64)
    # v1 cannot carry holds, time zones or channels: every record goes through the kernel.
    assert applied == len(guarded) if version == 1 else len(guarded) // 2 < applied


def income_reports(events: list[dict], seed: int, rate: float = 0.5) -> list[dict]:
    """``events`` (per-loan order) with, after a share ``rate`` of missed payments, a contact
    with a conversation that carries an income report (LoanEvent v4) of 0.2-1.2 x the
    origination income, from one of the four sources, by call, SMS or an unnamed channel."""
    rng = random.Random(seed)
    sources = ("BORROWER_DISCLOSURE", "INCOME_VERIFICATION", "BUREAU_REFRESH", "OTHER")
    income: dict[str, float] = {}
    out: list[dict] = []
    for event in events:
        out.append(event)
        body_type, body = event["body"]
        if body_type.endswith("LoanOpened"):
            income[event["loan_id"]] = body["monthly_income"]
        elif body_type.endswith("PaymentMissed") and rng.random() < rate:
            report = {
                "monthly_income": income[event["loan_id"]] * rng.uniform(0.2, 1.2),
                "source": rng.choice(sources),
            }
            contact = dict(
                method="CALLS",
                outcome="OTHER",
                legal_action=False,
                channel=rng.choice((None, "CALL", "SMS")),
                conversation=True,
                hold=None,
                income_report=report,
            )
            out.append(
                make_event(
                    f"{event['event_id']}-income",
                    event["loan_id"],
                    event["borrower_id"],
                    event["occurred_at"] + 3_600_000,
                    "CollectionAttempt",
                    contact,
                )
            )
    return out


def test_v4_income_reports_go_through_the_kernel_identically(bundle, policy) -> None:
    """LoanEvent v4's income report is applied by the kernel itself (no fallback), bit for bit
    as the reference: the same states (``reported_income`` included) and rows. Its contacts
    name a channel too: before this test, a CollectionAttempt with a channel always fell back
    (the kernel compared the decoded union branch with 2, the encoded byte, not 1)."""
    from models.data.synthetic import generate_book
    from models.features.state import REPORTED_INCOME

    events = income_reports(generate_book(40, seed=25)[1], seed=25)
    reports = [e for e in events if e["body"][1].get("income_report")]
    assert len(reports) > 20
    events.sort(key=lambda e: e["occurred_at"])
    records = [(i, e["loan_id"].encode(), ENCODE(e)) for i, e in enumerate(events)]
    assert AvroSerde("LoanEvent").writer.version == 4
    for batch in (1, 64):
        assert run_both(bundle, policy, records, batch) == len(records)
    native = PartitionProcessor(bundle, policy, 0, native=True)
    native.process(records)
    latest = {e["loan_id"]: e["body"][1]["income_report"]["monthly_income"] for e in reports}
    for loan, state in native.store.states.items():
        assert state.reported_income == latest.get(loan)  # None: never reported
        if loan not in latest:
            assert state[REPORTED_INCOME] != state[REPORTED_INCOME]  # NaN


def test_bad_income_reports_are_refused_alike(bundle, policy) -> None:
    """A negative, infinite or NaN reported income is the reference's invalid_amount (the
    kernel hands it back); a report on a hold event is applied by the reference; an out of
    range IncomeSource byte falls back too. The refused contact changes nothing."""
    t0 = 1_700_000_000_000
    inf, nan = float("inf"), float("nan")

    def report(n: int, at: int, income: float, hold: dict | None = None) -> dict:
        body = dict(
            method="CALLS",
            outcome="OTHER",
            legal_action=False,
            channel=None,
            conversation=hold is None,
            hold=hold,
            income_report={"monthly_income": income, "source": "BORROWER_DISCLOSURE"},
        )
        return make_event(f"inc-R-{n}", "R", "B-R", at, "CollectionAttempt", body)

    hold = {"action": "SET", "reason": "DISPUTE"}
    events = [
        opened("R", t0),
        missed("R", 1, t0 + 31 * DAY),
        report(2, t0 + 32 * DAY, -1.0),  # invalid_amount
        report(3, t0 + 33 * DAY, inf),
        report(4, t0 + 34 * DAY, nan),
        report(5, t0 + 35 * DAY, 0.0),  # job loss: no income, a valid report
        report(6, t0 + 36 * DAY, 1800.0, hold=hold),  # with a hold: the reference applies it
        report(7, t0 + 37 * DAY, 2100.0),
    ]
    records = [(i, b"R", ENCODE(e)) for i, e in enumerate(events)]
    good = records[-1][2]
    # The v4 body ends with: ... hold null (0), income_report branch 1 (2), 8 bytes, source.
    assert good[-11] == 0 and good[-10] == 2
    records.append((len(records), b"R", good[:-1] + bytes([8])))  # IncomeSource index 4
    applied = run_both(bundle, policy, records, batch=3)
    assert applied == 4  # opening, miss, the 0.0 report and the last one: not the rest
    native, reference = pair(bundle, policy)
    results = native.process(records[:3]), reference.process(records[:3])
    assert dead(results[0]) == dead(results[1])
    assert [d[1] for d in dead(results[0])] == ["invalid_amount"]
    state = native.store.states["R"]
    assert state.reported_income is None and state.feature_dict()["collection_attempts"] == 0.0
    native.process(records[3:])
    assert native.store.states["R"].reported_income == 2100.0


@pytest.mark.parametrize("batch", [1, 64])
def test_a_stream_with_guardrail_events_is_identical(bundle, policy, batch: int) -> None:
    """Call attempts and conversations go through the kernel (it calls the reference's own
    ``LoanState.track``); holds and time zones fall back; states, guards, outputs and the
    guardrails' decisions (``changes``) are the same."""
    records = book_records(40, seed=22, guardrails=True)
    kernel_applied = run_both(bundle, policy, records, batch)
    assert len(records) // 2 < kernel_applied < len(records)


def opened(loan: str, at: int, **changes) -> dict:
    body = dict(
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
    body.update(changes)
    return make_event(f"open-{loan}", loan, f"B-{loan}", at, "LoanOpened", body)


def missed(loan: str, n: int, at: int, **changes) -> dict:
    body = dict(
        installment_due_date=at // DAY - 1, amount_due=1050.0, days_past_due=10, outstanding=12000.0
    )
    body.update(changes)
    return make_event(f"miss-{loan}-{n}", loan, f"B-{loan}", at, "PaymentMissed", body)


def paid(loan: str, n: int, at: int, **changes) -> dict:
    body = dict(
        installment_due_date=at // DAY,
        amount_due=1050.0,
        amount_paid=1050.0,
        outstanding_after=11000.0,
    )
    body.update(changes)
    return make_event(f"pay-{loan}-{n}", loan, f"B-{loan}", at, "PaymentReceived", body)


def collection(loan: str, n: int, at: int, method: str = "CALLS", legal: bool = False) -> dict:
    body = dict(method=method, outcome="NO_CONTACT", legal_action=legal)
    return make_event(f"coll-{loan}-{n}", loan, f"B-{loan}", at, "CollectionAttempt", body)


def closed(loan: str, at: int, reason: str = "REPAID") -> dict:
    return make_event(f"close-{loan}", loan, f"B-{loan}", at, "LoanClosed", {"reason": reason})


def adversarial_events() -> list[dict]:
    """Every refusal rule of models.features.state, each next to events that are fine."""
    t0 = 1_700_000_000_000
    inf, nan = float("inf"), float("nan")
    return [
        opened("A", t0),
        paid("A", 1, t0 + 30 * DAY),
        paid("A", 1, t0 + 30 * DAY),  # dup
        missed("A", 2, t0 + 60 * DAY, days_past_due=-1),  # invalid_days_past_due
        missed("A", 3, t0 + 60 * DAY, amount_due=-5.0),  # invalid_amount
        missed("A", 4, t0 + 60 * DAY, outstanding=nan),
        paid("A", 5, t0 + 61 * DAY, amount_paid=inf),
        paid("A", 6, t0 + 61 * DAY, installment_due_date=0),  # impossible_date
        missed("A", 7, t0 + 62 * DAY, days_past_due=40_000),
        missed("A", 8, t0 + 63 * DAY, outstanding=1e300),  # beyond float32 -> NaN feature
        paid("A", 9, t0 + 64 * DAY, amount_paid=0.0, installment_due_date=(t0 // DAY) + 63),
        paid("A", 10, t0 - DAY),  # before_opening
        opened("A", t0 + 65 * DAY),  # already_opened
        collection("A", 11, t0 + 66 * DAY, "LEGAL_NOTICE", legal=True),
        collection("A", 12, t0 + 67 * DAY, "OTHER"),
        missed("A", 15, t0 + 66 * DAY),  # out_of_order: older than the watermark, never applied
        paid("A", 1, t0 + 30 * DAY),  # a deep replay: duplicate, however old
        opened("A", t0),  # the opening, replayed: duplicate
        collection("A", 16, t0 + 67 * DAY),  # a second id at the watermark: applied
        collection("A", 16, t0 + 67 * DAY),  # ... and its replay at the watermark: duplicate
        collection("A", 17, t0 + 67 * DAY),  # a third: applied, the fingerprint takes over
        collection("A", 12, t0 + 67 * DAY, "OTHER"),  # duplicate found by the fingerprint
        collection("A", 18, t0 + 67 * DAY),  # a fourth at the watermark: applied
        collection("A", 19, t0 + 67 * DAY + 1),  # a new watermark: exact hashes again
        collection("A", 19, t0 + 67 * DAY + 1),  # duplicate at the watermark
        missed("A", 4, t0 + 60 * DAY, outstanding=nan),  # refused before, late now: out_of_order
        paid("A", 13, t0 + 68 * DAY, amount_paid=-0.0, outstanding_after=-0.0),
        closed("A", t0 + 69 * DAY),
        paid("A", 14, t0 + 70 * DAY),  # loan_closed
        paid("ghost", 1, t0),  # unknown_loan
        opened(
            "B",
            t0,
            age=0,
            num_dependents=-1,
            loan_tenure_months=0,
            monthly_income=nan,
            loan_amount=0.0,
            gender="f",
            employment_type="astronaut",
            loan_type="",
        ),
        missed("B", 1, t0 + 31 * DAY, amount_due=0.0),
        paid("B", 2, t0 + 32 * DAY),
        opened("C", t0, monthly_income=-1.0),  # invalid_amount at opening
        opened("D", t0, collateral_value=inf),
        opened("E", t0, monthly_income=1e-300, monthly_emi=1e300),  # inf ratio -> NaN
        missed("E", 1, t0 + 31 * DAY),
        opened("F", -5 * DAY, gender="Männlich"),
        missed("F", 1, 40 * DAY),
        opened("G", t0, loan_amount=3e38, collateral_value=3e38),
        missed("G", 1, t0 + 31 * DAY, outstanding=3e38),
    ]


def corruptions(value: bytes, rng: random.Random) -> list[bytes]:
    """Broken variants of one encoded record."""
    flipped = bytearray(value)
    flipped[rng.randrange(10, len(value))] ^= 1 << rng.randrange(8)
    return [
        value[:-1],
        value + b"\x00",
        value[:9],
        b"",
        value[:2] + b"\x00" * 8 + value[10:],
        bytes(flipped),
        value[:10] + b"\xff" * 12,
        value[:10] + b"\x02\xff\xfe" + value[13:],
    ]


def test_adversarial_stream_is_identical(bundle, policy) -> None:
    events = adversarial_events()
    records: list[tuple[int, bytes | None, bytes | None]] = [
        (i, e["loan_id"].encode(), ENCODE(e)) for i, e in enumerate(events)
    ]
    rng = random.Random(3)
    offset = len(records)
    for _, key, value in list(records)[:12]:
        for broken in corruptions(value, rng):  # type: ignore[arg-type]
            records.append((offset, key, broken))
            offset += 1
    records += [
        (offset, b"wrong-key", records[0][2]),
        (offset + 1, None, records[1][2]),
        (offset + 2, b"A", None),
    ]
    assert run_both(bundle, policy, records, batch=5) > 10
    run_both(bundle, policy, records, batch=len(records))


def test_late_events_and_deep_replays_are_decided_alike(bundle, policy) -> None:
    """The idempotency rule (ARCHITECTURE.md §8) on both paths: the two late events of
    ``adversarial_events`` are dead-lettered as out_of_order, the replays counted as duplicates
    (none dead-lettered), and the kernel itself applies the events at a shared instant."""
    records = [(i, e["loan_id"].encode(), ENCODE(e)) for i, e in enumerate(adversarial_events())]
    native, reference = pair(bundle, policy)
    a, b = native.process(records), reference.process(records)
    assert dead(a) == dead(b)
    late = [d for d in a.dead_letters if d.reason == "out_of_order"]
    assert [d.offset for d in late] == [15, 25]
    assert sum(n for (_, outcome), n in a.outcomes.items() if outcome == "duplicate") == 6
    assert a.outcomes == b.outcomes and a.rows().tobytes() == b.rows().tobytes()
    assert int(a.counts.sum()) > 0


def lifecycle_events() -> list[dict]:
    """Every close reason, recoveries after a write-off, events after other closes, closed
    loans leaving after a 10-day retention, and an id opened again after it left."""
    t0 = 1_700_000_000_000
    events = [opened(loan, t0) for loan in "PQRSTU"]
    events += [missed("P", 1, t0 + 31 * DAY), paid("Q", 1, t0 + 31 * DAY)]
    events += [
        closed("P", t0 + 40 * DAY, "WRITTEN_OFF"),
        closed("Q", t0 + 40 * DAY, "REPAID"),
        closed("R", t0 + 40 * DAY, "SETTLED"),
        closed("S", t0 + 41 * DAY, "OTHER"),
        paid("P", 2, t0 + 42 * DAY, amount_paid=125.0),  # a recovery
        paid("P", 2, t0 + 42 * DAY, amount_paid=125.0),  # its replay: duplicate
        paid("P", 3, t0 + 43 * DAY, amount_paid=-1.0),  # invalid_amount, even as a recovery
        missed("P", 4, t0 + 44 * DAY),  # loan_closed
        paid("Q", 2, t0 + 44 * DAY),  # loan_closed (repaid)
        collection("T", 1, t0 + 45 * DAY),
        paid("P", 5, t0 + 48 * DAY, amount_paid=75.5),  # a recovery, extends its retention
        paid("U", 1, t0 + 55 * DAY),  # clock: Q, R, S have left; P (48) stays
        paid("Q", 3, t0 + 56 * DAY),  # unknown_loan
        opened("R", t0 + 56 * DAY, loan_amount=5000.0),  # re-opened: a new loan
        missed("R", 1, t0 + 87 * DAY),
        paid("P", 6, t0 + 90 * DAY, amount_paid=10.0),  # too late: unknown_loan
    ]
    return events


@pytest.mark.parametrize("batch", [1, 3, 100])
def test_a_lifecycle_stream_is_identical(bundle, policy, batch: int) -> None:
    """Recoveries and expiry on both paths: the kernel hands every event on a closed loan to
    the reference, applies the rest itself, and the states (recovered amounts in the closed
    double), dead letters, outcomes and changelog (tombstones) are the same."""
    records = [(i, e["loan_id"].encode(), ENCODE(e)) for i, e in enumerate(lifecycle_events())]
    assert run_both(bundle, policy, records, batch, retention_ms=10 * DAY) > len(records) // 2
    native, reference = pair(bundle, policy, 10 * DAY)
    a, b = native.process(records), reference.process(records)
    assert dead(a) == dead(b)
    assert [(d.offset, d.reason) for d in a.dead_letters] == [
        (14, "invalid_amount"),
        (15, "loan_closed"),
        (16, "loan_closed"),
        (20, "unknown_loan"),
        (23, "unknown_loan"),
    ]
    assert (
        a.outcomes[("PaymentReceived", "recovery")]
        == 2
        == b.outcomes[("PaymentReceived", "recovery")]
    )
    assert int(a.counts[4]) == 4  # the kernel applied the four closes itself
    native.store.sweep()
    assert set(native.store.states) == {"R", "T", "U"}
    native, reference = pair(bundle, policy, 10 * DAY)
    native.process(records[:19]), reference.process(records[:19])  # before P left
    p_native, p_reference = native.store.states["P"], reference.store.states["P"]
    assert p_native.tobytes() == p_reference.tobytes()
    assert p_native.written_off and p_native.recovered_after_write_off == 200.5


def test_enum_and_boolean_bytes_out_of_range_fall_back(bundle, policy) -> None:
    t0 = 1_700_000_000_000
    base = [opened("H", t0), collection("H", 1, t0 + DAY, "OTHER")]
    good = ENCODE(base[1])
    # The body ends with: method index, outcome index, legal_action byte.
    variants = [
        good[:-3] + bytes([b1, b2, b3])
        for b1, b2, b3 in [(8, 0, 0), (2, 10, 0), (2, 0, 2), (2, 0, 1), (1, 8, 0)]
    ]
    records = [(0, b"H", ENCODE(base[0]))] + [(i + 1, b"H", v) for i, v in enumerate(variants)]
    run_both(bundle, policy, records, batch=3)


ODD_LOAN_IDS = ["__partition__", "_x", "x" * 5000, "L" * 65, "Lé", "Ł1", "", "-L1", "L 1", "L/1"]
ODD_LOAN_IDS += ["L1\n", "L\x00", "\u00e9t\u00e9"]
FINE_LOAN_IDS = ["L" * 64, "9", "LN_2024:0042.a-b", "Z"]


def test_loan_ids_are_validated_alike(bundle, policy) -> None:
    """models.features.loan_id's rule: the kernel refuses what the reference dead-letters as
    invalid_loan_id, and applies every valid id itself."""
    t0 = 1_700_000_000_000
    events = []
    for loan in ODD_LOAN_IDS + FINE_LOAN_IDS:
        events += [opened(loan, t0), missed(loan, 1, t0 + 31 * DAY)]
    records = [(i, e["loan_id"].encode(), ENCODE(e)) for i, e in enumerate(events)]
    assert run_both(bundle, policy, records, batch=4) == 2 * len(FINE_LOAN_IDS)
    result = PartitionProcessor(bundle, policy, partition=0).process(records)
    reasons = {(d.offset, d.reason) for d in result.dead_letters}
    assert reasons == {(i, "invalid_loan_id") for i in range(2 * len(ODD_LOAN_IDS))}
    assert all(len(d.message) < 300 for d in result.dead_letters)  # a 5,000-char id is cut
    assert [s.loan_id for s in result.states] == [e["loan_id"] for e in events[-8:]]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, 2**31),
)
def test_random_byte_edits_are_identical(bundle, policy, edits, seed) -> None:
    rng = random.Random(seed)
    events = [*adversarial_events()[:3], missed("A", 20, 1_700_000_000_000 + 40 * DAY)]
    records = [(i, e["loan_id"].encode(), ENCODE(e)) for i, e in enumerate(events)]
    target = rng.randrange(len(records))
    value = bytearray(records[target][2])
    for position, byte in edits:
        value[10 + position % (len(value) - 10)] = byte
    records.append((len(records), records[target][1], bytes(value)))
    run_both(bundle, policy, records, batch=2)


def test_model_row_is_elementwise() -> None:
    """Values cancelling in a sum must not hide one beyond the limit."""
    row = [3e38, -3e38, 1.0, float("inf"), float("nan")]
    cleaned = model_row(row)
    assert np.isnan(cleaned[0]) and np.isnan(cleaned[1]) and cleaned[2] == 1.0
    assert np.isnan(cleaned[3]) and np.isnan(cleaned[4])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True),
            st.sampled_from([1e38, -1e38, 9.999999999999999e37, 3e38, 1e20]),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_model_row_is_elementwise_whatever_sum_does(row: list[float]) -> None:
    """The kernel checks each value against the limit; the reference first checks
    ``sum(map(abs, row))``, which is compensated from Python 3.12 on. Its shortcut must still
    return exactly the element-wise result on this interpreter."""
    limit = 1e38
    expected = [v if -limit < v < limit else float("nan") for v in row]
    assert repr(model_row(list(row))) == repr(expected)
