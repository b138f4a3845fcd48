"""The population view of a book that the analysts' report draws (:mod:`models.report`).

Training stores it in the bundle as ``report_data.json`` (:data:`REPORT_FILE`); ``report
--input`` computes it for another book with the same functions, so both views agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from models.features.columns import FEATURE_INDEX, SEGMENT_FEATURES, segment_matrix
from models.features.state import replay
from models.serving.bundle import BundleError
from models.serving.policy import Policy

REPORT_FILE = "report_data.json"
PROJECTION_POINTS = 2000  # loans drawn in the segment map
MAX_SCORES = 50_000  # loans in the score histogram


def population_data(
    x: np.ndarray,
    y: np.ndarray | None,
    risk: np.ndarray,
    z: np.ndarray,
    segments: np.ndarray,
    seed: int = 0,
) -> dict[str, Any]:
    """The population view of a book: a 2-D PCA projection of a seeded sample of loans (with
    their segment and risk), per-segment profiles, the scores and the strategy mix under the
    default policy. ``x`` = ``features()`` rows, ``z`` = standardized segmentation features.
    The fitted PCA is returned under ``_pca`` (not serialised)."""
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed + 1)
    idx = np.sort(rng.choice(len(z), size=min(PROJECTION_POINTS, len(z)), replace=False))
    pca = PCA(n_components=2, random_state=seed).fit(z)
    xy = pca.transform(z[idx])
    profiles = {}
    for s in sorted(set(segments.tolist())):
        mask = segments == s
        columns = {n: x[mask, FEATURE_INDEX[n]] for n in SEGMENT_FEATURES}
        profiles[s] = {
            "count": int(mask.sum()),
            "default_rate": float(y[mask].mean()) if y is not None else None,
            "mean_risk": float(risk[mask].mean()),
            "features": {
                n: float(np.nanmean(c)) if np.isfinite(c).any() else None
                for n, c in columns.items()
            },
        }
    policy = Policy.load(None)
    tiers = [policy.tier(r) for r in risk.tolist()]
    strategies = [policy.matrix[t][s] for t, s in zip(tiers, segments.tolist(), strict=True)]
    scores = risk if len(risk) <= MAX_SCORES else risk[idx]
    return {
        "projection": {
            "x": np.round(xy[:, 0], 4).tolist(),
            "y": np.round(xy[:, 1], 4).tolist(),
            "segment": segments[idx].tolist(),
            "risk": np.round(risk[idx], 4).tolist(),
            "explained_variance": pca.explained_variance_ratio_.tolist(),
        },
        "profiles": profiles,
        "all_scores": np.round(scores, 5).tolist(),
        "strategy_mix": {s: strategies.count(s) for s in sorted(set(strategies))},
        "tier_mix": {t: tiers.count(t) for t in ("HIGH", "MODERATE", "LOW")},
        "n_loans": len(risk),
        "_pca": pca,
    }


def input_data(bundle: Any, history: Any) -> dict[str, Any]:
    """The population view of another book (``report --input``): replayed through the same
    state machine, scored by the bundle, segmented by the bundle's K-Means centres."""
    states = replay(history.events)
    if not states:
        raise ValueError("the input holds no loans")
    loan_ids = sorted(states)
    x = np.array([states[i].features() for i in loan_ids], dtype=np.float64)
    risk = bundle.predict_proba(x)
    init = bundle.segmenter_init
    means, stds = np.array(init["means"]), np.array(init["stds"])
    raw = segment_matrix(x)
    raw = np.where(np.isnan(raw), means, raw)
    z = (raw - means) / stds
    centres = np.array(init["centres"])
    nearest = ((z[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
    segments = np.array(init["names"], dtype=object)[nearest]
    outcomes = history.outcomes
    y = (
        np.array([outcomes[i] for i in loan_ids])
        if loan_ids and all(i in outcomes for i in loan_ids)
        else None
    )
    data = population_data(x, y, risk, z, segments)
    data.pop("_pca")
    data["segment_by_loan"] = dict(zip(loan_ids, segments.tolist(), strict=True))
    return data


def load_report_data(bundle: Any) -> dict[str, Any]:
    """The bundle's ``report_data.json`` (its hash was verified when the bundle loaded)."""
    if REPORT_FILE not in bundle.metadata.get("files", {}):
        raise BundleError(f"{bundle.path}: no {REPORT_FILE}; retrain the bundle")
    return json.loads((Path(bundle.path) / REPORT_FILE).read_text(encoding="utf-8"))


def report_data(
    x: np.ndarray,
    y: np.ndarray,
    risk: np.ndarray,
    z: np.ndarray,
    segments: np.ndarray,
    comparison: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """What the HTML report draws beyond the metrics: the population view (projection,
    profiles, scores) and the clustering comparison's subsample in the same projection."""
    data = population_data(x, y, risk, z, segments, seed)
    pca = data.pop("_pca")
    sample = comparison["sample_index"][:PROJECTION_POINTS]
    xy = pca.transform(comparison["z"][sample])
    data["comparison_sample"] = {
        "x": np.round(xy[:, 0], 4).tolist(),
        "y": np.round(xy[:, 1], 4).tolist(),
        "labels": {
            name: lab[:PROJECTION_POINTS].tolist() for name, lab in comparison["labels"].items()
        },
    }
    return data
