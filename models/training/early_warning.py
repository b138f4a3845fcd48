"""Train the early-warning model and the segmentation, evaluate them, write the bundle.

History -> :func:`models.features.state.replay` (the one state machine) -> one ``features()``
row per loan with an outcome -> holdout split by loan (stratified, seeded) -> scikit-learn Pipeline
(median imputation; most-frequent imputation + one-hot for the categorical codes) ->
``RandomForestClassifier`` -> isotonic ``CalibratedClassifierCV`` (the tier thresholds 0.75 /
0.50 only mean something on calibrated probabilities) -> holdout metrics -> offline clustering
comparison on all loans -> bundle.

>>> from models.data.synthetic import generate_book
>>> from models.data.adapters import seed_frame_history
>>> import tempfile
>>> frame, _, _ = generate_book(400, seed=2)
>>> metrics = train_bundle(seed_frame_history(frame), tempfile.mkdtemp(), n_estimators=30)
>>> 0.5 < metrics["roc_auc"] <= 1.0, sorted(metrics["silhouette"])
(True, ['agglomerative', 'dbscan', 'kmeans'])
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from joblib import parallel_config

from models.data.adapters import History
from models.errors import ModelsError
from models.features.columns import (
    CATEGORICAL_FEATURES,
    FEATURE_INDEX,
    FEATURE_NAMES,
    NUMERIC_FEATURES,
    SEGMENT_FEATURES,
    segment_matrix,
)
from models.features.state import replay
from models.serving.bundle import single_threaded
from models.serving.policy import Policy
from models.serving.segmenter import DEFAULT_HALFLIFE, name_by_risk
from models.training.bundle_writer import write_bundle
from models.training.clustering import compare_clusterings, risk_axis
from models.training.population import REPORT_FILE, report_data

THRESHOLDS = {"high": 0.75, "moderate": 0.50}
PERMUTATION_ROWS = 2000  # permutation importance on a seeded holdout subsample: it predicts
PERMUTATION_REPEATS = 3  # features x repeats times


class TrainingError(ModelsError, ValueError):
    """Training data that cannot produce a model (no outcomes, one class only, ...)."""


def feature_matrix(
    history: History, skipped: dict[str, int] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Replay ``history`` and return (X, y, loan_ids) for the loans with an outcome. Events the
    state machine refuses are skipped, as the stream skips them; pass a dict as ``skipped`` to
    count them by reason."""
    errors: list = []
    states = replay(history.events, errors=errors)
    if skipped is not None:
        for _, error in errors:
            skipped[error.reason] = skipped.get(error.reason, 0) + 1
    loan_ids = sorted(loan for loan in states if loan in history.outcomes)
    if not loan_ids:
        raise TrainingError(
            "no loan has both events and an outcome; check the outcomes column or file"
        )
    x = np.array([states[loan].features() for loan in loan_ids], dtype=np.float64)
    y = np.array([history.outcomes[loan] for loan in loan_ids], dtype=np.int64)
    return x, y, loan_ids


