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
clusterer names segments the same way. Its state is plain JSON, never pickle. The per-event
step runs in a compiled kernel (``models/_segmenter_kernel.pyx``) when it was built, else in the
pure-Python reference kept here; the two agree bit for bit on every supported interpreter (the
kernel sums as the running interpreter's ``sum`` does: plain on 3.11, compensated from 3.12).

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
from models.native import load_kernel

# None without a C compiler (or with LOAN_RECOVERY_PURE_PYTHON=1): the reference code runs.
_segmenter_kernel = load_kernel("_segmenter_kernel")

SEGMENT_NAMES = ("HIGH_RISK", "OTHERS", "LOW_RISK")
DEFAULT_HALFLIFE = 0.01  # river's learning rate: a centre moves 1 % towards each new member


def builtin_summation() -> str:
    """How this interpreter's ``sum`` adds floats, told by what it does: ``"compensated"``
    (CPython >= 3.12, Neumaier) when ``sum([1e100, 1.0, -1e100])`` keeps the 1.0 that plain
    left-to-right addition loses, else ``"plain"``."""
    return "compensated" if sum([1e100, 1.0, -1e100]) == 1.0 else "plain"


# Whether segmenters use the compiled kernel by default: wherever it is built and sums the way
# this interpreter's ``sum`` does (the kernel picks by version; this checks by behaviour, so an
# interpreter whose ``sum`` it does not know runs the reference instead of diverging from it).
NATIVE = (_segmenter_kernel is not None
          and getattr(_segmenter_kernel, "SUMMATION", None) == builtin_summation())


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
    """river ``StandardScaler`` + ``KMeans(3)``, warm-started; deterministic for an input sequence.

    The stream updates the segmenter after every event, so its step is on the hot path. It
    runs river's own update equations -- running mean and variance per feature, scaling,
    squared-distance nearest centre, ``centre += halflife * (x - centre)`` -- on plain lists,
    with the same floating-point operations in the same order, instead of river's per-call
    dicts, sets and closures: the result is bit for bit river's (``tests/test_models_segmenter``
    replays thousands of steps through both) at a fifth of the cost. :meth:`to_river` hands
    out the equivalent river objects.

    With ``native`` (default :data:`NATIVE`) the state lives in the compiled kernel and the
    step runs there, about ten times faster again; the Python lists (``_means``, ``_vars``,
    ``_centres``, ``_count``, ``_risks``, ``_names``) are then refreshed from it by
    :meth:`_sync` before anything here reads them. ``native=False`` keeps the reference code.
    """

    def __init__(self, init: dict[str, Any], state: dict[str, Any] | None = None,
                 native: bool | None = None) -> None:  # fmt: skip
        self.init = init
        self.features: list[str] = list(init["features"])
        if unknown := [n for n in self.features if n not in FEATURE_INDEX]:
            raise ValueError(f"segmenter features {unknown} are not computed by this version's "
                             "state machine; retrain the bundle")  # fmt: skip
        self._index = [FEATURE_INDEX[name] for name in self.features]
        self.risk_weights = [float(w) for w in init["risk_weights"]]
        self.halflife = float(init.get("halflife", DEFAULT_HALFLIFE))
        s = state or {
            "count": init["count"], "means": init["means"],
            "vars": [sd * sd for sd in init["stds"]], "centres": init["centres"],
        }  # fmt: skip
        width = len(self.features)
        self._count = int(s["count"])
        self._means = [float(m) for m in s["means"]]
        self._vars = [float(v) for v in s["vars"]]
        self._centres = [[float(v) for v in centre] for centre in s["centres"]]
        if {len(self._means), len(self._vars), *map(len, self._centres)} != {width}:
            raise ValueError(f"segmenter state does not have {width} features per entry")
        self._risks = [self._risk(centre) for centre in self._centres]
        self._names = name_by_risk(self._risks)
        self._kernel = self._new_kernel() if self._use_kernel(native) else None

    def _use_kernel(self, native: bool | None) -> bool:
        """``native=None``: the kernel wherever it is built and supports this shape (one risk
        weight per feature, fewer than 64 centres); ``True`` insists on it."""
        if native is None:
            fits = len(self.risk_weights) == len(self.features) and 1 <= len(self._centres) < 64
            return NATIVE and fits
        if native and _segmenter_kernel is None:
            raise ImportError("models._segmenter_kernel is not built (pip install -e .)")
        return native

    def _new_kernel(self) -> Any:
        assert _segmenter_kernel is not None
        return _segmenter_kernel.SegmenterKernel(
            self._index, self._count, self._means, self._vars, self._centres,
            self.risk_weights, self.halflife)  # fmt: skip

    @property
    def native(self) -> bool:
        """Whether the compiled kernel holds the state and runs the step."""
        return self._kernel is not None

    def _sync(self) -> None:
        """Refresh the Python lists from the kernel if it stepped since the last refresh (every
        step starts by counting, so an unchanged count means unchanged state)."""
        kernel = self._kernel
        if kernel is not None and kernel.count != self._count:
            self._count, self._means, self._vars = kernel.count, kernel.means, kernel.vars
            self._centres, self._risks, self._names = kernel.centres, kernel.risks, kernel.names

    @classmethod
    def from_bundle(cls, bundle: Any) -> OnlineSegmenter:
        """Start from the bundle's offline K-Means (``bundle.segmenter_init``)."""
        return cls(bundle.segmenter_init)

    # -- input --------------------------------------------------------------------------------

    def _raw(self, x: Any) -> list[float]:
        """Raw features in ``features`` order. Missing values become the running mean, so
        they neither move the scaler nor pull a centre."""
        return self._fill(self._select(x))

    def _select(self, x: Any) -> list[float]:
        """The segment features of ``x`` in ``features`` order, NaN where missing. Accepts a
        full ``features()`` list (the stream's case, checked first), a float64 row (numpy,
        ``array('d')``: read as its ``tolist()``, exactly what the kernel reads), a
        ``LoanState`` or a feature dict (extra keys ignored)."""
        if type(x) is not list:
            if hasattr(x, "features") and callable(x.features):
                x = x.features()
            elif isinstance(x, dict):
                return [x.get(name, math.nan) for name in self.features]
            elif hasattr(x, "tolist"):
                x = x.tolist()
        return [x[i] for i in self._index]

    def _fill(self, values: list[float]) -> list[float]:
        means = self._means
        return [v if v == v else means[k] for k, v in enumerate(values)]

    def _scale(self, raw: list[float]) -> list[float]:
        # river.preprocessing.StandardScaler.transform_one.
        means, vars_ = self._means, self._vars
        return [(xk - means[k]) / vars_[k] ** 0.5 if vars_[k] else 0.0
                for k, xk in enumerate(raw)]  # fmt: skip

    def _nearest(self, z: list[float]) -> int:
        # river.cluster.KMeans.predict_one: squared distances summed in feature order; the
        # first of equally near centres wins (min over the centres dict).
        best, best_distance = 0, math.inf
        for c, centre in enumerate(self._centres):
            distance = sum([abs(ck - zk) ** 2 for ck, zk in zip(centre, z, strict=True)])
            if distance < best_distance:
                best, best_distance = c, distance
        return best

    def _risk(self, centre: list[float]) -> float:
        return sum(wk * centre[k] for k, wk in enumerate(self.risk_weights))

    # -- the river API ------------------------------------------------------------------------

    def learn_one(self, x: Any) -> None:
        """Update the scaler and move the nearest centre towards ``x``."""
        self.learn_predict(x)

    def predict_one(self, x: Any) -> str:
        """HIGH_RISK, OTHERS or LOW_RISK for ``x``."""
        self._sync()
        return self._names[self._nearest(self._scale(self._raw(x)))]

    def learn_predict(self, x: Any) -> str:
        """``learn_one`` then the segment of the centre that moved (river's
        ``learn_predict_one``): what the stream does after every event, so a full
        ``features()`` list or float64 row goes straight to the kernel."""
        kernel = self._kernel
        if kernel is None:
            return self._learn_predict_python(x)
        if type(x) is list or type(x) is np.ndarray:
            return kernel.learn_predict(x)  # the stream's rows (numpy rows must be float64)
        if isinstance(x, dict) or hasattr(x, "features") or not hasattr(x, "tolist"):
            return kernel.learn_predict_values(self._select(x))
        return kernel.learn_predict(x)  # another float64 buffer: array('d'), memoryview

    def _learn_predict_python(self, x: Any) -> str:
        """The reference step, which the kernel replays operation for operation.

        The scaler's update and transform are fused per feature (each feature's are
        independent, so this changes no bit) to keep the per-event path short."""
        raw = self._raw(x)
        self._count = n = self._count + 1
        means, vars_ = self._means, self._vars
        z = []
        for k, xk in enumerate(raw):
            old = means[k]
            means[k] = mean = old + (xk - old) / n
            vars_[k] = var = vars_[k] + ((xk - old) * (xk - mean) - vars_[k]) / n
            z.append((xk - mean) / var**0.5 if var else 0.0)
        c = self._nearest(z)
        centre, rate = self._centres[c], self.halflife
        for k, zk in enumerate(z):
            centre[k] += rate * (zk - centre[k])
        self._risks[c] = self._risk(centre)
        self._names = name_by_risk(self._risks)
        return self._names[c]

    def to_river(self) -> tuple[Any, Any]:
        """The same scaler and clusterer as river objects (``StandardScaler``, ``KMeans``),
        features keyed by their position in ``features``."""
        from river import cluster, preprocessing

        self._sync()
        keys = range(len(self.features))
        scaler = preprocessing.StandardScaler._from_state(
            counts={k: self._count for k in keys},
            means={k: self._means[k] for k in keys}, vars={k: self._vars[k] for k in keys},
        )  # fmt: skip
        kmeans = cluster.KMeans(n_clusters=len(self._centres), halflife=self.halflife, seed=0)
        for c, centre in enumerate(self._centres):
            kmeans.centers[c].update(dict(zip(keys, centre, strict=True)))
        return scaler, kmeans

    # -- state --------------------------------------------------------------------------------

    @property
    def centres(self) -> list[list[float]]:
        self._sync()
        return [list(centre) for centre in self._centres]

    @property
    def names(self) -> list[str]:
        self._sync()
        return list(self._names)

    def state(self) -> dict[str, Any]:
        self._sync()
        return {"count": self._count, "means": list(self._means), "vars": list(self._vars),
                "centres": self.centres}  # fmt: skip

    def to_json(self) -> str:
        """Everything needed to resume, as plain JSON (floats round-trip exactly)."""
        return json.dumps({"init": self.init, "state": self.state()}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, native: bool | None = None) -> OnlineSegmenter:
        data = json.loads(text)
        return cls(data["init"], data["state"], native)


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
