"""The online segmenter runs river's StandardScaler + KMeans update equations on plain lists;
these tests drive river itself side by side and require the same bits at every step. The
compiled kernel (the default step) is then held to the pure-Python reference the same way."""

from __future__ import annotations

import importlib
import json
import math
import random
import struct
import sys
from array import array
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from models.features.columns import FEATURE_NAMES, SEGMENT_FEATURES
from models.serving.segmenter import OnlineSegmenter, name_by_risk


def _init(rng: random.Random) -> dict:
    d = len(SEGMENT_FEATURES)
    return {
        "features": list(SEGMENT_FEATURES),
        "count": 500,
        "means": [rng.uniform(-5, 50) for _ in range(d)],
        "stds": [rng.uniform(0.1, 30) for _ in range(d)],
        "centres": [[rng.gauss(0, 1) for _ in range(d)] for _ in range(3)],
        "risk_weights": [rng.gauss(0, 0.1) for _ in range(d)],
        "halflife": 0.01,
    }


def _river_step(scaler, kmeans, weights: list[float], x: dict[int, float]) -> str:
    """What the segmenter did with river objects before it ran river's equations itself."""
    means = scaler.means
    raw = {k: v if v == v else means[k] for k, v in x.items()}
    scaler.learn_one(raw)
    cluster = kmeans.learn_predict_one(scaler.transform_one(raw))
    risks = [
        sum(wk * centre[k] for k, wk in enumerate(weights))
        for _, centre in sorted(kmeans.centers.items())
    ]
    return name_by_risk(risks)[cluster]


def _sample(rng: random.Random, d: int) -> list[float]:
    row = [rng.choice((0.0, rng.uniform(0, 200), rng.expovariate(0.05))) for _ in range(d)]
    if rng.random() < 0.1:
        row[rng.randrange(d)] = math.nan  # missing: replaced by the running mean
    return row


def test_every_step_equals_rivers_bit_for_bit() -> None:
    rng = random.Random(7)
    segmenter = OnlineSegmenter(_init(rng))
    assert segmenter.native, "the default segmenter runs the compiled kernel"
    scaler, kmeans = segmenter.to_river()
    weights = segmenter.risk_weights
    seen = set()
    for _ in range(5000):
        row = _sample(rng, len(SEGMENT_FEATURES))
        features = dict(zip(SEGMENT_FEATURES, row, strict=True))
        ours = segmenter.learn_predict(features)
        theirs = _river_step(scaler, kmeans, weights, dict(enumerate(row)))
        assert ours == theirs
        seen.add(ours)
    assert len(seen) >= 2, "the test stream must visit more than one segment"
    keys = range(len(SEGMENT_FEATURES))
    state = segmenter.state()
    assert state["means"] == [scaler.means[k] for k in keys]
    assert state["vars"] == [scaler.vars[k] for k in keys]
    assert state["count"] == scaler.counts[0]
    assert state["centres"] == [[kmeans.centers[c][k] for k in keys] for c in range(3)]


def test_predict_one_equals_rivers_and_learns_nothing() -> None:
    rng = random.Random(3)
    segmenter = OnlineSegmenter(_init(rng))
    scaler, kmeans = segmenter.to_river()
    before = segmenter.to_json()
    for _ in range(500):
        row = [v if v == v else 0.0 for v in _sample(rng, len(SEGMENT_FEATURES))]
        cluster = kmeans.predict_one(scaler.transform_one(dict(enumerate(row))))
        features = dict(zip(SEGMENT_FEATURES, row, strict=True))
        assert segmenter.predict_one(features) == segmenter.names[cluster], features
    assert segmenter.to_json() == before


# -- the compiled kernel against the Python reference -------------------------------------------


def test_compiled_kernel_is_built() -> None:
    """CI has a C compiler: a missing kernel is a broken build, not a reason to skip."""
    kernel = importlib.import_module("models.serving._segmenter_kernel")
    assert hasattr(kernel, "SegmenterKernel"), "_segmenter_kernel.pyx is a placeholder"
    assert OnlineSegmenter(_init(random.Random(0))).native


def _column(rng: random.Random, name: str) -> float:
    """One plausible ``features()`` value, with the odd zero, missing value and outlier."""
    roll = rng.random()
    if roll < 0.04:
        return math.nan
    if roll < 0.15:
        return 0.0
    if roll < 0.17:
        return rng.choice((1e9, 3.5e12, -7.25e11, 1e15))  # corrupt or extreme, still finite
    if "ratio" in name or name == "emi_to_income":
        return rng.uniform(0.0, 1.5)
    if "days" in name:
        return float(rng.choice((0, 0, 30, 60, 90, 120, 180, 360)) + rng.randrange(5))
    return float(rng.randrange(12)) if rng.random() < 0.5 else rng.expovariate(1e-3)