def build_model(
    seed: int = 0, n_estimators: int = 150, min_samples_leaf: int = 40, n_jobs: int = 2
) -> Any:
    """The calibrated pipeline (unfitted). Inputs are ``features()`` rows (floats, NaN =
    missing), so serving needs no pandas."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    numeric = [FEATURE_INDEX[n] for n in NUMERIC_FEATURES]
    categorical = [FEATURE_INDEX[n] for n in CATEGORICAL_FEATURES]
    prepare = ColumnTransformer(
        [
            ("numeric", SimpleImputer(strategy="median", keep_empty_features=True), numeric),
            (
                "categorical",
                Pipeline(
                    [
                        (
                            "impute",
                            SimpleImputer(strategy="most_frequent", keep_empty_features=True),
                        ),
                        ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
                    ]
                ),
                categorical,
            ),
        ]
    )
    # One thread per forest: a forest predicting on several threads adds its trees' votes in
    # completion order, so the cross-validated predictions the isotonic map is fitted on --
    # and with them the calibrated model -- could differ in the last bit between two runs on
    # the same data. The parallelism is across the cross-validation folds instead.
    forest = RandomForestClassifier(
        n_estimators=n_estimators,
        min_samples_leaf=min_samples_leaf,
        max_features="sqrt",
        n_jobs=1,
        random_state=seed,
    )
    # ensemble=False: one forest refitted on all training rows, the isotonic map learnt from
    # cross-validated predictions -> one forest to evaluate per scored batch, not three.
    return CalibratedClassifierCV(
        Pipeline([("prepare", prepare), ("forest", forest)]),
        method="isotonic",
        cv=3,
        ensemble=False,
        n_jobs=n_jobs,
    )


def evaluate(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """ROC AUC, PR AUC, Brier, calibration table and confusion matrices at the thresholds."""
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    out: dict[str, Any] = {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "brier": float(brier_score_loss(y, p)),
        "base_rate": float(y.mean()),
        "n": len(y),
    }
    edges = np.linspace(0.0, 1.0, 11)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, 9)
    out["calibration"] = [
        {
            "bin": f"{edges[b]:.1f}-{edges[b + 1]:.1f}",
            "count": int((which == b).sum()),
            "mean_predicted": float(p[which == b].mean()) if (which == b).any() else None,
            "observed_rate": float(y[which == b].mean()) if (which == b).any() else None,
        }
        for b in range(10)
    ]
    out["confusion"] = {}
    for name, t in (("moderate", THRESHOLDS["moderate"]), ("high", THRESHOLDS["high"])):
        pred = p > t
        tp = int((pred & (y == 1)).sum())
        fp = int((pred & (y == 0)).sum())
        fn = int((~pred & (y == 1)).sum())
        tn = int((~pred & (y == 0)).sum())
        out["confusion"][name] = {
            "threshold": t,
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "tn": tn,
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None,
        }
    return out


def _curves(y: np.ndarray, p: np.ndarray, points: int = 200) -> dict[str, Any]:
    from sklearn.metrics import precision_recall_curve, roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    precision, recall, _ = precision_recall_curve(y, p)

    def thin(*arrays: np.ndarray) -> list[list[float]]:
        n = len(arrays[0])
        keep = np.unique(np.linspace(0, n - 1, min(points, n)).astype(int))
        return [np.round(a[keep], 5).tolist() for a in arrays]

    fpr_, tpr_ = thin(fpr, tpr)
    recall_, precision_ = thin(recall, precision)
    return {"roc": {"fpr": fpr_, "tpr": tpr_}, "pr": {"recall": recall_, "precision": precision_}}


def _hash_arrays(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()


def split_by_loan(y: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded train / holdout row indices (one row per loan, so a split by loan)."""
    from sklearn.model_selection import train_test_split

    if len(set(y.tolist())) < 2:
        raise TrainingError(
            f"all {len(y)} loans have outcome {y[0]}: the model needs both "
            "defaulted and recovered loans"
        )
    if holdout <= 0:
        return np.arange(len(y)), np.arange(0)
    minority = int(min((y == 0).sum(), (y == 1).sum()))
    if minority < 6:
        raise TrainingError(
            f"only {minority} loans in the smaller outcome class: too few to "
            "hold out and calibrate; add data or use --holdout 0"
        )
    train, test = train_test_split(
        np.arange(len(y)), test_size=holdout, random_state=seed, stratify=y
    )
    return np.sort(train), np.sort(test)


def holdout_metrics(
    model: Any, x: np.ndarray, y: np.ndarray, seed: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, report curves) of a fitted model on held-out rows, with permutation importance
    on a seeded subsample (it predicts features x repeats times)."""
    from sklearn.inspection import permutation_importance

    p = model.predict_proba(x)[:, 1]
    metrics = evaluate(y, p)
    report = {"curves": _curves(y, p)}
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(y), size=min(PERMUTATION_ROWS, len(y)), replace=False))
    if len(set(y[rows].tolist())) == 2:
        imp = permutation_importance(
            model,
            x[rows],
            y[rows],
            scoring="roc_auc",
            n_repeats=PERMUTATION_REPEATS,
            random_state=seed,
            n_jobs=1,
        )
        metrics["permutation_importance"] = sorted(
            (
                {"feature": name, "mean": float(m), "std": float(s)}
                for name, m, s in zip(
                    FEATURE_NAMES, imp.importances_mean, imp.importances_std, strict=True
                )
            ),
            key=lambda d: -d["mean"],
        )
    return metrics, report


def segmentation(x: np.ndarray, risk: np.ndarray, seed: int) -> dict[str, Any]:
    """Offline clustering comparison + the online segmenter's starting point (plain data)."""
    comparison = compare_clusterings(segment_matrix(x), risk, seed=seed)
    kmeans = comparison["kmeans"]
    weights = risk_axis(comparison["z"], risk)
    # Online naming ranks centres on the risk axis; record whether it agrees with the offline
    # naming by members' mean risk (it should: the clusters differ mostly along risk).
    axis_risk = [float(np.dot(weights, c)) for c in kmeans.cluster_centers_]
    comparison["init"] = {
        "features": list(SEGMENT_FEATURES),
        "means": comparison["scaler"]["means"],
        "stds": comparison["scaler"]["stds"],
        "count": comparison["scaler"]["count"],
        "centres": kmeans.cluster_centers_.tolist(),
        "names": comparison["kmeans_names"],
        "risk_weights": weights,
        "halflife": DEFAULT_HALFLIFE,
        "names_agree": name_by_risk(axis_risk) == comparison["kmeans_names"],
    }
    comparison["segments"] = np.array(comparison["kmeans_names"], dtype=object)[kmeans.labels_]
    return comparison


