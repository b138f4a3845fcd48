"""models.serving.forest + models.serving._forest_kernel: the compiled forest stage and the numpy
``prepare`` give exactly the bits of the reference and of scikit-learn's ``predict_proba`` --
NaNs, huge values, unknown categories, single rows, empty batches -- and the compiled kernel is
actually built (no silent fallback)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from models.serving.forest import DensePrepare, FastCalibratedForest


@pytest.fixture(scope="module")
def model() -> Any:
    """A calibrated forest of the trained shape, with deep trees (small leaves) so paths of
    very different lengths are walked side by side."""
    from models.data.adapters import seed_frame_history
    from models.data.synthetic import generate_book
    from models.serving.bundle import single_threaded
    from models.training.early_warning import build_model, feature_matrix

    frame, _, _ = generate_book(2000, seed=7)
    x, y, _ = feature_matrix(seed_frame_history(frame))
    fitted = build_model(seed=1, n_estimators=40, min_samples_leaf=3, n_jobs=1).fit(x, y)
    single_threaded(fitted)
    return fitted


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    """Feature rows of another book, some incomes missing (imputed by the pipeline)."""
    from models.data.synthetic import generate_book
    from models.features.state import replay

    _, events, _ = generate_book(800, seed=13)
    x = np.array([s.features() for s in replay(events).values()], dtype=np.float64)
    x[::7, 3] = np.nan
    return x


def both_paths(model: Any) -> tuple[FastCalibratedForest, FastCalibratedForest]:
    return FastCalibratedForest(model, native=True), FastCalibratedForest(model, native=False)


def assert_same_bits(model: Any, x: np.ndarray) -> None:
    native, reference = both_paths(model)
    expected = model.predict_proba(x)[:, 1]
    assert np.array_equal(reference.predict_proba(x), expected)
    assert np.array_equal(native.predict_proba(x), expected)


def test_the_compiled_kernel_is_built_and_used_by_default(model) -> None:
    """Fails (never skips) when the extension is missing: the scorer would silently run ~3x
    slower on the reference path."""
    from models.serving._forest_kernel import ForestKernel  # noqa: F401 -- must import

    assert FastCalibratedForest(model).native
    assert not FastCalibratedForest(model, native=False).native


def test_kernel_equals_reference_and_scikit_learn_bit_for_bit(model, rows) -> None:
    assert_same_bits(model, rows)
    assert len(set(np.round(model.predict_proba(rows)[:, 1], 3))) > 20, "many leaves"


def test_single_rows_and_odd_batch_sizes(model, rows) -> None:
    """Small batches walk several trees per row at once; block edges must not matter."""
    native, _ = both_paths(model)
    whole = native.predict_proba(rows)
    for size in (1, 2, 3, 63, 64, 65, 129):
        assert np.array_equal(native.predict_proba(rows[:size]), whole[:size])
        assert_same_bits(model, rows[size : 2 * size])
    one_by_one = np.array([native.predict_proba(rows[i : i + 1])[0] for i in range(40)])
    assert np.array_equal(one_by_one, whole[:40])


def test_empty_batches(model, rows) -> None:
    """The kernel scores an empty batch; the pipeline's imputer refuses one on both paths, as
    scikit-learn does (``ModelBundle.predict_proba`` answers empty batches before it)."""
    native, reference = both_paths(model)
    width = native._kernel.n_features
    assert native._kernel.sum_votes(np.zeros((0, width), dtype=np.float32)).shape == (0,)
    empty = np.zeros((0, rows.shape[1]))
    for path in (native, reference, lambda x: model.predict_proba(x)):
        with pytest.raises(ValueError, match="0 sample"):
            getattr(path, "predict_proba", path)(empty)


def test_huge_and_missing_values(model, rows) -> None:
    x = rows[:60].copy()
    x[0:10, :] = np.nan  # every column missing: all imputed
    x[10:20, 3] = 1e30
    x[20:30, 0] = -3.0e38  # near the float32 limit, still finite as float32
    x[30:40, 1] = 3.4e38
    x[40:50, 2] = -1e-45  # float32 subnormal
    assert_same_bits(model, x)


def test_values_beyond_float32_follow_the_reference(model, rows) -> None:
    """scikit-learn refuses rows that overflow float32; the fast paths walk them as +-inf
    (as ``tree_.apply`` does). The kernel must agree with the reference there too."""
    native, reference = both_paths(model)
    x = rows[:20].copy()
    x[:10, 3], x[10:, 0] = 1e300, -1e300
    with np.errstate(over="ignore"):
        assert np.array_equal(native.predict_proba(x), reference.predict_proba(x))


def test_nan_reaching_the_trees_goes_by_missing_go_to_left() -> None:
    """Without an imputer, NaNs reach the splits: both directions of ``missing_go_to_left``
    must be taken as scikit-learn's ``apply`` takes them."""
    from models.serving._forest_kernel import ForestKernel
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5))
    y = (x[:, 0] + np.where(np.isnan(x[:, 1]), 2.0, x[:, 1]) > 0.5).astype(int)
    x[rng.random(x.shape) < 0.2] = np.nan
    y[np.isnan(x[:, 0])] = 1  # missingness carries signal, so NaNs go both ways
    forest = RandomForestClassifier(
        n_estimators=25, min_samples_leaf=2, random_state=0, n_jobs=1
    ).fit(x, y)
    trees = [e.tree_ for e in forest.estimators_]
    flags = np.concatenate([t.missing_go_to_left[t.children_left != -1] for t in trees])
    assert flags.min() == 0 and flags.max() == 1
    probe = rng.normal(size=(300, 5))
    probe[rng.random(probe.shape) < 0.3] = np.nan
    x32 = probe.astype(np.float32)
    kernel = ForestKernel(trees, 5)
    expected = forest.predict_proba(x32)[:, 1]
    assert np.array_equal(kernel.sum_votes(x32), expected)
    with pytest.raises(ValueError, match="features"):
        kernel.sum_votes(np.zeros((2, 4), dtype=np.float32))


