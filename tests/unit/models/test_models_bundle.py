"""Training, bundle and online segmenter: a bundle trained on a synthetic book
loads safely, scores deterministically per row, refuses tampering; the online segmenter is
deterministic and checkpointable as JSON."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.data.adapters import seed_frame_history
from models.data.synthetic import generate_book
from models.features.state import replay
from models.serving.bundle import BundleError, ModelBundle
from models.serving.segmenter import OnlineSegmenter, name_by_risk
from models.training.clustering import knee
from models.training.early_warning import train_bundle


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    frame, events, _ = generate_book(3000, seed=11)
    out = tmp_path_factory.mktemp("bundle")
    metrics = train_bundle(seed_frame_history(frame), out, holdout=0.3, seed=0, n_estimators=60)
    states = replay(events)
    rows = np.array([s.features() for s in states.values()])
    return {"dir": out, "metrics": metrics, "rows": rows, "states": states}


def test_metrics_show_real_signal_and_every_section(trained) -> None:
    m = trained["metrics"]
    # Held-out snapshots (every age, label: written off within 12 months) are harder than
    # final states, which the model must still rank well.
    assert m["roc_auc"] > 0.67 and 0 < m["brier"] < 0.2 and m["pr_auc"] > m["base_rate"]
    assert m["final_state"]["roc_auc"] > 0.75
    assert m["unit"] == "snapshot" and m["n_snapshots"] > 5 * m["n_loans"]
    assert [b["bucket"] for b in m["by_months_on_book"]] == ["1", "2", "3", "4-6", "7-11", "12+"]
    assert {r["rule"] for r in m["lead_time"]} >= {"30+ days past due", "model at equal volume"}
    assert {"gender", "age_band"} == set(m["fairness"])
    assert set(m["silhouette"]) == {"kmeans", "dbscan", "agglomerative"}
    assert m["silhouette"]["kmeans"] is not None and -1 <= m["silhouette"]["kmeans"] <= 1
    assert set(m["confusion"]) == {"moderate", "high"}
    assert len(m["calibration"]) == 10
    assert {r["feature"] for r in m["permutation_importance"][:5]} & {
        "num_missed",
        "missed_ratio",
        "paid_to_due_ratio",
        "days_past_due",
        "interest_rate",
        "payment_history",
        "max_days_past_due",
        "consecutive_missed",
        "emi_to_income",
    }
    assert sum(m["strategy_mix"].values()) == m["n_loans"]


def test_bundle_loads_with_metadata_and_scores_per_row(trained) -> None:
    bundle = ModelBundle.load(trained["dir"])
    meta = bundle.metadata
    assert bundle.version == trained["metrics"]["version"] and len(bundle.version) == 16
    for key in (
        "trained_at",
        "training_data_sha256",
        "features",
        "metrics",
        "calibration",
        "thresholds",
        "segmenter",
    ):
        assert key in meta
    assert bundle.thresholds == {"high": 0.75, "moderate": 0.5}
    assert len(meta["segmenter"]["centres"]) == 3
    assert sorted(meta["segmenter"]["names"]) == ["HIGH_RISK", "LOW_RISK", "OTHERS"]
    rows = trained["rows"]
    whole = bundle.predict_proba(rows)
    assert whole.shape == (len(rows),) and ((whole >= 0) & (whole <= 1)).all()
    # A row's score never depends on the rest of its batch.
    one_by_one = np.array([bundle.predict_proba([r])[0] for r in rows[:50]])
    assert np.array_equal(one_by_one, whole[:50])
    shuffled = np.random.default_rng(0).permutation(len(rows))
    assert np.array_equal(bundle.predict_proba(rows[shuffled]), whole[shuffled])
    again = ModelBundle.load(trained["dir"]).predict_proba(rows)
    assert np.array_equal(again, whole)
    assert bundle.predict_proba([]).shape == bundle.predict_proba(rows[:0]).shape == (0,)
    assert np.array_equal(bundle.predict_proba(rows[0]), whole[:1])  # one row as a vector
    assert bundle.thresholds == {"high": 0.75, "moderate": 0.5}  # recorded, not served
    assert not hasattr(bundle, "tier"), "the policy owns the served tier"


def test_serving_path_equals_scikit_learn_bit_for_bit(trained) -> None:
    """The fast forest (bundle.predict_proba) must be the fitted model's probabilities, not an
    approximation: same bits on every row, whole batches and single rows."""
    from models.serving.forest import is_fast_servable

    bundle = ModelBundle.load(trained["dir"])
    assert is_fast_servable(bundle.model)
    rows = trained["rows"].copy()
    rows[::7, 3] = np.nan  # missing incomes: imputed by the pipeline on both paths
    reference = bundle.model.predict_proba(rows)[:, 1]
    assert np.array_equal(bundle.predict_proba(rows), reference)
    assert np.array_equal(bundle.predict_proba(rows[:3]), reference[:3])
    assert len(set(np.round(reference, 3))) > 20, "the rows must exercise many leaves"


def test_tampered_bundles_fail_to_load_with_a_clear_error(trained, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(trained["dir"], model)
    blob = bytearray((model / "model.skops").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (model / "model.skops").write_bytes(bytes(blob))
    with pytest.raises(BundleError, match=r"model\.skops was modified after training"):
        ModelBundle.load(model)

    meta_dir = tmp_path / "meta"
    shutil.copytree(trained["dir"], meta_dir)
    meta = json.loads((meta_dir / "metadata.json").read_text())
    meta["thresholds"]["high"] = 0.99
    (meta_dir / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"metadata\.json was modified after training"):
        ModelBundle.load(meta_dir)

    report_dir = tmp_path / "report"
    shutil.copytree(trained["dir"], report_dir)
    (report_dir / "report_data.json").write_text("{}")
    with pytest.raises(BundleError, match=r"report_data\.json was modified after training"):
        ModelBundle.load(report_dir)

    (report_dir / "report_data.json").unlink()
    with pytest.raises(BundleError, match=r"report_data\.json: missing from the bundle"):
        ModelBundle.load(report_dir)

    with pytest.raises(BundleError, match=r"no metadata\.json"):
        ModelBundle.load(tmp_path)


def test_online_segmenter_is_deterministic_and_resumes_from_json(trained) -> None:
    bundle = ModelBundle.load(trained["dir"])
    states = list(trained["states"].values())[:600]
    a, b = OnlineSegmenter.from_bundle(bundle), OnlineSegmenter.from_bundle(bundle)
    seq_a = [a.learn_predict(s) for s in states]
    half = len(states) // 2
    seq_b = [b.learn_predict(s) for s in states[:half]]
    b = OnlineSegmenter.from_json(b.to_json())  # checkpoint + restore mid-stream
    seq_b += [b.learn_predict(s) for s in states[half:]]
    assert seq_a == seq_b and a.to_json() == b.to_json()
    assert set(seq_a) == {"HIGH_RISK", "OTHERS", "LOW_RISK"}
    # Warm start: before learning anything it segments like the offline K-Means names.
    fresh = OnlineSegmenter.from_bundle(bundle)
    assert fresh.names == bundle.segmenter_init["names"] or not bundle.segmenter_init["names_agree"]
    # Dict input (by feature name) and LoanState input agree.
    s = states[0]
    assert fresh.predict_one(s) == fresh.predict_one(s.feature_dict())
    # High-risk segment members are riskier on average.
    scores = bundle.predict_proba([s.features() for s in states])
    segs = np.array([fresh.predict_one(s) for s in states])
    if (segs == "HIGH_RISK").any() and (segs == "LOW_RISK").any():
        assert scores[segs == "HIGH_RISK"].mean() > scores[segs == "LOW_RISK"].mean()


def test_naming_and_knee_helpers() -> None:
    assert name_by_risk([0.2, 0.9, 0.5]) == ["LOW_RISK", "HIGH_RISK", "OTHERS"]
    assert name_by_risk([0.1, 0.9, 0.5, 0.4]) == ["LOW_RISK", "HIGH_RISK", "OTHERS", "OTHERS"]
    curve = np.concatenate([np.linspace(0, 1, 90), np.linspace(1.5, 10, 10)])
    assert 0.9 <= knee(curve) <= 1.6


def test_a_consistent_bundle_with_untrusted_types_is_refused(tmp_path: Path) -> None:
    import operator

    from sklearn.preprocessing import FunctionTransformer

    from models.training.bundle_writer import write_bundle

    # Hashes and version are right, but the model would call an arbitrary function.
    write_bundle(
        tmp_path,
        FunctionTransformer(func=operator.neg),
        {"features": [], "thresholds": {"high": 0.75, "moderate": 0.5}, "segmenter": {}},
    )
    # FunctionTransformer too: skops alone trusts every scikit-learn estimator, this process's
    # skops only those our bundles hold (models.serving.skops_io).
    untrusted = ["_operator.neg", "sklearn.preprocessing._function_transformer.FunctionTransformer"]
    with pytest.raises(BundleError, match=re.escape(f"untrusted types {untrusted}")):
        ModelBundle.load(tmp_path)


def test_a_bundle_trained_on_another_feature_vector_is_refused(trained, tmp_path: Path) -> None:
    from models.serving.bundle import content_version

    old = tmp_path / "old"
    shutil.copytree(trained["dir"], old)
    meta = json.loads((old / "metadata.json").read_text())
    meta["features"] = meta["features"][:-1]  # as if trained before a feature was added
    meta["version"] = content_version(meta)  # ... and consistently versioned
    (old / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"different feature vector.*legal_action"):
        ModelBundle.load(old)
    with pytest.raises(ValueError, match="not computed"):
        OnlineSegmenter({**meta["segmenter"], "features": ["shoe_size"]})


def test_online_names_follow_the_centres_along_the_risk_axis() -> None:
    # Risk grows with the first feature only; cluster 0 starts as the riskiest.
    init = {
        "features": ["days_past_due", "outstanding_ratio"],
        "means": [0.0, 0.0],
        "stds": [1.0, 1.0],
        "count": 10**9,  # frozen scaler: raw = standardized
        "centres": [[2.0, 5.0], [0.0, 0.0], [-2.0, 0.0]],
        "risk_weights": [1.0, 0.0],
        "halflife": 1.0,
    }
    seg = OnlineSegmenter(init)
    assert seg.names == ["HIGH_RISK", "OTHERS", "LOW_RISK"]
    # A point nearest to cluster 0 but low on the risk axis drags it there (halflife 1):
    # cluster ids keep their centres, the names are re-ranked.
    assert seg.learn_predict({"days_past_due": -4.0, "outstanding_ratio": 6.0}) == "LOW_RISK"
    assert seg.names == ["LOW_RISK", "HIGH_RISK", "OTHERS"]
    assert seg.predict_one({"days_past_due": 0.1, "outstanding_ratio": 0.0}) == "HIGH_RISK"


SKOPS_TRUST = """
import sklearn.utils
from sklearn.utils import all_estimators

