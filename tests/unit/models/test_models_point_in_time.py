"""Point-in-time training (issue #13): snapshots hold only what was known then, labels follow
the horizon and censoring rules, protected attributes and the system's own treatments are not
model inputs, and the held-out quality tables are computed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.data.adapters import History, seed_frame_history
from models.data.synthetic import generate_book
from models.features.columns import FEATURE_INDEX, FEATURE_NAMES
from models.features.state import replay
from models.serving.bundle import ModelBundle
from models.serving.forest import FastCalibratedForest, is_fast_servable
from models.training.early_warning import model_inputs, train_bundle
from models.training.snapshots import DAY_MS, MONTH_MS, cut_after_installments, snapshot_set
from schemas.events import make_event

OPENED = dict(
    age=64,
    gender="Female",
    employment_type="Salaried",
    monthly_income=5000.0,
    num_dependents=1,
    loan_amount=12000.0,
    loan_tenure_months=24,
    interest_rate=9.5,
    loan_type="Personal",
    collateral_value=0.0,
    monthly_emi=600.0,
)


def _loan(
    loan_id: str,
    months: int,
    *,
    miss_from: int = 99,
    closed: str | None = None,
    attempts_after: int = 0,
) -> list[dict[str, Any]]:
    """LoanOpened at day 0, one installment a month (paid, or missed from ``miss_from``),
    optionally a collection attempt after installment ``attempts_after`` and a LoanClosed."""
    events = [make_event(f"{loan_id}-0", loan_id, "B", 0, "LoanOpened", OPENED)]
    for k in range(1, months + 1):
        due = 30 * k
        if k >= miss_from:
            events.append(
                make_event(
                    f"{loan_id}-{k}",
                    loan_id,
                    "B",
                    (due + 5) * DAY_MS,
                    "PaymentMissed",
                    dict(
                        installment_due_date=due,
                        amount_due=600.0,
                        days_past_due=30 * (k - miss_from) + 5,
                        outstanding=12000.0,
                    ),
                )
            )
        else:
            events.append(
                make_event(
                    f"{loan_id}-{k}",
                    loan_id,
                    "B",
                    due * DAY_MS,
                    "PaymentReceived",
                    dict(
                        installment_due_date=due,
                        amount_due=600.0,
                        amount_paid=600.0,
                        outstanding_after=12000.0 - 500 * k,
                    ),
                )
            )
        if k == attempts_after:
            events.append(
                make_event(
                    f"{loan_id}-a",
                    loan_id,
                    "B",
                    (due + 6) * DAY_MS,
                    "CollectionAttempt",
                    dict(method="LEGAL_NOTICE", outcome="OTHER", legal_action=True),
                )
            )
    if closed:
        events.append(
            make_event(
                f"{loan_id}-c",
                loan_id,
                "B",
                events[-1]["occurred_at"] + DAY_MS,
                "LoanClosed",
                dict(reason=closed),
            )
        )
    return events


def test_snapshots_hold_only_the_past_and_match_the_stream_state() -> None:
    """The k-th snapshot is exactly the state the stream holds after the first k
    installments (and the collection attempt before the next one) -- not the final state."""
    events = _loan("L1", 8, miss_from=5, attempts_after=6)
    snaps = snapshot_set(History(events, {"L1": 1}), horizon_months=12)
    assert snaps.months_on_book.tolist() == list(range(1, 9))
    for k in range(1, 9):
        streamed = replay(cut_after_installments(events, k))["L1"].features()
        assert snaps.x[k - 1].tolist() == streamed
    assert snaps.x[3, FEATURE_INDEX["num_missed"]] == 0  # the misses came later
    legal = snaps.x[:, FEATURE_INDEX["legal_action"]]
    assert legal[5] == 1 and legal[4] == 0  # the attempt came after installment 6
    assert snaps.weight.sum() == pytest.approx(1.0)


def test_labels_follow_the_horizon_and_open_loans_are_censored() -> None:
    written_off = _loan("W", 20, miss_from=15, closed="WRITTEN_OFF")
    repaid = _loan("R", 6, closed="REPAID")
    still_open = _loan("O", 18)
    history = History(
        written_off + repaid + still_open,
        {"W": 1, "R": 0},
        outcome_at={"W": written_off[-1]["occurred_at"], "R": repaid[-1]["occurred_at"]},
        open_loans={"O"},
    )
    snaps = snapshot_set(history, horizon_months=6)
    by_loan = {loan: snaps.y[snaps.loan == k] for k, loan in enumerate(snaps.loan_ids)}
    at_w = snaps.at[snaps.loan == snaps.loan_ids.index("W")]
    expected = (written_off[-1]["occurred_at"] - at_w <= 6 * MONTH_MS).astype(int)
    assert by_loan["W"].tolist() == expected.tolist() and 0 < expected.sum() < 20
    assert by_loan["R"].tolist() == [0] * 6
    # Open loan, data ends at W's write-off: snapshots with 6 months observed after them are
    # negatives, the later ones censored.
    end = max(e["occurred_at"] for e in history.events)
    at_o = np.array([e["occurred_at"] for e in still_open[1:]])
    assert len(by_loan["O"]) == int((end - at_o >= 6 * MONTH_MS).sum()) < 18
    assert snaps.censored == 18 - len(by_loan["O"]) > 0
    assert by_loan["O"].sum() == 0


def test_model_inputs_exclude_protected_attributes_and_treatments() -> None:
    default = model_inputs()
    assert "gender" not in default and "age" not in default
    assert not {"collection_attempts", "last_collection_method", "legal_action"} & set(default)
    assert "gender" not in model_inputs(use_age=True, use_treatments=True)
    assert {"age", "legal_action"} <= set(model_inputs(use_age=True, use_treatments=True))


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    frame, _, _ = generate_book(1500, seed=5)
    out = tmp_path_factory.mktemp("pit")
    train_bundle(seed_frame_history(frame), out, n_estimators=30)
    return out


def test_a_bundle_lists_its_inputs_and_ignores_the_excluded_columns(bundle_dir: Path) -> None:
    meta = json.loads((bundle_dir / "metadata.json").read_text())
    assert not {
        "gender",
        "age",
        "legal_action",
        "collection_attempts",
        "last_collection_method",
    } & set(meta["model_features"])
    assert meta["features"] == list(FEATURE_NAMES) and meta["horizon_months"] == 12
    bundle = ModelBundle.load(bundle_dir)
    assert is_fast_servable(bundle.model)
    _, events, _ = generate_book(300, seed=9)
    rows = np.array([s.features() for s in replay(events).values()])
    changed = rows.copy()
    for name in ("gender", "age", "legal_action", "collection_attempts", "last_collection_method"):
        changed[:, FEATURE_INDEX[name]] = np.random.default_rng(0).permutation(rows[:, 0])
    scores = bundle.predict_proba(rows)
    assert np.array_equal(scores, bundle.predict_proba(changed))  # never read
    changed[:, FEATURE_INDEX["days_past_due"]] += 90
    assert not np.array_equal(scores, bundle.predict_proba(changed))  # an input
    # Still the fast forest's bits: the kernel, the numpy reference and scikit-learn agree.
    expected = bundle.model.predict_proba(rows)[:, 1]
    assert np.array_equal(
        FastCalibratedForest(bundle.model, native=True).predict_proba(rows), expected
    )
    assert np.array_equal(
        FastCalibratedForest(bundle.model, native=False).predict_proba(rows), expected
    )
    assert np.array_equal(scores, expected)


def test_use_age_makes_age_an_input(tmp_path: Path) -> None:
    frame, _, _ = generate_book(600, seed=6)
    train_bundle(
        seed_frame_history(frame), tmp_path, n_estimators=10, use_age=True, out_of_time=False
    )
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert "age" in meta["model_features"] and "gender" not in meta["model_features"]
    assert "age" not in meta["metrics"]["excluded_features"]


def test_quality_tables(bundle_dir: Path) -> None:
    m = json.loads((bundle_dir / "metadata.json").read_text())["metrics"]
    buckets = m["by_months_on_book"]
    assert sum(b["snapshots"] for b in buckets) == m["n_holdout_snapshots"]
    for b in buckets:
        low, high = b["roc_auc_ci95"]
        assert low <= b["roc_auc"] <= high
        assert 0 <= b["mean_predicted"] <= 1
        assert b["observed_rate"] == b["positives"] / b["snapshots"]
    rules = {r["rule"]: r for r in m["lead_time"]}
    dpd, model = rules["30+ days past due"], rules["model at equal volume"]
    assert model["flagged_loans"] == dpd["flagged_loans"] > 0
    assert m["by_month"][0]["bucket"] == "1" and m["by_month"][0]["snapshots"] == m["n_holdout"]
    genders = {r["group"]: r for r in m["fairness"]["gender"]}
    assert genders["Male"]["high_adverse_impact_ratio"] == 1.0
    assert sum(r["loans"] for r in m["fairness"]["age_band"]) == m["n_holdout"]
    assert m["out_of_time"]["n_test_snapshots"] > 0 and 0.5 < m["out_of_time"]["roc_auc"] <= 1
