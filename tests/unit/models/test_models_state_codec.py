"""The changelog's fixed-layout LoanState codec writes fastavro's exact bytes and reads them."""

from __future__ import annotations

import gc
import random

import pytest

from models.data.synthetic import generate_book, with_guardrail_events
from models.features.guard_state import is_shared
from models.features.state import REPORTED_INCOME, replay
from models.features.state_codec import LoanStateCodec
from schemas import AvroSerde, SchemaDecodeError
from schemas.serde import HEADER_SIZE


@pytest.fixture(scope="module")
def states() -> list:
    _, events, _ = generate_book(300, seed=5)
    out = list(replay(with_guardrail_events(events, seed=5)).values())
    guards = [state.guard for state in out if state.guard is not None]
    # Loans without a guard, with one, with and without a time zone, with calls and holds.
    assert 0 < len(guards) < len(out) and {g.time_zone is None for g in guards} == {True, False}
    assert any(g.holds for g in guards) and any(len(g.call_times) == 7 for g in guards)
    out[0].loan_id = "L-" + "é" * 70  # a two-byte length prefix and multi-byte characters
    for i, state in enumerate(out):  # decisions of every shape, incl. None and non-ASCII
        if i % 3:
            state.strategy, state.risk_tier = "CALLS", "MODERATE"
            state.risk_score, state.segment = i / 301, "OTHERS"
        if i % 5 == 0:
            state.segment = "Überfällig-" * (i % 40)  # long: a multi-byte length prefix
        if i % 4 == 1:  # LoanEvent v4: a reported income (0.0 too: a job loss)
            state[REPORTED_INCOME] = 0.0 if i % 8 == 1 else 1234.5 + i
    return out


def test_reported_income_round_trips_and_crosses_the_v3_v4_boundary(states) -> None:
    """LoanState v4's reported_income: kept by the codec; a v3 record (before it) reads as
    nothing reported, not as -1 or 0; a v3 reader (a rolled-back scorer) reads v4 bytes."""
    codec = LoanStateCodec()
    v3 = AvroSerde("LoanState", writer_version=3, reader_version=3)
    reported = [s for s in states if s.reported_income is not None]
    assert {s.reported_income == 0.0 for s in reported} == {True, False}
    for state in states:
        back = codec.decode(codec.encode(state))
        assert repr(back.reported_income) == repr(state.reported_income)
        record = state.to_record()
        del record["reported_income"]
        old = codec.decode(v3.encode(record))
        assert old.reported_income is None
        assert old.tobytes()[: 8 * REPORTED_INCOME] == state.tobytes()[: 8 * REPORTED_INCOME]
        assert (old.strategy, old.risk_tier, old.segment) == (
            state.strategy,
            state.risk_tier,
            state.segment,
        )
        assert v3.decode(codec.encode(state))["loan_id"] == state.loan_id


@pytest.mark.parametrize("native", [True, False], ids=["compiled", "python"])
def test_bytes_equal_fastavro_and_round_trip(states, native: bool) -> None:
    codec, serde = LoanStateCodec(native=native), AvroSerde("LoanState")
    assert codec.fast and codec.compiled == native  # CI builds the compiled encoder
    for state in states:
        data = codec.encode(state)
        assert data == serde.encode(state.to_record())
        back = codec.decode(data)
        assert repr(back.to_record()) == repr(state.to_record())  # repr: NaN == NaN
        assert repr(codec.decode(serde.encode(state.to_record())).to_record()) == repr(
            state.to_record()
        )


@pytest.mark.parametrize("cut", [12, 40, -1])
def test_a_corrupt_record_is_a_decode_error_not_a_wrong_state(states, cut: int) -> None:
    codec = LoanStateCodec()
    data = codec.encode(states[1])
    with pytest.raises(SchemaDecodeError):
        codec.decode(data[:cut])
    with pytest.raises(SchemaDecodeError):
        codec.decode(data + b"\x00")


def _image(state) -> tuple:
    """Everything a decoded state holds, bit for bit (the values' bytes, NaNs included)."""
    guard = state.guard
    return (
        type(state),
        bytes(state),
        state.loan_id,
        state._borrower,
        state._labels,
        gc.is_tracked(state),
        None if guard is None else (type(guard), bytes(guard), guard.time_zone, is_shared(guard)),
    )


def _decoded(codec: LoanStateCodec, data: bytes) -> tuple | str:
    try:
        return _image(codec.decode(data))
    except SchemaDecodeError:
        return "refused"


def test_the_compiled_decoder_builds_the_references_states(states) -> None:
    compiled, python = LoanStateCodec(), LoanStateCodec(native=False)
    assert compiled.compiled_decode and not python.compiled_decode
    for state in states:
        data = compiled.encode(state)
        fast, slow = compiled.decode(data), python.decode(data)
        assert _image(fast) == _image(slow)
        # Shared like the reference's: the label strings, the (strategy, tier, segment) triple,
        # and an
        # opening-facts-only guard.
        assert fast._labels is slow._labels
        assert fast.strategy is compiled.decode(data).strategy
        if slow.guard is not None and is_shared(slow.guard):
            assert fast.guard is slow.guard


def test_the_compiled_decoder_refuses_what_the_reference_refuses(states) -> None:
    compiled, python = LoanStateCodec(), LoanStateCodec(native=False)
    rng = random.Random(11)
    for state in states[:40]:
        data = compiled.encode(state)
        variants = [data[:cut] for cut in range(len(data))] + [data + b"\x00"]
        for _ in range(60):  # single corrupted bytes: a branch, a length, a value
            at = rng.randrange(HEADER_SIZE, len(data))
            variants.append(data[:at] + bytes([rng.randrange(256)]) + data[at + 1 :])
        for variant in variants:
            assert _decoded(compiled, variant) == _decoded(python, variant)
