"""Exact per-input contributions of the served forest: the path decomposition (Saabas 2014,
the ``treeinterpreter`` package) of :class:`models.serving.forest.FastCalibratedForest`.

For one tree, the class-1 fraction of a row's leaf telescopes along its path: ``value[leaf] =
value[root] + sum over the splits on the path of (value[child] - value[node])``, each difference
owned by the split's feature. Averaged over the trees (the forest's vote is their mean),
``raw_bias + sum of raw contributions = the forest's probability`` -- the mean vote before
calibration, exactly up to float rounding (``raw_bias``: the mean of the roots' class-1
fractions, the same for every row). The forest reads the prepared columns (median-imputed
numbers, one-hot categories); a one-hot column's contribution belongs to its categorical input,
so the contributions are per model input (``model_features``), an imputed value's to its input.

**The served score is calibrated**: ``score = calibrate(vote)`` with the bundle's isotonic map, a
monotone, non-linear function of the vote (one forest and one map: ``ensemble=False``, so there
are no folds to average, ``models.training.early_warning.build_model``). The reasons must explain
*that* score, so the served contributions are the raw ones scaled by one factor per row,
``scale = (score - bias) / (vote - raw_bias)`` with the served ``bias = calibrate(raw_bias)`` (the
score of the forest's average vote): then ``bias + sum of contributions = score`` (the schema's
``Reason.contribution`` doc; within 1e-12 of the average vote the map's local slope is used).
The factor is the calibration's secant slope between the average vote and the row's, so it
is >= 0 for an increasing map: the ranking and the signs are the
forest's own. Where the map is flat between the two votes (a plateau) the factor is 0 and every
served contribution is 0; the ranking then falls back to the raw contributions
(``models.serving.reasons``). ``tests/unit/models/test_models_contributions.py`` checks both
identities on 10,000 rows, for this numpy reference and for the compiled kernel, which computes
the same bits (``ForestKernel.contributions``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Explanation:
    """The decomposition of a batch's scores; rows in the batch's order, columns ``inputs``."""

    inputs: tuple[int, ...]  # the model inputs: positions in the ``features()`` row
    raw_bias: float  # mean over trees of the root's class-1 fraction
    raw: np.ndarray  # n x inputs: contributions to the uncalibrated forest probability
    votes: np.ndarray  # the uncalibrated forest probability = raw_bias + raw.sum(1)
    bias: float  # calibrate(raw_bias): the served score of the forest's average vote
    contributions: np.ndarray  # n x inputs: raw * scale, bias + contributions.sum(1) = scores
    scores: np.ndarray  # the served (calibrated) scores


def column_contributions_numpy(trees: Sequence[object], x32: np.ndarray) -> np.ndarray:
    """The reference: per row and forest column, the mean over trees of the changes of the
    class-1 fraction at the path's splits on that column. Tree by tree in estimator order and
    root to leaf (``np.add.at`` adds repeated cells in order), then one division: the compiled
    kernel's additions in its order, so the same bits."""
    n_rows, width = x32.shape
    out = np.zeros((n_rows, width))
    for tree in trees:
        values = tree.value[:, 0, 1]  # type: ignore[attr-defined]
        path = tree.decision_path(x32)  # type: ignore[attr-defined]
        indptr, nodes = path.indptr, path.indices  # per row, root to leaf (ids grow downwards)
        children = np.ones(len(nodes), dtype=bool)
        children[indptr[:-1]] = False  # a row's first node is the root: nobody's child
        parents = np.flatnonzero(children) - 1
        rows = np.repeat(np.arange(n_rows), np.diff(indptr))[children]
        features = tree.feature[nodes[parents]]  # type: ignore[attr-defined]
        np.add.at(out, (rows, features), values[nodes[children]] - values[nodes[parents]])
    out /= len(trees)
    return out


def root_bias(trees: Sequence[object]) -> float:
    """Mean of the roots' class-1 fractions, summed in estimator order like the votes."""
    total = 0.0
    for tree in trees:
        total += float(tree.value[0, 0, 1])  # type: ignore[attr-defined]
    return total / len(trees)


def per_input(columns: np.ndarray, column_inputs: np.ndarray) -> tuple[tuple[int, ...], np.ndarray]:
    """Fold the forest columns' contributions into their model inputs (a one-hot category's
    into its categorical input), column by column in order: (inputs, n x inputs)."""
    inputs = tuple(int(i) for i in np.unique(column_inputs))
    position = {feature: k for k, feature in enumerate(inputs)}
    out = np.zeros((len(columns), len(inputs)))
    for column, feature in enumerate(column_inputs.tolist()):
        out[:, position[feature]] += columns[:, column]
    return inputs, out


def calibrated(
    inputs: tuple[int, ...],
    raw_bias: float,
    raw: np.ndarray,
    votes: np.ndarray,
    calibrate: Callable[[np.ndarray], np.ndarray],
) -> Explanation:
    """Scale the raw contributions onto the served score (module docstring)."""
    scores = _calibrated(calibrate, votes)
    bias = float(_calibrated(calibrate, np.array([raw_bias]))[0])
    # The secant from the average vote, not over sum(raw): the raw contributions can cancel
    # to ~0 while each is large, but the secant is bounded by the map's steepest slope.
    moved = votes - raw_bias
    near = np.abs(moved) < _NEAR
    secant = (scores - bias) / np.where(near, 1.0, moved)
    if near.any():  # the average vote itself: rounding would make the secant noise
        step = np.array([raw_bias - _STEP, raw_bias + _STEP])
        low, high = _calibrated(calibrate, step)
        secant = np.where(near, (high - low) / (2 * _STEP), secant)
    return Explanation(inputs, raw_bias, raw, votes, bias, raw * secant[:, None], scores)


_NEAR = 1e-12  # closer votes to the average take the map's local slope instead of the secant
_STEP = 1e-6  # half-width of that local slope


def _calibrated(calibrate: Callable[[np.ndarray], np.ndarray], votes: np.ndarray) -> np.ndarray:
    return np.asarray(calibrate(votes), dtype=np.float64)