def bits(a: np.ndarray) -> np.ndarray:
    """The raw 64-bit patterns (tells -0.0 from 0.0 and NaN payloads apart)."""
    return np.ascontiguousarray(a, dtype=np.float64).view(np.uint64)


def test_numpy_prepare_is_scikit_learns_transform_bit_for_bit(model, rows) -> None:
    native, reference = both_paths(model)
    assert isinstance(native._prepare, DensePrepare)
    assert not isinstance(reference._prepare, DensePrepare)
    sklearn_prepare = model.calibrated_classifiers_[0].estimator[:-1]
    x = rows[:200].copy()
    x[np.random.default_rng(1).random(x.shape) < 0.15] = np.nan  # every column, categories too
    x[:5, :] = np.nan
    x[5:10, :] = -0.0
    x[10:15, :] = 7.5  # categories never seen in training: one-hot all zeros
    x[15:20, :] = -1e300  # finite in float64: imputed and encoded (the forest would refuse it)
    expected = sklearn_prepare.transform(x)
    assert np.array_equal(bits(native._prepare.transform(x)), bits(expected))
    assert_same_bits(model, np.delete(x, np.s_[15:20], axis=0))


def test_numpy_prepare_hands_unusual_input_to_scikit_learn(model, rows) -> None:
    """Infinities, another width, another dtype: scikit-learn decides (here: raises or casts),
    exactly as without the numpy twin."""
    native, _ = both_paths(model)
    sklearn_prepare = model.calibrated_classifiers_[0].estimator[:-1]
    from models.features.columns import FEATURE_INDEX

    x = rows[:10].copy()
    x[3, FEATURE_INDEX["days_past_due"]] = np.inf  # a column the model reads
    for path in (native._prepare, sklearn_prepare):
        with pytest.raises(ValueError, match="infinity"):
            path.transform(x)
        with pytest.raises(ValueError, match="features"):
            path.transform(rows[:10, :-1])
    as_float32 = rows[:10].astype(np.float32)
    assert np.array_equal(
        bits(native._prepare.transform(as_float32)), bits(sklearn_prepare.transform(as_float32))
    )


