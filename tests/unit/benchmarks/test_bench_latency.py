"""The latency bench's per-window series (``bench.latency.p99_by_window``) and its line in
docs/BENCHMARKS.md (``bench.run_all._by_5s``): the evidence behind the 40 s warm-up is read
from them, so they must put each change in the right window."""

from __future__ import annotations

import numpy as np

from bench.latency import p99_by_window
from bench.run_all import _by_5s


def test_each_window_has_the_p99_of_its_own_changes_only() -> None:
    start = 1_000_000.0
    slow = np.column_stack([start + np.arange(100.0) * 40, np.full(100, 500.0)])  # 0-4 s
    fast = np.column_stack([start + 5_000 + np.arange(100.0) * 40, np.arange(100.0)])  # 5-9 s
    late = np.array([[start + 17_000.0, 7.0]])  # 15-19 s; 10-14 s has no change
    table = np.vstack([slow, fast, late])

    series = p99_by_window(table, 5.0)

    assert series == (500.0, float(np.percentile(np.arange(100.0), 99)), 7.0)


def test_the_line_marks_where_the_measured_window_begins() -> None:
    lat = {"p99_by_5s_ms": (565.0, 829.4, 324.0, 1_116.0), "warmup_s": 10.0}

    assert _by_5s(lat) == (
        "p99 per 5 s of input, from the first (the bar marks the end of the warm-up): "
        "565 829 | 324 1,116 ms."
    )
