"""The evidence for ``bench.latency.WARMUP_S``: ``make bench``'s order on one broker, with each
latency run's early and late windows compared within the same run.

Per round, on a fresh broker: ``bench.run_all.throughput`` (big batches), a latency run of the
table policy at half its exactly-once rate, the arms' throughput and a latency run of the arms
at half of theirs, as ``make bench`` does -- each latency run with ``--warmup`` seconds (40) of
input before the 25 s window. Printed per run: the p50 and p99 over seconds 20-45 (the window
of a 20 s warm-up) and over 40-65 (that of a 40 s one), and the p99 of every 5 s::

    python -m bench.warmup --rounds 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import uuid
from pathlib import Path

import numpy as np

import bench.latency as latency
from bench.common import benchmark_broker, scorer_command
from bench.run_all import measure, strategy_options, throughput

WINDOWS = ((20.0, 45.0), (40.0, 65.0))


def windows(table: np.ndarray) -> dict[str, float | list[float]]:
    """p50/p99 of each of ``WINDOWS`` (seconds of input by produce time) and the 5-s p99s."""
    seconds = (table[:, 0] - table[0, 0]) / 1000
    out: dict[str, float | list[float]] = {}
    for lo, hi in WINDOWS:
        part = table[(seconds >= lo) & (seconds < hi), 1]
        out[f"p50_{lo:.0f}_{hi:.0f}_ms"] = round(float(np.percentile(part, 50)), 1)
        out[f"p99_{lo:.0f}_{hi:.0f}_ms"] = round(float(np.percentile(part, 99)), 1)
    out["p99_by_5s_ms"] = [round(v) for v in latency.p99_by_window(table, 5.0)]
    return out


def one_round(warmup_s: float) -> list[dict]:
    tables: list[np.ndarray] = []
    read = latency.latencies_ms

    def keep(*args: object) -> np.ndarray:
        tables.append(read(*args))  # type: ignore[arg-type]
        return tables[-1]

    latency.latencies_ms = keep  # measure_latency's raw table, not only its percentiles
    try:
        with benchmark_broker() as bootstrap, tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            figures, model = throughput(bootstrap, work, 20_000)
            rate = figures["scorer_eos_eps"] / 2
            latency.measure_latency(bootstrap, model, rate, work, warmup_s=warmup_s)
            runs = [{"run": "table", "rate": rate, **windows(tables[-1])}]
            extra = strategy_options(work)
            group = f"bench-arms-{uuid.uuid4().hex[:6]}"
            command = scorer_command(
                bootstrap, model, figures["_topic"], group, "exactly-once", extra=extra
            )
            rate = measure(command, bootstrap, group, figures["_topic"]) / 2
            latency.measure_latency(bootstrap, model, rate, work, warmup_s=warmup_s, extra=extra)
            runs.append({"run": "arms", "rate": rate, **windows(tables[-1])})
            return runs
    finally:
        latency.latencies_ms = read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=40.0)
    args = parser.parse_args()
    for r in range(args.rounds):
        for run in one_round(args.warmup):
            print(json.dumps({"round": r + 1, **run}), flush=True)


if __name__ == "__main__":
    main()