def _rows(rng: random.Random, n: int) -> list[list[float]]:
    return [[_column(rng, name) for name in FEATURE_NAMES] for _ in range(n)]


class _StateLike(array):
    """Like ``LoanState``: a float buffer whose own values are NOT the features; only
    ``features()`` is. The segmenter must call it, not read the buffer."""

    def __new__(cls, row: list[float]) -> _StateLike:
        state = super().__new__(cls, "d", [-1.0] * len(row))
        state.row = row
        return state

    def features(self) -> list[float]:
        return self.row


def _pair(init: dict) -> tuple[OnlineSegmenter, OnlineSegmenter]:
    native, python = OnlineSegmenter(init, native=True), OnlineSegmenter(init, native=False)
    assert native.native and not python.native
    return native, python


@pytest.mark.parametrize("halflife", [0.05, 1.0])
def test_kernel_equals_python_reference_bit_for_bit(halflife: float) -> None:
    """6,000 steps with rows as lists, numpy rows of a C-contiguous matrix, ``array('d')``,
    feature dicts and state objects: every segment and, along the way and at the end, the
    whole JSON state.
    With halflife 1 a centre jumps onto each member, so every bit of the scaled row shows in
    the state (at 0.05 a last-bit difference in ``var ** 0.5`` mostly rounds away)."""
    rng = random.Random(11)
    init = _init(rng) | {"halflife": halflife}
    native, python = _pair(init)
    rows = _rows(rng, 6000)
    matrix = np.array(rows, dtype=np.float64)
    assert matrix.flags.c_contiguous
    seen = set()
    for i, row in enumerate(rows):
        kind = i % 5
        x = (
            row,
            matrix[i],
            array("d", row),
            dict(zip(FEATURE_NAMES, row, strict=True)),
            _StateLike(row),
        )[kind]
        ours, theirs = native.learn_predict(x), python.learn_predict(row)
        assert ours == theirs, (i, kind)
        seen.add(ours)
        if i % 97 == 0:
            assert native.to_json() == python.to_json(), i
    assert len(seen) == 3, "the stream must visit every segment"
    assert native.to_json() == python.to_json()
    assert native.names == python.names and native.centres == python.centres
    probe = _rows(rng, 200)
    assert [native.predict_one(r) for r in probe] == [python.predict_one(r) for r in probe]


def test_kernel_equals_python_reference_on_degenerate_input() -> None:
    """Infinities and overflowing squares drive variances to inf and then NaN, centres and
    risks to NaN: the kernel must still take the same branches and name clusters alike."""
    rng = random.Random(5)
    native, python = _pair(_init(rng))
    specials = (math.inf, -math.inf, 1e300, -1e300, -0.0, 5e-324, math.nan)
    for i in range(1500):
        row = [_column(rng, name) for name in FEATURE_NAMES]
        if i % 150 == 149:
            row[rng.randrange(len(row))] = rng.choice(specials)
        assert native.learn_predict(row) == python.learn_predict(row), i
        if i % 50 == 0:
            assert native.to_json() == python.to_json(), i
    assert native.to_json() == python.to_json()
    assert "NaN" in native.to_json(), "the stream must reach the NaN state"


def test_kernel_raises_where_python_raises() -> None:
    """A square too large for a double is OverflowError in Python; the kernel raises it too,
    after the same partial update (the scaler moved, no centre did)."""
    init = _init(random.Random(2))
    init["centres"][1] = [2e154] * len(SEGMENT_FEATURES)
    native, python = _pair(init)
    row = [1.0] * len(FEATURE_NAMES)
    for segmenter in (native, python):
        with pytest.raises(OverflowError):
            segmenter.learn_predict(row)
    assert native.to_json() == python.to_json()
    with pytest.raises(IndexError):
        native.learn_predict(row[:3])
    with pytest.raises(TypeError):
        native.learn_predict(np.ones(len(FEATURE_NAMES), dtype=np.float32))
    assert native.to_json() == python.to_json()


