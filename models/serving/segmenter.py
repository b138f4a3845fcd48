"""The online borrower segmenter the scorer runs (the offline comparison that initialises it is
:mod:`models.training.clustering`).

:class:`OnlineSegmenter`: river ``StandardScaler`` + ``KMeans(n_clusters=3)`` warm-started from the
offline K-Means centres and scaler statistics stored in the bundle. Segment names come from ranking
the current centres on the *risk axis* (the linear fit of predicted risk on the standardized
features, also from the bundle), so every partition's clusterer names segments the same way. Its
state is plain JSON, never pickle. The per-event step runs in a compiled kernel
(``models/serving/_segmenter_kernel.pyx``) when it was built, else in the pure-Python reference kept
here; the two agree bit for bit on every supported interpreter (the kernel sums as the running
interpreter's ``sum`` does: plain on 3.11, compensated from 3.12).

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

from models.features.columns import FEATURE_INDEX
from models.native import load_kernel

# None without a C compiler (or with LOAN_RECOVERY_PURE_PYTHON=1): the reference code runs.
_segmenter_kernel = load_kernel("serving._segmenter_kernel")

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
NATIVE = (
    _segmenter_kernel is not None
    and getattr(_segmenter_kernel, "SUMMATION", None) == builtin_summation()
)


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

    The stream updates the segmenter after every event, so its step is on the hot path. It runs
    river's own update equations -- running mean and variance per feature, scaling, squared-distance
    nearest centre, ``centre += halflife * (x - centre)`` -- on plain lists, with the same
    floating-point operations in the same order, instead of river's per-call dicts, sets and
    closures: the result is bit for bit river's (``tests/unit/models/test_models_segmenter`` replays
    thousands of steps through both) at a fifth of the cost. :meth:`to_river` hands out the
    equivalent river objects.

    With ``native`` (default :data:`NATIVE`) the state lives in the compiled kernel and the
    step runs there, about ten times faster again; the Python lists (``_means``, ``_vars``,
    ``_centres``, ``_count``, ``_risks``, ``_names``) are then refreshed from it by
    :meth:`_sync` before anything here reads them. ``native=False`` keeps the reference code.
    """

    def __init__(
        self, init: dict[str, Any], state: dict[str, Any] | None = None, native: bool | None = None
    ) -> None:
        self.init = init
        self.features: list[str] = list(init["features"])
        if unknown := [n for n in self.features if n not in FEATURE_INDEX]:
            raise ValueError(
                f"segmenter features {unknown} are not computed by this version's "
                "state machine; retrain the bundle"
            )
        self._index = [FEATURE_INDEX[name] for name in self.features]
        self.risk_weights = [float(w) for w in init["risk_weights"]]
        self.halflife = float(init.get("halflife", DEFAULT_HALFLIFE))
        s = state or {
            "count": init["count"],
            "means": init["means"],
            "vars": [sd * sd for sd in init["stds"]],
            "centres": init["centres"],
        }
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
        self._json: tuple[int, str] | None = None  # (steps counted, to_json() then)

    def _use_kernel(self, native: bool | None) -> bool:
        """``native=None``: the kernel wherever it is built and supports this shape (one risk
        weight per feature, fewer than 64 centres); ``True`` insists on it."""
        if native is None:
            fits = len(self.risk_weights) == len(self.features) and 1 <= len(self._centres) < 64
            return NATIVE and fits
        if native and _segmenter_kernel is None:
            raise ImportError("models.serving._segmenter_kernel is not built (pip install -e .)")
        return native

    def _new_kernel(self) -> Any:
        assert _segmenter_kernel is not None
        return _segmenter_kernel.SegmenterKernel(
            self._index,
            self._count,
            self._means,
            self._vars,
            self._centres,
            self.risk_weights,
            self.halflife,
        )

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
        return [(xk - means[k]) / vars_[k] ** 0.5 if vars_[k] else 0.0 for k, xk in enumerate(raw)]

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
            means={k: self._means[k] for k in keys},
            vars={k: self._vars[k] for k in keys},
        )
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
        return {
            "count": self._count,
            "means": list(self._means),
            "vars": list(self._vars),
            "centres": self.centres,
        }

    def to_json(self) -> str:
        """Everything needed to resume, as plain JSON (floats round-trip exactly).

        Kept until the next step: every step counts first, so an unchanged count means
        unchanged state. A commit asks twice per partition with no step between (the
        changelog checkpoint, then the committed image), which cost the scorer 4.6 % of its
        loop at 30,000 events/s (py-spy)."""
        kernel = self._kernel
        count = kernel.count if kernel is not None else self._count
        memo = self._json
        if memo is None or memo[0] != count:
            memo = self._json = (
                count,
                json.dumps({"init": self.init, "state": self.state()}, sort_keys=True),
            )
        return memo[1]

    @classmethod
    def from_json(cls, text: str, native: bool | None = None) -> OnlineSegmenter:
        data = json.loads(text)
        return cls(data["init"], data["state"], native)
