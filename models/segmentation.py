"""Borrower segmentation: the offline comparison of clusterings and the online clusterer.

Offline (:func:`compare_clusterings`): on the standardized ``SEGMENT_FEATURES`` compare K-Means
(k=3), DBSCAN (eps at the knee of the k-distance curve) and agglomerative clustering (ward, 3
clusters) by silhouette, Davies-Bouldin and Calinski-Harabasz; name each algorithm's clusters
HIGH_RISK / OTHERS / LOW_RISK by their members' mean predicted risk. The O(n^2) algorithms
(DBSCAN's neighbourhoods, ward, silhouette) run on a seeded subsample.

Online (:class:`OnlineSegmenter`): river ``StandardScaler`` + ``KMeans(n_clusters=3)``
warm-started from the offline K-Means centres and scaler statistics stored in the bundle.
Segment names come from ranking the current centres on the *risk axis* (the linear fit of
predicted risk on the standardized features, also from the bundle), so every partition's
clusterer names segments the same way. Its state is plain JSON, never pickle.

>>> init = {"features": ["days_past_due", "outstanding_ratio"], "means": [10.0, 0.5],
...         "stds": [20.0, 0.2], "count": 1000, "centres": [[2.0, -1.0], [0.0, 0.0], [-0.5, 1.0]],
...         "risk_weights": [0.1, -0.05], "halflife": 0.01}
>>> seg = OnlineSegmenter(init)
>>> seg.predict_one({"days_past_due": 60.0, "outstanding_ratio": 0.3})
'HIGH_RISK'
>>> seg.learn_one({"days_past_due": 0.0, "outstanding_ratio": 0.7}) is None
True
>>> OnlineSegmenter.from_json(seg.to_json()).to_json() == seg.to_json()
True
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from models.features import FEATURE_INDEX, SEGMENT_FEATURES

SEGMENT_NAMES = ("HIGH_RISK", "OTHERS", "LOW_RISK")
DEFAULT_HALFLIFE = 0.01  # river's learning rate: a centre moves 1 % towards each new member


def name_by_risk(risks: Sequence[float]) -> list[str]:
    """Names for clusters with these mean risks: highest HIGH_RISK, lowest LOW_RISK, the rest
    OTHERS (ties broken by cluster index, so naming is deterministic)."""
    order = sorted(range(len(risks)), key=lambda i: (-risks[i], i))
    names = ["OTHERS"] * len(risks)
    if order:
        names[order[0]] = "HIGH_RISK"
    if len(order) > 1:
        names[order[-1]] = "LOW_RISK"
    return names


# -- online -----------------------------------------------------------------------------------


class OnlineSegmenter:
    """river StandardScaler + KMeans(3), warm-started; deterministic for a given input sequence.

    Features are keyed by their position in ``features`` (small ints): river iterates feature
    keys through sets, and int hashing (unlike str hashing) is the same in every process, so
    distances sum in the same order everywhere.
    """

    def __init__(self, init: dict[str, Any], state: dict[str, Any] | None = None) -> None:
        from river import cluster, preprocessing

        self.init = init
        self.features: list[str] = list(init["features"])
        if unknown := [n for n in self.features if n not in FEATURE_INDEX]:
            raise ValueError(f"segmenter features {unknown} are not computed by this version's "
                             "state machine; retrain the bundle")  # fmt: skip
        self._index = [FEATURE_INDEX[name] for name in self.features]
        self.risk_weights = [float(w) for w in init["risk_weights"]]
        keys = range(len(self.features))
        s = state or {
            "count": init["count"], "means": init["means"],
            "vars": [sd * sd for sd in init["stds"]], "centres": init["centres"],
        }  # fmt: skip
        self.scaler = preprocessing.StandardScaler._from_state(
            counts={k: int(s["count"]) for k in keys},
            means={k: float(m) for k, m in zip(keys, s["means"], strict=True)},
            vars={k: float(v) for k, v in zip(keys, s["vars"], strict=True)},
        )
        self.kmeans = cluster.KMeans(n_clusters=len(s["centres"]),
                                     halflife=float(init.get("halflife", DEFAULT_HALFLIFE)), seed=0)
        for c, centre in enumerate(s["centres"]):
            self.kmeans.centers[c].update({k: float(v) for k, v in zip(keys, centre, strict=True)})
        self._rename()

    @classmethod
    def from_bundle(cls, bundle: Any) -> OnlineSegmenter:
        """Start from the bundle's offline K-Means (``bundle.segmenter_init``)."""
        return cls(bundle.segmenter_init)

    # -- input --------------------------------------------------------------------------------

    def _x(self, x: Any) -> dict[int, float]:
        """Raw features -> {position: value}. Accepts a feature dict (extra keys ignored), a
        ``LoanState`` or a full ``features()`` list. Missing values become the running mean,
        so they neither move the scaler nor pull a centre."""
        if hasattr(x, "features") and callable(x.features):
            x = x.features()
        means = self.scaler.means
        out: dict[int, float] = {}
        if isinstance(x, dict):
            for k, name in enumerate(self.features):
                value = x.get(name, math.nan)
                out[k] = value if value == value else means[k]
        else:
            for k, i in enumerate(self._index):
                value = x[i]
                out[k] = value if value == value else means[k]
        return out

    # -- the river API ------------------------------------------------------------------------

    def learn_one(self, x: Any) -> None:
        """Update the scaler and move the nearest centre towards ``x``."""
        raw = self._x(x)
        self.scaler.learn_one(raw)
        self.kmeans.learn_one(self.scaler.transform_one(raw))
        self._rename()

    def predict_one(self, x: Any) -> str:
        """HIGH_RISK, OTHERS or LOW_RISK for ``x``."""
        return self._names[self.kmeans.predict_one(self.scaler.transform_one(self._x(x)))]

    def learn_predict(self, x: Any) -> str:
        """``learn_one`` then ``predict_one`` (what the stream does after every event)."""
        raw = self._x(x)
        self.scaler.learn_one(raw)
        cluster = self.kmeans.learn_predict_one(self.scaler.transform_one(raw))
        self._rename()
        return self._names[cluster]

    def _rename(self) -> None:
        w = self.risk_weights
        risks = [sum(wk * centre[k] for k, wk in enumerate(w))
                 for _, centre in sorted(self.kmeans.centers.items())]  # fmt: skip
        self._names = name_by_risk(risks)

    # -- state --------------------------------------------------------------------------------

    @property
    def centres(self) -> list[list[float]]:
        keys = range(len(self.features))
        ordered = sorted(self.kmeans.centers.items())
        return [[float(centre[k]) for k in keys] for _, centre in ordered]

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def state(self) -> dict[str, Any]:
        keys = range(len(self.features))
        sc = self.scaler
        return {"count": int(sc.counts[0]), "means": [float(sc.means[k]) for k in keys],
                "vars": [float(sc.vars[k]) for k in keys], "centres": self.centres}  # fmt: skip

    def to_json(self) -> str:
        """Everything needed to resume, as plain JSON (floats round-trip exactly)."""
        return json.dumps({"init": self.init, "state": self.state()}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> OnlineSegmenter:
        data = json.loads(text)
        return cls(data["init"], data["state"])


# -- offline ----------------------------------------------------------------------------------


def segment_matrix(features: np.ndarray) -> np.ndarray:
    """The ``SEGMENT_FEATURES`` columns of a ``features()`` matrix."""
    return features[:, [FEATURE_INDEX[n] for n in SEGMENT_FEATURES]]


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
    return {"silhouette": float(silhouette_score(zz, ll)),
            "davies_bouldin": float(davies_bouldin_score(zz, ll)),
            "calinski_harabasz": float(calinski_harabasz_score(zz, ll))}  # fmt: skip


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
            **_scores(zs, lab), "n_clusters": len(clusters),
            "sizes": [int((lab == c).sum()) for c in clusters],
            "mean_risk": risks, "names": names,
            "noise": int((lab == -1).sum()),
        }  # fmt: skip
    algorithms["dbscan"]["eps"] = eps
    algorithms["dbscan"]["min_samples"] = min_samples
    # The stored K-Means is named by its members' mean risk over the whole data.
    full = kmeans.labels_
    km_risk = [float(risk[full == c].mean()) if (full == c).any() else 0.0 for c in range(3)]
    algorithms["kmeans"]["mean_risk_full"] = km_risk
    return {
        "scaler": {"means": scaler.mean_.tolist(), "stds": stds.tolist(), "count": len(z)},
        "algorithms": algorithms, "kmeans": kmeans, "kmeans_names": name_by_risk(km_risk),
        "sample_index": idx, "labels": labels, "z": z,
    }  # fmt: skip


def risk_axis(z: np.ndarray, risk: np.ndarray) -> list[float]:
    """Least-squares weights w with ``z @ w ~ risk`` (centred): the direction along which the
    online clusterer ranks its centres."""
    w, *_ = np.linalg.lstsq(z - z.mean(axis=0), risk - risk.mean(), rcond=None)
    return [float(v) for v in w]