def _near_tie(rng: random.Random) -> tuple[list[float], list[float]]:
    """Two centres whose squared distances from the origin compare one way with ``x ** 2``
    (libm pow) and the other way with ``x * x``: the two are not always the same bits."""

    def nearer(p: list[float], q: list[float], square: Callable[[float], float]) -> bool:
        return 0.0 + square(p[0]) + square(p[1]) <= 0.0 + square(q[0]) + square(q[1])

    while True:
        a, b, c = rng.uniform(0.5, 3), rng.uniform(0.5, 3), rng.uniform(0.5, 3)
        if (rest := a * a + b * b - c * c) <= 0:
            continue
        for ulps in range(-2, 3):
            p, q = [a, b], [c, math.sqrt(rest) + ulps * math.ulp(math.sqrt(rest))]
            if nearer(p, q, lambda x: abs(x) ** 2) != nearer(p, q, lambda x: abs(x) * abs(x)):
                return p, q


def test_kernel_squares_with_pow_not_multiplication() -> None:
    """A compiler may turn ``pow(x, 2.0)`` into ``x * x``; the kernel must not let it. Rows equal
    to the running means scale to z = 0, where these near-tied centres are told apart only by
    how the squares round."""
    d = len(SEGMENT_FEATURES)
    rng = random.Random(1)
    init = _init(rng) | {"risk_weights": [1.0] + [0.0] * (d - 1)}
    row = [0.0] * len(FEATURE_NAMES)
    for _ in range(20):
        p, q = _near_tie(rng)
        init["centres"] = [p + [0.0] * (d - 2), q + [0.0] * (d - 2), [50.0] * d]
        native, python = _pair(init)
        for name, mean in zip(SEGMENT_FEATURES, init["means"], strict=True):
            row[FEATURE_NAMES.index(name)] = mean
        assert native.learn_predict(row) == python.learn_predict(row), (p, q)
        assert native.to_json() == python.to_json()


def test_kernel_names_clusters_like_name_by_risk() -> None:
    """Ties, signed zeros, infinities and NaN: the kernel's re-implementation of the ranking
    (timsort on ``(-risk, index)``) picks the same HIGH_RISK and LOW_RISK."""
    from models.serving._segmenter_kernel import name_by_risk as kernel_name_by_risk

    rng = random.Random(9)
    values = (0.0, -0.0, 1.0, -1.0, 2.5, math.inf, -math.inf, math.nan)
    for _ in range(20000):
        risks = [rng.choice(values) for _ in range(rng.randint(1, 7))]
        assert kernel_name_by_risk(risks) == name_by_risk(risks), risks


def test_kernel_ranks_nan_risks_like_this_interpreters_sort() -> None:
    """With a NaN risk the keys are not totally ordered, and CPython 3.13's run count
    (gh-116554) ranks ``[0.0, 1.0, nan]`` differently from 3.11's and 3.12's: the kernel must
    follow the interpreter it runs on."""
    from models.serving._segmenter_kernel import SORT_RUNS
    from models.serving._segmenter_kernel import name_by_risk as kernel_name_by_risk

    risks = [0.0, 1.0, math.nan]
    if sys.version_info >= (3, 13):
        expected, runs = ["LOW_RISK", "HIGH_RISK", "OTHERS"], "3.13"
    else:
        expected, runs = ["OTHERS", "HIGH_RISK", "LOW_RISK"], "3.11"
    assert runs == SORT_RUNS
    assert name_by_risk(risks) == expected
    assert kernel_name_by_risk(risks) == expected


def test_json_moves_between_kernel_and_reference() -> None:
    rng = random.Random(4)
    native = OnlineSegmenter(_init(rng), native=True)
    for row in _rows(rng, 300):
        native.learn_predict(row)
    text = native.to_json()
    assert json.loads(text)["state"]["count"] == 800
    resumed = OnlineSegmenter.from_json(text, native=False)
    assert resumed.to_json() == text and OnlineSegmenter.from_json(text).native
    for row in _rows(rng, 300):
        assert native.learn_predict(row) == resumed.learn_predict(row)
    assert native.to_json() == resumed.to_json()


# -- summation: the kernel adds floats the way this interpreter's ``sum`` does ------------------


def _plain_sum(values: list[float]) -> float:
    """CPython 3.11's ``sum`` of floats: ``0 + x0`` (int + float), then plain additions."""
    total = 0.0 + values[0]
    for x in values[1:]:
        total += x
    return total


