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
from models.serving.forest import FastCalibratedForest, is_fast_servable
from models.serving.policy import Policy
from models.serving.segmenter import DEFAULT_HALFLIFE, name_by_risk
from models.training.bundle_writer import write_bundle
from models.training.clustering import compare_clusterings, risk_axis
from models.training.population import REPORT_FILE, report_data
from models.training.quality import by_bucket, fairness, lead_time
from models.training.snapshots import DEFAULT_HORIZON_MONTHS, Snapshots, snapshot_set

THRESHOLDS = {"high": 0.75, "moderate": 0.50}
# Protected under Reg B (12 CFR 1002.6(b)): never a model input.
NEVER_INPUTS = ("gender",)
# What the collections system itself did to the loan: a consequence of its risk, not a cause.
TREATMENTS = ("collection_attempts", "last_collection_method", "legal_action")
EXCLUSION_REASONS = {
    "gender": "protected attribute (Reg B 12 CFR 1002.6(b)(1)): never an input",
    "age": "protected attribute (Reg B 12 CFR 1002.6(b)(2)): off unless --use-age",
    **{
        name: "the collections system's own treatment (follows the risk; label leak and "
        "feedback loop): off unless --use-treatments"
        for name in TREATMENTS
    },
}
GROUP_FOLDS = 3  # calibration folds, split by loan
OOT_TREES = 50
OOT_QUANTILE = 60  # out-of-time check: snapshots up to this percentile of dates train
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


def model_inputs(use_age: bool = False, use_treatments: bool = False) -> tuple[str, ...]:
    """The ``features()`` columns the early-warning model reads, in ``FEATURE_NAMES`` order.

    Never ``gender`` (Reg B, 12 CFR 1002.6(b)(1)... sex may not be used at all); ``age`` only
    with ``use_age`` (1002.6(b)(2): only in a system that does not score applicants aged 62+
    worse); the system's own treatments (:data:`TREATMENTS`) only with ``use_treatments``:
    they follow the risk assessment (legal action follows the write-off decision), so as
    inputs they leak the label and, in the stream, feed the model its own decisions back.
    The state keeps all of them for monitoring and the fairness table.

    >>> inputs = model_inputs()
    >>> "gender" in inputs, "age" in inputs, "legal_action" in inputs, "days_past_due" in inputs
    (False, False, False, True)
    >>> "age" in model_inputs(use_age=True), "gender" in model_inputs(use_age=True)
    (True, False)
    """
    excluded = set(NEVER_INPUTS)
    if not use_age:
        excluded.add("age")
    if not use_treatments:
        excluded.update(TREATMENTS)
    return tuple(name for name in FEATURE_NAMES if name not in excluded)


