"""The serving path of the calibrated forest: scikit-learn's own arithmetic, minus its overhead.

``CalibratedClassifierCV.predict_proba`` on a batch spends almost half its time outside the
trees: joblib dispatch and a lock per tree, input validation per tree, a two-class array
allocated and added per tree. :class:`FastCalibratedForest` does what scikit-learn does with
the same fitted objects -- the pipeline's ``prepare`` transform, float32 inputs, each tree's
leaf (``tree_.apply``, scikit-learn's compiled traversal), the leaves' class-1 fractions
summed tree by tree *in estimator order* and divided by the number of trees, then the
calibrator -- so the probabilities are bit for bit scikit-learn's (``tests/test_models_bundle``
checks it on every trained bundle), not merely close.

The forest stage has two implementations with the same result: the compiled
``models._forest_kernel.ForestKernel`` (all trees in one flat node array, many paths walked in
lockstep, no per-tree Python call) when the extension is built, and the numpy loop over
``tree_.apply`` here, which stays as the reference the kernel is tested against bit for bit.

Any model that is not the shape ``models.training.build_model`` fits (one calibrated
classifier around ``Pipeline([prepare, RandomForestClassifier])``, two classes, no ensemble)
is served by its own ``predict_proba``: see :func:`fast_predictor`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def _load_kernel() -> type | None:
    """``ForestKernel`` if the compiled extension is built, else None (numpy reference)."""
    try:
        from models._forest_kernel import ForestKernel
    except ImportError:
        return None
    return ForestKernel


class FastCalibratedForest:
    """P(class 1) of a fitted ``CalibratedClassifierCV(Pipeline([prepare, forest]))``.

    ``native``: None uses the compiled kernel when it is built; True requires it (ImportError
    otherwise); False forces the numpy reference. Both give the same bits."""

    def __init__(self, model: Any, native: bool | None = None) -> None:
        calibrated = model.calibrated_classifiers_[0]
        pipeline = calibrated.estimator
        self._prepare = pipeline[:-1]
        forest = pipeline[-1]
        self._trees = [estimator.tree_ for estimator in forest.estimators_]
        # value[node, output 0, class 1]: the class-1 fraction of each node (leaves used).
        self._leaf_values = [np.ascontiguousarray(tree.value[:, 0, 1]) for tree in self._trees]
        self._calibrator = calibrated.calibrators[0]
        self._kernel = self._build_kernel(native, forest.n_features_in_)

    def _build_kernel(self, native: bool | None, n_features: int) -> Any:
        """The compiled twin of :meth:`_sum_votes_numpy`, or None to run the reference."""
        if native is False:
            return None
        kernel = _load_kernel()
        if kernel is None:
            if native:
                raise ImportError("models._forest_kernel is not built (pip install -e .)")
            return None
        return kernel(self._trees, n_features)

    @property
    def native(self) -> bool:
        """Does the forest stage run in the compiled kernel?"""
        return self._kernel is not None

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Calibrated P(default) per row of ``x`` (n x features, float64, NaN = missing)."""
        # float32 rows, as the forest casts them; C order, as the kernel reads them.
        x32 = np.ascontiguousarray(self._prepare.transform(x), dtype=np.float32)
        votes = (self._kernel.sum_votes(x32) if self._kernel is not None
                 else self._sum_votes_numpy(x32))
        return np.asarray(self._calibrator.predict(votes), dtype=np.float64)

    def _sum_votes_numpy(self, x32: np.ndarray) -> np.ndarray:
        """The reference: the mean class-1 fraction of each row's leaves, summed in estimator
        order -- the same float operations as scikit-learn's forest, hence the same bits."""
        total = np.zeros(len(x32))
        for tree, values in zip(self._trees, self._leaf_values, strict=True):
            # (A second thread traversing half the trees measured no gain on 2 shared cores.)
            total += values[tree.apply(x32)]  # estimator order: the same sums as scikit-learn's
        total /= len(self._trees)
        return total


def is_fast_servable(model: Any) -> bool:
    """Is ``model`` the calibrated-forest shape :class:`FastCalibratedForest` reproduces?"""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline

    if not isinstance(model, CalibratedClassifierCV) or len(model.classes_) != 2:
        return False
    if len(getattr(model, "calibrated_classifiers_", [])) != 1:
        return False
    calibrated = model.calibrated_classifiers_[0]
    pipeline = calibrated.estimator
    return (calibrated.method in ("isotonic", "sigmoid") and isinstance(pipeline, Pipeline)
            and isinstance(pipeline[-1], RandomForestClassifier)
            and pipeline[-1].n_outputs_ == 1 and len(pipeline[-1].classes_) == 2
            and not hasattr(pipeline[:-1], "decision_function"))  # fmt: skip


def fast_predictor(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``x -> P(class 1)``: the fast path when the model has the trained shape, else the
    model's own ``predict_proba``."""
    if is_fast_servable(model):
        return FastCalibratedForest(model).predict_proba
    return lambda x: model.predict_proba(x)[:, 1]