def _neumaier_sum(values: list[float]) -> float:
    """CPython 3.12+'s ``sum`` of floats (``builtin_sum_impl``): ``0 + x0``, then Neumaier's
    compensated additions, the compensation added at the end only if nonzero and finite."""
    total, compensation = 0.0 + values[0], 0.0
    for x in values[1:]:
        t = total + x
        if abs(total) >= abs(x):
            compensation += (total - t) + x
        else:
            compensation += (x - t) + total
        total = t
    if compensation and math.isfinite(compensation):
        return total + compensation
    return total


def _bits(value: float) -> bytes:
    """The value's IEEE bits, every NaN as one: which of two NaN operands an addition passes on
    (so a NaN's sign and payload) is the C compiler's choice of operand order, which IEEE 754
    leaves open, in CPython as in the kernel; no output can tell NaNs apart (comparisons are
    false, JSON writes ``NaN``)."""
    return struct.pack("<d", math.nan if value != value else value)


# Magnitudes 2**-60 .. 2**60 of both signs, so terms cancel and fall below each other's last
# bit: where plain and compensated sums disagree. The specials cover the final step's guard.
_TERMS = st.one_of(
    st.builds(math.ldexp, st.floats(-1.0, 1.0), st.integers(-60, 60)),
    st.sampled_from([0.0, -0.0, 1e308, -1e308, math.inf, -math.inf, math.nan, 5e-324]),
    st.floats(allow_nan=True, allow_infinity=True),
)


def test_the_kernel_knows_this_interpreters_sum() -> None:
    """The kernel's choice (by version) is what ``sum`` does here (by behaviour), and the
    default segmenter uses the kernel: a mismatch is a failure, never a silent fallback."""
    from models.serving import _segmenter_kernel
    from models.serving.segmenter import NATIVE, builtin_summation

    expected = "compensated" if sys.version_info >= (3, 12) else "plain"
    assert _segmenter_kernel.SUMMATION == builtin_summation() == expected
    assert NATIVE
    assert sum([1e100, 1.0, -1e100]) == (1.0 if expected == "compensated" else 0.0)


@settings(max_examples=400, deadline=None)
@given(st.lists(_TERMS, min_size=1, max_size=12))
@example([1e16, 1.0, -1e16])  # compensated keeps the 1.0
@example([1e308, 1e308, -1e308])  # inf, not NaN: the final step skips a non-finite c
@example([1.0, 2.0**-54, 2.0**-54, 2.0**-54])  # the lost halves add up to one last bit
@example([-0.0])  # 0 + -0.0 is 0.0
@example([2.0**-54, 1.0, -(2.0**-54)])  # the else branch: |f| < |x|
def test_kernel_float_sum_is_builtin_sum_bit_for_bit(values: list[float]) -> None:
    """Also pins the model of CPython's ``sum`` the kernel implements (``_plain_sum`` on 3.11,
    ``_neumaier_sum`` from 3.12), so a change of ``sum`` in a new Python shows up here."""
    from models.serving._segmenter_kernel import float_sum

    model = _neumaier_sum if sys.version_info >= (3, 12) else _plain_sum
    assert _bits(float_sum(values)) == _bits(sum(values)) == _bits(model(values)), values


def test_the_summation_inputs_tell_plain_from_compensated() -> None:
    """The inputs of the summation tests are ones where the two summations disagree (else
    those tests would pass with the wrong one)."""
    assert _plain_sum([1e16, 1.0, -1e16]) == 0.0 and _neumaier_sum([1e16, 1.0, -1e16]) == 1.0
    assert _plain_sum([1.0] + [2.0**-54] * 3) == 1.0
    assert _neumaier_sum([1.0] + [2.0**-54] * 3) == 1.0 + 2.0**-52
    assert _plain_sum([1e308, 1e308, -1e308]) == math.inf == _neumaier_sum([1e308, 1e308, -1e308])
    rng = random.Random(0)
    rows = [_cancelling_row(rng) for _ in range(200)]
    assert sum(_plain_sum(r) != _neumaier_sum(r) for r in rows) > 50  # 74 of 200


def _cancelling_row(rng: random.Random, d: int = len(SEGMENT_FEATURES)) -> list[float]:
    return [
        rng.choice((1.0, -1.0)) * math.ldexp(rng.random(), rng.randrange(-40, 40)) for _ in range(d)
    ]


