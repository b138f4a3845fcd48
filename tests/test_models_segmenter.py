"""The online segmenter runs river's StandardScaler + KMeans update equations on plain lists;
these tests drive river itself side by side and require the same bits at every step."""

from __future__ import annotations

import math
import random

from models.features import SEGMENT_FEATURES
from models.segmentation import OnlineSegmenter, name_by_risk


def _init(rng: random.Random) -> dict:
    d = len(SEGMENT_FEATURES)
    return {
        "features": list(SEGMENT_FEATURES), "count": 500,
        "means": [rng.uniform(-5, 50) for _ in range(d)],
        "stds": [rng.uniform(0.1, 30) for _ in range(d)],
        "centres": [[rng.gauss(0, 1) for _ in range(d)] for _ in range(3)],
        "risk_weights": [rng.gauss(0, 0.1) for _ in range(d)], "halflife": 0.01,
    }  # fmt: skip


def _river_step(scaler, kmeans, weights: list[float], x: dict[int, float]) -> str:
    """What the segmenter did with river objects before it ran river's equations itself."""
    means = scaler.means
    raw = {k: v if v == v else means[k] for k, v in x.items()}
    scaler.learn_one(raw)
    cluster = kmeans.learn_predict_one(scaler.transform_one(raw))
    risks = [sum(wk * centre[k] for k, wk in enumerate(weights))
             for _, centre in sorted(kmeans.centers.items())]  # fmt: skip
    return name_by_risk(risks)[cluster]


def _sample(rng: random.Random, d: int) -> list[float]:
    row = [rng.choice((0.0, rng.uniform(0, 200), rng.expovariate(0.05))) for _ in range(d)]
    if rng.random() < 0.1:
        row[rng.randrange(d)] = math.nan  # missing: replaced by the running mean
    return row


def test_every_step_equals_rivers_bit_for_bit() -> None:
    rng = random.Random(7)
    segmenter = OnlineSegmenter(_init(rng))
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