def test_other_prepare_shapes_are_left_to_scikit_learn() -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.arange(12.0).reshape(4, 3)
    scaled = Pipeline([("prepare", ColumnTransformer([("s", StandardScaler(), [0, 1])]))])
    indicator = ColumnTransformer([("i", SimpleImputer(add_indicator=True), [0, 1, 2])])
    passthrough = ColumnTransformer([("i", SimpleImputer(), [0])], remainder="passthrough")
    for prepare in (scaled, indicator, passthrough):
        assert DensePrepare.of(prepare.fit(x)) is None
    plain = ColumnTransformer([("i", SimpleImputer(), [2, 0])]).fit(x)
    assert DensePrepare.of(plain) is not None


def test_isotonic_shortcut_is_the_calibrators_predict(model) -> None:
    """The calibrator is called without its input validation: same clip, same interpolator."""
    native, _ = both_paths(model)
    calibrator = model.calibrated_classifiers_[0].calibrators[0]
    assert native._calibrate != calibrator.predict
    votes = np.concatenate([np.linspace(-0.5, 1.5, 4001), [0.0, 1.0, -0.0]])
    votes = np.concatenate([votes, calibrator.X_thresholds_])  # the knots themselves
    assert np.array_equal(bits(native._calibrate(votes)), bits(calibrator.predict(votes)))


# -- path decomposition (models.serving.contributions) ------------------------------------------


@pytest.fixture(scope="module")
def random_rows(rows) -> np.ndarray:
    """10,000 random rows: real loans' rows with a third of the cells swapped for another
    loan's value of the same column and 5 % missing, so that paths reach every part of the
    trees (and the imputer and the one-hot of unknown codes get their share)."""
    rng = np.random.default_rng(2026)
    x = rows[rng.integers(0, len(rows), 10_000)].copy()
    swap = rng.random(x.shape) < 1 / 3
    donors = rows[rng.integers(0, len(rows), x.shape), np.arange(x.shape[1])]
    x[swap] = donors[swap]
    x[rng.random(x.shape) < 0.05] = np.nan
    return x


def forest_probability(model: Any, x: np.ndarray) -> np.ndarray:
    """scikit-learn's own uncalibrated forest probability of ``x`` (the served pipeline's
    forest on its prepared rows), independent of the code under test."""
    pipeline = model.calibrated_classifiers_[0].estimator
    return pipeline[-1].predict_proba(pipeline[:-1].transform(x))[:, 1]


@pytest.mark.parametrize("native", [True, False], ids=["compiled", "reference"])
def test_contributions_plus_bias_equal_the_forest_probability(model, random_rows, native) -> None:
    """The acceptance of #13: on 10,000 random rows, raw bias + raw contributions = the
    forest's probability (before calibration) and served bias + served contributions = the
    served, calibrated score (``model.predict_proba``), both within 1e-9."""
    forest = FastCalibratedForest(model, native=native)
    assert forest.native is native
    explanation = forest.explain(random_rows)
    assert explanation is not None and explanation.raw.shape[0] == 10_000
    raw_total = explanation.raw_bias + explanation.raw.sum(axis=1)
    assert np.abs(raw_total - forest_probability(model, random_rows)).max() < 1e-9
    served_total = explanation.bias + explanation.contributions.sum(axis=1)
    served = model.predict_proba(random_rows)[:, 1]
    assert np.abs(served_total - served).max() < 1e-9
    assert np.array_equal(explanation.scores, served)  # the scores explained are the served ones
    spread = np.abs(explanation.contributions).max(axis=0)
    assert (spread > 1e-3).sum() >= 10, "many inputs really contribute"


def test_compiled_contributions_equal_the_reference_bit_for_bit(model, random_rows) -> None:
    """The kernel adds the reference's differences in the reference's order: same bits, for
    the whole batch, for single rows and across block edges."""
    compiled = FastCalibratedForest(model, native=True).explain(random_rows)
    reference = FastCalibratedForest(model, native=False).explain(random_rows)
    assert compiled is not None and reference is not None
    assert compiled.inputs == reference.inputs
    assert compiled.raw_bias == reference.raw_bias and compiled.bias == reference.bias
    assert np.array_equal(compiled.raw, reference.raw)
    assert np.array_equal(compiled.contributions, reference.contributions)
    native = FastCalibratedForest(model, native=True)
    for size in (1, 2, 65):
        part = native.explain(random_rows[100 : 100 + size])
        assert part is not None
        assert np.array_equal(part.contributions, compiled.contributions[100 : 100 + size])