def train_bundle(
    history: History,
    out: str | Path,
    *,
    holdout: float = 0.3,
    seed: int = 0,
    n_estimators: int = 150,
    min_samples_leaf: int | None = None,
    n_jobs: int = 2,
    input_sha256: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train, evaluate, write the bundle to ``out``; return the metrics (as in ``--json``)."""
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    say(f"replaying {len(history.events):,} events through the state machine")
    skipped: dict[str, int] = {}
    x, y, _ = feature_matrix(history, skipped)
    train, test = split_by_loan(y, holdout, seed)
    if min_samples_leaf is None:
        # Leaves of ~0.2 % of the training loans (3..40): big enough to average out label noise
        # (UCI holdout AUC rises from 0.776 at 5 to 0.785 at 40), small enough for small books.
        min_samples_leaf = int(np.clip(len(train) // 500, 3, 40))
    model = build_model(seed, n_estimators, min_samples_leaf, n_jobs)
    say(f"fitting the calibrated random forest on {len(train):,} loans")
    fit_started = time.perf_counter()
    with parallel_config(backend="threading"):  # tree building releases the GIL
        model.fit(x[train], y[train])
    fit_seconds = time.perf_counter() - fit_started
    single_threaded(model)  # what the stream runs: identical scores whatever the batch
    metrics: dict[str, Any] = {
        "n_loans": len(y),
        "n_train": len(train),
        "n_holdout": len(test),
        "holdout": holdout,
        "seed": seed,
        "skipped_events": skipped,
    }
    report: dict[str, Any] = {}
    if len(test):
        say(f"evaluating on {len(test):,} held-out loans (+ permutation importance)")
        holdout_m, report = holdout_metrics(model, x[test], y[test], seed)
        metrics.update(holdout_m)
    say("comparing K-Means, DBSCAN and agglomerative clustering")
    risk = model.predict_proba(x)[:, 1]
    seg = segmentation(x, risk, seed)
    metrics["clustering"] = seg["algorithms"]
    metrics["silhouette"] = {name: a["silhouette"] for name, a in seg["algorithms"].items()}
    segments = seg["segments"]
    report.update(report_data(x, y, risk, seg["z"], segments, seg, seed))
    # Under the shipped default policy, with the offline K-Means segments.
    metrics["strategy_mix"] = report["strategy_mix"]
    metrics["tier_mix"] = report["tier_mix"]
    metrics["segment_mix"] = {s: int((segments == s).sum()) for s in sorted(set(segments))}
    metrics["fit_seconds"] = round(fit_seconds, 2)
    metrics["train_seconds"] = round(time.perf_counter() - started, 2)
    metadata = {
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": history.source,
        "training_data_sha256": _hash_arrays(x, y),
        "input_sha256": input_sha256,
        "features": list(FEATURE_NAMES),
        "categorical_features": list(CATEGORICAL_FEATURES),
        "thresholds": dict(THRESHOLDS),
        "calibration": {
            "method": "isotonic",
            "cv": 3,
            "ensemble": False,
            "table": metrics.get("calibration"),
        },
        "model": {
            "estimator": "RandomForestClassifier",
            "n_estimators": n_estimators,
            "min_samples_leaf": min_samples_leaf,
            "max_features": "sqrt",
            "random_state": seed,
        },
        "metrics": {k: v for k, v in metrics.items() if k != "calibration"},
        "segmenter": seg["init"],
        "policy_version": Policy.load(None).version,
    }
    say(f"writing the bundle to {out}")
    report_bytes = json.dumps(report, allow_nan=True).encode()
    metrics["version"] = write_bundle(out, model, metadata, {REPORT_FILE: report_bytes})
    metrics["bundle"] = str(out)
    return metrics