def test_kernel_risks_follow_this_interpreters_sum() -> None:
    """Risk weights that cancel: ``sum(w * c)`` rounds differently plainly and compensated in
    most steps; the kernel's risks (hence its names) must be the reference's, bit for bit."""
    d = len(SEGMENT_FEATURES)
    rng = random.Random(21)
    init = _init(rng) | {"halflife": 1.0, "risk_weights": _cancelling_row(rng, d)}
    native, python = _pair(init)
    plain_differs = 0
    for i, row in enumerate(_rows(rng, 2000)):
        assert native.learn_predict(row) == python.learn_predict(row), i
        assert native.names == python.names, i  # also refreshes native._risks from the kernel
        assert list(map(_bits, native._risks)) == list(map(_bits, python._risks)), i
        plain = [
            _plain_sum([w * c for w, c in zip(init["risk_weights"], centre, strict=True)])
            for centre in python.centres
        ]
        plain_differs += plain != python._risks
    assert native.to_json() == python.to_json()
    if sys.version_info >= (3, 12):  # the test must be able to tell the two summations apart
        assert plain_differs > 100, plain_differs


def test_kernel_nearest_centre_follows_this_interpreters_sum() -> None:
    """A row at the running means scales to z = 0, so each distance is the sum of a centre's
    squares. Centre 1's squares (1, 2**-54, 2**-54, 2**-54) add up to 1.0 plainly and to
    1 + 2**-52 compensated; centre 0's (1, 2**-52) to 1 + 2**-52 either way. So centre 1 is
    strictly nearer (OTHERS) with 3.11's ``sum`` and not (LOW_RISK, centre 0) with 3.12's."""
    d = len(SEGMENT_FEATURES)
    init = _init(random.Random(6)) | {"risk_weights": [1.0] + [0.0] * (d - 1)}
    init["centres"] = [[-1.0, 2.0**-26] + [0.0] * (d - 2),  # risk -1: LOW_RISK
                       [1.0] + [2.0**-27] * 3 + [0.0] * (d - 4),  # risk 1: OTHERS
                       [50.0] * d]  # fmt: skip  # risk 50, far away: HIGH_RISK
    native, python = _pair(init)
    row = [0.0] * len(FEATURE_NAMES)
    for name, mean in zip(SEGMENT_FEATURES, init["means"], strict=True):
        row[FEATURE_NAMES.index(name)] = mean
    expected = "LOW_RISK" if sys.version_info >= (3, 12) else "OTHERS"
    assert python.learn_predict(row) == expected
    assert native.learn_predict(row) == expected
    assert native.to_json() == python.to_json()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0.01, 0.5, 1.0]))
def test_kernel_equals_reference_and_river_where_sums_cancel(seed: int, halflife: float) -> None:
    """Hypothesis picks the stream; cancelling risk weights and centres make the sums
    interpreter-dependent. Kernel, reference and river agree on every segment and state, and
    kernel and reference on every risk, bit for bit."""
    rng = random.Random(seed)
    init = _init(rng) | {"halflife": halflife, "risk_weights": _cancelling_row(rng)}
    init["centres"] = [_cancelling_row(rng) for _ in range(3)]
    native, python = _pair(init)
    scaler, kmeans = python.to_river()
    for i in range(150):
        row = [
            rng.choice((0.0, rng.uniform(-1e6, 1e6), math.ldexp(rng.random(), 30)))
            for _ in SEGMENT_FEATURES
        ]
        features = dict(zip(SEGMENT_FEATURES, row, strict=True))
        ours = native.learn_predict(features)
        assert ours == python.learn_predict(features), i
        assert ours == _river_step(scaler, kmeans, init["risk_weights"], dict(enumerate(row))), i
        assert native.names == python.names, i  # refreshes native._risks from the kernel
        assert list(map(_bits, native._risks)) == list(map(_bits, python._risks)), i
    assert native.to_json() == python.to_json()
    keys = range(len(SEGMENT_FEATURES))
    assert python.state()["centres"] == [[kmeans.centers[c][k] for k in keys] for c in range(3)]


@pytest.mark.parametrize("native", [True, False])
def test_to_json_is_kept_until_the_next_step_and_then_recomputed(native: bool) -> None:
    rng = random.Random(5)
    segmenter = OnlineSegmenter(_init(rng), native=native)

    def fresh() -> str:
        return json.dumps({"init": segmenter.init, "state": segmenter.state()}, sort_keys=True)

    before = segmenter.to_json()
    assert segmenter.to_json() is before  # asked again with no step between: the same text
    row = [0.0] * len(FEATURE_NAMES)
    for step in range(3):
        for k in range(len(row)):
            row[k] = rng.uniform(0, 100)
        segmenter.learn_predict(list(row))
        after = segmenter.to_json()
        assert after != before and after == fresh(), step
        assert json.loads(after)["state"]["count"] == 500 + step + 1
        before = after
