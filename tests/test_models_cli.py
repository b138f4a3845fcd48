"""The offline commands through the real CLI: generate, train (seed / events / messy / broken
inputs) and report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.bundle import ModelBundle

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, ok: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "loan_recovery.cli", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout, check=False)
    if ok:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def book(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("book")
    summary = json.loads(cli("generate", "--loans", "1500", "--seed", "3", "--out", str(out),
                             "--json").stdout)
    assert summary["loans"] == 1500 and summary["events"] > 1500
    return out


def test_generate_writes_one_seed_csv_an_event_log_and_outcomes(book: Path) -> None:
    assert sorted(p.name for p in book.iterdir()) == ["events.jsonl", "loans.csv",
                                                      "outcomes.csv.gz"]
    assert len(list(book.glob("*.csv"))) == 1


@pytest.mark.parametrize("source", ["seed", "events"])
def test_train_writes_a_loadable_bundle_and_prints_json_metrics(book: Path, tmp_path: Path,
                                                                source: str) -> None:
    path = book / ("loans.csv" if source == "seed" else "events.jsonl")
    result = cli("train", "--source", source, "--input", str(path), "--out",
                 str(tmp_path / "model"), "--trees", "40", "--json")
    metrics = json.loads(result.stdout)
    for key in ("roc_auc", "pr_auc", "brier"):
        assert isinstance(metrics[key], float)
    assert set(metrics["silhouette"]) == {"kmeans", "dbscan", "agglomerative"}
    assert metrics["roc_auc"] > 0.7
    bundle = ModelBundle.load(tmp_path / "model")
    assert bundle.version == metrics["version"]


def test_seed_and_event_log_of_the_same_book_give_the_same_training_data(book: Path,
                                                                         tmp_path: Path) -> None:
    a = json.loads(cli("train", "--source", "seed", "--input", str(book / "loans.csv"),
                       "--out", str(tmp_path / "a"), "--trees", "5", "--json").stdout)
    b = json.loads(cli("train", "--source", "events", "--input", str(book / "events.jsonl"),
                       "--out", str(tmp_path / "b"), "--trees", "5", "--json").stdout)
    meta_a = ModelBundle.load(tmp_path / "a").metadata
    meta_b = ModelBundle.load(tmp_path / "b").metadata
    assert meta_a["training_data_sha256"] == meta_b["training_data_sha256"]
    assert a["roc_auc"] == b["roc_auc"]