def test_contributions_are_per_model_input(model, random_rows) -> None:
    """One column per model input (a categorical's one-hot columns folded into it); inputs the
    model does not read (gender, age, the treatments) are not among them."""
    from models.features.columns import FEATURE_INDEX
    from models.training.early_warning import model_inputs

    explanation = FastCalibratedForest(model).explain(random_rows[:50])
    assert explanation is not None
    assert explanation.inputs == tuple(sorted(FEATURE_INDEX[n] for n in model_inputs()))
    assert explanation.raw.shape == (50, len(model_inputs()))


def test_served_contributions_keep_the_forests_signs(model, random_rows) -> None:
    """The isotonic map rises, so the per-row scale is >= 0: a served contribution has its raw
    contribution's sign, or is 0 where the map is flat between the average vote and the row's."""
    explanation = FastCalibratedForest(model).explain(random_rows)
    assert explanation is not None
    raw, served = explanation.raw, explanation.contributions
    assert np.all((np.sign(served) == np.sign(raw)) | (served == 0.0))
    assert (served != 0).any(axis=1).mean() > 0.5


def test_the_decomposition_of_one_tree_walks_its_path() -> None:
    """A hand-built check of the telescoping on a tiny forest: each row's contributions are
    the value changes at its own splits, per feature, independent of the code under test."""
    from models.serving._forest_kernel import ForestKernel
    from sklearn.ensemble import RandomForestClassifier

    from models.serving.contributions import input_contributions_numpy

    rng = np.random.default_rng(3)
    x = rng.random((400, 3)).astype(np.float32)
    y = (x[:, 0] + 0.3 * x[:, 1] > 0.7).astype(int)
    forest = RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(x, y)
    trees = [e.tree_ for e in forest.estimators_]
    rows = np.ascontiguousarray(x[:20])
    expected = np.zeros((20, 3))
    for tree in trees:
        for i, row in enumerate(rows):
            node = 0
            while tree.children_left[node] != -1:
                f = tree.feature[node]
                go_left = row[f] <= tree.threshold[node]
                child = tree.children_left[node] if go_left else tree.children_right[node]
                expected[i, f] += tree.value[child, 0, 1] - tree.value[node, 0, 1]
                node = child
    expected /= len(trees)
    slots = np.arange(3, dtype=np.int32)  # each forest column its own input
    assert np.allclose(input_contributions_numpy(trees, rows, slots, 3), expected, atol=1e-15)
    votes, compiled = ForestKernel(trees, 3).explain(rows, slots, 3)
    assert np.allclose(compiled, expected, atol=1e-15)
    assert np.array_equal(votes, forest.predict_proba(rows)[:, 1])


# -- the reasons' fast path (explain_top, top_positions) ----------------------------------------


