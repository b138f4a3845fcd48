"""The offline commands through the real CLI: generate, train (seed / events / messy / broken
inputs) and report."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from models.serving.bundle import ModelBundle
from models.serving.policy import Policy
from models.strategy.outcomes import seed_outcomes
from schemas.events import with_defaults

ROOT = Path(__file__).resolve().parents[3]


def cli(*args: str, ok: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "loan_recovery.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if ok:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def book(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("book")
    summary = json.loads(
        cli("generate", "--loans", "1500", "--seed", "3", "--out", str(out), "--json").stdout
    )
    assert summary["loans"] == 1500 and summary["events"] > 1500
    return out


def test_generate_writes_one_seed_csv_an_event_log_and_outcomes(book: Path) -> None:
    assert sorted(p.name for p in book.iterdir()) == [
        "events.jsonl",
        "loans.csv",
        "outcomes.csv.gz",
    ]
    assert len(list(book.glob("*.csv"))) == 1


@pytest.fixture(scope="module")
def trained(book: Path, tmp_path_factory) -> dict[str, tuple[dict, Path]]:
    """The book trained from its seed CSV and from its event log (40 trees each): the metrics
    printed and the bundle, shared by the tests that read them (each fit costs seconds)."""
    out = tmp_path_factory.mktemp("trained")
    fits = {}
    for source, name in (("seed", "loans.csv"), ("events", "events.jsonl")):
        result = cli(
            "train",
            "--source",
            source,
            "--input",
            str(book / name),
            "--out",
            str(out / source),
            "--trees",
            "40",
            "--json",
        )
        fits[source] = (json.loads(result.stdout), out / source)
    return fits


@pytest.mark.parametrize("source", ["seed", "events"])
def test_train_writes_a_loadable_bundle_and_prints_json_metrics(
    trained: dict[str, tuple[dict, Path]], source: str
) -> None:
    metrics, model = trained[source]
    for key in ("roc_auc", "pr_auc", "brier"):
        assert isinstance(metrics[key], float)
    assert set(metrics["silhouette"]) == {"kmeans", "dbscan", "agglomerative"}
    assert metrics["roc_auc"] > 0.7
    bundle = ModelBundle.load(model)
    assert bundle.version == metrics["version"]


def test_seed_and_event_log_of_the_same_book_give_the_same_training_data(
    trained: dict[str, tuple[dict, Path]],
) -> None:
    (a, model_a), (b, model_b) = trained["seed"], trained["events"]
    meta_a = ModelBundle.load(model_a).metadata
    meta_b = ModelBundle.load(model_b).metadata
    assert meta_a["training_data_sha256"] == meta_b["training_data_sha256"]
    # Identical data gives the identical model (training is deterministic: one thread per
    # forest, so no vote is summed in thread-completion order), hence identical metrics.
    assert a["roc_auc"] == b["roc_auc"] and a["brier"] == b["brier"]


def _messy(book: Path, path: Path) -> None:
    """The same book as a real export: blanks, odd spellings, unseen categories, extra
    columns, thousands separators, a renamed header."""
    import numpy as np
    import pandas as pd

    frame = pd.read_csv(book / "loans.csv", dtype=str, keep_default_na=False)
    rng = np.random.default_rng(0)
    for column in (
        "Age",
        "Monthly_Income",
        "Gender",
        "Employment_Type",
        "Interest_Rate",
        "Collateral_Value",
        "Num_Dependents",
        "Days_Past_Due",
        "Payment_History",
    ):
        frame.loc[rng.random(len(frame)) < 0.05, column] = ""
    frame.loc[rng.random(len(frame)) < 0.05, "Employment_Type"] = "Freelancer"
    frame.loc[rng.random(len(frame)) < 0.05, "Loan_Type"] = "Gold Loan"
    frame.loc[rng.random(len(frame)) < 0.05, "Gender"] = "X"
    frame.loc[rng.random(len(frame)) < 0.05, "Collection_Method"] = "E-mail"
    frame.loc[rng.random(len(frame)) < 0.3, "Employment_Type"] = "self employed"
    frame["Loan_Amount"] = [f"{float(v):,.2f}" for v in frame["Loan_Amount"]]
    frame["Monthly_Income"] = [f"{float(v):,.2f}" if v else "n/a" for v in frame["Monthly_Income"]]
    frame["Branch"] = "Pune"
    frame.insert(0, "Exported At", "2025-01-01")
    frame = frame.rename(columns={"Loan_ID": "loan id", "Recovery_Status": "RECOVERY_STATUS"})
    frame.to_csv(path, index=False)


def test_messy_export_trains(book: Path, tmp_path: Path) -> None:
    messy = tmp_path / "messy.csv"
    _messy(book, messy)
    assert '"1,' in messy.read_text()  # thousands separators really are there
    metrics = json.loads(
        cli(
            "train",
            "--source",
            "seed",
            "--input",
            str(messy),
            "--out",
            str(tmp_path / "model"),
            "--trees",
            "40",
            "--json",
        ).stdout
    )
    assert metrics["n_loans"] == 1500 and metrics["roc_auc"] > 0.65
    ModelBundle.load(tmp_path / "model")


@pytest.mark.parametrize("column", ["Days_Past_Due", "Recovery_Status", "Loan_ID"])
def test_missing_required_column_is_one_clear_line(book: Path, tmp_path: Path, column: str) -> None:
    import pandas as pd

    broken = tmp_path / "broken.csv"
    pd.read_csv(book / "loans.csv").drop(columns=[column]).to_csv(broken, index=False)
    result = cli(
        "train",
        "--source",
        "seed",
        "--input",
        str(broken),
        "--out",
        str(tmp_path / "model"),
        ok=False,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"'{column}'" in lines[0] and str(broken) in lines[0] and "add it" in lines[0]
    assert not (tmp_path / "model").exists()


def test_unreadable_inputs_are_one_clear_line(tmp_path: Path) -> None:
    cases = {
        "missing.csv": None,
        "binary.csv": b"\x00\xff\xfe" * 100,
        "empty.csv": b"",
        "bad.jsonl": b'{"event_id": "e1"}\n',
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        source = "events" if name.endswith(".jsonl") else "seed"
        result = cli(
            "train",
            "--source",
            source,
            "--input",
            str(path),
            "--out",
            str(tmp_path / "m"),
            ok=False,
        )
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and len(lines) == 1, (name, result.stderr)
        assert str(path) in lines[0] and "Traceback" not in result.stderr
    assert "line 1" in result.stderr  # the JSON lines error names the line


def test_avro_event_log_with_outcomes_csv(tmp_path: Path) -> None:
    from models.data.adapters import read_history

    summary = json.loads(
        cli(
            "generate",
            "--loans",
            "300",
            "--seed",
            "9",
            "--out",
            str(tmp_path / "book"),
            "--format",
            "avro",
            "--json",
        ).stdout
    )
    log = Path(summary["files"]["events"])
    assert log.suffix == ".avro" and log.read_bytes()[:4] == b"Obj\x01"
    history = read_history("events", log)
    seed = read_history("seed", tmp_path / "book" / "loans.csv")
    assert history.events == [with_defaults(e) for e in seed.events]
    assert history.outcomes == seed.outcomes


def _segment_loans(html: str) -> int:
    """Loans summed over the segment-profile legend entries ("HIGH_RISK (1,234 loans, ...")."""
    import re

    return sum(int(n.replace(",", "")) for n in re.findall(r"\((\d[\d,]*) loans, mean", html))


def test_report_command_for_the_training_book_and_another_book(
    trained: dict[str, tuple[dict, Path]], tmp_path: Path
) -> None:
    model = trained["seed"][1]
    cli("report", "--model", str(model), "--out", str(tmp_path / "a.html"))
    other = tmp_path / "other"
    cli("generate", "--loans", "700", "--seed", "99", "--out", str(other))
    cli(
        "report",
        "--model",
        str(model),
        "--out",
        str(tmp_path / "b.html"),
        "--source",
        "events",
        "--input",
        str(other / "events.jsonl"),
    )
    a, b = (tmp_path / "a.html").read_text(), (tmp_path / "b.html").read_text()
    # The population sections describe the other book: its 700 loans, not the 1,500.
    assert _segment_loans(a) == 1500 and _segment_loans(b) == 700
    # Outcomes need an input book: the training-book report says so, the event log fills them.
    outcomes_a = a.split("<section id='strategy-outcomes'>")[1]
    assert "Not available" in outcomes_a and "strategy-outcomes-plot-0" not in outcomes_a
    outcomes_b = b.split("<section id='strategy-outcomes'>")[1]
    assert "Observational estimate" in outcomes_b and "strategy-outcomes-plot-0" in outcomes_b
    assert "<td>CALL</td>" in outcomes_b
    # The guardrail section replays the input book through the scorer; without one it says so.
    guard_a = a.split("<section id='guardrails'>")[1].split("</section>")[0]
    assert "Not available" in guard_a and "--input FILE" in guard_a
    guard_b = b.split("<section id='guardrails'>")[1].split("</section>")[0]
    assert re.search(r"The book's [\d,]+ events replayed through the scorer", guard_b), guard_b
    cli(
        "report",
        "--model",
        str(model),
        "--out",
        str(tmp_path / "seed.html"),
        "--source",
        "seed",
        "--input",
        str(other / "loans.csv"),
        "--partial-fraction",
        "0.2",
    )
    section = (tmp_path / "seed.html").read_text().split("<section id='strategy-outcomes'>")[1]
    assert "Observational estimate" in section
    cells = re.findall(r"<tr><td>[A-Z_]+</td><td>[A-Z_]+</td><td>(\d+)</td><td>(-?[\d.]+)", section)
    loans = sum(int(n) for n, _ in cells)
    shown = sum(int(n) * float(f) for n, f in cells) / loans
    # --partial-fraction reaches the table: 'Partially Recovered' counts 0.2, not the default 0.5
    frame = pd.read_csv(other / "loans.csv")
    costs = Policy.load(None).costs
    assert loans == 700
    assert shown == pytest.approx(
        seed_outcomes(frame, costs, 0.2).recovered_fraction.mean(), abs=2e-3
    )
    assert abs(shown - seed_outcomes(frame, costs).recovered_fraction.mean()) > 0.01
    result = cli(
        "report",
        "--model",
        str(model),
        "--out",
        str(tmp_path / "c.html"),
        "--input",
        str(other / "loans.csv"),
        ok=False,
    )
    assert result.returncode != 0 and "--source" in result.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"decisions": 3}')
    result = cli(
        "report",
        "--model",
        str(model),
        "--out",
        str(tmp_path / "d.html"),
        "--evaluation",
        str(bad),
        ok=False,
    )
    assert result.returncode != 0 and "evaluate --json" in result.stderr
    assert not (tmp_path / "d.html").exists()


def test_invalid_events_in_a_log_are_skipped_and_counted(book: Path, tmp_path: Path) -> None:
    lines = (book / "events.jsonl").read_text().splitlines()
    bad = json.loads(lines[1])  # a payment of the first loan
    bad["event_id"] = "00000000-0000-4000-8000-000000000001"
    bad["body"][1]["amount_due"] = -5.0
    dup = json.loads(lines[2])  # a redelivered event
    log = tmp_path / "events.jsonl"
    log.write_text("\n".join([*lines, json.dumps(bad), json.dumps(dup)]) + "\n")
    (tmp_path / "outcomes.csv.gz").write_bytes((book / "outcomes.csv.gz").read_bytes())
    metrics = json.loads(
        cli(
            "train",
            "--source",
            "events",
            "--input",
            str(log),
            "--out",
            str(tmp_path / "model"),
            "--trees",
            "5",
            "--json",
        ).stdout
    )
    assert metrics["skipped_events"] == {"invalid_amount": 1, "duplicate": 1}
