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
(``models.serving.reasons``). ``tests/unit/models/test_models_fast_forest.py`` checks both
identities on 10,000 rows, for this numpy reference and for the compiled kernel, which computes
the same bits (``ForestKernel.explain``, one walk for the votes and the contributions).

Emitted records need only each row's top 3 (:func:`top_contributions`): with a factor >= 0 the
served ranking is the raws', so only the raw matrix is ranked (the compiled ``top_positions``
or :func:`top_positions_numpy`). Together with the one walk, the processor's reasons went from
23.8 to 13.6 us CPU per explained row (docs/MODELS.md, "Cost").
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


@dataclass(frozen=True, slots=True)
class TopContributions:
    """Each row's largest served contributions: what the reasons of emitted records need."""

    columns: np.ndarray  # n x k: the chosen inputs' positions in the ``features()`` row
    values: np.ndarray  # n x k: their served contributions, largest first


def input_slots(column_inputs: np.ndarray) -> tuple[tuple[int, ...], np.ndarray]:
    """The model inputs the forest columns come from (``column_inputs``: per forest column, its
    position in the ``features()`` row) and each column's slot among them: ``(inputs, slots)``,
    a one-hot category's slot being its categorical input's."""
    inputs = tuple(int(i) for i in np.unique(column_inputs))
    position = {feature: k for k, feature in enumerate(inputs)}
    slots = np.array([position[int(c)] for c in column_inputs], dtype=np.int32)
    return inputs, slots


def input_contributions_numpy(
    trees: Sequence[object], x32: np.ndarray, slots: np.ndarray, n_inputs: int
) -> np.ndarray:
    """The reference: per row and model input, the mean over trees of the changes of the
    class-1 fraction at the path's splits on the forest columns of that input (``slots``:
    forest column -> input). Tree by tree in estimator order and root to leaf (``np.add.at``
    adds repeated cells in order, a one-hot column's changes straight into its input's cell),
    then one division: the compiled ``ForestKernel.explain``'s additions in its order, so the
    same bits."""
    n_rows = len(x32)
    out = np.zeros((n_rows, n_inputs))
    for tree in trees:
        values = tree.value[:, 0, 1]  # type: ignore[attr-defined]
        path = tree.decision_path(x32)  # type: ignore[attr-defined]
        indptr, nodes = path.indptr, path.indices  # per row, root to leaf (ids grow downwards)
        children = np.ones(len(nodes), dtype=bool)
        children[indptr[:-1]] = False  # a row's first node is the root: nobody's child
        parents = np.flatnonzero(children) - 1
        rows = np.repeat(np.arange(n_rows), np.diff(indptr))[children]
        cells = slots[tree.feature[nodes[parents]]]  # type: ignore[attr-defined]
        np.add.at(out, (rows, cells), values[nodes[children]] - values[nodes[parents]])
    out /= len(trees)
    return out


def root_bias(trees: Sequence[object]) -> float:
    """Mean of the roots' class-1 fractions, summed in estimator order like the votes."""
    total = 0.0
    for tree in trees:
        total += float(tree.value[0, 0, 1])  # type: ignore[attr-defined]
    return total / len(trees)


def top_positions_numpy(values: np.ndarray, k: int) -> np.ndarray:
    """The reference of the compiled ``top_positions``: per row, the positions of the ``k``
    largest values, largest first, equal values by position (a stable sort), NaN last."""
    return np.argsort(-values, axis=1, kind="stable")[:, :k]


def calibrated(
    inputs: tuple[int, ...],
    raw_bias: float,
    raw: np.ndarray,
    votes: np.ndarray,
    calibrate: Callable[[np.ndarray], np.ndarray],
) -> Explanation:
    """Scale the raw contributions onto the served score (module docstring)."""
    scores = _calibrated(calibrate, votes)
    bias = served_bias(calibrate, raw_bias)
    secant = secants(calibrate, raw_bias, bias, votes, scores)
    return Explanation(inputs, raw_bias, raw, votes, bias, raw * secant[:, None], scores)


def served_bias(calibrate: Callable[[np.ndarray], np.ndarray], raw_bias: float) -> float:
    """The served score of the forest's average vote (the same for every row)."""
    return float(_calibrated(calibrate, np.array([raw_bias]))[0])


def secants(
    calibrate: Callable[[np.ndarray], np.ndarray],
    raw_bias: float,
    bias: float,
    votes: np.ndarray,
    scores: np.ndarray,
) -> np.ndarray:
    """Each row's factor from raw to served contributions (module docstring)."""
    # The secant from the average vote, not over sum(raw): the raw contributions can cancel
    # to ~0 while each is large, but the secant is bounded by the map's steepest slope.
    moved = votes - raw_bias
    near = np.abs(moved) < _NEAR
    secant = (scores - bias) / np.where(near, 1.0, moved)
    if near.any():  # the average vote itself: rounding would make the secant noise
        step = np.array([raw_bias - _STEP, raw_bias + _STEP])
        low, high = _calibrated(calibrate, step)
        secant = np.where(near, (high - low) / (2 * _STEP), secant)
    return secant


def top_contributions(
    inputs: tuple[int, ...],
    raw: np.ndarray,
    secant: np.ndarray,
    k: int,
    top_positions: Callable[[np.ndarray, int], np.ndarray],
) -> TopContributions:
    """Each row's ``k`` inputs ranked by served contribution, then raw, then input position
    (``models.serving.reasons.top_reasons``' order), with their served contributions.

    Where a row's factor is >= 0 that order *is* the raw contributions' (a factor >= 0 keeps
    every strict order of the raws or makes it a tie, which the raws then break; a factor of
    0 ties everything), so only the raw matrix is ranked, by ``top_positions`` (the compiled
    one or its reference) -- the served matrix is never built. A row with a negative or NaN
    factor (a calibration that falls somewhere; the isotonic map never does) is ranked by
    the full three-key sort."""
    top = top_positions(raw, k)
    odd = np.flatnonzero(~(secant >= 0.0))
    if odd.size:
        served = raw[odd] * secant[odd, None]
        positions = np.broadcast_to(np.arange(raw.shape[1]), served.shape)
        top[odd] = np.lexsort((positions, -raw[odd], -served), axis=-1)[:, : top.shape[1]]
    values = np.take_along_axis(raw, top, axis=1) * secant[:, None]  # = the served cells
    return TopContributions(np.asarray(inputs, dtype=np.intp)[top], values)


_NEAR = 1e-12  # closer votes to the average take the map's local slope instead of the secant
_STEP = 1e-6  # half-width of that local slope


def _calibrated(calibrate: Callable[[np.ndarray], np.ndarray], votes: np.ndarray) -> np.ndarray:
    return np.asarray(calibrate(votes), dtype=np.float64)
