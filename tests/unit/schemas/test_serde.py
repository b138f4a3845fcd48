"""The Avro contract: single-object encoding, schema evolution, compatibility checks."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import avro.io
import avro.schema
import pytest
from fastavro.schema import to_parsing_canonical_form
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import AvroSerde, SchemaDecodeError, SchemaRegistry, default_registry
from schemas.compat import problems, release_problems
from schemas.events import BODY_TYPES, PAYMENT_MISSED, make_event
from schemas.registry import AVRO_DIR

MISSED = {
    "installment_due_date": 20000,
    "amount_due": 1250.5,
    "days_past_due": 31,
    "outstanding": 98000.0,
}


def sample_event(**overrides) -> dict:
    event = make_event(
        "3f1c9c2e-0000-4000-8000-000000000001",
        "L1",
        "B1",
        1_700_000_000_000,
        "PaymentMissed",
        dict(MISSED),
    )
    event.update(overrides)
    return event


def test_round_trip_and_header() -> None:
    serde = AvroSerde("LoanEvent")
    data = serde.encode(sample_event())
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == serde.writer.fingerprint
    assert serde.decode(data) == sample_event()


CRC64_EMPTY = 0xC15D213AA4D7A795


def crc64_avro(data: bytes) -> int:
    """CRC-64-AVRO exactly as written in the Avro specification."""
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (CRC64_EMPTY & -(fp & 1))
        table.append(fp)
    fp = CRC64_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


@pytest.mark.parametrize("name", default_registry().names())
def test_fingerprint_is_crc64_avro_of_the_canonical_form(name: str) -> None:
    schema = default_registry().latest(name)
    canonical = to_parsing_canonical_form(schema.parsed)
    assert schema.fingerprint == crc64_avro(canonical.encode()).to_bytes(8, "little")
    # The official package agrees on the CRC. (Its own canonical form of the *source* file
    # keeps {"type": "string"} for logical types, against the spec's PRIMITIVES rule, so it is
    # given the spec-conformant form.)
    assert avro.schema.parse(canonical).fingerprint("CRC-64-AVRO") == schema.fingerprint


def test_official_avro_reads_our_body() -> None:
    serde = AvroSerde("LoanEvent")
    data = serde.encode(sample_event())
    official = avro.schema.parse(serde.writer.path.read_text())
    decoded = avro.io.DatumReader(official).read(avro.io.BinaryDecoder(io.BytesIO(data[10:])))
    assert decoded["loan_id"] == "L1"
    assert decoded["occurred_at"].timestamp() * 1000 == 1_700_000_000_000
    assert decoded["body"]["days_past_due"] == 31
    assert decoded["body"]["outstanding"] == 98000.0


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "bad_header"),
        (b"\x00\x01garbage-garbage", "bad_header"),
        (b"\xc3\x01" + b"\xff" * 8 + b"\x00", "unknown_fingerprint"),
    ],
)
def test_bad_bytes_raise_one_exception(data: bytes, reason: str) -> None:
    with pytest.raises(SchemaDecodeError) as caught:
        AvroSerde("LoanEvent").decode(data)
    assert caught.value.reason == reason


def test_truncated_and_padded_bodies_are_undecodable() -> None:
    serde = AvroSerde("LoanEvent")
    data = serde.encode(sample_event())
    for broken in (data[:-5], data + b"\x00\x00"):
        with pytest.raises(SchemaDecodeError) as caught:
            serde.decode(broken)
        assert caught.value.reason == "undecodable"
    # The same bad record, the same message (a DLQ header): no memory address in it.
    messages = set()
    for _ in range(2):
        with pytest.raises(SchemaDecodeError) as caught:
            serde.decode(data[:-5])
        messages.add(str(caught.value))
    assert len(messages) == 1 and " at 0x" not in messages.pop()


def test_other_schema_is_rejected() -> None:
    checkpoint = AvroSerde("PartitionCheckpoint").encode(
        {"partition": 0, "clusterer_json": "{}", "events_applied": 0, "updated_at": 0}
    )
    with pytest.raises(SchemaDecodeError) as caught:
        AvroSerde("LoanEvent").decode(checkpoint)
    assert caught.value.reason == "wrong_schema"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_never_escape_as_other_errors(blob: bytes) -> None:
    serde = AvroSerde("LoanEvent")
    for data in (blob, b"\xc3\x01" + serde.writer.fingerprint + blob):
        with contextlib.suppress(SchemaDecodeError):
            serde.decode(data)


def _v2_registry(tmp_path: Path, new_field: dict) -> SchemaRegistry:
    """The released schemas plus a LoanEvent v2 that adds ``new_field`` to PaymentMissed."""
    root = tmp_path / "avro"
    for src in AVRO_DIR.glob("*/v*.avsc"):
        (root / src.parent.name).mkdir(parents=True, exist_ok=True)
        (root / src.parent.name / src.name).write_text(src.read_text())
    raw = json.loads((AVRO_DIR / "LoanEvent" / "v1.avsc").read_text())
    v2 = copy.deepcopy(raw)
    missed = next(b for b in v2["fields"][4]["type"] if b["name"] == "PaymentMissed")
    missed["fields"].append(new_field)
    (root / "LoanEvent" / "v2.avsc").write_text(json.dumps(v2))
    return SchemaRegistry((root,))


def test_v1_and_v2_read_each_other(tmp_path: Path) -> None:
    registry = _v2_registry(
        tmp_path, {"name": "channel", "type": ["null", "string"], "default": None}
    )
    v1 = AvroSerde("LoanEvent", registry=registry, writer_version=1, reader_version=1)
    v2 = AvroSerde("LoanEvent", registry=registry, writer_version=2, reader_version=2)
    new_event = sample_event()
    new_event["body"][1]["channel"] = "branch"
    # v2 reader on v1 bytes: the new field takes its default.
    from_old = v2.decode(v1.encode(sample_event()))
    assert from_old["body"] == (PAYMENT_MISSED, {**MISSED, "channel": None})
    # v1 reader on v2 bytes: the new field is dropped.
    assert v1.decode(v2.encode(new_event)) == sample_event()
    assert release_problems(registry) == []


def test_breaking_version_fails_the_compatibility_check(tmp_path: Path) -> None:
    registry = _v2_registry(tmp_path, {"name": "channel", "type": "string"})  # no default
    found = release_problems(registry)
    assert any("v2 reading v1" in p and "channel" in p and "without a default" in p for p in found)


def test_released_schemas_are_fully_compatible() -> None:
    assert release_problems(default_registry()) == []


def test_type_changes_are_caught() -> None:
    old = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "string"}]}
    new = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]}
    assert problems(reader=new, writer=old)
    widened = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "long"}]}
    narrow = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]}
    assert problems(reader=widened, writer=narrow) == []
    assert problems(reader=narrow, writer=widened)


def test_every_body_type_round_trips() -> None:
    bodies = {
        "LoanOpened": {
            "age": 40,
            "gender": "Female",
            "employment_type": "Salaried",
            "monthly_income": 5000.0,
            "num_dependents": 2,
            "loan_amount": 1e5,
            "loan_tenure_months": 60,
            "interest_rate": 9.5,
            "loan_type": "Home",
            "collateral_value": 1.2e5,
            "monthly_emi": 2100.0,
            "time_zone": "America/New_York",
            "jurisdiction": "US-NY",
        },
        "PaymentReceived": {
            "installment_due_date": 20000,
            "amount_due": 2100.0,
            "amount_paid": 2100.0,
            "outstanding_after": 97900.0,
        },
        "PaymentMissed": dict(MISSED),
        "CollectionAttempt": {
            "method": "LEGAL_NOTICE",
            "outcome": "REFUSED",
            "legal_action": True,
            "channel": "LETTER",
            "conversation": False,
            "hold": None,
            "income_report": None,
        },
        "LoanClosed": {"reason": "WRITTEN_OFF"},
    }
    serde = AvroSerde("LoanEvent")
    for name, body in bodies.items():
        event = sample_event(body=(f"loanrec.events.{name}", body))
        assert serde.decode(serde.encode(event)) == event
    assert {f"loanrec.events.{n}" for n in bodies} == set(BODY_TYPES)


def test_a_compliance_hold_round_trips_and_v1_bytes_read_as_v2() -> None:
    """LoanEvent v2 (guardrails): a hold rides in CollectionAttempt; v1 data stays readable
    with the v2 reader (the new fields take their defaults), and v1 readers read v2."""
    v1 = AvroSerde("LoanEvent", writer_version=1, reader_version=1)
    v2 = AvroSerde("LoanEvent", writer_version=2, reader_version=2)
    hold = {"action": "SET", "reason": "ATTORNEY_REPRESENTED"}
    body = {
        "method": "OTHER",
        "outcome": "OTHER",
        "legal_action": False,
        "channel": None,
        "conversation": False,
        "hold": hold,
    }
    event = sample_event(body=("loanrec.events.CollectionAttempt", body))
    decoded = v2.decode(v2.encode(event))
    assert decoded["body"][1]["hold"] == ("loanrec.events.ComplianceHold", hold)
    old = {"method": "CALLS", "outcome": "NO_CONTACT", "legal_action": False}
    v1_bytes = v1.encode(sample_event(body=("loanrec.events.CollectionAttempt", old)))
    assert v2.decode(v1_bytes)["body"][1] == {
        **old,
        "channel": None,
        "conversation": False,
        "hold": None,
    }
    assert v1.decode(v2.encode(event))["body"][1] == {
        "method": "OTHER",
        "outcome": "OTHER",
        "legal_action": False,
    }


def test_v3_jurisdiction_reads_with_v2_both_ways() -> None:
    """LoanEvent v3 adds LoanOpened.jurisdiction with a default: v2 bytes read as v3 with
    jurisdiction None (the policy's default limitation period), and a v2 reader drops it."""
    v2 = AvroSerde("LoanEvent", writer_version=2, reader_version=2)
    v3 = AvroSerde("LoanEvent", writer_version=3, reader_version=3)
    body = {
        "age": 40,
        "gender": "Female",
        "employment_type": "Salaried",
        "monthly_income": 5000.0,
        "num_dependents": 2,
        "loan_amount": 1e5,
        "loan_tenure_months": 60,
        "interest_rate": 9.5,
        "loan_type": "Home",
        "collateral_value": 1.2e5,
        "monthly_emi": 2100.0,
        "time_zone": None,
    }
    old = sample_event(body=("loanrec.events.LoanOpened", body))
    assert v3.decode(v2.encode(old))["body"][1] == {**body, "jurisdiction": None}
    new = sample_event(body=("loanrec.events.LoanOpened", {**body, "jurisdiction": "US-CA"}))
    assert v2.decode(v3.encode(new))["body"][1] == body


def test_v4_income_report_reads_with_v3_both_ways() -> None:
    """LoanEvent v4 adds CollectionAttempt.income_report with a default: v3 bytes (and v1's)
    read as v4 with no report, and a v3 reader reads a v4 contact with a report as the same
    contact without it; v4 is what producers write."""
    v1 = AvroSerde("LoanEvent", writer_version=1, reader_version=1)
    v3 = AvroSerde("LoanEvent", writer_version=3, reader_version=3)
    v4 = AvroSerde("LoanEvent", writer_version=4, reader_version=4)
    contact = {
        "method": "CALLS",
        "outcome": "PROMISE_TO_PAY",
        "legal_action": False,
        "channel": "CALL",
        "conversation": True,
        "hold": None,
    }
    old = sample_event(body=("loanrec.events.CollectionAttempt", contact))
    assert v4.decode(v3.encode(old))["body"][1] == {**contact, "income_report": None}
    v1_contact = {"method": "CALLS", "outcome": "NO_CONTACT", "legal_action": False}
    v1_bytes = v1.encode(sample_event(body=("loanrec.events.CollectionAttempt", v1_contact)))
    assert v4.decode(v1_bytes)["body"][1]["income_report"] is None
    report = {"monthly_income": 1250.5, "source": "BORROWER_DISCLOSURE"}
    new = sample_event(
        body=("loanrec.events.CollectionAttempt", {**contact, "income_report": report})
    )
    decoded = v4.decode(v4.encode(new))["body"][1]["income_report"]
    assert decoded == ("loanrec.events.IncomeReport", report)
    assert v3.decode(v4.encode(new))["body"][1] == contact
    assert AvroSerde("LoanEvent").writer.version == 4
