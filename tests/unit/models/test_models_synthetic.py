"""models.data.synthetic: seeded, deterministic, fast, and with real signal; the live stream is
ordered, valid for the state machine and endless."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from models.data.adapters import SEED_COLUMNS
from models.data.synthetic import generate_book, generate_frame, iter_live_events
from models.features.state import replay


def test_same_seed_same_book_other_seed_other_book() -> None:
    a_frame, a_events, a_out = generate_book(300, seed=7)
    b_frame, b_events, b_out = generate_book(300, seed=7)
    assert a_frame.equals(b_frame) and a_events == b_events and a_out == b_out
    c_frame, _, _ = generate_book(300, seed=8)
    assert not a_frame.equals(c_frame)
    assert list(a_frame.columns) == list(SEED_COLUMNS)


def test_latent_risk_drives_misses_and_outcomes() -> None:
    frame, risk = generate_frame(20_000, seed=1)
    default = (frame["Recovery_Status"] == "Written Off").to_numpy()
    assert 0.12 < default.mean() < 0.30
    assert roc_auc_score(default, risk) > 0.75  # the hidden cause predicts the outcome
    assert np.corrcoef(risk, frame["Num_Missed_Payments"] / frame["Loan_Tenure"])[0, 1] > 0.1
    assert roc_auc_score(default, frame["Num_Missed_Payments"]) > 0.6  # ... and is observable
    in_arrears = frame["Days_Past_Due"] > 0
    assert (frame.loc[in_arrears, "Payment_History"] == "Missed").all()


def test_a_book_has_one_row_and_one_outcome_per_loan_and_many_events() -> None:
    # How fast 100k loans generate is a benchmark figure (synthetic_100k_seconds, <= 30 s).
    frame, events, outcomes = generate_book(20_000, seed=0)
    assert len(frame) == len(outcomes) == 20_000 and len(events) > 100_000
    assert len({e["loan_id"] for e in events}) == len(outcomes)  # every loan has events


def test_live_stream_is_time_ordered_valid_deterministic_and_endless() -> None:
    events = list(iter_live_events(50, seed=3, start_ms=0, max_events=4000))
    assert len(events) == 4000  # 50 loans cannot run out: closed loans are replaced
    times = [e["occurred_at"] for e in events]
    assert times == sorted(times)
    errors: list = []
    states = replay(events, errors=errors)
    assert not errors
    assert len(states) > 50  # loans closed and new ones opened
    assert any(s.closed for s in states.values())
    again = list(iter_live_events(50, seed=3, start_ms=0, max_events=4000))
    assert again == events
    assert len({e["event_id"] for e in events}) == len(events)


def test_every_generated_row_replays_to_its_own_values() -> None:
    frame, events, _ = generate_book(2000, seed=12)
    states = replay(events)
    history_code = {"On-Time": 0, "Delayed": 1, "Missed": 2}
    for row in frame.itertuples():
        f = states[row.Loan_ID].feature_dict()
        assert (
            f["num_missed"],
            f["days_past_due"],
            f["outstanding"],
            f["payment_history"],
            f["collection_attempts"],
            f["legal_action"],
            f["loan_amount"],
        ) == (
            row.Num_Missed_Payments,
            row.Days_Past_Due,
            row.Outstanding_Loan_Amount,
            history_code[row.Payment_History],
            row.Collection_Attempts,
            float(row.Legal_Action_Taken == "Yes"),
            row.Loan_Amount,
        ), row.Loan_ID


def _book_digest(n_loans: int, seed: int) -> str:
    """SHA-256 (first 16 hex digits) of a whole book: the frame's columns, dtypes, index and
    every cell (exact repr), every event and every outcome."""
    frame, events, outcomes = generate_book(n_loans, seed=seed)
    digest = hashlib.sha256()
    digest.update(repr((list(frame.columns), [str(d) for d in frame.dtypes])).encode())
    digest.update(repr(frame.index.tolist()).encode())
    digest.update(frame.to_csv().encode())
    digest.update(repr(frame.to_dict("list")).encode())
    digest.update(repr(events).encode())
    digest.update(repr(outcomes).encode())
    return digest.hexdigest()[:16]


@pytest.mark.parametrize(
    ("n_loans", "seed", "digest"),
    [(300, 0, "2c788e6d100fa73a"), (2000, 1, "c253f919992d89d7")],
)
def test_a_seed_gives_the_same_book_byte_for_byte(n_loans: int, seed: int, digest: str) -> None:
    """Pinned books: tests, benchmarks and trained models depend on them, so a speed-up of the
    generator or of the seed adapter must not change a byte (these digests were taken before
    the speed-ups of branch restore-speed and again after). A deliberate change of the
    generating process updates them, and says so."""
    assert _book_digest(n_loans, seed) == digest
