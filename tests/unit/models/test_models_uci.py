"""UCI credit-card default: the adapter keeps what the forest needs, and the acceptance run
(`train --source uci ... --holdout 0.3 --seed 0 --json`) reaches ROC AUC >= 0.78. How long the
run takes is a benchmark figure (`uci_train_seconds` in `make bench`, target <= 120 s), not a
test: a timed test fails on a busy machine without the code getting slower."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.data.adapters import AdapterError, read_history
from models.features.state import replay

ROOT = Path(__file__).resolve().parents[3]
UCI = ROOT.parent / "shared" / "data" / "UCI_Credit_Card.csv"
HEADER = "ID," + ",".join(f"X{i}" for i in range(1, 24)) + ",Y\n"


def test_statements_become_payments_and_misses() -> None:
    # limit 50k, female, age 30; status Sep..Apr = 2,1,0,-1,-2,0; bills Sep..Apr; paid Sep..Apr
    row = "7,50000,2,2,1,30, 2,1,0,-1,-2,0, 900,800,700,600,500,400, 0,50,60,70,80,90,1\n"
    history = read_history("uci", io.StringIO(HEADER + row))
    assert history.outcomes == {"UCI-7": 1}
    f = replay(history.events)["UCI-7"].feature_dict()
    assert f["loan_amount"] == 50000 and f["age"] == 30 and f["gender"] == 1
    assert f["days_past_due"] == 60 and f["days_past_due_prev"] == 30  # September, August
    assert f["days_past_due_prev2"] == 0 and f["max_days_past_due"] == 60
    assert f["num_missed"] == 2 and f["consecutive_missed"] == 2 and f["installments"] == 6
    assert f["outstanding"] == 900 and f["outstanding_change"] == 100  # Sep bill - Aug bill
    assert f["last_amount_paid"] == 0 and f["last_amount_due"] == 800  # Sep pays Aug's bill
    assert f["total_paid"] == 50 + 60 + 70 + 80 + 90
    assert f["outstanding_ratio"] == pytest.approx(900 / 50000)
    assert f["mean_outstanding_ratio"] == pytest.approx(sum(range(400, 1000, 100)) / 6 / 50000)


def test_non_numeric_status_names_row_and_column() -> None:
    row = "1,50000,2,2,1,30,x,1,0,-1,-2,0,900,800,700,600,500,400,0,50,60,70,80,90,1\n"
    with pytest.raises(AdapterError, match=r"row 2, column 'X6'"):
        read_history("uci", io.StringIO(HEADER + row))


def test_acceptance_holdout_roc_auc_at_least_078(tmp_path: Path) -> None:
    assert UCI.exists(), f"{UCI}: the shared UCI copy is missing"
    # The acceptance command exactly (no --out: the bundle goes to out/model under the cwd).
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "loan_recovery.cli",
            "train",
            "--source",
            "uci",
            "--input",
            str(UCI),
            "--holdout",
            "0.3",
            "--seed",
            "0",
            "--json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["n_loans"] == 30_000 and metrics["n_holdout"] == 9_000
    assert metrics["n_snapshots"] == 6 * 30_000  # one per monthly statement
    # Held-out clients after all six statements (what the stream ends on), and after each.
    assert metrics["final_state"]["roc_auc"] >= 0.78, metrics["final_state"]
    by_month = {b["bucket"]: b for b in metrics["by_month"]}
    assert sorted(by_month) == ["1", "2", "3", "4", "5", "6"]
    assert by_month["1"]["roc_auc"] >= 0.67 and by_month["3"]["roc_auc"] >= 0.70
    assert by_month["6"]["roc_auc"] >= 0.78
    assert all(abs(b["calibration_gap"]) <= 0.03 for b in by_month.values()), by_month
    assert not {"gender", "age"} & set(metrics["model_features"])
    assert 0 < metrics["brier"] < 0.16 and metrics["pr_auc"] > metrics["base_rate"]
    assert all(metrics["silhouette"][a] is not None for a in ("kmeans", "agglomerative"))
    assert (tmp_path / "out" / "model" / "metadata.json").exists()
    # Calibrated: in every well-populated bin the observed rate is near the predicted one.
    for row in metrics["calibration"]:
        if row["count"] >= 300:
            assert abs(row["observed_rate"] - row["mean_predicted"]) < 0.08, row