def adversarial_values(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    """Contribution-like rows full of ties: values on a coarse grid, exact zeros of both
    signs, a few NaNs and infinities, some rows all equal."""
    x = np.round(rng.normal(0.0, 0.02, (n, m)), 3)
    x[rng.random((n, m)) < 0.2] = 0.0
    x[rng.random((n, m)) < 0.1] = -0.0
    x[rng.random((n, m)) < 0.01] = np.nan
    x[rng.random((n, m)) < 0.01] = np.inf
    x[rng.random((n, m)) < 0.01] = -np.inf
    x[::50] = 0.5  # every position tied
    return x


@pytest.mark.parametrize("k", [0, 1, 3, 5, 41, 60])
def test_compiled_top_positions_equal_the_reference(k) -> None:
    """The compiled selection picks the reference's (stable argsort of ``-values``) positions
    exactly: ties by position, -0.0 equal to 0.0, NaN after every number."""
    from models.serving._forest_kernel import top_positions

    from models.serving.contributions import top_positions_numpy

    rng = np.random.default_rng(k)
    for shape in [(10_000, 41), (7, 1), (0, 41), (3, 0)]:
        values = adversarial_values(rng, *shape)
        compiled, reference = top_positions(values, k), top_positions_numpy(values, k)
        assert compiled.shape == reference.shape == (shape[0], min(k, shape[1]))
        assert np.array_equal(compiled, reference)
    ties = np.array([[0.1, 0.3, 0.3, 0.0, -0.0, 0.3]])
    assert top_positions(ties, 3).tolist() == [[1, 2, 5]]  # equal values: the first first


def test_one_walk_gives_the_served_votes(model, random_rows) -> None:
    """``ForestKernel.explain``'s votes are ``sum_votes``' bits (the scores reasons explain
    are the served ones) and its contributions the reference's, batch sizes across blocks."""
    forest = FastCalibratedForest(model, native=True)
    kernel, slots, n_inputs = forest._kernel, forest._slots, len(forest._inputs)
    x32 = np.ascontiguousarray(forest._prepare.transform(random_rows), dtype=np.float32)
    votes, raw = kernel.explain(x32, slots, n_inputs)
    assert np.array_equal(votes, kernel.sum_votes(x32))
    from models.serving.contributions import input_contributions_numpy

    assert np.array_equal(raw, input_contributions_numpy(forest._trees, x32, slots, n_inputs))
    for size in (1, 63, 64, 65, 130):
        part_votes, part = kernel.explain(x32[:size], slots, n_inputs)
        assert np.array_equal(part_votes, votes[:size]) and np.array_equal(part, raw[:size])
    with pytest.raises(ValueError, match="slot"):
        kernel.explain(x32[:2], np.full_like(slots, n_inputs), n_inputs)


@pytest.mark.parametrize("native", [True, False], ids=["compiled", "reference"])
def test_explain_top_is_explain_ranked_by_top_reasons(model, random_rows, native) -> None:
    """On 10,000 random rows, ``explain_top`` chooses the inputs ``top_reasons`` chooses from
    the full ``explain`` matrices (served, then raw, then position) and reports the same
    served cells, bit for bit -- including rows where the calibration is flat (all served 0,
    ranked by the raws)."""
    from models.features.columns import FEATURE_INDEX, FEATURE_NAMES
    from models.serving.reasons import MAX_REASONS, top_reasons

    forest = FastCalibratedForest(model, native=native)
    full = forest.explain(random_rows)
    top = forest.explain_top(random_rows, MAX_REASONS)
    assert full is not None and top is not None
    flat = (full.contributions == 0.0).all(axis=1)
    assert 0 < flat.sum() < len(flat), "some rows sit on a plateau of the map, most do not"
    n, m = full.raw.shape
    order = np.lexsort((np.broadcast_to(np.arange(m), (n, m)), -full.raw, -full.contributions))
    expected = order[:, :MAX_REASONS]
    assert np.array_equal(top.columns, np.asarray(full.inputs)[expected])
    assert np.array_equal(top.values, np.take_along_axis(full.contributions, expected, axis=1))
    chosen = top_reasons(full.inputs, full.contributions, full.raw, random_rows)
    for i in range(0, n, 97):  # and the reasons' inputs are those cells, positives first
        features = [FEATURE_INDEX[entry.feature] for entry, _ in chosen[i]]
        assert features == top.columns[i, : len(features)].tolist()
        assert {FEATURE_NAMES[c] for c in features} <= {FEATURE_NAMES[c] for c in full.inputs}


def test_a_falling_calibration_is_ranked_by_the_three_keys() -> None:
    """Rows whose factor is negative or NaN (a map that falls; the isotonic one never does)
    are ranked on served, then raw, then position like ``top_reasons``, not by the raws."""
    from models.serving.contributions import top_contributions, top_positions_numpy

    raw = np.array([[0.3, 0.1, -0.2, 0.1], [0.3, 0.1, -0.2, 0.1], [0.0, 0.2, 0.2, -0.1]])
    secant = np.array([-2.0, 0.5, 0.0])
    top = top_contributions((4, 7, 9, 11), raw, secant, 3, top_positions_numpy)
    assert top.columns.tolist() == [[9, 7, 11], [4, 7, 11], [7, 9, 4]]
    assert np.array_equal(top.values[0], np.array([-0.2, 0.1, 0.1]) * -2.0)
    nan_row = top_contributions((4, 7, 9, 11), raw[:1], np.array([np.nan]), 3, top_positions_numpy)
    assert nan_row.columns.tolist() == [[4, 7, 11]]  # all served NaN: the raws decide
