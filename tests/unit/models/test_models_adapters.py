"""models.data.adapters: messy seed exports, event logs and outcome files -> events + outcomes."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pytest

from models.data.adapters import AdapterError, read_history, write_jsonl
from models.features.state import replay

HEADER = (
    "Loan_ID,Loan_Amount,Outstanding_Loan_Amount,Num_Missed_Payments,Days_Past_Due,Recovery_Status"
)


def same(a: list, b: list) -> bool:
    return repr(a) == repr(b)  # NaN profile values: nan != nan, but their reprs agree


def seed(text: str):
    return read_history("seed", io.StringIO(text))


def test_numbers_with_separators_currency_and_junk() -> None:
    history = seed(
        "loan id, LOAN_AMOUNT ,outstanding loan amount,Num_Missed_Payments,"
        "Days_Past_Due,Recovery_Status,Monthly_Income,Extra\n"
        'L1,"1,250,000.50",$ 1 000,2,45,Written Off,n/a,whatever\n'
        "L2,1000,(5),,,Fully Recovered,12%,\n"
    )
    states = replay(history.events)
    l1, l2 = states["L1"].feature_dict(), states["L2"].feature_dict()
    assert l1["loan_amount"] == 1_250_000.5 and l1["outstanding"] == 1000.0
    assert l1["monthly_income"] != l1["monthly_income"]  # "n/a" -> NaN, imputed later
    assert l2["num_missed"] == 0 and l2["days_past_due"] == 0  # blanks -> 0 for counts
    assert l2["monthly_income"] == 12.0
    assert history.outcomes == {"L1": 1, "L2": 0}


def test_unknown_or_blank_status_is_unlabelled_not_guessed() -> None:
    history = seed(HEADER + "\nA,1,1,0,0,Pending\nB,1,1,0,0,\nC,1,1,0,0,written-off\n")
    assert history.outcomes == {"C": 1}
    assert set(replay(history.events)) == {"A", "B", "C"}


def test_repeated_loan_id_names_both_rows() -> None:
    with pytest.raises(AdapterError, match=r"row 3, column 'Loan_ID': 'A' repeats row 2"):
        seed(HEADER + "\nA,1,1,0,0,Repaid\nA,1,1,0,0,Repaid\n")


def test_event_log_variants_and_outcome_files(tmp_path: Path) -> None:
    events = seed(HEADER + "\nA,100,50,1,30,Written Off\nB,100,20,0,0,Settled\n").events
    log = tmp_path / "log.jsonl.gz"
    with gzip.open(log, "wt") as handle:
        write_jsonl(events, handle)
    # No outcomes file, no LoanClosed: events but no labels.
    assert read_history("events", log).outcomes == {}
    (tmp_path / "outcomes.csv").write_text("loan_id,outcome\nA,1\nB,0\n")
    history = read_history("events", log)
    assert same(history.events, events) and history.outcomes == {"A": 1, "B": 0}
    (tmp_path / "other.csv").write_text("loan_id,outcome\nA,yes\n")
    with pytest.raises(AdapterError, match=r"row 2, column 'outcome': 'yes' is not 0 or 1"):
        read_history("events", log, outcomes=tmp_path / "other.csv")
    # {"type", "data"} bodies and short type names are accepted too.
    plain = tmp_path / "plain.jsonl"
    lines = [
        {**e, "body": {"type": e["body"][0].rsplit(".", 1)[1], "data": e["body"][1]}}
        for e in events
    ]
    plain.write_text("\n".join(json.dumps(e) for e in lines) + "\n")
    assert same(read_history("events", plain).events, events)


def test_events_are_grouped_per_loan_in_time_order(tmp_path: Path) -> None:
    events = seed(HEADER + "\nA,100,50,2,30,Written Off\nB,100,20,0,0,Settled\n").events
    shuffled = events[::-1]
    log = tmp_path / "log.jsonl"
    with open(log, "w") as handle:
        write_jsonl(shuffled, handle)
    back = read_history("events", log).events
    assert same(back, sorted(events, key=lambda e: (e["loan_id"], e["occurred_at"])))
    errors: list = []
    replay(back, errors=errors)
    assert not errors


def test_unknown_source() -> None:
    with pytest.raises(AdapterError, match="unknown source 'xls'"):
        read_history("xls", "x")


def test_corrupt_counts_are_capped_not_exploded() -> None:
    history = seed(HEADER + ",Collection_Attempts\nA,100,50,99999999,9999999,Written Off,1e9\n")
    assert len(history.events) < 1000
    assert replay(history.events)["A"].feature_dict()["days_past_due"] == 36_500
