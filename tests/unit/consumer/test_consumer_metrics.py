"""The batched latency histogram exposes exactly what prometheus_client's Histogram would."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from consumer.metrics import LATENCY_BUCKETS, BatchHistogram


def test_batch_histogram_exposition_equals_one_by_one_histogram() -> None:
    rng = np.random.default_rng(1)
    values = np.concatenate(
        [rng.exponential(2.0, 3000), np.array(LATENCY_BUCKETS), np.array([0.0, 1e9])]
    )  # bounds: `le` is inclusive
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batched = BatchHistogram("lat_seconds", "Latency.", LATENCY_BUCKETS, ours)
    reference = Histogram("lat_seconds", "Latency.", buckets=LATENCY_BUCKETS, registry=theirs)
    for chunk in np.array_split(values, 7):
        batched.observe_many(chunk)
    batched.observe_many(np.array([]))
    for value in values:
        reference.observe(float(value))

    def series(registry: CollectorRegistry) -> dict[str, float]:
        lines = generate_latest(registry).decode().splitlines()
        pairs = (line.rsplit(" ", 1) for line in lines if line.startswith("lat_seconds_"))
        return {name: float(value) for name, value in pairs if "_created" not in name}

    ours_series, theirs_series = series(ours), series(theirs)
    assert ours_series.keys() == theirs_series.keys()
    for name, value in theirs_series.items():
        assert abs(ours_series[name] - value) <= 1e-9 * max(1.0, abs(value)), name
    assert ours_series['lat_seconds_bucket{le="+Inf"}'] == len(values)