full = sklearn.utils.all_estimators
from models.serving.skops_io import BUNDLE_ESTIMATORS, skops_io

skops_io()
from skops.io._trusted_types import SKLEARN_ESTIMATOR_TYPE_NAMES
from skops.io._utils import get_type_name

assert sklearn.utils.all_estimators is full
names = SKLEARN_ESTIMATOR_TYPE_NAMES
assert sorted(names) == sorted(BUNDLE_ESTIMATORS), names
public = {get_type_name(cls) for _, cls in all_estimators()}
assert set(BUNDLE_ESTIMATORS) <= public, set(BUNDLE_ESTIMATORS) - public
print("narrowed", len(names), "of", len(public))
"""


def test_skops_trusts_by_default_only_the_public_estimators_our_bundles_hold() -> None:
    # A fresh interpreter: this one may have imported skops already. Narrowing never widens
    # the trust: every name is one skops trusts by default anyway.
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", SKOPS_TRUST], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("narrowed 11 of "), done.stdout


def test_nothing_imports_skops_but_the_narrowing_helper() -> None:
    import ast

    def imports_skops(path: Path) -> bool:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(name.split(".")[0] == "skops" for name in names):
                return True
        return False

    root = Path(__file__).resolve().parents[3]
    folders = ("models", "consumer", "producer", "schemas", "loan_recovery", "bench", "tests")
    importers = [
        str(path.relative_to(root))
        for folder in folders
        for path in (root / folder).rglob("*.py")
        if imports_skops(path)
    ]
    assert importers == ["models/serving/skops_io.py"], importers


def test_permutation_importance_equals_scikit_learn_s_roc_auc_scorer(trained) -> None:
    # holdout_metrics scores the permutations with the fast forest: the same numbers as the
    # scorer "roc_auc" on the scikit-learn model (300 rows: all of them are permuted).
    from sklearn.inspection import permutation_importance

    from models.features.columns import FEATURE_NAMES
    from models.training.early_warning import PERMUTATION_REPEATS, holdout_metrics

    model = ModelBundle.load(trained["dir"]).model
    x = trained["rows"][:300]
    y = (model.predict_proba(x)[:, 1] > np.median(model.predict_proba(x)[:, 1])).astype(int)
    metrics, _ = holdout_metrics(model, x, y, seed=4)
    want = permutation_importance(
        model, x, y, scoring="roc_auc", n_repeats=PERMUTATION_REPEATS, random_state=4, n_jobs=1
    )
    got = {d["feature"]: d["mean"] for d in metrics["permutation_importance"]}
    assert got == dict(zip(FEATURE_NAMES, want.importances_mean.tolist(), strict=True))
    assert any(value > 0 for value in got.values())