def build_model(
    seed: int = 0,
    n_estimators: int = 150,
    min_samples_leaf: int = 40,
    n_jobs: int = 2,
    inputs: tuple[str, ...] | None = None,
    max_samples: float | None = None,
    cv: Any = 3,
) -> Any:
    """The calibrated pipeline (unfitted). Inputs are ``features()`` rows (floats, NaN =
    missing), so serving needs no pandas; the pipeline reads only the ``inputs`` columns
    (default :func:`model_inputs`) and drops the rest, so the row the stream scores stays
    the whole ``features()`` vector. ``max_samples``: share of the rows each tree's
    bootstrap draws (None: all). ``cv``: folds of the calibration, or precomputed
    (train, test) index pairs (split by loan)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    chosen = set(model_inputs() if inputs is None else inputs)
    numeric = [FEATURE_INDEX[n] for n in NUMERIC_FEATURES if n in chosen]
    categorical = [FEATURE_INDEX[n] for n in CATEGORICAL_FEATURES if n in chosen]
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
        ],
        remainder="drop",
    )
    # One thread per forest: a forest predicting on several threads adds its trees' votes in
    # completion order, so the cross-validated predictions the isotonic map is fitted on --
    # and with them the calibrated model -- could differ in the last bit between two runs on
    # the same data. The parallelism is across the cross-validation folds instead.
    forest = RandomForestClassifier(
        n_estimators=n_estimators,
        min_samples_leaf=min_samples_leaf,
        max_features="sqrt",
        max_samples=max_samples,
        n_jobs=1,
        random_state=seed,
    )
    # ensemble=False: one forest refitted on all training rows, the isotonic map learnt from
    # cross-validated predictions -> one forest to evaluate per scored batch, not three.
    return CalibratedClassifierCV(
        Pipeline([("prepare", prepare), ("forest", forest)]),
        method="isotonic",
        cv=cv,
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


def _p_default(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """P(default) per row, served as the stream serves it: the fast forest is scikit-learn's
    ``predict_proba`` bit for bit (tests/unit/models/test_models_fast_forest.py), at a fraction
    of its cost per call. Permutation importance predicts features x repeats times (120 calls):
    profiled on a 1,500-loan book with 40 trees, scikit-learn's calls were 37 % of the fit.
    ``model`` comes from :func:`fit_snapshots`, single-threaded as the stream runs it."""
    if is_fast_servable(model):
        return FastCalibratedForest(model).predict_proba
    return lambda rows: model.predict_proba(rows)[:, 1]


def holdout_metrics(
    model: Any, x: np.ndarray, y: np.ndarray, seed: int, inputs: tuple[str, ...] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, report curves) of a fitted model on held-out rows, with permutation importance
    of its ``inputs`` (default: all features) on a seeded subsample (it predicts features x
    repeats times)."""
    from sklearn.inspection import permutation_importance
    from sklearn.metrics import roc_auc_score

    predict = _p_default(model)

    def roc_auc(_: Any, rows: np.ndarray, labels: np.ndarray) -> float:
        return float(roc_auc_score(labels, predict(rows)))

    p = predict(x)
    metrics = evaluate(y, p)
    report = {"curves": _curves(y, p)}
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(y), size=min(PERMUTATION_ROWS, len(y)), replace=False))
    if len(set(y[rows].tolist())) == 2:
        imp = permutation_importance(
            model,
            x[rows],
            y[rows],
            scoring=roc_auc,
            n_repeats=PERMUTATION_REPEATS,
            random_state=seed,
            n_jobs=1,
        )
        read = set(FEATURE_NAMES if inputs is None else inputs)
        metrics["permutation_importance"] = sorted(
            (
                {"feature": name, "mean": float(m), "std": float(s)}
                for name, m, s in zip(
                    FEATURE_NAMES, imp.importances_mean, imp.importances_std, strict=True
                )
                if name in read
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


def _strip_routing(model: Any) -> None:
    """Forget the metadata-routing requests set for the fit: they only route the weights to
    the forest, and the bundle loader trusts no type beyond what scoring needs."""
    estimators = [model.estimator] + [c.estimator for c in model.calibrated_classifiers_]
    for pipeline in estimators:
        for _, step in pipeline.steps:
            vars(step).pop("_metadata_request", None)


def fit_snapshots(
    snaps: Snapshots,
    rows: np.ndarray,
    *,
    seed: int = 0,
    n_estimators: int = 150,
    min_samples_leaf: int | None = None,
    n_jobs: int = 2,
    inputs: tuple[str, ...] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Fit the calibrated forest on the snapshot ``rows``, weighted per loan, with the
    calibration's cross-validation folds split by loan (a loan's snapshots on both sides of
    a fold would make the out-of-fold votes, and so the isotonic map, optimistic).
    Returns (model, the settings used)."""
    import sklearn
    from sklearn.model_selection import GroupKFold

    n_loans = len(np.unique(snaps.loan[rows]))
    if min_samples_leaf is None:
        # ~0.1 % of the training loans (3..40), on bootstraps of ~2 rows per loan: UCI
        # holdout AUC after 6 months 0.7836 (20) vs 0.7806 (40 on 1 row per loan).
        min_samples_leaf = int(np.clip(n_loans // 1000, 3, 40))
    # Each tree draws about two snapshots per loan: the loans' information, at the cost of a
    # loan-level fit (UCI: 19 s instead of 145 s on all 126k snapshots, AUC unchanged).
    max_samples = float(min(1.0, 2.0 * n_loans / len(rows)))
    max_samples = None if max_samples >= 1.0 else max_samples
    folds = list(
        GroupKFold(GROUP_FOLDS, shuffle=True, random_state=seed).split(
            rows, groups=snaps.loan[rows]
        )
    )
    with sklearn.config_context(enable_metadata_routing=True):
        model = build_model(
            seed, n_estimators, min_samples_leaf, n_jobs, inputs, max_samples, cv=folds
        )
        # The loan weights go to the forest only (as ``loan_weight``): the isotonic map is
        # fitted on every snapshot alike, because that is the population the stream scores
        # and the tiers act on. Weighted, it over-predicted every months-on-book bucket of a
        # synthetic holdout by about 0.02 (short loans, positive at every snapshot, weigh
        # more per snapshot).
        model.estimator[-1].set_fit_request(sample_weight="loan_weight")
        with parallel_config(backend="threading"):  # tree building releases the GIL
            model.fit(snaps.x[rows], snaps.y[rows], loan_weight=snaps.weight[rows])
    _strip_routing(model)
    # The folds were index lists of this fit; the bundle records how they were made instead.
    model.cv = GROUP_FOLDS
    single_threaded(model)  # what the stream runs: identical scores whatever the batch
    return model, {"min_samples_leaf": min_samples_leaf, "max_samples": max_samples}


def _out_of_time(
    snaps: Snapshots, train_loans: np.ndarray, test_loans: np.ndarray, settings: dict[str, Any]
) -> dict[str, Any]:
    """Fit (:data:`OOT_TREES` trees) on the training loans' snapshots dated up to a cutoff
    (the 60th percentile of their dates), test on the held-out loans' snapshots dated after
    it."""
    train_rows = snaps.rows(train_loans)
    cutoff = int(np.percentile(snaps.at[train_rows], OOT_QUANTILE))
    early = train_rows[snaps.at[train_rows] <= cutoff]
    test_rows = snaps.rows(test_loans)
    late = test_rows[snaps.at[test_rows] > cutoff]
    cutoff_day = datetime.fromtimestamp(cutoff / 1000, UTC).date().isoformat()
    if (
        len(set(snaps.y[early].tolist())) < 2
        or len(set(snaps.y[late].tolist())) < 2
        or len(np.unique(snaps.loan[early])) < 30
    ):
        return {
            "cutoff": cutoff_day,
            "note": "event dates do not allow an out-of-time split with both outcomes on each side",
        }
    # Fewer trees: a check of the split, not the shipped model (keeps UCI training < 2 min).
    model, _ = fit_snapshots(
        snaps, early, **{**settings, "n_estimators": min(settings["n_estimators"], OOT_TREES)}
    )
    p = _p_default(model)(snaps.x[late])
    out = {"cutoff": cutoff_day, "n_train_snapshots": len(early), "n_test_snapshots": len(late)}
    out.update(
        {
            k: v
            for k, v in evaluate(snaps.y[late], p).items()
            if k in ("roc_auc", "pr_auc", "brier", "base_rate")
        }
    )
    out["mean_predicted"] = float(p.mean())
    return out


def holdout_loans(history: History, metadata: dict[str, Any]) -> tuple[Snapshots, np.ndarray]:
    """The snapshots of ``history`` and the loan indices a bundle held out, recovered from its
    ``metadata`` (horizon, holdout share, seed) and checked against its training-data hash."""
    snaps = snapshot_set(history, metadata["horizon_months"])
    if _hash_arrays(snaps.x, snaps.y, snaps.weight, snaps.loan) != metadata["training_data_sha256"]:
        raise TrainingError(
            "the replayed history differs from the bundle's training data: "
            "cannot recover its holdout split"
        )
    _, test = split_by_loan(
        snaps.outcome, metadata["metrics"]["holdout"], metadata["metrics"]["seed"]
    )
    return snaps, test


def train_bundle(
    history: History,
    out: str | Path,
    *,
    holdout: float = 0.3,
    seed: int = 0,
    n_estimators: int = 150,
    min_samples_leaf: int | None = None,
    n_jobs: int = 2,
    horizon_months: int = DEFAULT_HORIZON_MONTHS,
    use_age: bool = False,
    use_treatments: bool = False,
    out_of_time: bool = True,
    input_sha256: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train on point-in-time snapshots, evaluate on held-out loans, write the bundle to
    ``out``; return the metrics (as in ``--json``)."""
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    say(f"replaying {len(history.events):,} events into point-in-time snapshots")
    snaps = snapshot_set(history, horizon_months)
    if len(set(snaps.y.tolist())) < 2:
        raise TrainingError(
            f"all {len(snaps.y)} snapshots have label {snaps.y[0]} (written off "
            f"within {horizon_months} months): the model needs both"
        )
    train, test = split_by_loan(snaps.outcome, holdout, seed)
    train_rows, test_rows = snaps.rows(train), snaps.rows(test)
    inputs = model_inputs(use_age, use_treatments)
    say(
        f"fitting the calibrated random forest on {len(train_rows):,} snapshots of "
        f"{len(train):,} loans"
    )
    fit_started = time.perf_counter()
    settings = {
        "seed": seed,
        "n_estimators": n_estimators,
        "min_samples_leaf": min_samples_leaf,
        "n_jobs": n_jobs,
        "inputs": inputs,
    }
    model, fitted = fit_snapshots(snaps, train_rows, **settings)
    predict = _p_default(model)
    fit_seconds = time.perf_counter() - fit_started
    metrics: dict[str, Any] = {
        "unit": "snapshot",
        "horizon_months": horizon_months,
        "n_loans": len(snaps.loan_ids),
        "n_train": len(train),
        "n_holdout": len(test),
        "n_snapshots": len(snaps.y),
        "n_train_snapshots": len(train_rows),
        "n_holdout_snapshots": len(test_rows),
        "censored_snapshots": snaps.censored,
        "holdout": holdout,
        "seed": seed,
        "skipped_events": snaps.skipped,
        "model_features": list(inputs),
        "excluded_features": {n: EXCLUSION_REASONS[n] for n in FEATURE_NAMES if n not in inputs},
    }
    report: dict[str, Any] = {}
    if len(test):
        say(f"evaluating on {len(test_rows):,} snapshots of {len(test):,} held-out loans")
        holdout_m, report = holdout_metrics(
            model, snaps.x[test_rows], snaps.y[test_rows], seed, inputs
        )
        metrics.update(holdout_m)
        p = predict(snaps.x[test_rows])
        metrics["by_months_on_book"] = by_bucket(snaps, test_rows, p, THRESHOLDS, seed)
        months = int(min(12, snaps.months_on_book[test_rows].max()))
        metrics["by_month"] = by_bucket(snaps, test_rows, p, THRESHOLDS, seed, per_month=months)
        metrics["lead_time"] = lead_time(snaps, test_rows, p, THRESHOLDS)
        metrics["fairness"] = fairness(snaps, test_rows, p, THRESHOLDS)
        labelled = test[snaps.outcome[test] >= 0]
        if len(set(snaps.outcome[labelled].tolist())) == 2:
            final = predict(snaps.final_x[labelled])
            scored = evaluate(snaps.outcome[labelled], final)
            metrics["final_state"] = {k: scored[k] for k in ("roc_auc", "brier", "base_rate", "n")}
        if out_of_time:
            say("out-of-time check: earlier snapshots train, later ones test")
            metrics["out_of_time"] = _out_of_time(snaps, train, test, settings)
    say("comparing K-Means, DBSCAN and agglomerative clustering")
    x = snaps.final_x
    risk = predict(x)
    seg = segmentation(x, risk, seed)
    metrics["clustering"] = seg["algorithms"]
    metrics["silhouette"] = {name: a["silhouette"] for name, a in seg["algorithms"].items()}
    segments = seg["segments"]
    y_final = snaps.outcome if (snaps.outcome >= 0).all() else None
    report.update(report_data(x, y_final, risk, seg["z"], segments, seg, seed))
    # Under the shipped default policy, with the offline K-Means segments.
    metrics["strategy_mix"] = report["strategy_mix"]
    metrics["tier_mix"] = report["tier_mix"]
    metrics["segment_mix"] = {s: int((segments == s).sum()) for s in sorted(set(segments))}
    metrics["fit_seconds"] = round(fit_seconds, 2)
    metrics["train_seconds"] = round(time.perf_counter() - started, 2)
    metadata = {
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": history.source,
        "training_data_sha256": _hash_arrays(snaps.x, snaps.y, snaps.weight, snaps.loan),
        "input_sha256": input_sha256,
        "features": list(FEATURE_NAMES),
        "model_features": list(inputs),
        "categorical_features": list(CATEGORICAL_FEATURES),
        "horizon_months": horizon_months,
        "training_unit": {
            "rows": "one snapshot per loan per installment",
            "label": f"written off within {horizon_months} months of the snapshot",
            "weights": "1 / labelled snapshots of the loan",
            "split": "by loan",
        },
        "thresholds": dict(THRESHOLDS),
        "calibration": {
            "method": "isotonic",
            "cv": f"GroupKFold({GROUP_FOLDS}) by loan",
            "ensemble": False,
            "table": metrics.get("calibration"),
        },
        "model": {
            "estimator": "RandomForestClassifier",
            "n_estimators": n_estimators,
            "min_samples_leaf": fitted["min_samples_leaf"],
            "max_samples": fitted["max_samples"],
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
