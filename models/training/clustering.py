"""The offline comparison of clusterings that initialises the online segmenter.

:func:`compare_clusterings`: on the standardized ``SEGMENT_FEATURES`` compare K-Means (k=3),
DBSCAN (eps at the knee of the k-distance curve) and agglomerative clustering (ward, 3
clusters) by silhouette, Davies-Bouldin and Calinski-Harabasz; name each algorithm's clusters
HIGH_RISK / OTHERS / LOW_RISK by their members' mean predicted risk. The O(n^2) algorithms
(DBSCAN's neighbourhoods, ward, silhouette) run on a seeded subsample.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.serving.segmenter import name_by_risk


def knee(values: np.ndarray) -> float:
    """Knee of an increasing curve: the point farthest from the chord joining its ends."""
    y = np.asarray(values, dtype=float)
    if y.size < 3 or y[-1] == y[0]:
        return float(y[-1]) if y.size else 0.0
    x = np.linspace(0.0, 1.0, y.size)
    yn = (y - y[0]) / (y[-1] - y[0])
    return float(y[int(np.argmax(x - yn))])


def _scores(z: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    from sklearn.metrics import (
        calinski_harabasz_score,
        davies_bouldin_score,
        silhouette_score,
    )

    mask = labels >= 0  # DBSCAN noise is not a cluster
    if len(set(labels[mask].tolist())) < 2 or mask.sum() < 3:
        return {"silhouette": None, "davies_bouldin": None, "calinski_harabasz": None}
    zz, ll = z[mask], labels[mask]
    return {
        "silhouette": float(silhouette_score(zz, ll)),
        "davies_bouldin": float(davies_bouldin_score(zz, ll)),
        "calinski_harabasz": float(calinski_harabasz_score(zz, ll)),
    }


def compare_clusterings(
    x: np.ndarray, risk: np.ndarray, seed: int = 0, sample: int = 3000
) -> dict[str, Any]:
    """Fit and score the three algorithms on raw segmentation features ``x`` (n x d).

    Returns ``{"scaler": {...}, "algorithms": {name: {...}}, "kmeans": fitted KMeans,
    "sample_index": ..., "labels": {name: labels on the sample}}``; every algorithm entry has
    silhouette, Davies-Bouldin, Calinski-Harabasz (on the same subsample), cluster sizes,
    mean predicted risk and names per cluster.
    """
    from sklearn.cluster import DBSCAN, AgglomerativeClustering, KMeans
    from sklearn.impute import SimpleImputer
    from sklearn.neighbors import NearestNeighbors
    from sklearn.preprocessing import StandardScaler

    imputer = SimpleImputer(strategy="mean", keep_empty_features=True).fit(x)
    x = imputer.transform(x)
    scaler = StandardScaler().fit(x)
    stds = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    z = (x - scaler.mean_) / stds
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(z), size=min(sample, len(z)), replace=False))
    zs, rs = z[idx], risk[idx]

    kmeans = KMeans(n_clusters=3, n_init=10, random_state=seed).fit(z)
    min_samples = 2 * z.shape[1]
    k = min(min_samples, len(zs) - 1)
    distances = NearestNeighbors(n_neighbors=k + 1).fit(zs).kneighbors(zs)[0][:, -1]
    eps = max(knee(np.sort(distances)), 1e-6)
    labels = {
        "kmeans": kmeans.predict(zs),
        "dbscan": DBSCAN(eps=eps, min_samples=min_samples).fit_predict(zs),
        "agglomerative": AgglomerativeClustering(n_clusters=3, linkage="ward").fit_predict(zs),
    }
    algorithms: dict[str, Any] = {}
    for name, lab in labels.items():
        clusters = sorted(set(lab.tolist()) - {-1})
        risks = [float(rs[lab == c].mean()) for c in clusters]
        names = name_by_risk(risks)
        algorithms[name] = {
            **_scores(zs, lab),
            "n_clusters": len(clusters),
            "sizes": [int((lab == c).sum()) for c in clusters],
            "mean_risk": risks,
            "names": names,
            "noise": int((lab == -1).sum()),
        }
    algorithms["dbscan"]["eps"] = eps
    algorithms["dbscan"]["min_samples"] = min_samples
    # The stored K-Means is named by its members' mean risk over the whole data.
    full = kmeans.labels_
    km_risk = [float(risk[full == c].mean()) if (full == c).any() else 0.0 for c in range(3)]
    algorithms["kmeans"]["mean_risk_full"] = km_risk
    return {
        "scaler": {"means": scaler.mean_.tolist(), "stds": stds.tolist(), "count": len(z)},
        "algorithms": algorithms,
        "kmeans": kmeans,
        "kmeans_names": name_by_risk(km_risk),
        "sample_index": idx,
        "labels": labels,
        "z": z,
    }


def risk_axis(z: np.ndarray, risk: np.ndarray) -> list[float]:
    """Least-squares weights w with ``z @ w ~ risk`` (centred): the direction along which the
    online clusterer ranks its centres."""
    w, *_ = np.linalg.lstsq(z - z.mean(axis=0), risk - risk.mean(), rcond=None)
    return [float(v) for v in w]
