"""The scorer's pure hot path without Kafka: ``PartitionProcessor.process`` over pre-encoded
records, and where its time goes (decode + state, forest, segmenter + policy).

This is what `make bench`'s Kafka figures are made of, so it is where a speed-up is found and
checked first::

    python -m bench.processor --loans 5000 --json
    python -m bench.processor --loans 5000 --profile   # cProfile's top entries
    LOAN_RECOVERY_PURE_PYTHON=1 python -m bench.processor --json   # the reference code only

Throughput is events/s on one core for one partition's sequence, in batches of 2,000 (the
stream's largest batches).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import train_small_model

BATCH = 2000


def encoded_records(loans: int, seed: int = 11) -> list[tuple[int, bytes, bytes]]:
    """One synthetic book's events as one partition's (offset, key, Avro value) records."""
    from models.data.synthetic import generate_book
    from schemas import AvroSerde

    encode = AvroSerde("LoanEvent").encode
    _, events, _ = generate_book(loans, seed=seed)
    events.sort(key=lambda e: e["occurred_at"])  # the order a live stream has
    return [(offset, e["loan_id"].encode(), encode(e)) for offset, e in enumerate(events)]


def run_processor(model: Path, records: list[tuple[int, bytes, bytes]]) -> dict[str, Any]:
    """Events/s of ``process`` and the seconds spent in each of its stages."""
    from consumer.processor import PartitionProcessor
    from consumer.runtime import tune_gc_for_streaming
    from models.serving.bundle import ModelBundle
    from models.serving.policy import Policy

    bundle, policy = ModelBundle.load(model), Policy.load()
    processor = PartitionProcessor(bundle, policy, partition=0)
    tune_gc_for_streaming()  # as `serve` does
    stages = {"apply": 0.0, "predict": 0.0, "decide": 0.0, "commit": 0.0}
    started = time.perf_counter()
    for start in range(0, len(records), BATCH):
        t0 = time.perf_counter()
        result = processor.apply(records[start : start + BATCH])
        t1 = time.perf_counter()
        scores = bundle.predict_proba(result.rows())
        t2 = time.perf_counter()
        processor.decide(result, scores)
        t3 = time.perf_counter()
        processor.changelog_records(0)
        processor.commit()
        t4 = time.perf_counter()
        for stage, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            stages[stage] += seconds
    elapsed = time.perf_counter() - started
    per_event_us = {k: round(v / len(records) * 1e6, 2) for k, v in stages.items()}
    return {
        "events": len(records),
        "processor_eps": len(records) / elapsed,
        "per_event_us": per_event_us,
        "compiled_kernels": processor._kernel is not None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loans", type=int, default=5000)
    parser.add_argument("--model", type=Path, help="bundle directory (default: train one)")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top entries")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or train_small_model(Path(tmp))
        records = encoded_records(args.loans)
        if args.profile:
            profiler = cProfile.Profile()
            figures = profiler.runcall(run_processor, model, records)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        else:
            figures = run_processor(model, records)
    print(json.dumps(figures, indent=2) if args.json else figures)


if __name__ == "__main__":
    main()
