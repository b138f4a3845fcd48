"""The serving path of the calibrated forest: scikit-learn's own arithmetic, minus its overhead.

``CalibratedClassifierCV.predict_proba`` on a batch spends almost half its time outside the trees:
joblib dispatch and a lock per tree, input validation per tree, a two-class array allocated and
added per tree. :class:`FastCalibratedForest` does what scikit-learn does with the same fitted
objects -- the pipeline's ``prepare`` transform, float32 inputs, each tree's leaf (``tree_.apply``,
scikit-learn's compiled traversal), the leaves' class-1 fractions summed tree by tree *in estimator
order* and divided by the number of trees, then the calibrator -- so the probabilities are bit for
bit scikit-learn's (``tests/unit/models/test_models_bundle`` checks it on every trained bundle), not
merely close.

The forest stage has two implementations with the same result: the compiled
``models.serving._forest_kernel.ForestKernel`` (all trees in one flat node array, many paths
walked in lockstep, no per-tree Python call) when the extension is built, and the numpy loop over
``tree_.apply`` here, which stays as the reference the kernel is tested against bit for bit.

The ``prepare`` step (median imputer on the numeric columns, most-frequent imputer + one-hot
on the categorical ones) costs scikit-learn ~1.5 ms *per call* in validation and dispatch --
more than all the trees for a batch of a few hundred rows. :class:`DensePrepare` does the same
copies, fills and equality tests in a few numpy operations (same float64 output, bit for bit)
when the fitted ``ColumnTransformer`` has exactly that shape, and hands any input it does not
expect (another dtype or width, an infinity, an empty batch) to scikit-learn, which then
transforms or raises as before.

Any model that is not the shape ``models.training.early_warning.build_model`` fits (one calibrated
classifier around ``Pipeline([prepare, RandomForestClassifier])``, two classes, no ensemble)
is served by its own ``predict_proba``: see :func:`fast_predictor`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from models.native import load_kernel
from models.serving.contributions import (
    Explanation,
    TopContributions,
    calibrated,
    input_contributions_numpy,
    input_slots,
    root_bias,
    secants,
    served_bias,
    top_contributions,
    top_positions_numpy,
)

_forest_kernel = load_kernel("serving._forest_kernel")


def _load_kernel() -> type | None:
    """``ForestKernel`` if the compiled extension is built, else None (numpy reference)."""
    return None if _forest_kernel is None else _forest_kernel.ForestKernel


class DensePrepare:
    """The fitted ``ColumnTransformer([imputer, Pipeline([imputer, one-hot])])`` of
    ``models.training.early_warning.build_model``, re-done in numpy; build it with :meth:`of`."""

    def __init__(
        self,
        fallback: Any,
        n_features: int,
        width: int,
        blocks: list[tuple[np.ndarray, np.ndarray, list[np.ndarray] | None]],
    ) -> None:
        """``blocks``: per transformer, in output order, (input columns, fill values, one-hot
        categories per column or None for a pass-through imputer)."""
        self._fallback = fallback
        self._n_features = n_features
        self._width = width
        self._blocks = blocks

    @classmethod
    def of(cls, prepare: Any) -> DensePrepare | None:
        """The numpy twin of ``prepare`` (the pipeline before the forest), or None when it is
        not exactly the shape reproduced here (then scikit-learn's transform is used)."""
        from sklearn.compose import ColumnTransformer
        from sklearn.pipeline import Pipeline

        steps = [step for _, step in prepare.steps] if isinstance(prepare, Pipeline) else [prepare]
        if len(steps) != 1 or type(steps[0]) is not ColumnTransformer:
            return None
        columns = steps[0]
        if columns.sparse_output_ or not isinstance(columns.n_features_in_, int):
            return None
        blocks, width = [], 0
        for _, transformer, selected in columns.transformers_:
            chosen = _int_columns(selected, columns.n_features_in_)
            if chosen is None:
                return None
            if len(chosen) == 0 or (isinstance(transformer, str) and transformer == "drop"):
                continue
            block = _block_of(transformer, chosen)
            if block is None:
                return None
            blocks.append(block)
            categories = block[2]
            width += len(chosen) if categories is None else sum(len(c) for c in categories)
        return cls(prepare, columns.n_features_in_, width, blocks)

    def transform(self, x: Any) -> Any:
        """``prepare.transform(x)``: float64 rows, NaNs imputed, categories one-hot."""
        if not self._expected(x):
            return self._fallback.transform(x)
        out = np.empty((len(x), self._width))
        at = 0
        for chosen, fill, categories in self._blocks:
            values = x[:, chosen]  # a copy
            np.copyto(values, fill, where=np.isnan(values))  # the imputer's fill
            if categories is None:
                out[:, at : at + len(chosen)] = values
                at += len(chosen)
                continue
            for column, known in enumerate(categories):  # one-hot, unknown -> all zeros
                out[:, at : at + len(known)] = values[:, column, None] == known
                at += len(known)
        return out

    def column_inputs(self) -> np.ndarray:
        """For each output column, the input column it is made from (a one-hot category:
        its categorical input), so contributions can be folded back onto the model inputs."""
        owners: list[int] = []
        for chosen, _, categories in self._blocks:
            if categories is None:
                owners.extend(chosen.tolist())
            else:
                for column, known in zip(chosen.tolist(), categories, strict=True):
                    owners.extend([column] * len(known))
        return np.asarray(owners, dtype=np.intp)

    def _expected(self, x: Any) -> bool:
        """Input the numpy twin reproduces: a non-empty float64 matrix of the fitted width
        without infinities (scikit-learn's imputer refuses those)."""
        return (
            isinstance(x, np.ndarray)
            and x.dtype == np.float64
            and x.ndim == 2
            and x.shape[0] > 0
            and x.shape[1] == self._n_features
            and not np.isinf(x).any()
        )


def _int_columns(selected: Any, n_features: int) -> np.ndarray | None:
    """A transformer's input columns as int indices, or None if given some other way."""
    if isinstance(selected, str):  # a column name: not reproduced
        return None
    chosen = np.asarray(selected)
    if chosen.dtype.kind not in "iu" or chosen.ndim != 1:
        return None if chosen.size else np.zeros(0, dtype=np.intp)
    if chosen.size and (chosen.min() < 0 or chosen.max() >= n_features):
        return None
    return chosen.astype(np.intp)


def _block_of(transformer: Any, chosen: np.ndarray) -> tuple | None:
    """(columns, fill values, categories or None) for a plain NaN imputer or an imputer
    followed by a dense, drop-free, infrequent-free ``OneHotEncoder(handle_unknown="ignore")``;
    None for anything else."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    steps = [s for _, s in transformer.steps] if type(transformer) is Pipeline else [transformer]
    if not 1 <= len(steps) <= 2 or type(steps[0]) is not SimpleImputer:
        return None
    fill = _imputer_fill(steps[0], len(chosen))
    if fill is None:
        return None
    if len(steps) == 1:
        return chosen, fill, None
    encoder = steps[1]
    if (
        type(encoder) is not OneHotEncoder
        or encoder.drop_idx_ is not None
        or encoder.handle_unknown != "ignore"
        or encoder.sparse_output
        or np.dtype(encoder.dtype) != np.float64
        or encoder._infrequent_enabled
    ):
        return None
    categories = [np.asarray(c) for c in encoder.categories_]
    if len(categories) != len(chosen) or any(
        c.dtype != np.float64 or np.isnan(c).any() for c in categories
    ):
        return None
    return chosen, fill, categories


def _imputer_fill(imputer: Any, n_columns: int) -> np.ndarray | None:
    """The values a fitted NaN imputer writes, or None if it does more than fill NaNs in
    float64 columns (indicator, dropped empty columns, another missing marker)."""
    missing = imputer.missing_values
    statistics = np.asarray(imputer.statistics_)
    if (
        not isinstance(missing, float)
        or not np.isnan(missing)
        or imputer.add_indicator
        or statistics.dtype != np.float64
        or statistics.shape != (n_columns,)
        or np.isnan(statistics).any()
        or np.dtype(getattr(imputer, "_fill_dtype", np.float64)) != np.float64
    ):
        return None
    return statistics


def _isotonic_map(calibrator: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """A clipping ``IsotonicRegression.predict`` without its per-call input validation (~50 us
    a batch): the same clip and the same fitted interpolator ``f_``, so the same bits. Our
    input (the votes) is always a float64 vector, which the validation would leave as is.
    None for any other calibrator (then its own ``predict`` is used)."""
    from sklearn.isotonic import IsotonicRegression

    if (
        type(calibrator) is not IsotonicRegression
        or calibrator.out_of_bounds != "clip"
        or getattr(calibrator, "X_thresholds_", np.zeros(0, np.float32)).dtype != np.float64
        or not callable(getattr(calibrator, "f_", None))
    ):
        return None
    interpolate, low, high = calibrator.f_, calibrator.X_min_, calibrator.X_max_
    return lambda votes: interpolate(np.clip(votes, low, high))


class FastCalibratedForest:
    """P(class 1) of a fitted ``CalibratedClassifierCV(Pipeline([prepare, forest]))``.

    ``native``: None uses the compiled kernel when it is built; True requires it (ImportError
    otherwise); False forces the reference (scikit-learn's ``prepare``, ``tree_.apply`` per
    tree). All give the same bits."""

    def __init__(self, model: Any, native: bool | None = None) -> None:
        calibrated = model.calibrated_classifiers_[0]
        pipeline = calibrated.estimator
        self._sklearn_prepare = pipeline[:-1]
        dense = DensePrepare.of(self._sklearn_prepare)
        # The reference (native=False) is scikit-learn's transform; otherwise its numpy twin.
        self._prepare = (native is not False and dense) or self._sklearn_prepare
        # Which model input each forest column comes from (None: a shape not reproduced), and
        # its slot among the inputs: where the walk adds a split's change.
        self._column_inputs = dense.column_inputs() if dense else None
        self._inputs, self._slots = (
            input_slots(self._column_inputs) if dense else ((), np.zeros(0, np.int32))
        )
        forest = pipeline[-1]
        self._trees = [estimator.tree_ for estimator in forest.estimators_]
        # value[node, output 0, class 1]: the class-1 fraction of each node (leaves used).
        self._leaf_values = [np.ascontiguousarray(tree.value[:, 0, 1]) for tree in self._trees]
        calibrator = calibrated.calibrators[0]
        self._calibrate = (native is not False and _isotonic_map(calibrator)) or calibrator.predict
        # The same for every row: computed once, not per explained batch (the roots' loop
        # over 150 ``tree.value`` arrays and a calibrator call cost ~0.3 ms a batch).
        self._raw_bias = root_bias(self._trees)
        self._bias = served_bias(self._calibrate, self._raw_bias)
        self._kernel = self._build_kernel(native, forest.n_features_in_)
        self._top_positions = (
            _forest_kernel.top_positions
            if self._kernel is not None and _forest_kernel is not None
            else top_positions_numpy
        )

    def _build_kernel(self, native: bool | None, n_features: int) -> Any:
        """The compiled twin of :meth:`_sum_votes_numpy`, or None to run the reference."""
        if native is False:
            return None
        kernel = _load_kernel()
        if kernel is None:
            if native:
                raise ImportError("models.serving._forest_kernel is not built (pip install -e .)")
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
        votes = (
            self._kernel.sum_votes(x32) if self._kernel is not None else self._sum_votes_numpy(x32)
        )
        return np.asarray(self._calibrate(votes), dtype=np.float64)

    def explain(self, x: np.ndarray) -> Explanation | None:
        """The path decomposition of each row's score onto the model inputs
        (``models.serving.contributions``); None when the prepare step is not the shape
        whose columns can be traced back to inputs."""
        walked = self._walk(x)
        if walked is None:
            return None
        votes, raw = walked
        return calibrated(self._inputs, self._raw_bias, raw, votes, self._calibrate)

    def explain_top(self, x: np.ndarray, k: int) -> TopContributions | None:
        """Each row's ``k`` largest served contributions (the same cells, in the same order,
        as :meth:`explain` then ``models.serving.reasons.top_reasons``), without building the
        served matrix or sorting it: what an emitted record's reasons need. None as for
        :meth:`explain`."""
        walked = self._walk(x)
        if walked is None:
            return None
        votes, raw = walked
        scores = np.asarray(self._calibrate(votes), dtype=np.float64)
        secant = secants(self._calibrate, self._raw_bias, self._bias, votes, scores)
        return top_contributions(self._inputs, raw, secant, k, self._top_positions)

    def _walk(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(votes, raw contributions per input) of the rows ``x``: one compiled walk, or the
        reference's two (``tree_.apply``, ``decision_path``)."""
        if self._column_inputs is None:
            return None
        x32 = np.ascontiguousarray(self._prepare.transform(x), dtype=np.float32)
        if self._kernel is not None:
            return self._kernel.explain(x32, self._slots, len(self._inputs))
        raw = input_contributions_numpy(self._trees, x32, self._slots, len(self._inputs))
        return self._sum_votes_numpy(x32), raw

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
    return (
        calibrated.method in ("isotonic", "sigmoid")
        and isinstance(pipeline, Pipeline)
        and isinstance(pipeline[-1], RandomForestClassifier)
        and pipeline[-1].n_outputs_ == 1
        and len(pipeline[-1].classes_) == 2
        and not hasattr(pipeline[:-1], "decision_function")
    )


def fast_predictor(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``x -> P(class 1)``: the fast path when the model has the trained shape, else the
    model's own ``predict_proba``."""
    if is_fast_servable(model):
        return FastCalibratedForest(model).predict_proba
    return lambda x: model.predict_proba(x)[:, 1]
